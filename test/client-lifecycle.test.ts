/**
 * Lifetimes and the connector's relay strategy: closing a listener, a
 * socket or a scope closes everything it opened (checked on the relay);
 * the Effect layers; a relay that accepts TCP but never answers costs the
 * connector only the stagger delay, and an overall deadline is kept.
 */
import * as Net from "node:net"
import { afterEach, describe, expect, it } from "vitest"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as Option from "effect/Option"
import { connect, ConnectError, listen, type PeerDuplex } from "../src/adapters/client/index.ts"
import { makeRelayClient, RelayClient, RelayListener } from "../src/adapters/client/effect.ts"
// auto: node:crypto on Node (as before), noble where node:crypto lacks a primitive (Bun), so test:runtimes can run this file.
import { autoCryptoService, layerAuto as layerNode } from "../src/adapters/crypto.ts"
const nodeCryptoService = autoCryptoService()
import { bytesToHex } from "../src/core/keys.ts"
import { formatRelayAddress, parseRelayAddress } from "../src/core/relay-address.ts"
import { newIdentity, readAll, startRelay, TICK_MS, type TestRelay, waitFor } from "./support/client-harness.ts"

const cleanups: Array<() => Promise<void>> = []
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup()
})

const relayFor = async (): Promise<TestRelay> => {
  const relay = await startRelay()
  cleanups.push(relay.stop)
  return relay
}

const idle = (relay: TestRelay) => {
  const stats = relay.server().stats()
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

  it("the Effect layers: a listener for the life of a layer, streams closed with their scope", async () => {
    const relay = await relayFor()
    const parsed = parseRelayAddress(relay.address)
    if (parsed._tag !== "Ok") throw new Error(parsed.error.message)
    const address = parsed.value
    const server = newIdentity()
    const client = makeRelayClient({ crypto: nodeCryptoService, identity: newIdentity(), tickMs: TICK_MS })
    const layer = RelayListener.layer({ relays: [address], allow: [client.publicKey] }).pipe(
      Layer.provideMerge(RelayClient.layer({ identity: server, tickMs: TICK_MS })),
      Layer.provide(layerNode),
      Layer.provide(Logger.layer([]))
    )
    const program = Effect.gen(function*() {
      const listener = yield* RelayListener
      const self = yield* RelayClient
      expect(bytesToHex(listener.publicKey)).toBe(bytesToHex(self.publicKey))
      while (listener.status()[0]?.state !== "listening") yield* Effect.sleep(20)
      const stream = yield* client.connect(listener.publicKey, [address])
      const accepted = yield* listener.accept
      yield* stream.write(new TextEncoder().encode("ping"))
      expect(Option.map(yield* accepted.read, (b) => new TextDecoder().decode(b))).toEqual(Option.some("ping"))
      expect(relay.server().stats().core.tunnels).toBe(1)
      // The scope ends here with the stream and the listener still open.
    })
    await Effect.runPromise(program.pipe(Effect.scoped, Effect.provide(layer)))
    await waitFor(() => idle(relay), 5000, "the relay to hold nothing")
  })
})

describe("connector relay strategy", () => {
  // Accepts TCP connections and never says a word.
  const blackHole = async () => {
    const sockets = new Set<Net.Socket>()
    const server = Net.createServer((socket) => {
      sockets.add(socket)
      socket.on("close", () => sockets.delete(socket))
    })
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
    cleanups.push(async () => {
      for (const socket of sockets) socket.destroy()
      await new Promise((resolve) => server.close(resolve))
    })
    const port = (server.address() as Net.AddressInfo).port
    return formatRelayAddress({ publicKey: newIdentity().publicKey, host: "127.0.0.1", port })
  }

  it("a relay that never answers costs only the stagger delay: the next relay is raced", async () => {
    const hole = await blackHole()
    const relay = await relayFor()
    const server = newIdentity()
    const client = newIdentity()
    const listener = listen({ identity: server, relays: [relay.address], allow: [client.publicKey], tickMs: TICK_MS })
    cleanups.push(() => listener.close())
    listener.on("connection", (socket: PeerDuplex) => socket.pipe(socket))
    await waitFor(() => listener.status()[0]?.state === "listening", 5000, "listening")
    const started = Date.now()
    const socket = await connect({
      identity: client,
      relays: [hole, relay.address],
      to: server.publicKey,
      tickMs: TICK_MS,
      staggerMs: 300,
      timeoutMs: 10_000
    })
    const took = Date.now() - started
    expect(socket.relay).toBe(relay.address)
    expect(took).toBeGreaterThanOrEqual(250)
    expect(took).toBeLessThan(5000)
    socket.end("done")
    expect((await readAll(socket)).toString()).toBe("done")
  })

  it("keeps the overall deadline and says which relays timed out", async () => {
    const holes = [await blackHole(), await blackHole()]
    const started = Date.now()
    const error = await connect({
      identity: newIdentity(),
      relays: holes,
      to: newIdentity().publicKey,
      tickMs: TICK_MS,
      staggerMs: 200,
      timeoutMs: 800,
      handshakeTimeoutMs: 10_000
    }).then(() => undefined, (e: unknown) => e)
    const took = Date.now() - started
    expect(error).toBeInstanceOf(ConnectError)
    const failure = error as ConnectError
    expect(failure.reason).toBe("Timeout")
    expect(failure.attempts.map((a) => a.outcome._tag)).toEqual(["TimedOut", "TimedOut"])
    expect(failure.message).toContain("800 ms")
    expect(took).toBeGreaterThanOrEqual(750)
    expect(took).toBeLessThan(3000)
  })
})
