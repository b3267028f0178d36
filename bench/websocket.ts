/**
 * WebSocket beside TCP, on one relay (`serve --ws-port`) in the same run:
 * tunnel setup (the client library's connect() to the first echoed byte)
 * and one tunnel's throughput, with Node clients dialing the relay over
 * ws:// (the runtime's WebSocket) and over TCP. Both ends of each tunnel use
 * the same transport, so the ratio is WebSocket's cost on both hops.
 */
import { connect, createIdentity, listen, type PeerDuplex } from "../src/adapters/client/index.ts"
import type { RelayProcess } from "./relay-process.ts"
import { percentile, row, type BenchRow } from "./report.ts"
import { timeTunnelToEcho, waitListening } from "./setup-latency.ts"

const ONE_BYTE = Uint8Array.of(42)
const CHUNK = new Uint8Array(64 * 1024).fill(7)

/** Runs the scenario against a relay started with `--ws-port wsPort`. */
export const benchWebSocket = async (relay: RelayProcess, wsPort: number, quick: boolean): Promise<Array<BenchRow>> => {
  const wsAddress = `${relay.address.split("@")[0]}@ws://127.0.0.1:${wsPort}`
  const setupCount = quick ? 20 : 150
  const throughputBytes = (quick ? 16 : 128) * 1024 * 1024
  const measured: Record<"tcp" | "ws", { setup: Array<number>; mbps: number }> = {
    tcp: { setup: [], mbps: 0 },
    ws: { setup: [], mbps: 0 }
  }
  for (const [name, address] of [["tcp", relay.address], ["ws", wsAddress]] as const) {
    const listener = listen({ identity: createIdentity(), relays: [address], allow: () => true })
    let sink: ((bytes: number) => void) | undefined
    listener.on("connection", (socket: PeerDuplex) => {
      socket.on("error", () => socket.destroy())
      if (sink === undefined) return void socket.pipe(socket)
      // Throughput: count what arrives, answer with one byte at the end.
      const count = sink
      let received = 0
      socket.on("data", (chunk: Buffer) => void (received += chunk.length))
      socket.on("end", () => {
        count(received)
        socket.end(ONE_BYTE)
      })
    })
    try {
      await waitListening(listener)
      const echoOnce = () => timeTunnelToEcho(address, listener.publicKey)
      for (let i = 0; i < 5; i++) await echoOnce()
      for (let i = 0; i < setupCount; i++) measured[name].setup.push(await echoOnce())

      // One tunnel, one direction: from the first write to the listener's answer after the end.
      let receivedBytes = 0
      sink = (bytes) => void (receivedBytes = bytes)
      const socket = await connect({ identity: createIdentity(), relays: [address], to: listener.publicKey })
      const start = performance.now()
      const answered = new Promise((resolve, reject) => {
        socket.once("data", resolve)
        socket.once("error", reject)
      })
      for (let sent = 0; sent < throughputBytes; sent += CHUNK.length) {
        if (!socket.write(CHUNK)) await new Promise((resolve) => socket.once("drain", resolve))
      }
      socket.end()
      await answered
      const seconds = (performance.now() - start) / 1000
      if (receivedBytes !== throughputBytes) throw new Error(`${name}: the listener got ${receivedBytes} of ${throughputBytes} bytes`)
      measured[name].mbps = throughputBytes / 1e6 / seconds
      socket.destroy()
    } finally {
      await listener.close()
    }
  }
  const rows: Array<BenchRow> = []
  for (const p of [50, 90]) {
    rows.push(
      row("websocket", `ws:// tunnel connect→echo p${p}, sequential`, percentile(measured.ws.setup, p), "ms", [
        { to: "tcp", baseline: percentile(measured.tcp.setup, p) }
      ], p === 50 ? `${setupCount} tunnels each; Node clients, both ends on the same transport` : undefined)
    )
  }
  rows.push(
    row("websocket", "ws:// one tunnel throughput", measured.ws.mbps, "MB/s", [{ to: "tcp", baseline: measured.tcp.mbps }], `${throughputBytes / 1024 / 1024} MiB one way`)
  )
  return rows
}
