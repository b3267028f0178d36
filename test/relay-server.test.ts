/**
 * The relay server on real sockets (127.0.0.1, ephemeral ports): every flow
 * of the seed's diagrams and PROTOCOL.md's relay rules, with real version
 * prefixes and secure-channel handshakes on every hop. Each test ends by
 * closing its clients and checking that the server holds nothing (no socket,
 * no core state, no buffered byte). Waits are on conditions the relay
 * reports, never on a sleep; the half-tunnel timeout, a matter of time and
 * not of sockets, runs on the in-memory network and virtual time.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as References from "effect/References"
import * as Scope from "effect/Scope"
import { Crypto, layerNode } from "../src/adapters/crypto.ts"
import { establishChannel, tunnelFrameLink, type MessageChannel } from "../src/adapters/message-channel.ts"
import type { RelayServer } from "../src/adapters/relay-server.ts"
import { idleRelayStats } from "../src/core/relay-core.ts"
import {
  decodeIncomingConnection,
  encodeRejectConnection
} from "../src/core/messages.ts"
import {
  closes,
  expectIdle as harnessExpectIdle,
  metricValue,
  makeIdentity,
  RawClient,
  openClient,
  patternBytes,
  receiveBytes,
  sendChunked,
  sha256,
  startRelay,
  waitUntil,
  type TestClient
} from "./support/relay-harness.ts"
import { makeSimWorld } from "./sim/world.ts"

const MiB = 1024 * 1024

/** Runs a live test with node crypto and quiet logs. */
const live = <A, E>(effect: Effect.Effect<A, E, Scope.Scope | Crypto>) =>
  effect.pipe(Effect.provide(layerNode), Effect.provideService(References.MinimumLogLevel, process.env.RELAY_TEST_LOG === "info" ? "Info" : "Warn"))

/** The connector key announced by the next IncomingConnection on `listen`. */
const incomingKey = (listen: MessageChannel) =>
  Effect.gen(function*() {
    const decoded = decodeIncomingConnection(yield* listen.receive)
    if (decoded._tag === "Err") return yield* Effect.die(new Error(decoded.error.message))
    return decoded.value.publicKey
  })

/**
 * Fails the test unless `channel` ends within `timeoutMs` with a clean close
 * (the relay's FIN, not a reset: a reset can lose data the client had not read).
 */
const expectEnded = (channel: MessageChannel, timeoutMs = 5000) =>
  Effect.gen(function*() {
    const exit = yield* Effect.exit(channel.receive.pipe(Effect.timeout(timeoutMs)))
    expect(Exit.isFailure(exit)).toBe(true)
    const error = yield* channel.ended.pipe(Effect.timeout(timeoutMs), Effect.orDie)
    expect(error.reason).toBe("Closed")
  })

/** Closes every client, then checks the relay holds nothing (harness) and its core counts are all zero. */
const expectIdle = (server: RelayServer, clients: ReadonlyArray<TestClient>) =>
  Effect.gen(function*() {
    yield* harnessExpectIdle(server, clients)
    expect(server.stats().core).toEqual(idleRelayStats)
  })

/**
 * Opens a listen channel for an identity not listening yet, and waits until
 * the relay has registered it, so a connect that follows finds it (no sleep
 * that a busy machine could outrun).
 */
const openListen = (server: RelayServer, endpoint: Parameters<typeof openClient>[0], identity: ReturnType<typeof makeIdentity>) =>
  Effect.gen(function*() {
    const before = server.stats().core.listeners
    const listen = yield* openClient(endpoint, identity, { _tag: "Listen" })
    yield* waitUntil("the listen to be registered", () => server.stats().core.listeners > before)
    return listen
  })

/** listen + connect + IncomingConnection + accept: a tunnel between two fresh identities. */
const makeTunnel = (server: RelayServer, endpoint: Parameters<typeof openClient>[0]) =>
  Effect.gen(function*() {
    const listenerId = makeIdentity()
    const connectorId = makeIdentity()
    const listen = yield* openListen(server, endpoint, listenerId)
    const connect = yield* openClient(endpoint, connectorId, { _tag: "Connect", publicKey: listenerId.publicKey })
    const key = yield* incomingKey(listen.channel)
    expect(Buffer.from(key).equals(Buffer.from(connectorId.publicKey))).toBe(true)
    const tunnels = server.stats().core.tunnels
    const accept = yield* openClient(endpoint, listenerId, { _tag: "Accept", publicKey: key })
    // The accept's InitConnection is sent; the tunnel exists once the relay has read it.
    yield* waitUntil("the tunnel", () => server.stats().core.tunnels === tunnels + 1)
    return { listen, connect, accept }
  })

describe("relay server on real sockets", () => {
  it.live("connect → IncomingConnection → accept: 1 MiB each way arrives intact", () =>
    live(Effect.gen(function*() {
      const { server, endpoint } = yield* startRelay()
      const { listen, connect, accept } = yield* makeTunnel(server, endpoint)
      expect(server.stats().core.tunnels).toBe(1)
      const up = patternBytes(MiB, 1)
      const down = patternBytes(MiB, 2)
      const [upHash, downHash] = yield* Effect.all([
        receiveBytes(accept.channel, MiB),
        receiveBytes(connect.channel, MiB),
        sendChunked(connect.channel, up, 16 * 1024),
        sendChunked(accept.channel, down, 7000)
      ], { concurrency: "unbounded" })
      expect(upHash).toBe(sha256(up))
      expect(downHash).toBe(sha256(down))
      expect(server.stats().bytesRelayed).toBe(2 * MiB)
      yield* expectIdle(server, [connect, accept, listen])
      expect(closes(server, "peer-closed")).toBeGreaterThanOrEqual(1)
    })))

  it.live("an end-to-end secure channel runs inside the tunnel; the relay only sees ciphertext", () =>
    live(Effect.gen(function*() {
      const crypto = yield* Crypto
      const { server, endpoint } = yield* startRelay()
      const { listen, connect, accept } = yield* makeTunnel(server, endpoint)
      // Each side expects the other's key, as PROTOCOL.md "End to end" says.
      const [connectorEnd, listenerEnd] = yield* Effect.all([
        establishChannel(tunnelFrameLink(connect.channel), {
          crypto,
          identity: connect.identity,
          expectedRemotePublicKey: listen.identity.publicKey,
          handshakeTimeoutMs: 5000
        }),
        establishChannel(tunnelFrameLink(accept.channel), {
          crypto,
          identity: accept.identity,
          expectedRemotePublicKey: connect.identity.publicKey,
          handshakeTimeoutMs: 5000
        })
      ], { concurrency: 2 })
      const secret = patternBytes(256 * 1024, 7)
      const [hash] = yield* Effect.all([
        receiveBytes(listenerEnd, secret.length),
        sendChunked(connectorEnd, secret, 10_000)
      ], { concurrency: 2 })
      expect(hash).toBe(sha256(secret))
      // Ciphertext, padding and tags: more bytes crossed the relay than the plaintext.
      expect(server.stats().bytesRelayed).toBeGreaterThan(secret.length)
      yield* connectorEnd.close
      yield* listenerEnd.close
      yield* expectIdle(server, [connect, accept, listen])
    })))

  it.live("connect → RejectConnection on the listen channel → the connector is closed", () =>
    live(Effect.gen(function*() {
      const { server, endpoint } = yield* startRelay()
      const listenerId = makeIdentity()
      const listen = yield* openListen(server, endpoint, listenerId)
      const connect = yield* openClient(endpoint, makeIdentity(), { _tag: "Connect", publicKey: listenerId.publicKey })
      const key = yield* incomingKey(listen.channel)
      yield* listen.channel.send(encodeRejectConnection({ publicKey: key }))
      yield* expectEnded(connect.channel)
      expect(closes(server, "rejected")).toBe(1)
      // The listen channel stays up after a reject.
      expect(server.stats().core.listeners).toBe(1)
      yield* expectIdle(server, [connect, listen])
    })))

  it.live("connect to a key nobody listens as → closed", () =>
    live(Effect.gen(function*() {
      const { server, endpoint } = yield* startRelay()
      const connect = yield* openClient(endpoint, makeIdentity(), { _tag: "Connect", publicKey: makeIdentity().publicKey })
      yield* expectEnded(connect.channel)
      expect(closes(server, "no-such-listener")).toBe(1)
      yield* expectIdle(server, [connect])
    })))

  it.live("accept without a pending half tunnel → closed", () =>
    live(Effect.gen(function*() {
      const { server, endpoint } = yield* startRelay()
      const listenerId = makeIdentity()
      const listen = yield* openClient(endpoint, listenerId, { _tag: "Listen" })
      const accept = yield* openClient(endpoint, listenerId, { _tag: "Accept", publicKey: makeIdentity().publicKey })
      yield* expectEnded(accept.channel)
      expect(closes(server, "no-pending")).toBe(1)
      yield* expectIdle(server, [accept, listen])
    })))

  // On the in-memory network and virtual time (test/sim/world.ts): the
  // timeout is the point, not the sockets, and virtual time measures it
  // exactly (the world's relay ticks every second: 32 s here, in no wall time).
  it("a half tunnel not accepted in halfTunnelTicks is closed", () => {
    const world = makeSimWorld(53)
    const relay = world.relay("relay")
    const server = () => relay.server()!
    let started = 0
    let ended = 0
    const exit = world.await(
      Effect.gen(function*() {
        const listenerId = makeIdentity(world.crypto)
        const listen = yield* openClient(relay.address, listenerId, { _tag: "Listen" }, { transport: world.net.host("listener"), tickMs: 1000 })
        yield* waitUntil("the listen to be registered", () => server().stats().core.listeners === 1)
        started = world.rt.now
        const connect = yield* openClient(relay.address, makeIdentity(world.crypto), { _tag: "Connect", publicKey: listenerId.publicKey }, {
          transport: world.net.host("connector"),
          tickMs: 1000
        })
        yield* incomingKey(listen.channel)
        expect(server().stats().core.pendingHalfTunnels).toBe(1)
        yield* expectEnded(connect.channel, 60_000)
        ended = world.rt.now
        expect(closes(server(), "timeout-half-tunnel")).toBe(1)
        expect(server().stats().core.pendingHalfTunnels).toBe(0)
        yield* expectIdle(server(), [connect, listen])
      }).pipe(Effect.provideService(Crypto, world.crypto)),
      120_000
    )
    if (!Exit.isSuccess(exit)) throw new Error(`failed: ${String(exit.cause)}\n${world.log.slice(-20).join("\n")}`)
    // 32 ticks of 1 s: between 31 and 32 tick periods after the connect, plus the few ms of its handshake.
    expect(ended - started).toBeGreaterThanOrEqual(31 * 1000)
    expect(ended - started).toBeLessThan(32 * 1000 + 100)
  })

  it.live("the listener closes: its pending half tunnels close, its made tunnels go on", () =>
    live(Effect.gen(function*() {
      const { server, endpoint } = yield* startRelay()
      const { listen, connect, accept } = yield* makeTunnel(server, endpoint)
      const waiting = yield* openClient(endpoint, makeIdentity(), { _tag: "Connect", publicKey: listen.identity.publicKey })
      yield* incomingKey(listen.channel)
      yield* listen.close
      yield* expectEnded(waiting.channel)
      expect(closes(server, "listener-gone")).toBe(1)
      // The tunnel made before still relays both ways.
      yield* connect.channel.send(new Uint8Array([1, 2, 3]))
      expect([...(yield* accept.channel.receive)]).toEqual([1, 2, 3])
      yield* accept.channel.send(new Uint8Array([4]))
      expect([...(yield* connect.channel.receive)]).toEqual([4])
      expect(server.stats().core.tunnels).toBe(1)
      yield* expectIdle(server, [waiting, connect, accept])
    })))

  it.live("a newer listen replaces the older one, which is closed", () =>
    live(Effect.gen(function*() {
      const { server, endpoint } = yield* startRelay()
      const listenerId = makeIdentity()
      const older = yield* openListen(server, endpoint, listenerId)
      const newer = yield* openClient(endpoint, listenerId, { _tag: "Listen" })
      yield* expectEnded(older.channel)
      expect(closes(server, "replaced")).toBe(1)
      expect(metricValue(server.metrics.render(), "offset_relay_listener_replacements_total")).toBe(1)
      // Connects now reach the newer listen channel.
      const connectorId = makeIdentity()
      const connect = yield* openClient(endpoint, connectorId, { _tag: "Connect", publicKey: listenerId.publicKey })
      const key = yield* incomingKey(newer.channel)
      expect(Buffer.from(key).equals(Buffer.from(connectorId.publicKey))).toBe(true)
      yield* expectIdle(server, [connect, newer, older])
    })))

  it.live("messages a connector sends before the accept are delivered after it, in order", () =>
    live(Effect.gen(function*() {
      const { server, endpoint } = yield* startRelay()
      const listenerId = makeIdentity()
      const connectorId = makeIdentity()
      const listen = yield* openListen(server, endpoint, listenerId)
      const connect = yield* openClient(endpoint, connectorId, { _tag: "Connect", publicKey: listenerId.publicKey })
      // Different sizes, so a merge or split of messages would show.
      const early = Array.from({ length: 20 }, (_, i) => patternBytes(1 + i * 97, i + 10))
      for (const m of early) yield* connect.channel.send(m)
      yield* incomingKey(listen.channel)
      // The messages are now held by the relay, not in flight (each sealed, so larger than its plaintext).
      const earlyBytes = early.reduce((n, m) => n + m.length, 0)
      yield* waitUntil("the relay to hold the early messages", () => server.stats().core.heldBytes >= earlyBytes)
      expect(server.stats().core.pendingHalfTunnels).toBe(1)
      const accept = yield* openClient(endpoint, listenerId, { _tag: "Accept", publicKey: connectorId.publicKey })
      const late = patternBytes(500, 99)
      yield* connect.channel.send(late)
      for (const m of [...early, late]) {
        const got = yield* accept.channel.receive
        expect(sha256(got)).toBe(sha256(m))
      }
      yield* expectIdle(server, [connect, accept, listen])
    })))

  it.live("a second connect to the same listener while one is pending is closed as duplicate", () =>
    live(Effect.gen(function*() {
      const { server, endpoint } = yield* startRelay()
      const listenerId = makeIdentity()
      const connectorId = makeIdentity()
      const listen = yield* openListen(server, endpoint, listenerId)
      const first = yield* openClient(endpoint, connectorId, { _tag: "Connect", publicKey: listenerId.publicKey })
      yield* incomingKey(listen.channel)
      const second = yield* openClient(endpoint, connectorId, { _tag: "Connect", publicKey: listenerId.publicKey })
      yield* expectEnded(second.channel)
      expect(closes(server, "duplicate")).toBe(1)
      expect(server.stats().core.pendingHalfTunnels).toBe(1)
      yield* expectIdle(server, [first, second, listen])
    })))

  it.live("(fix) a pending connect channel that closes is dropped at once; its accept gets no-pending", () =>
    live(Effect.gen(function*() {
      const { server, endpoint } = yield* startRelay()
      const listenerId = makeIdentity()
      const connectorId = makeIdentity()
      const listen = yield* openListen(server, endpoint, listenerId)
      const connect = yield* openClient(endpoint, connectorId, { _tag: "Connect", publicKey: listenerId.publicKey })
      yield* incomingKey(listen.channel)
      yield* connect.close
      yield* waitUntil("the half tunnel to go", () => server.stats().core.pendingHalfTunnels === 0)
      const accept = yield* openClient(endpoint, listenerId, { _tag: "Accept", publicKey: connectorId.publicKey })
      yield* expectEnded(accept.channel)
      expect(closes(server, "no-pending")).toBe(1)
      yield* expectIdle(server, [accept, listen])
    })))

  it.live("a tunnel side that sends and closes at once: the other side gets every byte, then is closed", () =>
    live(Effect.gen(function*() {
      const { server, endpoint } = yield* startRelay()
      const { listen, connect, accept } = yield* makeTunnel(server, endpoint)
      const data = patternBytes(MiB, 3)
      yield* sendChunked(connect.channel, data, 32 * 1024)
      yield* connect.close
      const hash = yield* receiveBytes(accept.channel, MiB)
      expect(hash).toBe(sha256(data))
      yield* expectEnded(accept.channel)
      expect(closes(server, "peer-closed")).toBe(1)
      yield* expectIdle(server, [accept, listen])
    })))

  it.live("closing the server's scope releases every socket and fiber", () =>
    live(Effect.gen(function*() {
      // Node's own count of TCP handles: the relay's sockets and listening socket, and the clients'.
      const tcpHandles = () =>
        process.getActiveResourcesInfo().filter((r) => r === "TCPSocketWrap" || r === "TCPServerWrap").length
      const handlesBefore = tcpHandles()
      const scope = yield* Scope.make()
      const { server, endpoint } = yield* Scope.provide(startRelay(), scope)
      const clients = yield* Scope.provide(makeTunnel(server, endpoint), scope)
      const pending = yield* Scope.provide(
        openClient(endpoint, makeIdentity(), { _tag: "Connect", publicKey: clients.listen.identity.publicKey }),
        scope
      )
      yield* incomingKey(clients.listen.channel)
      expect(server.stats().sockets).toBe(4)
      yield* Scope.close(scope, Exit.void).pipe(Effect.timeout(5000))
      expect(server.stats().sockets).toBe(0)
      expect(server.stats().core.connections).toBe(0)
      expect(server.stats().handshaking).toBe(0)
      // Destroyed handles leave Node's list on the next turn of the event loop.
      yield* waitUntil("every TCP handle to be released", () => tcpHandles() === handlesBefore, 2000)
      void pending
    })))

  it.live("both ends busy: one side sends its last MiB and closes while the other keeps sending; every byte still arrives", () =>
    live(Effect.gen(function*() {
      const { server, endpoint } = yield* startRelay()
      const { listen, connect, accept } = yield* makeTunnel(server, endpoint)
      // The accept side keeps writing to the relay, so its socket has unread
      // bytes when the relay closes it: a reset then could cut the data the
      // relay wrote to it just before.
      let chatting = true
      const chatter = yield* Effect.forkScoped(Effect.gen(function*() {
        let i = 0
        while (chatting) {
          yield* Effect.exit(accept.channel.send(patternBytes(4096, i++)))
          yield* Effect.sleep(1)
        }
      }))
      const drainConnect = yield* Effect.forkScoped(Effect.forever(connect.channel.receive))
      const data = patternBytes(MiB, 5)
      const [hash] = yield* Effect.all([
        receiveBytes(accept.channel, MiB),
        Effect.andThen(sendChunked(connect.channel, data, 64 * 1024), connect.close)
      ], { concurrency: 2 })
      expect(hash).toBe(sha256(data))
      yield* expectEnded(accept.channel)
      // The connector left cleanly (EOF after its last byte), not with a reset.
      expect(closes(server, "client-closed")).toBe(1)
      chatting = false
      yield* Fiber.join(chatter)
      yield* Fiber.interrupt(drainConnect)
      expect(closes(server, "peer-closed")).toBe(1)
      yield* expectIdle(server, [accept, listen])
    })))

  it.live("a close racing an accept never leaves a socket, fiber or core entry behind", () =>
    live(Effect.gen(function*() {
      const { server, endpoint } = yield* startRelay()
      const listenerId = makeIdentity()
      const listen = yield* openClient(endpoint, listenerId, { _tag: "Listen" })
      yield* waitUntil("the listener", () => server.stats().core.listeners === 1)
      const leftovers: Array<TestClient> = []
      let spliced = 0
      for (let round = 0; round < 12; round++) {
        const connectorId = makeIdentity()
        const connect = yield* openClient(endpoint, connectorId, { _tag: "Connect", publicKey: listenerId.publicKey })
        yield* connect.channel.send(new Uint8Array([round]))
        yield* incomingKey(listen.channel)
        // The connector leaves while the accept is on its way: sometimes
        // before the relay reads the accept, sometimes after the splice.
        const [, accept] = yield* Effect.all([
          Effect.andThen(Effect.sleep(round % 4), connect.close),
          openClient(endpoint, listenerId, { _tag: "Accept", publicKey: connectorId.publicKey })
        ], { concurrency: 2 })
        const first = yield* Effect.exit(accept.channel.receive.pipe(Effect.timeout(5000)))
        if (Exit.isSuccess(first)) {
          spliced++
          expect([...first.value]).toEqual([round])
        }
        yield* expectEnded(accept.channel)
        leftovers.push(accept)
      }
      expect(closes(server, "no-pending") + closes(server, "peer-closed")).toBe(12)
      expect(closes(server, "peer-closed")).toBe(spliced)
      yield* expectIdle(server, [...leftovers, listen])
    })))

  it.live("graceful shutdown: new connections refused, listeners closed, a transfer in progress finishes", () =>
    live(Effect.gen(function*() {
      // The core's own drain limit (ticks) well past the 8 s given to shutdown, so drainMs decides.
      const { server, endpoint } = yield* startRelay({ core: { shutdownDrainTicks: 400 } })
      const { listen, connect, accept } = yield* makeTunnel(server, endpoint)
      const data = patternBytes(2 * MiB, 11)
      const receiving = yield* Effect.forkScoped(receiveBytes(accept.channel, data.length))
      let shutdown: Fiber.Fiber<void> | undefined
      const sending = yield* Effect.forkScoped(Effect.gen(function*() {
        yield* sendChunked(connect.channel, data.subarray(0, 512 * 1024), 16 * 1024)
        // Shutdown begins mid-transfer.
        shutdown = yield* Effect.forkScoped(server.shutdown(8000))
        yield* waitUntil("the drain", () => closes(server, "shutting-down") >= 1)
        yield* sendChunked(connect.channel, data.subarray(512 * 1024), 16 * 1024)
      }))
      yield* Fiber.join(sending)
      const started = Date.now()
      // The listen channel was closed; the tunnel was not.
      yield* expectEnded(listen.channel)
      expect(server.stats().core.tunnels).toBe(1)
      // A newcomer during the drain is refused.
      const refused = yield* Effect.exit(openClient(endpoint, makeIdentity(), { _tag: "Listen" }))
      expect(Exit.isFailure(refused)).toBe(true)
      // The sender is done and leaves; the receiver gets every byte, then the close.
      yield* connect.close
      expect(yield* Fiber.join(receiving)).toBe(sha256(data))
      yield* expectEnded(accept.channel)
      yield* accept.close
      yield* Fiber.join(shutdown!) // set before `sending` ended
      // It finished as soon as the tunnel drained, well before the 8 s deadline.
      expect(Date.now() - started).toBeLessThan(4000)
      expect(server.stats().sockets).toBe(0)
      expect(closes(server, "shutting-down")).toBe(2) // the listener and the newcomer
      expect(closes(server, "peer-closed")).toBe(1)
      expect(closes(server, "client-closed")).toBe(1)
      // Once shut down the port is closed: a dial is refused by the OS.
      const late = yield* Effect.exit(Effect.tryPromise(() => RawClient.connect(endpoint.port)))
      expect(Exit.isFailure(late)).toBe(true)
    })))

  it.live("graceful shutdown: a tunnel still open at the deadline is closed on both sides", () =>
    live(Effect.gen(function*() {
      const { server, endpoint } = yield* startRelay()
      const { listen, connect, accept } = yield* makeTunnel(server, endpoint)
      const data = patternBytes(100 * 1024, 12)
      yield* Effect.all([receiveBytes(accept.channel, data.length), sendChunked(connect.channel, data, 10_000)], {
        concurrency: 2
      })
      const started = Date.now()
      yield* server.shutdown(500)
      const elapsed = Date.now() - started
      expect(elapsed).toBeGreaterThanOrEqual(450)
      expect(elapsed).toBeLessThan(3000)
      yield* expectEnded(connect.channel)
      yield* expectEnded(accept.channel)
      // The listener at once, both tunnel sides at the deadline.
      expect(closes(server, "shutting-down")).toBe(3)
      expect(server.stats().sockets).toBe(0)
      void listen
    })))

  it.live("/metrics after the flows: every close counted once, under its reason", () =>
    live(Effect.gen(function*() {
      const { server, endpoint } = yield* startRelay()
      // A tunnel with 64 KiB each way, then both sides leave.
      const { listen, connect, accept } = yield* makeTunnel(server, endpoint)
      const data = patternBytes(64 * 1024, 21)
      yield* Effect.all([
        receiveBytes(accept.channel, data.length),
        receiveBytes(connect.channel, data.length),
        sendChunked(connect.channel, data, 8192),
        sendChunked(accept.channel, data, 8192)
      ], { concurrency: "unbounded" })
      yield* connect.close
      yield* expectEnded(accept.channel)
      // Rejected, no listener, nothing pending, replaced, duplicate.
      const rejectedConnect = yield* openClient(endpoint, makeIdentity(), { _tag: "Connect", publicKey: listen.identity.publicKey })
      yield* listen.channel.send(encodeRejectConnection({ publicKey: yield* incomingKey(listen.channel) }))
      yield* expectEnded(rejectedConnect.channel)
      const nobody = yield* openClient(endpoint, makeIdentity(), { _tag: "Connect", publicKey: makeIdentity().publicKey })
      yield* expectEnded(nobody.channel)
      const stray = yield* openClient(endpoint, listen.identity, { _tag: "Accept", publicKey: makeIdentity().publicKey })
      yield* expectEnded(stray.channel)
      const connectorId = makeIdentity()
      const first = yield* openClient(endpoint, connectorId, { _tag: "Connect", publicKey: listen.identity.publicKey })
      yield* incomingKey(listen.channel)
      const second = yield* openClient(endpoint, connectorId, { _tag: "Connect", publicKey: listen.identity.publicKey })
      yield* expectEnded(second.channel)
      const newer = yield* openClient(endpoint, listen.identity, { _tag: "Listen" })
      yield* expectEnded(listen.channel) // replaced
      yield* expectEnded(first.channel) // its half tunnel went with the replaced listener
      yield* expectIdle(server, [accept, rejectedConnect, nobody, stray, first, second, newer, listen])
      const text = server.metrics.render()
      yield* Effect.logWarning(`/metrics after the flows\n${text}`)
      const expected: Record<string, number> = {
        "client-closed": 2, // the tunnel's connector, and the newer listener at the end
        "peer-closed": 1,
        "rejected": 1,
        "no-such-listener": 1,
        "no-pending": 1,
        "duplicate": 1,
        "replaced": 1,
        "listener-gone": 1
      }
      for (const line of text.split("\n").filter((l) => l.startsWith("offset_relay_closes_total{"))) {
        const reason = /reason="([^"]+)"/.exec(line)![1]! // every closes line has a reason label
        expect({ reason, count: metricValue(text, `offset_relay_closes_total{reason="${reason}"}`) })
          .toEqual({ reason, count: expected[reason] ?? 0 })
      }
      expect(metricValue(text, "offset_relay_relayed_bytes_total")).toBe(2 * data.length)
      expect(metricValue(text, "offset_relay_connections_accepted_total")).toBe(9)
      // Every accepted connection closed exactly once.
      const closed = Object.values(expected).reduce((a, b) => a + b, 0)
      expect(closed).toBe(9)
      expect(metricValue(text, `offset_relay_connections{state="open"}`)).toBe(0)
      expect(metricValue(text, "offset_relay_buffered_bytes")).toBe(0)
      // The process gauges operators expect beside the relay's own.
      expect(metricValue(text, "process_resident_memory_bytes")).toBeGreaterThan(0)
      expect(metricValue(text, "nodejs_heap_used_bytes")).toBeGreaterThan(0)
      expect(metricValue(text, "process_open_fds")).toBeGreaterThan(0)
    })))
})
