/**
 * Isolation (the seed's argument for one TCP connection per tunnel): one
 * sender streams to a fast receiver and to a slow one through the same
 * relay. The fast receiver's throughput with the slow one present, as a
 * ratio to its throughput alone, should be close to 1; the relay's buffered
 * bytes should stay bounded while the slow receiver holds its tunnel back.
 */
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import { nodeCryptoService } from "../src/adapters/crypto.ts"
import type { MessageChannel } from "../src/adapters/message-channel.ts"
import { listen, newIdentity, openTunnel, type PeerOptions } from "./peers.ts"
import type { RelayProcess } from "./relay-process.ts"
import { row, type BenchRow } from "./report.ts"
import { CHUNK_BYTES } from "./throughput.ts"

/** The slow receiver takes one message per this many milliseconds (64 KiB / 50 ms ≈ 1.3 MB/s). */
const SLOW_READ_INTERVAL_MS = 50

interface IsolationRun {
  readonly fastMBps: number
  readonly slowMBps: number
  /** The most the relay held in channel buffers at any sample. */
  readonly maxRelayBuffered: number
}

const runOnce = (relay: RelayProcess, volume: number, withSlow: boolean): Promise<IsolationRun> =>
  Effect.runPromise(
    Effect.scoped(
      Effect.gen(function*() {
        const crypto = nodeCryptoService
        const options: PeerOptions = { crypto }
        const arrived = yield* Deferred.make<number>()
        let slowBytes = 0
        const fast = yield* listen(relay.endpoint, newIdentity(crypto), options, (channel: MessageChannel) =>
          Effect.gen(function*() {
            let got = 0
            while (got < volume) got += (yield* channel.receive).length
            Deferred.doneUnsafe(arrived, Exit.succeed(performance.now()))
          }))
        const slow = yield* listen(relay.endpoint, newIdentity(crypto), options, (channel: MessageChannel) =>
          Effect.forever(
            Effect.andThen(
              Effect.map(channel.receive, (m) => void (slowBytes += m.length)),
              Effect.sleep(SLOW_READ_INTERVAL_MS)
            )
          ))
        const sender = newIdentity(crypto)
        const chunk = crypto.randomBytes(CHUNK_BYTES)
        const toFast = yield* openTunnel(relay.endpoint, sender, fast.identity.publicKey, options)

        let maxRelayBuffered = 0
        const sampler = yield* Effect.forkChild(
          Effect.forever(
            Effect.andThen(
              Effect.promise(() => relay.scrape()).pipe(
                Effect.map((s) => void (maxRelayBuffered = Math.max(maxRelayBuffered, s.bufferedBytes)))
              ),
              Effect.sleep(100)
            )
          )
        )
        let slowStart = performance.now()
        if (withSlow) {
          const toSlow = yield* openTunnel(relay.endpoint, sender, slow.identity.publicKey, options)
          slowStart = performance.now()
          yield* Effect.forkChild(Effect.forever(toSlow.send(chunk)))
          // Let the slow tunnel fill every buffer on its path before the fast one starts.
          yield* Effect.sleep(500)
        }
        const start = performance.now()
        for (let sent = 0; sent < volume; sent += CHUNK_BYTES) yield* toFast.send(chunk)
        const end = yield* Deferred.await(arrived)
        yield* Fiber.interrupt(sampler)
        return {
          fastMBps: volume / 1e6 / ((end - start) / 1000),
          slowMBps: withSlow ? slowBytes / 1e6 / ((performance.now() - slowStart) / 1000) : 0,
          maxRelayBuffered
        }
      })
    )
  )

/** Runs the scenario: alone, with the slow receiver, twice each, interleaved. */
export const benchIsolation = async (relay: RelayProcess, quick: boolean): Promise<Array<BenchRow>> => {
  const volume = (quick ? 8 : 64) * 1024 * 1024
  const alone: Array<IsolationRun> = []
  const shared: Array<IsolationRun> = []
  const rounds = quick ? 1 : 2
  for (let i = 0; i < rounds; i++) {
    alone.push(await runOnce(relay, volume, false))
    shared.push(await runOnce(relay, volume, true))
  }
  const mean = (runs: ReadonlyArray<IsolationRun>, f: (r: IsolationRun) => number) =>
    runs.reduce((sum, r) => sum + f(r), 0) / runs.length
  const fastAlone = mean(alone, (r) => r.fastMBps)
  return [
    row(
      "isolation",
      "fast receiver beside a slow one",
      mean(shared, (r) => r.fastMBps),
      "MB/s",
      [{ to: "fast receiver alone", baseline: fastAlone }],
      `${volume / 1024 / 1024} MiB, mean of ${rounds}; same sender, same relay`
    ),
    row(
      "isolation",
      "slow receiver meanwhile",
      mean(shared, (r) => r.slowMBps),
      "MB/s",
      [{ to: "fast receiver alone", baseline: fastAlone }],
      `reads one ${CHUNK_BYTES / 1024} KiB message per ${SLOW_READ_INTERVAL_MS} ms`
    ),
    row(
      "isolation",
      "relay buffered bytes, max sampled",
      Math.max(...shared.map((r) => r.maxRelayBuffered)),
      "bytes",
      [{ to: "fast alone", baseline: Math.max(1, ...alone.map((r) => r.maxRelayBuffered)) }],
      "bounded by one 256 KiB inbox (plus a message) per connection, whatever the slow side does"
    )
  ]
}
