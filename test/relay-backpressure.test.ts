/**
 * Flow control through the real relay: a receiver that stops reading stops
 * its sender (TCP backpressure through the relay, which holds a bounded
 * number of bytes for the tunnel meanwhile) without slowing another tunnel;
 * a per-key rate limit slows a fast sender without losing data.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as References from "effect/References"
import type * as Scope from "effect/Scope"
import { type Crypto, layerNode } from "../src/adapters/crypto.ts"
import { defaultRelayServerOptions } from "../src/adapters/relay-server.ts"
import {
  closes,
  expectIdle,
  keepFlowing,
  makeIdentity,
  openTunnel,
  patternBytes,
  sendChunked,
  sha256,
  startRelay,
  StreamHash,
  waitUntil
} from "./support/relay-harness.ts"

const live = <A, E>(effect: Effect.Effect<A, E, Scope.Scope | Crypto>) =>
  effect.pipe(Effect.provide(layerNode), Effect.provideService(References.MinimumLogLevel, "Warn"))

const KiB = 1024
const CHUNK = 16 * KiB
// A relayed message on a hop: the payload plus KaMessage and ChannelMessage
// framing, nonce, tag and frame header (no padding in these tests).
const MESSAGE_OVERHEAD = 128

describe("backpressure and rate limits through the relay", () => {
  it.live("a receiver that stops reading stalls its sender; the relay's buffer stays bounded; another tunnel keeps moving", () =>
    live(Effect.gen(function*() {
      const inboxBytes = defaultRelayServerOptions(makeIdentity()).inboxBytes
      const { server, endpoint } = yield* startRelay()
      const slow = yield* openTunnel(server, endpoint)
      const other = yield* openTunnel(server, endpoint)
      const otherFlow = yield* keepFlowing(other.connect.channel, other.accept.channel)

      // The slow tunnel: the connector sends as fast as the relay takes it.
      const sent = new StreamHash()
      let stop = false
      let seed = 1
      const sender = yield* Effect.forkScoped(Effect.gen(function*() {
        while (!stop) {
          const data = patternBytes(CHUNK, seed++)
          yield* slow.connect.channel.send(data)
          sent.update(data)
        }
      }))
      const received = new StreamHash()
      let reading = true
      const receiver = yield* Effect.forkScoped(Effect.gen(function*() {
        while (true) {
          if (!reading) {
            yield* Effect.sleep(10)
            continue
          }
          received.update(yield* slow.accept.channel.receive)
        }
      }))
      yield* waitUntil("the slow tunnel to move 4 MiB", () => received.bytes >= 4 * 1024 * KiB, 10_000)

      // The receiver stops reading for 2.5 s.
      reading = false
      const pauseStart = Date.now()
      const samples: Array<{ at: number; buffered: number; sent: number }> = []
      const otherBefore = otherFlow.bytesSoFar()
      while (Date.now() - pauseStart < 2500) {
        samples.push({ at: Date.now() - pauseStart, buffered: server.stats().bufferedBytes, sent: sent.bytes })
        yield* Effect.sleep(50)
      }
      const otherDuring = otherFlow.bytesSoFar() - otherBefore

      // What the relay holds: the slow connector's inbox (up to inboxBytes
      // plus one message), a partial frame on each hop, and what Node's
      // socket to the paused receiver has not handed to the kernel (below its
      // 64 KiB high water mark, plus the write that crossed it); the other
      // tunnel is read as fast as it arrives, so allow it one message each way.
      const otherTunnelAllowance = 4 * (8 * KiB + MESSAGE_OVERHEAD)
      const socketWriteAllowance = 64 * KiB + CHUNK + MESSAGE_OVERHEAD
      const bound = inboxBytes + 2 * (CHUNK + MESSAGE_OVERHEAD) + socketWriteAllowance + otherTunnelAllowance
      const maxBuffered = Math.max(...samples.map((s) => s.buffered))
      expect(maxBuffered).toBeLessThanOrEqual(bound)
      // The sender stalled: nothing more was taken from it in the second half of the pause.
      const settled = samples.filter((s) => s.at >= 1250)
      expect(settled.length).toBeGreaterThan(10)
      expect(settled[settled.length - 1]!.sent).toBe(settled[0]!.sent)
      // And the relay's buffer stopped growing with it.
      expect(settled[settled.length - 1]!.buffered).toBeLessThanOrEqual(
        settled[0]!.buffered + CHUNK + MESSAGE_OVERHEAD + otherTunnelAllowance
      )
      // Meanwhile the other tunnel moved data (8 KiB every 5 ms each way when unhindered).
      expect(otherDuring).toBeGreaterThan(256 * KiB)

      // Resume: every byte the sender got rid of arrives, intact and in order.
      reading = true
      stop = true
      yield* Fiber.join(sender)
      yield* waitUntil("the slow tunnel to drain", () => received.bytes === sent.bytes, 15_000)
      yield* Fiber.interrupt(receiver)
      expect(received.digest()).toBe(sent.digest())
      const otherResult = yield* otherFlow.finish
      expect(otherResult.intact).toBe(true)
      yield* Effect.logWarning("backpressure").pipe(Effect.annotateLogs({
        stalledAfterBytesInFlight: settled[0]!.sent - samples[0]!.sent,
        maxBufferedBytes: maxBuffered,
        bound,
        otherTunnelBytesDuringPause: otherDuring
      }))
      yield* expectIdle(server, [slow.connect, slow.accept, slow.listen, other.connect, other.accept, other.listen])
    })))

  it.live("a rate-limited client is slowed to its rate (plus burst) and loses nothing", () =>
    live(Effect.gen(function*() {
      const bytesPerSecond = 256 * KiB
      const burstBytes = 64 * KiB
      const { server, endpoint } = yield* startRelay({ rateLimit: { bytesPerSecond, burstBytes } })
      const { listen, connect, accept } = yield* openTunnel(server, endpoint)
      const total = 768 * KiB
      const data = patternBytes(total, 42)
      const arrivals: Array<{ at: number; bytes: number }> = []
      const hash = new StreamHash()
      const start = Date.now()
      yield* Effect.all([
        sendChunked(connect.channel, data, CHUNK),
        Effect.gen(function*() {
          while (hash.bytes < total) {
            hash.update(yield* accept.channel.receive)
            arrivals.push({ at: Date.now() - start, bytes: hash.bytes })
          }
        })
      ], { concurrency: 2 })
      const elapsedMs = Date.now() - start
      expect(hash.digest()).toBe(sha256(data))
      // At any moment, no more than rate × time + burst + one read's worth
      // (a read takes what the socket has: at most a 64 KiB kernel chunk plus
      // a frame) plus a handshake-sized allowance for what was read before.
      const slack = burstBytes + 64 * KiB + CHUNK + MESSAGE_OVERHEAD + 4 * KiB
      for (const a of arrivals) {
        expect(a.bytes).toBeLessThanOrEqual((bytesPerSecond * a.at) / 1000 + slack)
      }
      // So the whole transfer took at least (total − slack) / rate.
      expect(elapsedMs).toBeGreaterThanOrEqual(((total - slack) / bytesPerSecond) * 1000)
      // The other direction is another client key with its own bucket; the accept side sent nothing.
      yield* Effect.logWarning("rate limit").pipe(Effect.annotateLogs({
        elapsedMs,
        effectiveBytesPerSecond: Math.round((total / elapsedMs) * 1000),
        bytesPerSecond,
        burstBytes
      }))
      yield* expectIdle(server, [connect, accept, listen])
    })))

  it.live("a rate limit slower than the keepalive does not make the relay time out the client it throttles", () =>
    live(Effect.gen(function*() {
      // 64 KiB at 16 KiB/s: the relay waits ~3 s between reads, twice the
      // keepalive time (32 ticks of 50 ms); the client's keepalives wait in
      // TCP meanwhile, and the relay, not the client, is the one not reading.
      const bytesPerSecond = 16 * KiB
      const { server, endpoint } = yield* startRelay({ rateLimit: { bytesPerSecond, burstBytes: 8 * KiB } })
      const { listen, connect, accept } = yield* openTunnel(server, endpoint)
      const data = patternBytes(64 * KiB, 9)
      const [hash] = yield* Effect.all([
        Effect.gen(function*() {
          const got = new StreamHash()
          while (got.bytes < data.length) got.update(yield* accept.channel.receive)
          return got.digest()
        }),
        sendChunked(connect.channel, data, 64 * KiB)
      ], { concurrency: 2 })
      expect(hash).toBe(sha256(data))
      expect(closes(server, "keepalive-timeout")).toBe(0)
      yield* expectIdle(server, [connect, accept, listen])
    })))
})
