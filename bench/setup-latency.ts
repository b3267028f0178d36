/**
 * Tunnel setup latency: from the client library's `connect()` to the first
 * byte echoed back through a fresh relayed tunnel (the connector's handshake
 * with the relay, IncomingConnection to the listener, the listener's accept
 * connection and its handshake, the end-to-end handshake, one echo), beside
 * the same connect-to-echo time through the baseline proxy and directly.
 */
import { connect, createIdentity, listen, type PeerDuplex, type RelayListener } from "../src/adapters/client/index.ts"
import { startEchoServer, startProxyProcess, tcpConnectToEcho } from "./baseline.ts"
import type { RelayProcess } from "./relay-process.ts"
import { percentile, row, type BenchRow } from "./report.ts"

const ONE_BYTE = Uint8Array.of(42)

/** Samples `count` timings of `once`, `inFlight` at a time. */
const sample = async (count: number, inFlight: number, once: () => Promise<number>): Promise<Array<number>> => {
  const samples: Array<number> = []
  let next = 0
  const worker = async () => {
    while (next < count) {
      next++
      samples.push(await once())
    }
  }
  await Promise.all(Array.from({ length: Math.min(inFlight, count) }, worker))
  return samples
}

/** Resolves once the listener's listen channel is up (its first "listening" status). */
export const waitListening = (listener: RelayListener, timeoutMs = 15_000): Promise<void> =>
  new Promise((resolve, reject) => {
    if (listener.status().some((s) => s.state === "listening")) return resolve()
    const timer = setTimeout(() => reject(new Error("the listener never reached the relay")), timeoutMs)
    const onStatus = (status: { readonly state: string }) => {
      if (status.state !== "listening") return
      clearTimeout(timer)
      listener.off("status", onStatus)
      resolve()
    }
    listener.on("status", onStatus)
  })

/**
 * Milliseconds from `connect()` to the first byte echoed back through a
 * fresh tunnel to the echoing listener `to`. A fresh connector identity each
 * time (as many users reaching one service), so tunnels in flight at once
 * are distinct half tunnels.
 */
export const timeTunnelToEcho = async (relay: string, to: string): Promise<number> => {
  const start = performance.now()
  const socket = await connect({ identity: createIdentity(), relays: [relay], to })
  socket.write(ONE_BYTE)
  await new Promise((resolve, reject) => {
    socket.once("data", resolve)
    socket.once("error", reject)
  })
  const ms = performance.now() - start
  socket.destroy()
  return ms
}

/** Runs the scenario against a running relay; `quick` takes fewer samples. */
export const benchSetupLatency = async (relay: RelayProcess, quick: boolean): Promise<Array<BenchRow>> => {
  const counts = quick ? { sequential: 20, parallel: 64 } : { sequential: 200, parallel: 320 }
  const warmUp = quick ? 5 : 20
  const inFlight = 32

  const echoServer = await startEchoServer()
  const proxy = await startProxyProcess(echoServer.port)
  try {
    const baseline = async (port: number) => {
      await sample(warmUp, 1, () => tcpConnectToEcho(port))
      return {
        sequential: await sample(counts.sequential, 1, () => tcpConnectToEcho(port)),
        parallel: await sample(counts.parallel, inFlight, () => tcpConnectToEcho(port))
      }
    }
    const direct = await baseline(echoServer.port)
    const proxied = await baseline(proxy.port)

    // The client library, as a user sees it: `connect()` resolves once the
    // listener proved its key end to end; the listener echoes.
    const listener = listen({ identity: createIdentity(), relays: [relay.address], allow: () => true })
    listener.on("connection", (socket: PeerDuplex) => {
      // The connector destroys its end after the echo: an error here is expected.
      socket.on("error", () => socket.destroy())
      socket.pipe(socket)
    })
    await waitListening(listener)
    const tunnelOnce = () => timeTunnelToEcho(relay.address, listener.publicKey)
    let relayed: { sequential: Array<number>; parallel: Array<number> }
    // The relay's CPU over the sequential tunnels: three handshakes, the
    // relay messages and the splice, per tunnel.
    let relayCpuPerSetup: number | undefined
    try {
      await sample(warmUp, 1, tunnelOnce)
      const cpuBefore = relay.cpuMs()
      const sequential = await sample(counts.sequential, 1, tunnelOnce)
      const cpuAfter = relay.cpuMs()
      if (cpuBefore !== undefined && cpuAfter !== undefined) relayCpuPerSetup = (cpuAfter - cpuBefore) / sequential.length
      relayed = { sequential, parallel: await sample(counts.parallel, inFlight, tunnelOnce) }
    } finally {
      await listener.close()
    }

    const rows: Array<BenchRow> = []
    for (const mode of ["sequential", "parallel"] as const) {
      const label = mode === "sequential" ? "sequential" : `${inFlight} in flight`
      for (const p of [50, 90, 99]) {
        const value = percentile(relayed[mode], p)
        rows.push(
          row("setup", `tunnel connect→echo p${p}, ${label}`, value, "ms", [
            { to: "proxy", baseline: percentile(proxied[mode], p) },
            { to: "direct", baseline: percentile(direct[mode], p) }
          ], p === 50 ? `${relayed[mode].length} tunnels` : undefined)
        )
      }
    }
    if (relayCpuPerSetup !== undefined) {
      rows.push(
        row("setup", "relay CPU per tunnel setup, sequential", relayCpuPerSetup, "ms", [], "the relay process's user+system CPU over the sequential tunnels, per tunnel")
      )
    }
    return rows
  } finally {
    await proxy.stop()
    await echoServer.close()
  }
}
