/**
 * Lifetimes and the connector's relay strategy: closing a listener, a
 * socket or a scope closes everything it opened (checked on the relay);
 * the Effect layers; a relay that accepts connections but never answers
 * costs the connector only the stagger delay, and an overall deadline is kept.
 * The Node API tests run on real sockets and the wall clock (the Node
 * wrapper lives on promises and Node streams, which virtual time cannot
 * drive); the Effect API tests run on the in-memory network and virtual time.
 */
import { afterEach, describe, expect, it } from "vitest"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Cause from "effect/Cause"
import * as Exit from "effect/Exit"
import * as Scope from "effect/Scope"
import { connectToPeer } from "../src/adapters/client/connector.ts"
import { connect, ConnectError, listen, type PeerDuplex } from "../src/adapters/client/index.ts"
import { type Listener, makeListener } from "../src/adapters/client/listener.ts"
import { makeRelayClient, RelayClient, RelayListener } from "../src/adapters/client/effect.ts"
import { Crypto } from "../src/adapters/crypto.ts"
import type { RelayServer } from "../src/adapters/relay-server.ts"
import { makeMemoryNetwork } from "../src/adapters/transport-memory.ts"
import { bytesToHex } from "../src/core/keys.ts"
import { formatRelayAddress } from "../src/core/relay-address.ts"
import { newIdentity, startRelay, TICK_MS, type TestRelay, waitFor } from "./support/client-harness.ts"
import { echo, exchange, makeSimWorld } from "./sim/world.ts"

const cleanups: Array<() => Promise<void>> = []
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup()
})

const relayFor = async (): Promise<TestRelay> => {
  const relay = await startRelay()
  cleanups.push(relay.stop)
  return relay
}

const idle = (relay: TestRelay) => idleServer(relay.server())

const idleServer = (server: RelayServer) => {
  const stats = server.stats()
  return stats.core.listeners === 0 && stats.core.tunnels === 0 && stats.core.pendingHalfTunnels === 0 &&
    stats.sockets === 0
}

describe("closing", () => {
  it("listener.close() closes its listen channels and every tunnel it accepted", async () => {
    const relay = await relayFor()
    const server = newIdentity()
    const client = newIdentity()
    const listener = listen({ identity: server, relays: [relay.address], allow: [client.publicKey], tickMs: TICK_MS })
    const accepted: Array<PeerDuplex> = []
    listener.on("connection", (socket: PeerDuplex) => {
      socket.on("error", () => {})
      accepted.push(socket)
    })
    await waitFor(() => listener.status()[0]?.state === "listening", 5000, "listening")
    const socket = await connect({ identity: client, relays: [relay.address], to: server.publicKey, tickMs: TICK_MS })
    const failed = new Promise<Error>((resolve) => socket.once("error", resolve))
    // Like a TCP socket, the peer's going away is seen by reading.
    socket.resume()
    await waitFor(() => accepted.length === 1 && relay.server().stats().core.tunnels === 1, 5000, "the tunnel")
    await listener.close()
    expect(accepted[0]!.destroyed).toBe(true)
    // The connector learns that its peer went away mid-stream: an error, not a clean end.
    expect((await failed).message).toBe("the peer aborted the stream")
    await waitFor(() => idle(relay), 5000, "the relay to hold nothing")
  })

  it("destroying a connected socket closes its tunnel on the relay", async () => {
    const relay = await relayFor()
    const server = newIdentity()
    const client = newIdentity()
    const listener = listen({ identity: server, relays: [relay.address], allow: [client.publicKey], tickMs: TICK_MS })
    cleanups.push(() => listener.close())
    listener.on("connection", (socket: PeerDuplex) => socket.on("error", () => {}).resume())
    await waitFor(() => listener.status()[0]?.state === "listening", 5000, "listening")
    const socket = await connect({ identity: client, relays: [relay.address], to: server.publicKey, tickMs: TICK_MS })
    await waitFor(() => relay.server().stats().core.tunnels === 1, 5000, "the tunnel")
    socket.destroy()
    await waitFor(() => relay.server().stats().core.tunnels === 0, 5000, "the tunnel to close")
    expect(relay.server().stats().core.listeners).toBe(1)
  })

  it("aborting a pending connect rejects with the signal's reason and drops its half tunnel", async () => {
    const relay = await relayFor()
    const server = newIdentity()
    // The listener never decides, so the connect stays a pending half tunnel.
    const listener = listen({ identity: server, relays: [relay.address], allow: () => new Promise(() => {}), tickMs: TICK_MS })
    cleanups.push(() => listener.close())
    await waitFor(() => listener.status()[0]?.state === "listening", 5000, "listening")
    const controller = new AbortController()
    const pending = connect({
      identity: newIdentity(),
      relays: [relay.address],
      to: server.publicKey,
      tickMs: TICK_MS,
      signal: controller.signal
    }).then(() => undefined, (e: unknown) => e)
    await waitFor(() => relay.server().stats().core.pendingHalfTunnels === 1, 5000, "the half tunnel")
    const reason = new Error("the user gave up")
    controller.abort(reason)
    expect(await pending).toBe(reason)
    await waitFor(() => relay.server().stats().core.pendingHalfTunnels === 0, 5000, "the half tunnel to close")
  })

  // On the in-memory network and virtual time (test/sim/world.ts).
  it("the Effect layers: a listener for the life of a layer, streams closed with their scope", () => {
    const world = makeSimWorld(29)
    const relay = world.relay("relay")
    const server = world.identity()
    const client = makeRelayClient(world.settings("client", world.identity(), TICK_MS))
    const layer = RelayListener.layer({ relays: [relay.address], allow: [client.publicKey] }).pipe(
      Layer.provideMerge(RelayClient.layer({ identity: server, tickMs: TICK_MS, transport: world.net.host("listener") })),
      Layer.provide(Layer.succeed(Crypto, world.crypto))
    )
    const program = Effect.gen(function*() {
      const listener = yield* RelayListener
      const self = yield* RelayClient
      expect(bytesToHex(listener.publicKey)).toBe(bytesToHex(self.publicKey))
      while (listener.status()[0]?.state !== "listening") yield* Effect.sleep(20)
      const stream = yield* client.connect(listener.publicKey, [relay.address])
      const accepted = yield* listener.accept
      yield* stream.write(new TextEncoder().encode("ping"))
      expect(Option.map(yield* accepted.read, (b) => new TextDecoder().decode(b))).toEqual(Option.some("ping"))
      expect(relay.server()!.stats().core.tunnels).toBe(1)
      // The scope ends here with the stream and the listener still open.
    })
    const exit = world.await(program.pipe(Effect.provide(layer)), 10_000)
    if (!Exit.isSuccess(exit)) throw new Error(`the program failed: ${String(exit.cause)}`)
    // Within a second, well before the relay's keepalive timeout would drop
    // a channel that was left open (that would hide a leak).
    world.runUntil(() => idleServer(relay.server()!), 1000, "the relay to hold nothing")
  })
})

describe("connector relay strategy", () => {
  // On the in-memory network and virtual time (test/sim/world.ts): a hung
  // relay is a host that accepts and never answers, and the stagger and the
  // deadline are measured on the virtual clock, exactly, whatever the machine.
  it("a relay that never answers costs only the stagger delay: the next relay is raced", () => {
    const world = makeSimWorld(31)
    const hole = world.blackHole("hole")
    const relay = world.relay("relay")
    const server = world.identity()
    const client = world.identity()
    let listener: Listener | undefined
    world.spawn(
      Effect.gen(function*() {
        listener = yield* makeListener(world.settings("listener", server, TICK_MS), {
          relays: [relay.address],
          allow: [client.publicKey]
        })
        while (true) {
          const stream = yield* listener.accept
          yield* Effect.forkScoped(Effect.ignore(echo(stream)))
        }
      })
    )
    world.runUntil(() => listener?.status()[0]?.state === "listening", 5000, "listening")
    const started = world.rt.now
    let connectedAt = 0
    const exit = world.await(
      Effect.gen(function*() {
        const stream = yield* connectToPeer(world.settings("client", client, TICK_MS), server.publicKey, [hole, relay.address], {
          staggerMs: 300,
          timeoutMs: 10_000
        })
        connectedAt = world.rt.now
        const echoed = yield* exchange(stream, new TextEncoder().encode("done"))
        return { relay: stream.relay, echoed: new TextDecoder().decode(echoed) }
      }),
      20_000
    )
    if (!Exit.isSuccess(exit)) throw new Error(`connect failed: ${String(exit.cause)}`)
    expect(exit.value.relay).toBe(formatRelayAddress(relay.address))
    // The second relay was started after the stagger delay, not after the 10 s deadline.
    expect(connectedAt - started).toBeGreaterThanOrEqual(300)
    expect(connectedAt - started).toBeLessThan(1000)
    expect(exit.value.echoed).toBe("done")
  })

  it("keeps the overall deadline and says which relays timed out", () => {
    const world = makeSimWorld(37)
    const holes = [world.blackHole("hole-a"), world.blackHole("hole-b")]
    const started = world.rt.now
    const exit = world.await(
      connectToPeer(
        { ...world.settings("client", world.identity(), TICK_MS), handshakeTimeoutMs: 10_000 },
        world.identity().publicKey,
        holes,
        { staggerMs: 200, timeoutMs: 800 }
      ),
      20_000
    )
    const took = world.rt.now - started
    if (!Exit.isFailure(exit)) throw new Error("the connect through two hung relays succeeded")
    const failure = Cause.squash(exit.cause)
    expect(failure).toBeInstanceOf(ConnectError)
    const error = failure as ConnectError
    expect(error.reason).toBe("Timeout")
    expect(error.attempts.map((a) => a.outcome._tag)).toEqual(["TimedOut", "TimedOut"])
    expect(error.message).toContain("800 ms")
    // The deadline, not the 10 s handshake bound, ended it (closing the attempts takes a little virtual time).
    expect(took).toBeGreaterThanOrEqual(800)
    expect(took).toBeLessThan(1500)
  })

  // The Node API only passes the options on; the connector's timing is
  // checked above. Real time, but no real sockets and nothing timed: the
  // error itself shows both options arrived.
  it("the Node API's connect passes staggerMs and timeoutMs on", async () => {
    const net = makeMemoryNetwork()
    const scope = Scope.makeUnsafe()
    cleanups.push(() => Effect.runPromise(Scope.close(scope, Exit.void)))
    const holes = await Promise.all(["hole-a", "hole-b"].map(async (host) => {
      await Effect.runPromise(net.host(host).listen({ host, port: 4747 }, () => {}).pipe(Scope.provide(scope)))
      return formatRelayAddress({ publicKey: newIdentity().publicKey, host, port: 4747 })
    }))
    const error = await connect({
      identity: newIdentity(),
      relays: holes,
      to: newIdentity().publicKey,
      tickMs: TICK_MS,
      staggerMs: 50,
      timeoutMs: 300,
      transport: net.host("client")
    }).then(() => undefined, (e: unknown) => e)
    expect(error).toBeInstanceOf(ConnectError)
    const failure = error as ConnectError
    expect(failure.reason).toBe("Timeout")
    // Both were tried (the default 1 s stagger would have left the second "not tried").
    expect(failure.attempts.map((a) => a.outcome._tag)).toEqual(["TimedOut", "TimedOut"])
    expect(failure.message).toContain("300 ms")
  })
})
