/**
 * Tunnel setup latency: from connect() to the first byte echoed back
 * through a fresh relayed tunnel (the connector's handshake with the relay,
 * IncomingConnection to the listener, the listener's accept connection and
 * its handshake, the end-to-end handshake, one echo), beside the same
 * connect-to-echo time through the baseline proxy and directly.
 */
import * as Effect from "effect/Effect"
import { nodeCryptoService } from "../src/adapters/crypto.ts"
import { startEchoServer, startProxyProcess, tcpConnectToEcho } from "./baseline.ts"
import { echo, listen, newIdentity, openTunnel, type PeerOptions } from "./peers.ts"
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

/** Runs the scenario against a running relay; `quick` takes fewer samples. */
export const benchSetupLatency = async (relay: RelayProcess, quick: boolean): Promise<Array<BenchRow>> => {
  const options: PeerOptions = { crypto: nodeCryptoService }
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

    const relayed = await Effect.runPromise(
      Effect.scoped(
        Effect.gen(function*() {
          const listener = yield* listen(relay.endpoint, newIdentity(options.crypto), options, echo)
          // One tunnel: a fresh connector identity each time (as many users
          // reaching one service), so 32 in flight are 32 distinct half tunnels.
          const tunnelOnce = () =>
            Effect.runPromise(
              Effect.scoped(
                Effect.gen(function*() {
                  const start = performance.now()
                  const channel = yield* openTunnel(relay.endpoint, newIdentity(options.crypto), listener.identity.publicKey, options)
                  yield* channel.send(ONE_BYTE)
                  yield* channel.receive
                  return performance.now() - start
                })
              )
            )
          return yield* Effect.promise(async () => {
            await sample(warmUp, 1, tunnelOnce)
            return {
              sequential: await sample(counts.sequential, 1, tunnelOnce),
              parallel: await sample(counts.parallel, inFlight, tunnelOnce)
            }
          })
        })
      )
    )

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
    return rows
  } finally {
    await proxy.stop()
    await echoServer.close()
  }
}
