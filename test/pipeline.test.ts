/**
 * The connection pipeline on its own over real loopback TCP (no relay):
 * frames → version → secure channel → keepalive → messages, in both roles,
 * with both crypto layers, and the ways a handshake can fail. The handshake
 * deadline, a matter of time and not of sockets, runs on the in-memory
 * network and virtual time.
 */
import { describe, expect, it } from "@effect/vitest"
import { createHash } from "node:crypto"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Deferred from "effect/Deferred"
import { type CryptoService, nobleCryptoService, nodeCryptoService } from "../src/adapters/crypto.ts"
import { makeStreamFrameLink } from "../src/adapters/frame-link.ts"
import { dialFrames, serveFrames } from "./support/frame-server.ts"
import { type ChannelError, establishChannel, type MessageChannel } from "../src/adapters/message-channel.ts"
import { makeSimWorld } from "./sim/world.ts"

const identity = (crypto: CryptoService) => {
  const seed = crypto.randomBytes(32)
  return { seed, publicKey: crypto.ed25519PublicKey(seed) }
}

type Id = ReturnType<typeof identity>

/**
 * A server pipeline and a client pipeline over one loopback TCP connection.
 * Each side's result is its channel or the error that ended its handshake.
 */
const pair = (options: {
  readonly server: { crypto: CryptoService; id: Id; expect?: Uint8Array }
  readonly client: { crypto: CryptoService; id: Id; expect?: Uint8Array }
  readonly handshakeTimeoutMs?: number
  readonly rekeyIntervalTicks?: number
}) =>
  Effect.gen(function*() {
    const serverSide = yield* Deferred.make<Exit.Exit<MessageChannel, unknown>>()
    const port = yield* serveFrames((link) =>
        Effect.gen(function*() {
          const result = yield* Effect.exit(
            establishChannel(link, {
              crypto: options.server.crypto,
              identity: options.server.id,
              expectedRemotePublicKey: options.server.expect,
              handshakeTimeoutMs: options.handshakeTimeoutMs,
              machine: { rekeyIntervalTicks: options.rekeyIntervalTicks }
            })
          )
          yield* Deferred.succeed(serverSide, result)
          yield* Effect.never
        })
    )
    const link = yield* dialFrames(port)
    const client = yield* Effect.exit(
      establishChannel(link, {
        crypto: options.client.crypto,
        identity: options.client.id,
        expectedRemotePublicKey: options.client.expect,
        handshakeTimeoutMs: options.handshakeTimeoutMs,
        machine: { rekeyIntervalTicks: options.rekeyIntervalTicks }
      })
    )
    return { client, server: yield* Deferred.await(serverSide) }
  })

// Sends `count` random messages each way at once; returns the hashes sent and received.
const exchange = (a: MessageChannel, b: MessageChannel, count: number, size: number) =>
  Effect.gen(function*() {
    const oneWay = (from: MessageChannel, to: MessageChannel) =>
      Effect.gen(function*() {
        const sent = createHash("sha256")
        const received = createHash("sha256")
        const send = Effect.gen(function*() {
          for (let i = 0; i < count; i++) {
            const message = nodeCryptoService.randomBytes(1 + ((i * 7919) % size))
            sent.update(message)
            yield* from.send(message)
          }
        })
        const receive = Effect.gen(function*() {
          for (let i = 0; i < count; i++) received.update(yield* to.receive)
        })
        yield* Effect.all([send, receive], { concurrency: 2 })
        return [sent.digest("hex"), received.digest("hex")] as const
      })
    return yield* Effect.all([oneWay(a, b), oneWay(b, a)], { concurrency: 2 })
  })

const layers = [
  ["node", nodeCryptoService],
  ["noble", nobleCryptoService]
] as const

describe("pipeline over loopback TCP", () => {
  for (const [serverName, serverCrypto] of layers) {
    for (const [clientName, clientCrypto] of layers) {
      it.live(`server ${serverName} ↔ client ${clientName}: both roles exchange messages both ways`, () =>
        Effect.gen(function*() {
          const serverId = identity(serverCrypto)
          const clientId = identity(clientCrypto)
          // The client expects the server's key (a client dialing a relay); the
          // server expects none (a relay accepting clients).
          const { client, server } = yield* pair({
            server: { crypto: serverCrypto, id: serverId },
            client: { crypto: clientCrypto, id: clientId, expect: serverId.publicKey }
          })
          if (!Exit.isSuccess(client) || !Exit.isSuccess(server)) throw new Error("handshake failed")
          expect([...client.value.remotePublicKey]).toEqual([...serverId.publicKey])
          expect([...server.value.remotePublicKey]).toEqual([...clientId.publicKey])
          const [[aSent, bReceived], [bSent, aReceived]] = yield* exchange(client.value, server.value, 200, 70_000)
          expect(bReceived).toBe(aSent)
          expect(aReceived).toBe(bSent)
        }).pipe(Effect.scoped))
    }
  }

  for (const [name, crypto] of layers) {
    it.live(`${name}: rekeys every tick on both sides during a two-way transfer lose and reorder nothing`, () =>
      Effect.gen(function*() {
        const a = identity(crypto)
        const b = identity(crypto)
        const { client, server } = yield* pair({
          server: { crypto, id: a },
          client: { crypto, id: b, expect: a.publicKey },
          rekeyIntervalTicks: 1
        })
        if (!Exit.isSuccess(client) || !Exit.isSuccess(server)) throw new Error("handshake failed")
        // Ticks as fast as the event loop allows, so rekeys land mid-stream on both sides.
        yield* Effect.forkScoped(
          Effect.forever(
            Effect.andThen(Effect.sleep(1), Effect.sync(() => {
              client.value.tick()
              server.value.tick()
            }))
          )
        )
        const [[aSent, bReceived], [bSent, aReceived]] = yield* exchange(client.value, server.value, 400, 20_000)
        expect(bReceived).toBe(aSent)
        expect(aReceived).toBe(bSent)
      }).pipe(Effect.scoped))
  }

  it.live("both sides expecting each other's keys (end to end) succeeds", () =>
    Effect.gen(function*() {
      const a = identity(nodeCryptoService)
      const b = identity(nodeCryptoService)
      const { client, server } = yield* pair({
        server: { crypto: nodeCryptoService, id: a, expect: b.publicKey },
        client: { crypto: nodeCryptoService, id: b, expect: a.publicKey }
      })
      expect(Exit.isSuccess(client) && Exit.isSuccess(server)).toBe(true)
    }).pipe(Effect.scoped))

  it.live("an expected key that does not match: the expecting side refuses with UnexpectedRemoteKey", () =>
    Effect.gen(function*() {
      const serverId = identity(nodeCryptoService)
      const impostor = identity(nodeCryptoService)
      const clientId = identity(nodeCryptoService)
      const { client, server } = yield* pair({
        server: { crypto: nodeCryptoService, id: impostor },
        client: { crypto: nodeCryptoService, id: clientId, expect: serverId.publicKey },
        handshakeTimeoutMs: 2000
      })
      expect(Exit.isFailure(client)).toBe(true)
      const error = Exit.isFailure(client) ? (client.cause.reasons[0] as { error?: ChannelError }).error : undefined
      expect(error?.reason).toBe("Protocol")
      expect(error?.detail).toBe("UnexpectedRemoteKey")
      // The server side never completes either: the client stops at the key.
      expect(Exit.isFailure(server)).toBe(true)
    }).pipe(Effect.scoped))

  // On the in-memory network and virtual time (test/sim/world.ts): the
  // handshake's deadline is about time, not sockets, and is measured exactly.
  it("a peer that never answers the handshake is closed after handshakeTimeoutMs", () => {
    const world = makeSimWorld(59)
    const silent = world.blackHole("silent") // accepts, says nothing
    let started = 0
    let ended = 0
    const exit = world.await(
      Effect.gen(function*() {
        const link = makeStreamFrameLink(yield* world.net.host("client").dial({ host: silent.host, port: silent.port }))
        yield* Effect.addFinalizer(() => Effect.sync(link.destroy))
        started = world.rt.now
        const result = yield* Effect.exit(
          establishChannel(link, { crypto: world.crypto, identity: world.identity(), handshakeTimeoutMs: 300 })
        )
        ended = world.rt.now
        return result
      }),
      10_000
    )
    if (!Exit.isSuccess(exit)) throw new Error(`the dial failed: ${String(exit.cause)}`)
    const result = exit.value
    expect(Exit.isFailure(result)).toBe(true)
    const error = Exit.isFailure(result) ? (result.cause.reasons[0] as { error?: ChannelError }).error : undefined
    expect(error?.reason).toBe("HandshakeTimeout")
    expect(ended - started).toBeGreaterThanOrEqual(300)
    expect(ended - started).toBeLessThan(400)
  })
})
