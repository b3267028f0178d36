/**
 * Hostile clients against the real relay while a legitimate tunnel keeps
 * bytes flowing both ways: each hostile connection is closed with the right
 * reason (offset_relay_closes_total, offset_relay_over_limit_total), the
 * server keeps serving, and the tunnel's bytes arrive intact at the end.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as References from "effect/References"
import type * as Scope from "effect/Scope"
import { type Crypto, layerNode } from "../src/adapters/crypto.ts"
import { HANDSHAKE_FRAME_LIMIT, type RelayServer } from "../src/adapters/relay-server.ts"
import { encodeFrameHeader } from "../src/core/frame.ts"
import { encodeVersion } from "../src/core/version.ts"
import {
  closes,
  expectIdle,
  keepFlowing,
  makeIdentity,
  metricValue,
  openClient,
  openTunnel,
  overLimit,
  rawConnect,
  rawEnded,
  startRelay,
  TEST_TICK_MS,
  waitUntil,
  type RelayOverrides
} from "./support/relay-harness.ts"

const endpointOf = (server: RelayServer, publicKey: Uint8Array) => ({ publicKey, host: "127.0.0.1", port: server.port })

const live = <A, E>(effect: Effect.Effect<A, E, Scope.Scope | Crypto>) =>
  // Refusals are logged at warn: tests read the metrics, not the log.
  effect.pipe(Effect.provide(layerNode), Effect.provideService(References.MinimumLogLevel, "Error"))

/**
 * Runs `hostile` against a relay while a tunnel flows; then checks the
 * tunnel's bytes, that a new client still gets served, and that the relay
 * ends up holding nothing.
 */
const withFlowingTunnel = <A, E>(
  overrides: RelayOverrides,
  hostile: (server: RelayServer, port: number, relayKey: Uint8Array) => Effect.Effect<A, E, Scope.Scope | Crypto>
) =>
  live(Effect.gen(function*() {
    const { server, endpoint } = yield* startRelay(overrides)
    const { listen, connect, accept } = yield* openTunnel(server, endpoint)
    const flow = yield* keepFlowing(connect.channel, accept.channel)
    const before = flow.bytesSoFar()
    yield* hostile(server, endpoint.port, endpoint.publicKey)
    // The tunnel moved data while the hostile clients were at it.
    yield* waitUntil("the tunnel to keep moving", () => flow.bytesSoFar() > before + 64 * 1024)
    const result = yield* flow.finish
    expect(result.intact).toBe(true)
    // The server still serves newcomers.
    const probe = yield* openClient(endpoint, makeIdentity(), { _tag: "Listen" })
    yield* waitUntil("a new listener", () => server.stats().core.listeners === 2)
    yield* expectIdle(server, [probe, connect, accept, listen])
    expect(closes(server, "protocol-violation") + closes(server, "adapter-misuse")).toBe(
      hostileViolations.get(server) ?? 0
    )
  }))

// Tests that expect protocol violations register how many, so the shared
// check above catches violations nobody expected.
const hostileViolations = new WeakMap<RelayServer, number>()

describe("hostile clients while a tunnel flows", () => {
  it.live("a frame length over 1 MiB closes the connection before any payload (during and after the handshake)", () =>
    withFlowingTunnel({}, (server, port, relayKey) =>
      Effect.gen(function*() {
        const early = yield* rawConnect(port)
        early.writeFrame(encodeVersion())
        early.write(encodeFrameHeader(1024 * 1024 + 1))
        yield* rawEnded(early)
        expect(closes(server, "frame-too-long")).toBe(1)
        expect(metricValue(server.metrics.render(), `offset_relay_handshake_failures_total{reason="FrameTooLong"}`))
          .toBe(1)

        const late = yield* rawConnect(port)
        expect(yield* Effect.promise(() => late.handshake(relayKey, makeIdentity()))).toBe("authenticated")
        late.sendInit({ _tag: "Listen" })
        // 2^40: also over any 32-bit reading of the length.
        late.write(encodeFrameHeader(2 ** 40))
        yield* rawEnded(late)
        expect(closes(server, "frame-too-long")).toBe(2)
      })))

  it.live("before it is authenticated a client cannot make the relay buffer more than a handshake frame", () =>
    withFlowingTunnel({}, (server, port) =>
      Effect.gen(function*() {
        // A header announcing 512 KiB (under the 1 MiB frame limit) as the
        // ExchangeRandNonce, then 8 KiB of it: refused at once, not buffered.
        const hog = yield* rawConnect(port)
        hog.writeFrame(encodeVersion())
        hog.write(encodeFrameHeader(512 * 1024))
        hog.write(new Uint8Array(8 * 1024).fill(1))
        yield* rawEnded(hog)
        expect(closes(server, "frame-too-long")).toBe(1)
        expect(server.stats().bufferedBytes).toBeLessThan(HANDSHAKE_FRAME_LIMIT + 64 * 1024)
        // A whole handshake frame just over the limit is refused too.
        const big = yield* rawConnect(port)
        big.writeFrame(encodeVersion())
        big.writeFrame(new Uint8Array(HANDSHAKE_FRAME_LIMIT + 1).fill(7))
        yield* rawEnded(big)
        expect(closes(server, "frame-too-long")).toBe(2)
      })))

  it.live("a wrong version, or a version frame of the wrong size, is refused", () =>
    withFlowingTunnel({}, (server, port) =>
      Effect.gen(function*() {
        const wrong = yield* rawConnect(port)
        wrong.writeFrame(encodeVersion(1))
        yield* rawEnded(wrong)
        const long = yield* rawConnect(port)
        long.writeFrame(new Uint8Array(5))
        yield* rawEnded(long)
        expect(closes(server, "version-mismatch")).toBe(2)
      })))

  it.live("a handshake signed with another key than the one it claims is refused", () =>
    withFlowingTunnel({}, (server, port, relayKey) =>
      Effect.gen(function*() {
        const victim = makeIdentity()
        const forger = yield* rawConnect(port)
        const outcome = yield* Effect.promise(() =>
          forger.handshake(relayKey, victim, { signingSeed: makeIdentity().seed })
        )
        // The forger's own machine accepts the relay's proof; it is the relay that refuses the forger's.
        expect(["authenticated", "closed"]).toContain(outcome)
        yield* rawEnded(forger)
        expect(closes(server, "handshake-failed")).toBe(1)
        expect(metricValue(server.metrics.render(), `offset_relay_handshake_failures_total{reason="BadSignature"}`))
          .toBe(1)
        expect(server.stats().core.listeners).toBe(1)
      })))

  it.live("garbage after the handshake (random bytes as a transport frame) is a protocol violation", () =>
    withFlowingTunnel({}, (server, port, relayKey) =>
      Effect.gen(function*() {
        hostileViolations.set(server, 2)
        const garbage = yield* rawConnect(port)
        expect(yield* Effect.promise(() => garbage.handshake(relayKey, makeIdentity()))).toBe("authenticated")
        garbage.writeFrame(crypto.getRandomValues(new Uint8Array(200)))
        yield* rawEnded(garbage)
        expect(closes(server, "protocol-violation")).toBe(1)
        expect(metricValue(server.metrics.render(), `offset_relay_handshake_failures_total{reason="DecryptFailed"}`))
          .toBe(0) // after the handshake it is not a handshake failure

        // Well-encrypted bytes that are not an InitConnection are the core's protocol violation.
        const nonsense = yield* rawConnect(port)
        expect(yield* Effect.promise(() => nonsense.handshake(relayKey, makeIdentity()))).toBe("authenticated")
        nonsense.sendMessage(new Uint8Array([1, 2, 3, 4, 5]))
        yield* rawEnded(nonsense)
        expect(closes(server, "protocol-violation")).toBe(2)
      })))

  it.live("a connection that never sends InitConnection is closed by the init timeout", () =>
    withFlowingTunnel({}, (server, port, relayKey) =>
      Effect.gen(function*() {
        const mute = yield* rawConnect(port)
        expect(yield* Effect.promise(() => mute.handshake(relayKey, makeIdentity()))).toBe("authenticated")
        const started = Date.now()
        yield* rawEnded(mute)
        // 4 ticks: between 3 and 4 tick periods after the handshake.
        expect(Date.now() - started).toBeGreaterThanOrEqual(3 * TEST_TICK_MS - 20)
        expect(closes(server, "timeout-init")).toBe(1)
      })))

  it.live("a handshake that stops halfway is closed by the handshake timeout", () =>
    withFlowingTunnel({}, (server, port, relayKey) =>
      Effect.gen(function*() {
        const half = yield* rawConnect(port)
        expect(yield* Effect.promise(() => half.handshake(relayKey, makeIdentity(), { stopAfterRandNonce: true })))
          .toBe("stopped")
        expect(server.stats().handshaking).toBe(1)
        yield* rawEnded(half)
        expect(closes(server, "timeout-handshake")).toBe(1)
        expect(server.stats().handshaking).toBe(0)
      })))

  it.live("a client that goes silent after the handshake is closed after keepaliveTicks (keepalive-timeout)", () =>
    withFlowingTunnel({}, (server, port, relayKey) =>
      Effect.gen(function*() {
        const silent = yield* rawConnect(port)
        expect(yield* Effect.promise(() => silent.handshake(relayKey, makeIdentity()))).toBe("authenticated")
        silent.sendInit({ _tag: "Listen" })
        yield* waitUntil("the silent listener", () => server.stats().core.listeners === 2)
        const started = Date.now()
        yield* rawEnded(silent, 10_000)
        // 32 ticks of silence; the relay pinged it after 16.
        expect(Date.now() - started).toBeGreaterThanOrEqual(31 * TEST_TICK_MS - 50)
        expect(closes(server, "keepalive-timeout")).toBe(1)
        expect(server.stats().core.listeners).toBe(1)
      })))

  it.live("more unidentified connections from one address than allowed are refused at once; other addresses are not affected", () =>
    withFlowingTunnel({ core: { maxUnidentifiedPerPrefix: 4 } }, (server, port) =>
      Effect.gen(function*() {
        const allowed = yield* Effect.all(Array.from({ length: 4 }, () => rawConnect(port, "127.0.0.2")))
        yield* waitUntil("four admitted", () => server.stats().sockets === 7)
        const refused = yield* rawConnect(port, "127.0.0.2")
        yield* rawEnded(refused)
        expect(overLimit(server, "max-unidentified-per-prefix")).toBe(1)
        expect(closes(server, "over-limit")).toBe(1)
        expect(allowed.every((c) => !c.closed)).toBe(true)
        // Another address is admitted meanwhile.
        const other = yield* rawConnect(port, "127.0.0.3")
        yield* waitUntil("the other address admitted", () => server.stats().sockets === 8)
        expect(other.closed).toBe(false)
        for (const c of [...allowed, other]) c.destroy()
        yield* waitUntil("the admitted ones to go", () => server.stats().sockets === 3)
      })))

  it.live("more concurrent handshakes than allowed are refused, even when they arrive in one burst", () =>
    withFlowingTunnel({ core: { maxHandshakes: 3, helloTimeoutTicks: 8 } }, (server, port) =>
      Effect.gen(function*() {
        // Ten dials at once from one address that never start their handshake:
        // the address cannot evict its own, so seven are refused.
        const burst = yield* Effect.all(Array.from({ length: 10 }, () => rawConnect(port)), { concurrency: "unbounded" })
        yield* waitUntil("seven refusals", () => burst.filter((c) => c.closed).length === 7, 2000)
        expect(overLimit(server, "max-handshakes")).toBe(7)
        expect(server.stats().handshaking).toBe(3)
        // The three admitted ones are closed by the handshake timeout (8 ticks),
        // which counts as a handshake failure.
        yield* Effect.all(burst.map((c) => rawEnded(c)))
        expect(closes(server, "timeout-handshake")).toBe(3)
        expect(server.stats().handshaking).toBe(0)
        expect(server.metrics.render()).toContain('offset_relay_handshake_failures_total{reason="HandshakeTimeout"} 3')
      })))

  it.live("a connection that sends no version and ExchangeRandNonce within the hello deadline is closed", () =>
    withFlowingTunnel({ core: { helloTimeoutTicks: 2, handshakeTimeoutTicks: 40 } }, (server, port) =>
      Effect.gen(function*() {
        const silent = yield* rawConnect(port, "127.0.0.2")
        const started = Date.now()
        yield* rawEnded(silent, 5000)
        // Two ticks of 50 ms, far before the 40-tick handshake deadline.
        expect(Date.now() - started).toBeLessThan(20 * TEST_TICK_MS)
        expect(closes(server, "timeout-handshake")).toBe(1)
      })))

  it.live("more connections in total than allowed are refused at once", () =>
    withFlowingTunnel({ core: { maxConnections: 5 } }, (server, port) =>
      Effect.gen(function*() {
        const two = yield* Effect.all([rawConnect(port), rawConnect(port)])
        yield* waitUntil("two admitted", () => server.stats().sockets === 5)
        const refused = yield* rawConnect(port)
        yield* rawEnded(refused)
        expect(overLimit(server, "max-connections")).toBe(1)
        for (const c of two) c.destroy()
      })))

  it.live("a listener sending anything but RejectConnection is closed; its half tunnels with it", () =>
    withFlowingTunnel({}, (server, port, relayKey) =>
      Effect.gen(function*() {
        hostileViolations.set(server, 1)
        const rogue = yield* rawConnect(port)
        const rogueId = makeIdentity()
        expect(yield* Effect.promise(() => rogue.handshake(relayKey, rogueId))).toBe("authenticated")
        rogue.sendInit({ _tag: "Listen" })
        yield* waitUntil("the rogue listener", () => server.stats().core.listeners === 2)
        rogue.sendMessage(new Uint8Array(64).fill(0xff))
        yield* rawEnded(rogue)
        expect(closes(server, "protocol-violation")).toBe(1)
      })))

  it.live("a client that never closes after the relay closed it holds its socket no longer than closeLingerMs", () =>
    withFlowingTunnel({ closeLingerMs: 300 }, (server, port, relayKey) =>
      Effect.gen(function*() {
        const squatterId = makeIdentity()
        const squatter = yield* rawConnect(port, undefined, true)
        expect(yield* Effect.promise(() => squatter.handshake(relayKey, squatterId))).toBe("authenticated")
        squatter.sendInit({ _tag: "Listen" })
        yield* waitUntil("the squatter listening", () => server.stats().core.listeners === 2)
        const sockets = server.stats().sockets
        // A newer listen replaces it: a graceful close, so the relay sends
        // FIN and waits for the squatter's, which never comes.
        const newer = yield* openClient(endpointOf(server, relayKey), squatterId, { _tag: "Listen" })
        yield* waitUntil("the replacement", () => closes(server, "replaced") === 1)
        const started = Date.now()
        yield* waitUntil("the squatter's socket to go", () => server.stats().sockets === sockets)
        expect(Date.now() - started).toBeGreaterThanOrEqual(250)
        // The relay's end is gone for real: what the squatter sends now is
        // answered with a reset, and its next write fails.
        squatter.write(new Uint8Array(16))
        yield* Effect.sleep(100)
        squatter.write(new Uint8Array(16))
        const end = yield* rawEnded(squatter)
        expect(end.error).toMatch(/ECONNRESET|EPIPE/)
        yield* newer.close
      })))
})
