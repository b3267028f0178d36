/**
 * The channel driver's flow control (message-channel.ts), on the in-memory
 * network and virtual time (test/sim/world.ts), with the stream's pause and
 * resume counted:
 * - a full inbox pauses the stream, `receive` below the bound resumes it,
 *   and ticks meanwhile do not count the peer's silence (we stopped reading);
 * - `send` waits while the transport is past its high-water mark, and
 *   completes on its drain;
 * - inside a tunnel, a full inner inbox pauses the outer channel's delivery,
 *   which pauses the outer stream;
 * - the stream link's version prefix: a wrong version ends the handshake
 *   with VersionMismatch, and a peer that closes before its version is told
 *   apart (ClosedBeforeVersion: a relay that refused us at once).
 */
import { describe, expect, it } from "vitest"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import { makeStreamFrameLink } from "../src/adapters/frame-link.ts"
import { type ChannelDriver, establishChannel, tunnelFrameLink } from "../src/adapters/message-channel.ts"
import type { ByteStream } from "../src/adapters/transport.ts"
import { encodeFrame } from "../src/core/frame.ts"
import { encodeVersion } from "../src/core/version.ts"
import { serveFrames } from "./support/frame-server.ts"
import { makeSimWorld, type SimWorld } from "./sim/world.ts"

const KiB = 1024

/** A stream that counts `pause` and `resume` and says whether it is paused now. */
const spied = (stream: ByteStream) => {
  const counts = { pauses: 0, resumes: 0, paused: false }
  const wrapped: ByteStream = {
    remoteAddress: stream.remoteAddress,
    start: (handlers) => stream.start(handlers),
    write: (chunks) => stream.write(chunks),
    writableLength: () => stream.writableLength(),
    pause: () => {
      counts.pauses++
      counts.paused = true
      stream.pause()
    },
    resume: () => {
      counts.resumes++
      counts.paused = false
      stream.resume()
    },
    end: () => stream.end(),
    destroy: () => stream.destroy()
  }
  return { stream: wrapped, counts }
}

interface ChannelOptionsForTest {
  readonly inboxBytes?: number
  readonly keepaliveTicks?: number
}

/**
 * A server channel (its `inboxBytes`) and a client channel (its own) over
 * one in-memory stream; the client's stream is spied on.
 */
const channelPair = (world: SimWorld, server: ChannelOptionsForTest, client: ChannelOptionsForTest) => {
  const serverIdentity = world.identity()
  const serverChannel = Deferred.makeUnsafe<ChannelDriver>()
  world.spawn(serveFrames(
    (link) =>
      Effect.gen(function*() {
        const channel = yield* establishChannel(link, {
          crypto: world.crypto,
          identity: serverIdentity,
          ...options(server)
        })
        yield* Deferred.succeed(serverChannel, channel)
        yield* Effect.never
      }),
    world.net.host("server"),
    { host: "server", port: 4747 }
  ))
  world.rt.runFor(0)
  let spy: ReturnType<typeof spied> | undefined
  let clientChannel: ChannelDriver | undefined
  let serverSide: ChannelDriver | undefined
  world.spawn(Effect.gen(function*() {
    spy = spied(yield* world.net.host("client").dial({ host: "server", port: 4747 }))
    clientChannel = yield* establishChannel(makeStreamFrameLink(spy.stream), {
      crypto: world.crypto,
      identity: world.identity(),
      expectedRemotePublicKey: serverIdentity.publicKey,
      ...options(client)
    })
    serverSide = yield* Deferred.await(serverChannel)
  }))
  world.runUntil(() => serverSide !== undefined, 5000, "both channels to be established")
  return { client: clientChannel!, server: serverSide!, counts: spy!.counts }
}

const options = (o: ChannelOptionsForTest) => ({
  ...(o.inboxBytes === undefined ? {} : { inboxBytes: o.inboxBytes }),
  machine: { maxPaddingBytes: 0, ...(o.keepaliveTicks === undefined ? {} : { keepaliveTicks: o.keepaliveTicks }) }
})

const message = (index: number, bytes: number) => new Uint8Array(bytes).fill(index & 0xff)

describe("the channel driver over its link", () => {
  it("a full inbox pauses the stream, receive resumes it, and ticks meanwhile do not judge the peer's silence", () => {
    const world = makeSimWorld(71)
    const { client, server, counts } = channelPair(world, {}, { inboxBytes: 16 * KiB, keepaliveTicks: 4 })
    const total = 64
    let sent = 0
    world.spawn(Effect.gen(function*() {
      for (let i = 0; i < total; i++) {
        yield* server.send(message(i, 4 * KiB))
        sent++
      }
    }))
    world.runUntil(() => counts.paused, 5000, "the client to pause its stream")
    world.rt.runFor(1000)
    // The server is held back: its sends wait on the stream, not on us.
    expect(sent).toBeLessThan(total)
    // The inbox holds its bound plus what arrived in the chunk that crossed it.
    expect(client.bufferedBytes()).toBeLessThan(16 * KiB + 80 * KiB)
    // Many ticks with a silent peer (its keepalives wait behind our pause):
    // not a timeout, as the silence is ours.
    for (let i = 0; i < 10; i++) client.tick()
    let ended = false
    world.spawn(Effect.andThen(client.ended, Effect.sync(() => (ended = true))))
    world.rt.runFor(0)
    expect(ended).toBe(false)

    const received: Array<Uint8Array> = []
    world.spawn(Effect.gen(function*() {
      while (received.length < total) received.push(yield* client.receive)
    }))
    world.runUntil(() => received.length === total, 10_000, "every message to arrive")
    expect(counts.resumes).toBeGreaterThan(0)
    expect(received.map((m) => m[0])).toEqual(Array.from({ length: total }, (_, i) => i & 0xff))
    expect(sent).toBe(total)
    expect(counts.paused).toBe(false)
  })

  it("send waits while the transport is full, and completes on its drain", () => {
    const world = makeSimWorld(72)
    // The server takes nothing until told: its inbox pauses its stream, the
    // network's window fills, and our stream's buffer passes its high-water mark.
    const { client, server } = channelPair(world, { inboxBytes: 16 * KiB }, {})
    const total = 64
    let completed = 0
    world.spawn(Effect.gen(function*() {
      for (let i = 0; i < total; i++) {
        yield* client.send(message(i, 16 * KiB))
        completed++
      }
    }))
    world.rt.runFor(2000)
    // 1 MiB to send, and at most the server's inbox, the window and our
    // buffer (a few hundred KiB) can be taken: a send is waiting for a drain.
    expect(completed).toBeGreaterThan(0)
    expect(completed).toBeLessThan(total)
    const before = completed
    world.rt.runFor(2000)
    expect(completed).toBe(before)

    const received: Array<Uint8Array> = []
    world.spawn(Effect.gen(function*() {
      while (received.length < total) received.push(yield* server.receive)
    }))
    world.runUntil(() => completed === total && received.length === total, 10_000, "every send to complete")
    expect(received.map((m) => m[0])).toEqual(Array.from({ length: total }, (_, i) => i & 0xff))
  })

  it("inside a tunnel, a full inner inbox pauses the outer channel and its stream; receive resumes both", () => {
    const world = makeSimWorld(73)
    const outer = channelPair(world, {}, {})
    const innerServerIdentity = world.identity()
    let innerClient: ChannelDriver | undefined
    let innerServer: ChannelDriver | undefined
    world.spawn(Effect.gen(function*() {
      innerServer = yield* establishChannel(tunnelFrameLink(outer.server), {
        crypto: world.crypto,
        identity: innerServerIdentity,
        ...options({})
      })
    }))
    world.spawn(Effect.gen(function*() {
      innerClient = yield* establishChannel(tunnelFrameLink(outer.client), {
        crypto: world.crypto,
        identity: world.identity(),
        expectedRemotePublicKey: innerServerIdentity.publicKey,
        ...options({ inboxBytes: 16 * KiB })
      })
    }))
    world.runUntil(() => innerClient !== undefined && innerServer !== undefined, 5000, "the inner channels")
    const total = 64
    let sent = 0
    world.spawn(Effect.gen(function*() {
      for (let i = 0; i < total; i++) {
        yield* innerServer!.send(message(i, 4 * KiB))
        sent++
      }
    }))
    world.runUntil(() => outer.counts.paused, 5000, "the outer stream to pause")
    world.rt.runFor(1000)
    expect(sent).toBeLessThan(total)
    // The inner inbox holds its bound plus at most one chunk's messages, the
    // outer inbox what came after the inner one paused in that chunk.
    expect(innerClient!.bufferedBytes()).toBeLessThan(16 * KiB + 2 * 80 * KiB)

    const received: Array<Uint8Array> = []
    world.spawn(Effect.gen(function*() {
      while (received.length < total) received.push(yield* innerClient!.receive)
    }))
    world.runUntil(() => received.length === total, 10_000, "every message to arrive")
    expect(received.map((m) => m[0])).toEqual(Array.from({ length: total }, (_, i) => i & 0xff))
    expect(outer.counts.resumes).toBeGreaterThan(0)
    expect(outer.counts.paused).toBe(false)
  })

  it("a peer with another version fails the handshake with VersionMismatch; one that closes before its version with ClosedBeforeVersion", () => {
    const world = makeSimWorld(74)
    // Port 1 answers with version 99; port 2 closes at once.
    world.spawn(world.net.host("peer").listen({ host: "peer", port: 1 }, (stream) => {
      stream.start({ data: () => {}, drain: () => {}, end: () => stream.end(), close: () => {} })
      stream.write([encodeFrame(encodeVersion(99))])
    }))
    world.spawn(world.net.host("peer").listen({ host: "peer", port: 2 }, (stream) => {
      stream.start({ data: () => {}, drain: () => {}, end: () => {}, close: () => {} })
      stream.end()
    }))
    world.rt.runFor(0)
    const handshake = (port: number) =>
      world.await(
        Effect.gen(function*() {
          const stream = yield* Effect.orDie(world.net.host("client").dial({ host: "peer", port }))
          return yield* establishChannel(makeStreamFrameLink(stream), { crypto: world.crypto, identity: world.identity() })
        }),
        5000
      )
    const mismatch = handshake(1)
    expect(Exit.isFailure(mismatch)).toBe(true)
    expect(mismatch).toMatchObject({ cause: { reasons: [{ error: { reason: "VersionMismatch" } }] } })
    const refused = handshake(2)
    expect(refused).toMatchObject({ cause: { reasons: [{ error: { reason: "Closed", detail: "ClosedBeforeVersion" } }] } })
  })
})
