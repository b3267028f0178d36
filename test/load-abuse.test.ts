/**
 * Abuse under load: while legitimate tunnels stream data through a relay
 * process, hostile clients open connections that never finish the
 * handshake, send frame lengths over the 1 MiB limit, trickle bytes one at
 * a time, and flood connect requests at one listener. The legitimate
 * tunnels keep flowing (their echoed bytes grow during every phase, intact),
 * a fresh tunnel still opens afterwards, and every hostile connection is
 * closed by the limit that applies to it, counted by reason in the relay's
 * metrics:
 *
 * | hostile client                                  | closed by                      | reason                         |
 * |-------------------------------------------------|--------------------------------|--------------------------------|
 * | silent after connect, beyond --max-handshakes   | at once                        | over-limit (limit max-handshakes) |
 * | silent after connect                            | --hello-timeout-ms             | timeout-handshake              |
 * | stalled mid-handshake                           | --handshake-timeout-ms         | timeout-handshake              |
 * | version frame trickled a byte per 150 ms        | --hello-timeout-ms             | timeout-handshake              |
 * | frame length > 1 MiB, first frame or later      | at once, nothing buffered      | frame-too-long                 |
 * | InitConnection trickled a byte per 150 ms       | --init-timeout-ticks           | timeout-init                   |
 * | connect flood at one listener                   | --max-pending-per-listener     | over-limit (then listener-gone for those pending when the listener leaves) |
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Scope from "effect/Scope"
import { nodeCryptoService } from "../src/adapters/crypto.ts"
import type { MessageChannel } from "../src/adapters/message-channel.ts"
import { openRelayConnection } from "../src/adapters/relay-connection.ts"
import { encodeFrameHeader } from "../src/core/frame.ts"
import { encodeVersion } from "../src/core/version.ts"
import { echo, listen, newIdentity, openTunnel, type PeerOptions } from "../bench/peers.ts"
import { ONE_HOST_AS_MANY_ARGS, startRelayProcess, type RelayProcess, type RelayScrape } from "../bench/relay-process.ts"
import { patternBytes, RawClient } from "./support/relay-harness.ts"

const TICK_MS = 100
const HANDSHAKE_TIMEOUT_MS = 2000
const MAX_HANDSHAKES = 100
const INIT_TIMEOUT_TICKS = 5
const MAX_PENDING = 16

const options: PeerOptions = { crypto: nodeCryptoService, tickMs: TICK_MS }
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

/** Every raw client's socket closes within `timeoutMs` (the bound its limit implies, plus slack). */
const allClosed = async (clients: ReadonlyArray<RawClient>, timeoutMs: number) => {
  const open = () => clients.filter((c) => !c.closed).length
  const deadline = Date.now() + timeoutMs
  while (open() > 0 && Date.now() < deadline) await sleep(20)
  return open()
}

/** Writes `bytes` to the socket one byte every `intervalMs` until it closes. */
const trickle = (client: RawClient, bytes: Uint8Array, intervalMs: number) =>
  (async () => {
    for (const byte of bytes) {
      if (client.closed) return
      client.write(Uint8Array.of(byte))
      await sleep(intervalMs)
    }
  })()

describe("abuse under load", () => {
  let relay: RelayProcess
  beforeAll(async () => {
    relay = await startRelayProcess({
      tickMs: TICK_MS,
      args: [
        "--handshake-timeout-ms",
        String(HANDSHAKE_TIMEOUT_MS),
        // Silent connections must hold their slots as long as stalled ones, for the counts below.
        "--hello-timeout-ms",
        String(HANDSHAKE_TIMEOUT_MS),
        "--max-handshakes",
        String(MAX_HANDSHAKES),
        "--init-timeout-ticks",
        String(INIT_TIMEOUT_TICKS),
        "--max-pending-per-listener",
        String(MAX_PENDING),
        // Pending flood connections must stay pending until the test ends them.
        "--half-tunnel-ticks",
        "1000",
        // Every client here is 127.0.0.1: per-host caps would hide the global ones under test.
        ...ONE_HOST_AS_MANY_ARGS
      ]
    })
  })
  afterAll(async () => {
    await relay?.stop()
    relay?.removeDataDir()
  })

  it("hostile clients are each closed by their limit while legitimate tunnels keep flowing", async () => {
    const scope = Effect.runSync(Scope.make())
    const run = <A, E>(effect: Effect.Effect<A, E, Scope.Scope>) => Effect.runPromise(Scope.provide(effect, scope))
    try {
      // Legitimate load: two tunnels echoing 32 KiB messages, checked byte for byte.
      const service = await run(listen(relay.endpoint, newIdentity(options.crypto), options, echo))
      let echoed = 0
      const stream = (channel: MessageChannel, seed: number) =>
        Effect.gen(function*() {
          for (let i = 0;; i++) {
            const message = patternBytes(32 * 1024, seed + i)
            yield* channel.send(message)
            const back = yield* channel.receive
            if (!Buffer.from(back).equals(Buffer.from(message))) return yield* Effect.die(new Error("echo differs"))
            echoed += back.length
          }
        })
      const streams: Array<Fiber.Fiber<never, unknown>> = []
      for (const seed of [1, 1_000_000]) {
        const channel = await run(openTunnel(relay.endpoint, newIdentity(options.crypto), service.identity.publicKey, options))
        streams.push(Effect.runFork(stream(channel, seed)))
      }
      // Each phase must see the legitimate streams move on.
      const flowing = async <A>(phase: string, body: () => Promise<A>): Promise<A> => {
        const before = echoed
        const result = await body()
        const deadline = Date.now() + 5000
        while (echoed === before && Date.now() < deadline) await sleep(20)
        expect(echoed, `legitimate tunnels stalled during ${phase}`).toBeGreaterThan(before)
        return result
      }
      const before: RelayScrape = await relay.scrape()
      const delta = async (reason: string) => (await relay.scrape()).closes(reason) - before.closes(reason)

      // 1. More silent connections than handshake slots: the excess is refused at once, the rest time out.
      const silentCount = MAX_HANDSHAKES + 50
      await flowing("the silent flood", async () => {
        const silent = await Promise.all(Array.from({ length: silentCount }, () => RawClient.connect(relay.port)))
        expect(await allClosed(silent, HANDSHAKE_TIMEOUT_MS + 3000)).toBe(0)
      })
      const refused = (await relay.scrape()).overLimit("max-handshakes") - before.overLimit("max-handshakes")
      expect(refused).toBe(silentCount - MAX_HANDSHAKES)
      expect(await delta("timeout-handshake")).toBe(MAX_HANDSHAKES)

      // 2. Stalled handshakes, trickled version frames, oversized frames, trickled InitConnection.
      const counts = { stalled: 10, trickledVersion: 5, oversizedFirst: 10, oversizedLater: 10, trickledInit: 5 }
      await flowing("the mixed abuse", async () => {
        const stalled = await Promise.all(
          Array.from({ length: counts.stalled }, async () => {
            const c = await RawClient.connect(relay.port)
            await c.handshake(relay.endpoint.publicKey, newIdentity(options.crypto), { stopAfterRandNonce: true })
            return c
          })
        )
        const trickledVersion = await Promise.all(
          Array.from({ length: counts.trickledVersion }, async () => {
            const c = await RawClient.connect(relay.port)
            void trickle(c, Buffer.concat([encodeFrameHeader(4), encodeVersion()]), 150)
            return c
          })
        )
        const oversizedFirst = await Promise.all(
          Array.from({ length: counts.oversizedFirst }, async (_, i) => {
            const c = await RawClient.connect(relay.port)
            // 1 MiB + 1 up to 2^53: no payload follows; the header alone must close it.
            c.write(encodeFrameHeader(i === 0 ? 1024 * 1024 + 1 : 2 ** (21 + i * 3)))
            return c
          })
        )
        const oversizedLater = await Promise.all(
          Array.from({ length: counts.oversizedLater }, async () => {
            const c = await RawClient.connect(relay.port)
            expect(await c.handshake(relay.endpoint.publicKey, newIdentity(options.crypto))).toBe("authenticated")
            c.write(encodeFrameHeader(64 * 1024 * 1024))
            c.write(new Uint8Array(64 * 1024)) // the start of a payload the relay must not wait for
            return c
          })
        )
        const trickledInit = await Promise.all(
          Array.from({ length: counts.trickledInit }, async () => {
            const c = await RawClient.connect(relay.port)
            expect(await c.handshake(relay.endpoint.publicKey, newIdentity(options.crypto))).toBe("authenticated")
            // Capture the InitConnection frame instead of sending it, then trickle it.
            const captured: Array<Uint8Array> = []
            const write = c.write.bind(c)
            c.write = (bytes) => void captured.push(bytes)
            c.sendInit({ _tag: "Listen" })
            c.write = write
            void trickle(c, Buffer.concat(captured), 150)
            return c
          })
        )
        const all = [...stalled, ...trickledVersion, ...oversizedFirst, ...oversizedLater, ...trickledInit]
        expect(await allClosed(all, HANDSHAKE_TIMEOUT_MS + INIT_TIMEOUT_TICKS * TICK_MS + 3000)).toBe(0)
      })
      expect(await delta("timeout-handshake")).toBe(MAX_HANDSHAKES + counts.stalled + counts.trickledVersion)
      expect(await delta("frame-too-long")).toBe(counts.oversizedFirst + counts.oversizedLater)
      expect(await delta("timeout-init")).toBe(counts.trickledInit)

      // 3. A connect flood at one listener (a listener that never answers): the
      //    first MAX_PENDING wait as half tunnels, every later one is refused.
      const floodCount = MAX_PENDING + 24
      const target = newIdentity(options.crypto)
      const targetScope = Effect.runSync(Scope.fork(scope))
      await Effect.runPromise(
        Scope.provide(openRelayConnection(relay.endpoint, { _tag: "Listen" }, { crypto: options.crypto, identity: target, tickMs: TICK_MS }), targetScope)
      )
      await sleep(100)
      const beforeFlood = (await relay.scrape()).closes("over-limit")
      const floodRefused = async () => (await relay.scrape()).closes("over-limit") - beforeFlood
      const flooders = await flowing("the connect flood", () =>
        Promise.all(
          Array.from({ length: floodCount }, async () => {
            const c = await RawClient.connect(relay.port)
            expect(await c.handshake(relay.endpoint.publicKey, newIdentity(options.crypto))).toBe("authenticated")
            c.sendInit({ _tag: "Connect", publicKey: target.publicKey })
            return c
          })
        ))
      const deadline = Date.now() + 5000
      while (await floodRefused() < floodCount - MAX_PENDING && Date.now() < deadline) await sleep(20)
      expect(await floodRefused()).toBe(floodCount - MAX_PENDING)
      expect((await relay.scrape()).pendingHalfTunnels).toBe(MAX_PENDING)
      // The listener leaves: its half tunnels go with it.
      await Effect.runPromise(Scope.close(targetScope, Exit.void))
      expect(await allClosed(flooders, 5000)).toBe(0)
      expect(await delta("listener-gone")).toBe(MAX_PENDING)

      // Afterwards a fresh tunnel opens and carries data.
      await Effect.runPromise(
        Effect.scoped(
          Effect.gen(function*() {
            const channel = yield* openTunnel(relay.endpoint, newIdentity(options.crypto), service.identity.publicKey, options)
            const message = patternBytes(1000, 7)
            yield* channel.send(message)
            expect(Buffer.from(yield* channel.receive).equals(Buffer.from(message))).toBe(true)
          })
        )
      )
      // The streams are still running (a failed stream would have ended its fiber).
      for (const fiber of streams) expect(fiber.pollUnsafe()).toBeUndefined()
      await Effect.runPromise(Fiber.interruptAll(streams))
    } finally {
      await Effect.runPromise(Scope.close(scope, Exit.void))
    }
  }, 60_000)

  // Every connection here comes from 127.0.0.1 except the hostile ones, which
  // come from 127.0.0.2 (all of 127/8 is loopback): one host at the default
  // limits. Without a per-prefix handshake cap, one host holding 256 silent
  // connections (the global handshake cap) for the handshake timeout would
  // make the relay refuse every other client's handshake, again and again,
  // at no crypto cost to the attacker.
  it("one host's silent connections cannot take every handshake slot", async () => {
    // Default limits; the hello deadline as long as the handshake's, so the
    // silent connections hold their slots while the test looks.
    const defaults = await startRelayProcess({ tickMs: TICK_MS, args: ["--hello-timeout-ms", "5000"] })
    const silent: Array<RawClient> = []
    try {
      const attempts = 256 // defaultRelayConfig.maxHandshakes
      const perIpSlots = 32 // defaultRelayConfig.maxHandshakesPerPrefix
      for (let i = 0; i < attempts; i += 32) {
        silent.push(...(await Promise.all(Array.from({ length: Math.min(32, attempts - i) }, () => RawClient.connect(defaults.port, "127.0.0.2")))))
      }
      const deadline = Date.now() + 5000
      while ((await defaults.scrape()).handshaking < perIpSlots && Date.now() < deadline) await sleep(20)
      // The host holds its share of the slots and no more.
      expect((await defaults.scrape()).handshaking).toBe(perIpSlots)
      // Another host's client, meanwhile: it must get its handshake.
      const exit = await Effect.runPromiseExit(
        Effect.scoped(openRelayConnection(defaults.endpoint, { _tag: "Listen" }, { crypto: options.crypto, identity: newIdentity(options.crypto), tickMs: TICK_MS }))
      )
      expect(Exit.isSuccess(exit), `refused while another host holds the handshake slots: ${Exit.isFailure(exit) ? String(exit.cause) : ""}`).toBe(true)
    } finally {
      for (const c of silent) c.destroy()
      await defaults.stop()
      defaults.removeDataDir()
    }
  }, 30_000)
})
