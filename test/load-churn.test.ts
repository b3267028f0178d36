/**
 * Churn soak: a relay process takes thousands of tunnels opened, used and
 * ended every way a client can end one — normal closes from either side,
 * TCP resets (after use, and in the middle of a handshake), connects given
 * up before the accept, and whole client processes killed with SIGKILL —
 * and afterwards holds nothing: no connection, listener, half tunnel,
 * tunnel or buffered byte, exactly the file descriptors it had before, and
 * a heap (after a full GC) within HEAP_BOUND_BYTES of where it started.
 *
 * The starting point is taken after a warm-up round of every kind of
 * tunnel, so code compiled on first use is not counted as a leak.
 */
import * as Net from "node:net"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Scope from "effect/Scope"
import { nodeCryptoService } from "../src/adapters/crypto.ts"
import { makeStreamFrameLink } from "../src/adapters/frame-link.ts"
import { tcpByteStream } from "../src/adapters/transport-tcp.ts"
import { ChannelError, establishChannel, type MessageChannel } from "../src/adapters/message-channel.ts"
import { openRelayConnection, type RelayEndpoint } from "../src/adapters/relay-connection.ts"
import { encodeInitConnection } from "../src/core/messages.ts"
import { bytesToHex } from "../src/core/keys.ts"
import { startLoadWorker, toWireEndpoint } from "../bench/load-worker.ts"
import { echo, endToEnd, listen, newIdentity, openTunnel, type PeerIdentity, type PeerOptions } from "../bench/peers.ts"
import { ONE_HOST_AS_MANY_ARGS, startRelayProcess, type RelayProcess } from "../bench/relay-process.ts"
import { patternBytes, RawClient } from "./support/relay-harness.ts"

/** Tunnels in the measured round (the warm-up adds WARM_UP more). */
const CHURN_TUNNELS = 1500
const WARM_UP = 100
const IN_FLIGHT = 24
/** Tunnels held by each client process that is then killed. */
const KILLED_TUNNELS = 150
/** How far the relay's heap may end above its start (after GC): far below what a per-tunnel leak over this many tunnels would add. */
const HEAP_BOUND_BYTES = 8 * 1024 * 1024
/**
 * Ticks are shorter than Offset's 1 s so timeouts fire within the test, but
 * not so short that a client process busy with 24 handshakes at once misses
 * one: the relay's 4-tick init timeout is raised to 2 s and half tunnels get
 * 10 s, as a loaded CI machine can delay a listener's accept by seconds.
 */
const TICK_MS = 100
/** The relay's and the clients' keepalive (PROTOCOL.md: 32 ticks, here 3.2 s). */
const KEEPALIVE_TICKS = 32

const options: PeerOptions = { crypto: nodeCryptoService, tickMs: TICK_MS }

/**
 * A tunnel whose connect hop runs on a socket we hold, so the test can
 * reset it (RST) as a crashed client's kernel would.
 */
const openResettableTunnel = (relay: RelayEndpoint, identity: PeerIdentity, listenerKey: Uint8Array) =>
  Effect.gen(function*() {
    // A Net socket of our own, for the reset the transport interface does not offer.
    const netSocket = yield* Effect.acquireRelease(
      Effect.callback<Net.Socket, ChannelError>((resume) => {
        const s = Net.connect({ host: relay.host, port: relay.port, noDelay: true, allowHalfOpen: true })
        s.once("connect", () => resume(Effect.succeed(s)))
        s.once("error", (e) => resume(Effect.fail(new ChannelError({ reason: "Reset", message: e.message }))))
      }),
      (s) => Effect.sync(() => s.destroy())
    )
    const link = makeStreamFrameLink(tcpByteStream(netSocket))
    const hop = yield* establishChannel(link, {
      crypto: options.crypto,
      identity,
      expectedRemotePublicKey: relay.publicKey,
      machine: { maxPaddingBytes: 0 }
    })
    yield* hop.send(encodeInitConnection({ _tag: "Connect", publicKey: listenerKey }))
    const channel = yield* endToEnd(hop, identity, listenerKey, options)
    return { channel, reset: () => netSocket.resetAndDestroy() }
  })

/** Sends three messages and checks each comes back unchanged. */
const roundTrips = (channel: MessageChannel, seed: number) =>
  Effect.gen(function*() {
    for (let k = 0; k < 3; k++) {
      const message = patternBytes(1 + ((seed * 7919 + k * 104729) % (32 * 1024)), seed * 3 + k)
      yield* channel.send(message)
      const back = yield* channel.receive
      if (!Buffer.from(back).equals(Buffer.from(message))) return yield* Effect.die(new Error(`tunnel ${seed}: echo differs`))
    }
  })

type Mode = "close" | "listener-closes" | "reset" | "handshake-reset" | "abandoned-connect"
const MODES: ReadonlyArray<Mode> = ["close", "listener-closes", "reset", "handshake-reset", "abandoned-connect"]

describe("churn soak against a relay process", () => {
  let relay: RelayProcess
  beforeAll(async () => {
    relay = await startRelayProcess({
      tickMs: TICK_MS,
      // All clients are 127.0.0.1, standing in for many hosts: per-host caps lifted.
      args: [
        ...ONE_HOST_AS_MANY_ARGS,
        "--init-timeout-ticks",
        "20",
        "--half-tunnel-ticks",
        "100"
      ]
    })
  })
  afterAll(async () => {
    await relay?.stop()
    relay?.removeDataDir()
  })

  it("thousands of tunnels closed, reset, abandoned and killed leave nothing behind", async () => {
    const scope = Effect.runSync(Scope.make())
    const run = <A, E>(effect: Effect.Effect<A, E, Scope.Scope>) => Effect.runPromise(Scope.provide(effect, scope))
    // Three kinds of listener: echo forever, echo once then close, and one that never accepts.
    const echoing = await run(listen(relay.endpoint, newIdentity(options.crypto), options, echo))
    const oneShot = await run(
      listen(relay.endpoint, newIdentity(options.crypto), options, (channel) =>
        Effect.flatMap(channel.receive, channel.send))
    )
    const deafIdentity = newIdentity(options.crypto)
    await run(openRelayConnection(relay.endpoint, { _tag: "Listen" }, { crypto: options.crypto, identity: deafIdentity, tickMs: TICK_MS }))

    const oneTunnel = (i: number, mode: Mode): Promise<void> => {
      const identity = newIdentity(options.crypto)
      switch (mode) {
        case "close":
          return Effect.runPromise(Effect.scoped(Effect.flatMap(openTunnel(relay.endpoint, identity, echoing.identity.publicKey, options), (c) => roundTrips(c, i))))
        case "listener-closes":
          return Effect.runPromise(
            Effect.scoped(
              Effect.gen(function*() {
                const channel = yield* openTunnel(relay.endpoint, identity, oneShot.identity.publicKey, options)
                const message = patternBytes(100, i)
                yield* channel.send(message)
                yield* channel.receive
                // The listener's side ended after its echo: the relay closes ours.
                yield* channel.ended
              })
            )
          )
        case "reset":
          return Effect.runPromise(
            Effect.scoped(
              Effect.gen(function*() {
                const tunnel = yield* openResettableTunnel(relay.endpoint, identity, echoing.identity.publicKey)
                yield* roundTrips(tunnel.channel, i)
                // Data in flight when the reset hits: the relay must drop it, not hold it.
                yield* Effect.ignore(tunnel.channel.send(patternBytes(64 * 1024, i)))
                tunnel.reset()
              })
            )
          )
        case "handshake-reset":
          return (async () => {
            const raw = await RawClient.connect(relay.port)
            await raw.handshake(relay.endpoint.publicKey, identity, { stopAfterRandNonce: true })
            raw.socket.resetAndDestroy()
            await raw.ended
          })()
        case "abandoned-connect":
          // The half tunnel waits on a listener that never accepts; the connector gives up.
          return Effect.runPromise(
            Effect.scoped(
              Effect.andThen(
                openRelayConnection(relay.endpoint, { _tag: "Connect", publicKey: deafIdentity.publicKey }, {
                  crypto: options.crypto,
                  identity,
                  tickMs: TICK_MS
                }),
                Effect.sleep(i % 2 === 0 ? 0 : 20)
              )
            )
          )
      }
    }

    const churn = async (from: number, count: number) => {
      let next = from
      const failures: Array<string> = []
      const worker = async () => {
        while (next < from + count) {
          const i = next++
          await oneTunnel(i, MODES[i % MODES.length]!).catch((error: unknown) => failures.push(`${i} ${MODES[i % MODES.length]}: ${String(error)}`))
        }
      }
      await Promise.all(Array.from({ length: IN_FLIGHT }, worker))
      return failures
    }

    // The relay at rest is our three listeners and nothing else.
    const settle = async (what: string) => {
      const deadline = Date.now() + 2 * KEEPALIVE_TICKS * TICK_MS + 5000
      while (true) {
        const s = await relay.scrape()
        if (s.connections === 3 && s.listeners === 3 && s.pendingHalfTunnels === 0 && s.tunnels === 0 && s.bufferedBytes === 0) return s
        if (Date.now() > deadline) {
          throw new Error(`${what}: relay not at rest: ${s.connections} connections, ${s.listeners} listeners, ${s.pendingHalfTunnels} half tunnels, ${s.tunnels} tunnels, ${s.bufferedBytes} buffered bytes`)
        }
        await new Promise((resolve) => setTimeout(resolve, 50))
      }
    }

    // The metrics scrape itself is a short-lived connection: give its socket a moment to close.
    const fdsSettled = async (expected: number) => {
      const deadline = Date.now() + 2000
      while (relay.openFds() !== expected && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 50))
      return relay.openFds()
    }

    // The relay's closes by reason, for failure messages: a client's "the peer
    // closed the connection" says nothing of why the relay closed it.
    const closeReasons = async () => {
      const s = await relay.scrape()
      const lines = [...s.samples].filter(([name, value]) => name.startsWith("offset_relay_closes_total") && value > 0)
      return `the relay's closes so far: ${lines.map(([name, value]) => `${/reason="([^"]*)"/.exec(name)?.[1] ?? name} ${value}`).join(", ")}`
    }

    try {
      const warmUp = await churn(0, WARM_UP)
      expect(warmUp, warmUp.length === 0 ? undefined : await closeReasons()).toEqual([])
      await settle("after the warm-up")
      const startHeap = (await relay.memory(true)).heapUsed
      const startFds = relay.openFds()

      // Killed clients: one process holding idle tunnels (both ends its own), one streaming to our listener.
      const holder = await startLoadWorker()
      const streamer = await startLoadWorker()
      const killedRun = (async () => {
        const endpoint = toWireEndpoint(relay.endpoint)
        const opened = await holder.request({ type: "open-idle", relay: endpoint, count: KILLED_TUNNELS, concurrency: 16, tickMs: TICK_MS })
        await streamer.request({ type: "stream", relay: endpoint, listenerKeyHex: bytesToHex(echoing.identity.publicKey), tickMs: TICK_MS })
        await Promise.all([holder.stop("SIGKILL"), streamer.stop("SIGKILL")])
        return opened
      })().then(
        (opened) => ({ opened }),
        // Settled here, reported after the churn (no unhandled rejection), with the relay's side of it.
        async (error: unknown) => ({ failed: `${error instanceof Error ? error.message : String(error)}; ${await closeReasons()}` })
      )

      const failures = await churn(WARM_UP, CHURN_TUNNELS)
      const killed = await killedRun
      if ("failed" in killed) throw new Error(`the killed clients' tunnels: ${killed.failed}`)
      const opened = killed.opened
      expect(failures, failures.length === 0 ? undefined : await closeReasons()).toEqual([])
      expect([opened.done, opened.failed, opened.firstFailure]).toEqual([KILLED_TUNNELS, 0, undefined])

      const rest = await settle("after the churn")
      const endHeap = (await relay.memory(true)).heapUsed
      expect(rest.handshaking).toBe(0)
      // Every kind of end was seen by the relay (so the mix really happened).
      expect(rest.closes("connection-lost")).toBeGreaterThan(0)
      if (startFds !== undefined) expect(await fdsSettled(startFds)).toBe(startFds)
      expect(endHeap - startHeap).toBeLessThan(HEAP_BOUND_BYTES)

      await Effect.runPromise(Scope.close(scope, Exit.void))
      const deadline = Date.now() + 5000
      let empty = await relay.scrape()
      while (empty.connections > 0 && Date.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, 50))
        empty = await relay.scrape()
      }
      expect([empty.connections, empty.listeners, empty.pendingHalfTunnels, empty.tunnels, empty.bufferedBytes]).toEqual([0, 0, 0, 0, 0])
      if (startFds !== undefined) expect(await fdsSettled(startFds - 3)).toBe(startFds - 3)
    } finally {
      await Effect.runPromise(Scope.close(scope, Exit.void))
    }
  }, 60_000)
})
