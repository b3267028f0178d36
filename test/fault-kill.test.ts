/**
 * Faults, each against a relay process with 100 ms ticks (keepalive 32
 * ticks = 3.2 s), with bounds derived from those settings plus slack for a
 * loaded machine; nothing here asserts speed:
 *
 * - a client process killed with SIGKILL in the middle of a transfer: the
 *   peer's end of the tunnel is closed within the keepalive bound;
 * - a TCP connection that stops delivering bytes without closing (a stalled
 *   middlebox): the keepalive closes it, on the relay and on the client, and
 *   the tunnel's other side is closed;
 * - the relay killed with SIGKILL and restarted on the same port and key:
 *   the client library's listener is back within its backoff bound, and a
 *   connector that retries gets through.
 */
import * as Net from "node:net"
import { afterEach, describe, expect, it } from "vitest"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Scope from "effect/Scope"
import { connect, createIdentity, listen as listenPlain, type PeerDuplex } from "../src/adapters/client/index.ts"
import { nodeCryptoService } from "../src/adapters/crypto.ts"
import type { ChannelError, MessageChannel } from "../src/adapters/message-channel.ts"
import { bytesToHex } from "../src/core/keys.ts"
import { startLoadWorker, toWireEndpoint } from "../bench/load-worker.ts"
import { listen, newIdentity, openTunnel, type PeerOptions } from "../bench/peers.ts"
import { startRelayProcess, type RelayProcess } from "../bench/relay-process.ts"
import { waitListening } from "../bench/setup-latency.ts"

const TICK_MS = 100
const KEEPALIVE_TICKS = 32
const KEEPALIVE_MS = KEEPALIVE_TICKS * TICK_MS
/** Added to every bound: scheduling delays on a loaded 2-core machine. */
const SLACK_MS = 3000

const options: PeerOptions = { crypto: nodeCryptoService, tickMs: TICK_MS }
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

const relays: Array<RelayProcess> = []
const startRelay = async (restartOf?: RelayProcess) => {
  const relay = await startRelayProcess({
    tickMs: TICK_MS,
    ...(restartOf === undefined ? {} : { port: restartOf.port, dataDir: restartOf.dataDir })
  })
  relays.push(relay)
  return relay
}
afterEach(async () => {
  for (const relay of relays.splice(0)) {
    await relay.stop("SIGKILL")
    relay.removeDataDir()
  }
})

/**
 * A listener that counts what arrives on its tunnels and reports when each
 * tunnel ends. Its end-to-end keepalive is slow (32 s), so what closes a
 * silent tunnel in these tests is the relay's hop keepalive.
 */
const countingListener = (relay: RelayProcess, scope: Scope.Scope) => {
  const state = { received: 0, ended: [] as Array<{ readonly at: number; readonly error: ChannelError }> }
  const sink = (channel: MessageChannel) =>
    Effect.forever(Effect.map(channel.receive, (m) => void (state.received += m.length))).pipe(
      Effect.catch((error: ChannelError) => Effect.sync(() => void state.ended.push({ at: Date.now(), error })))
    )
  const slowEndToEnd: PeerOptions = { ...options, endToEndTickMs: 1000 }
  return Effect.runPromise(Scope.provide(listen(relay.endpoint, newIdentity(options.crypto), slowEndToEnd, sink), scope)).then(
    (listener) => ({ listener, state })
  )
}

const waitFor = async (what: string, condition: () => boolean, timeoutMs: number) => {
  const deadline = Date.now() + timeoutMs
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await sleep(20)
  }
}

describe("faults", () => {
  it("a client killed with SIGKILL mid-transfer: its peer is closed within the keepalive bound", async () => {
    const relay = await startRelay()
    const scope = Effect.runSync(Scope.make())
    try {
      const { listener, state } = await countingListener(relay, scope)
      const sender = await startLoadWorker()
      await sender.request({ type: "stream", relay: toWireEndpoint(relay.endpoint), listenerKeyHex: bytesToHex(listener.identity.publicKey), tickMs: TICK_MS })
      await waitFor("bytes from the sender", () => state.received > 1024 * 1024, 10_000)
      const killedAt = Date.now()
      await sender.stop("SIGKILL")
      await waitFor("the listener's side to close", () => state.ended.length === 1, KEEPALIVE_MS + SLACK_MS)
      expect(state.ended[0]!.at - killedAt).toBeLessThanOrEqual(KEEPALIVE_MS + SLACK_MS)
      const deadline = Date.now() + SLACK_MS
      let s = await relay.scrape()
      while (s.tunnels > 0 && Date.now() < deadline) s = (await sleep(20), await relay.scrape())
      expect([s.tunnels, s.pendingHalfTunnels, s.listeners, s.connections]).toEqual([0, 0, 1, 1])
    } finally {
      await Effect.runPromise(Scope.close(scope, Exit.void))
    }
  }, 30_000)

  it("a connection that stops delivering bytes without closing is closed by the keepalive, and so is its tunnel", async () => {
    const relay = await startRelay()
    // A middlebox that forwards until told to stall, then holds both sockets open and silent.
    let stalled = false
    const held: Array<Net.Socket> = []
    const proxy = Net.createServer((client) => {
      const upstream = Net.connect({ host: "127.0.0.1", port: relay.port })
      held.push(client, upstream)
      const forward = (from: Net.Socket, to: Net.Socket) =>
        from.on("data", (chunk: Buffer) => {
          if (stalled) {
            from.pause()
            return
          }
          if (!to.write(chunk)) {
            from.pause()
            to.once("drain", () => !stalled && from.resume())
          }
        })
      forward(client, upstream)
      forward(upstream, client)
      client.on("error", () => {})
      upstream.on("error", () => {})
    })
    await new Promise<void>((resolve) => proxy.listen(0, "127.0.0.1", resolve))
    const scope = Effect.runSync(Scope.make())
    try {
      const { listener, state } = await countingListener(relay, scope)
      const viaProxy = { ...relay.endpoint, port: (proxy.address() as Net.AddressInfo).port }
      const before = (await relay.scrape()).closes("keepalive-timeout")
      const connector = await Effect.runPromise(Scope.provide(openTunnel(viaProxy, newIdentity(options.crypto), listener.identity.publicKey, options), scope))
      const chunk = new Uint8Array(16 * 1024)
      const sending = Effect.runPromiseExit(Effect.forever(connector.send(chunk)))
      await waitFor("bytes through the proxy", () => state.received > 256 * 1024, 10_000)
      stalled = true
      for (const socket of held) socket.pause()
      const stalledAt = Date.now()

      await waitFor("the listener's side to close", () => state.ended.length === 1, KEEPALIVE_MS + SLACK_MS)
      expect(state.ended[0]!.at - stalledAt).toBeLessThanOrEqual(KEEPALIVE_MS + SLACK_MS)
      expect((await relay.scrape()).closes("keepalive-timeout") - before).toBe(1)
      // The client's own keepalive gives up on the silent relay too.
      const ended = await Effect.runPromise(Effect.timeoutOrElse(connector.ended, { duration: KEEPALIVE_MS + SLACK_MS, orElse: () => Effect.die(new Error("the connector never closed")) }))
      expect(ended.reason).not.toBe("LocalClose")
      expect(Exit.isFailure(await sending)).toBe(true)
      // Nothing of the tunnel is left on the relay, though the stalled sockets are still open.
      expect(held.every((socket) => !socket.destroyed)).toBe(true)
      const s = await relay.scrape()
      expect([s.tunnels, s.pendingHalfTunnels, s.listeners]).toEqual([0, 0, 1])
    } finally {
      await Effect.runPromise(Scope.close(scope, Exit.void))
      for (const socket of held) socket.destroy()
      proxy.close()
    }
  }, 30_000)

  it("the relay killed and restarted: the listener is back within its backoff bound and a retrying connector gets through", async () => {
    const backoff = { initialMs: 100, maxMs: 1000, multiplier: 2, jitter: 0.5, resetAfterMs: 30_000 }
    const first = await startRelay()
    const listener = listenPlain({ identity: createIdentity(), relays: [first.address], allow: () => true, backoff, tickMs: TICK_MS })
    listener.on("connection", (socket: PeerDuplex) => {
      socket.on("error", () => socket.destroy())
      socket.pipe(socket)
    })
    const echoOnce = async (timeoutMs: number) => {
      const socket = await connect({ identity: createIdentity(), relays: [first.address], to: listener.publicKey, timeoutMs, tickMs: TICK_MS })
      try {
        socket.write("ping")
        const answer = await new Promise<string>((resolve, reject) => {
          socket.once("data", (data: Buffer) => resolve(data.toString()))
          socket.once("error", reject)
        })
        expect(answer).toBe("ping")
      } finally {
        socket.destroy()
      }
    }
    try {
      await waitListening(listener)
      await echoOnce(5000)

      await first.stop("SIGKILL")
      await waitFor("the listener to notice", () => listener.status()[0]?.state !== "listening", KEEPALIVE_MS + SLACK_MS)
      // A connector that keeps trying while the relay is away.
      let connectedAt: number | undefined
      let attempts = 0
      const retrying = (async () => {
        while (connectedAt === undefined) {
          attempts++
          try {
            await echoOnce(2000)
            connectedAt = Date.now()
          } catch {
            await sleep(200)
          }
        }
      })()
      await sleep(500)

      const second = await startRelay(first)
      const restartedAt = Date.now()
      expect(second.address).toBe(first.address)
      await waitListening(listener, backoff.maxMs + SLACK_MS)
      expect(Date.now() - restartedAt).toBeLessThanOrEqual(backoff.maxMs + SLACK_MS)
      await Promise.race([retrying, sleep(backoff.maxMs + 2 * SLACK_MS)])
      expect(connectedAt, `the connector never got through (${attempts} attempts)`).toBeDefined()
      expect(attempts).toBeGreaterThan(1)
    } finally {
      await listener.close()
    }
  }, 40_000)
})
