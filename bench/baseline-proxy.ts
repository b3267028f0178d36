/**
 * The baseline the relay is measured against: a minimal TCP proxy, Node
 * `net` sockets piped both ways, no framing, no crypto. Run as its own
 * process (like the relay), it forwards every connection to
 * 127.0.0.1:<target port> and prints its own port once listening.
 *
 *   node bench/baseline-proxy.ts <target port>
 */
import * as Net from "node:net"
import process from "node:process"

/** Starts the proxy on 127.0.0.1:0; resolves with the server once it listens. */
export const startBaselineProxy = (targetPort: number): Promise<Net.Server> =>
  new Promise((resolve) => {
    const server = Net.createServer({ noDelay: true }, (client) => {
      const upstream = Net.connect({ host: "127.0.0.1", port: targetPort, noDelay: true })
      // pipe() handles backpressure; an error on either side tears down both.
      client.pipe(upstream)
      upstream.pipe(client)
      client.on("error", () => upstream.destroy())
      upstream.on("error", () => client.destroy())
      client.on("close", () => upstream.destroy())
      upstream.on("close", () => client.destroy())
    })
    server.listen(0, "127.0.0.1", () => resolve(server))
  })

if (import.meta.main) {
  const target = Number(process.argv[2])
  if (!Number.isInteger(target) || target <= 0) {
    process.stderr.write("usage: node bench/baseline-proxy.ts <target port>\n")
    process.exit(2)
  }
  const server = await startBaselineProxy(target)
  process.stdout.write(`${(server.address() as Net.AddressInfo).port}\n`)
  process.on("SIGTERM", () => process.exit(0))
}
