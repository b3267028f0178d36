/**
 * Peer streams over an in-memory link (no relay): the half-close convention
 * end to end through two real end-to-end channels, the errors a broken or
 * vanished peer causes, misuse, and the Node Duplex on top.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Option from "effect/Option"
import * as Scope from "effect/Scope"
import { PeerDuplex } from "../src/adapters/client/peer-duplex.ts"
import { makePeerStream, type PeerStream } from "../src/adapters/client/tunnel-stream.ts"
// auto: node:crypto on Node (as before), noble where node:crypto lacks a primitive (Bun), so test:runtimes can run this file.
import { autoCryptoService } from "../src/adapters/crypto.ts"
const nodeCryptoService = autoCryptoService()
import { type FrameLink, type FrameLinkHandlers, LinkError } from "../src/adapters/frame-link.ts"
import { establishChannel, type MessageChannel } from "../src/adapters/message-channel.ts"
import { newIdentity, randomData, readAll, sha256, writeAllAndEnd } from "./support/client-harness.ts"

/**
 * Two frame links joined in memory, each direction holding at most 4 frames
 * (a write past that returns false, and `drain` follows once the reader has
 * taken them all, so a reader that stops holds the writer back, like TCP);
 * frames arrive from a later task, as from a socket. `end` ends both like a
 * dropped connection.
 */
const linkPair = Effect.sync(() => {
  interface Direction {
    readonly frames: Array<Uint8Array>
    reader: FrameLinkHandlers | undefined
    writer: FrameLinkHandlers | undefined
    paused: boolean
    writerWaits: boolean
    scheduled: boolean
    endDelivered: boolean
  }
  const direction = (): Direction => ({
    frames: [],
    reader: undefined,
    writer: undefined,
    paused: false,
    writerWaits: false,
    scheduled: false,
    endDelivered: false
  })
  const aToB = direction()
  const bToA = direction()
  let ended: LinkError | undefined
  // Frames written before the end still arrive, then the end.
  const flush = (d: Direction) => {
    d.scheduled = false
    if (d.reader === undefined || d.endDelivered) return
    while (!d.paused && d.frames.length > 0) d.reader.frame(d.frames.shift()!)
    if (d.frames.length === 0 && d.writerWaits) {
      d.writerWaits = false
      d.writer?.drain()
    }
    if (d.frames.length === 0 && ended !== undefined) {
      d.endDelivered = true
      d.reader.end(ended)
    }
  }
  const schedule = (d: Direction) => {
    if (d.scheduled) return
    d.scheduled = true
    setImmediate(() => flush(d))
  }
  const end = (reason: "Closed" | "Reset") =>
    Effect.sync(() => {
      if (ended !== undefined) return
      const error = new LinkError({ reason, message: `link ${reason}` })
      ended = error
      for (const d of [aToB, bToA]) {
        d.writer?.drain()
        schedule(d)
      }
    })
  const link = (incoming: Direction, outgoing: Direction): FrameLink => ({
    start: (handlers) => {
      incoming.reader = handlers
      outgoing.writer = handlers
      schedule(incoming)
    },
    write: (frames) => {
      if (ended !== undefined) return true
      outgoing.frames.push(...frames)
      schedule(outgoing)
      if (outgoing.frames.length < 4) return true
      outgoing.writerWaits = true
      return false
    },
    pause: () => {
      incoming.paused = true
    },
    resume: () => {
      incoming.paused = false
      schedule(incoming)
    },
    bufferedBytes: () => 0
  })
  return { a: link(bToA, aToB), b: link(aToB, bToA), end }
})

/** Two authenticated channels over a link pair, each in its own scope. */
const channelPair = Effect.gen(function*() {
  const pair = yield* linkPair
  const alice = newIdentity()
  const bob = newIdentity()
  const scopeA = yield* Scope.make()
  const scopeB = yield* Scope.make()
  // Closing either side's scope drops the connection, as closing a socket would.
  yield* Scope.addFinalizer(scopeA, pair.end("Closed"))
  yield* Scope.addFinalizer(scopeB, pair.end("Closed"))
  const [a, b] = yield* Effect.all([
    establishChannel(pair.a, { crypto: nodeCryptoService, identity: alice, expectedRemotePublicKey: bob.publicKey }).pipe(
      Scope.provide(scopeA)
    ),
    establishChannel(pair.b, { crypto: nodeCryptoService, identity: bob, expectedRemotePublicKey: alice.publicKey }).pipe(
      Scope.provide(scopeB)
    )
  ], { concurrency: 2 })
  return { a, b, scopeA, scopeB, end: pair.end }
})

const streamPair = (maxMessageBytes?: number) =>
  Effect.gen(function*() {
    const pair = yield* channelPair
    const options = maxMessageBytes === undefined ? {} : { maxMessageBytes }
    const a = yield* makePeerStream({ channel: pair.a, scope: pair.scopeA, relay: "test", ...options })
    const b = yield* makePeerStream({ channel: pair.b, scope: pair.scopeB, relay: "test", ...options })
    return { ...pair, streamA: a, streamB: b }
  })

const bytes = (...values: Array<number>) => new Uint8Array(values)

const readAllEffect = (stream: PeerStream) =>
  Effect.gen(function*() {
    const out: Array<number> = []
    while (true) {
      const chunk = yield* stream.read
      if (Option.isNone(chunk)) return out
      out.push(...chunk.value)
    }
  })

describe("peer stream", () => {
  it.live("half close: each side ends after the other, everything arrives, both finish", () =>
    Effect.gen(function*() {
      const { streamA, streamB } = yield* streamPair(3)
      yield* streamA.write(bytes(1, 2, 3, 4, 5, 6, 7))
      yield* streamA.end
      yield* streamA.end // idempotent
      expect(yield* readAllEffect(streamB)).toEqual([1, 2, 3, 4, 5, 6, 7])
      // B can still answer after A's end.
      yield* streamB.write(bytes(9))
      yield* streamB.end
      expect(yield* readAllEffect(streamA)).toEqual([9])
      yield* streamA.done
      yield* streamB.done
    }))

  it.live("an empty write sends nothing (it would be a half close); a write after end is refused", () =>
    Effect.gen(function*() {
      const { streamA, streamB } = yield* streamPair()
      yield* streamA.write(new Uint8Array(0))
      yield* streamA.write(bytes(42))
      yield* streamA.end
      const error = yield* Effect.flip(streamA.write(bytes(1)))
      expect(error.reason).toBe("WriteAfterEnd")
      expect(yield* readAllEffect(streamB)).toEqual([42])
    }))

  it.live("bytes a broken peer sends after its end never reach the application", () =>
    Effect.gen(function*() {
      const { a, streamB } = yield* streamPair()
      // A raw channel breaks the convention: an end, then more bytes.
      yield* a.send(new Uint8Array(0))
      yield* a.send(bytes(1))
      expect(Option.isNone(yield* streamB.read)).toBe(true)
      expect(Option.isNone(yield* streamB.read)).toBe(true)
    }))

  it.live("a peer whose scope closes mid-stream tells us it aborted: an error, not a clean end", () =>
    Effect.gen(function*() {
      const { streamA, streamB, scopeA } = yield* streamPair()
      yield* streamA.write(bytes(5))
      yield* Scope.close(scopeA, Exit.void)
      expect(Option.getOrThrow(yield* streamB.read)).toEqual(bytes(5))
      const error = yield* Effect.flip(streamB.read)
      expect(error).toMatchObject({ reason: "PeerError", peerCode: "aborted", message: "the peer aborted the stream" })
    }))

  it.live("a tunnel that closes without a word from the peer fails the reader (ClosedEarly), not a clean end", () =>
    Effect.gen(function*() {
      // A raw channel on the peer's side, with no stream to say anything: it sends, then its link closes.
      const pair = yield* channelPair
      const streamB = yield* makePeerStream({ channel: pair.b, scope: pair.scopeB, relay: "test" })
      yield* pair.a.send(bytes(5))
      yield* Scope.close(pair.scopeA, Exit.void)
      expect(Option.getOrThrow(yield* streamB.read)).toEqual(bytes(5))
      const error = yield* Effect.flip(streamB.read)
      expect(error.reason).toBe("ClosedEarly")
      expect(error.message).toContain("the peer had not finished sending")
    }))

  it.live("a failed link fails an idle stream at once, without a read or write", () =>
    Effect.gen(function*() {
      const { streamB, end } = yield* streamPair()
      yield* end("Reset")
      const error = yield* Effect.flip(streamB.done)
      expect(error.reason).toBe("ClosedEarly")
    }))

  it.live("abort closes the tunnel: the peer sees that we aborted, and why when we say", () =>
    Effect.gen(function*() {
      const { streamA, streamB } = yield* streamPair()
      yield* streamA.abort("changed my mind")
      expect((yield* Effect.flip(streamA.done)).message).toBe("changed my mind")
      const seen = yield* Effect.flip(readAllEffect(streamB))
      expect(seen).toMatchObject({ reason: "PeerError", peerCode: "aborted", message: "the peer aborted the stream" })

      const pair = yield* streamPair()
      yield* pair.streamA.write(bytes(3))
      yield* pair.streamA.abort("the target refused", { code: "local-refused", text: "ECONNREFUSED" })
      expect(Option.getOrThrow(yield* pair.streamB.read)).toEqual(bytes(3))
      const refused = yield* Effect.flip(pair.streamB.read)
      expect(refused).toMatchObject({
        reason: "PeerError",
        peerCode: "local-refused",
        message: "the peer's local service refused the connection (ECONNREFUSED)"
      })
    }))
})

describe("PeerDuplex", () => {
  it.live("behaves like a TCP socket with allowHalfOpen: end, then read the answer to its end", () =>
    Effect.gen(function*() {
      const { streamA, streamB } = yield* streamPair()
      const client = new PeerDuplex(streamA)
      const server = new PeerDuplex(streamB)
      expect(client.remotePublicKey).toMatch(/^[0-9a-f]{64}$/)
      // The server answers with the hash of everything it read.
      const request = randomData(1_000_000)
      const served = Effect.promise(async () => {
        const chunks: Array<Buffer> = []
        for await (const chunk of server) chunks.push(chunk as Buffer)
        server.end(sha256(Buffer.concat(chunks)))
      })
      const [, answer] = yield* Effect.all([
        served,
        Effect.promise(() => Promise.all([writeAllAndEnd(client, request), readAll(client)]))
      ], { concurrency: 2 })
      expect(answer[1].toString()).toBe(sha256(request))
      // Both halves ended: the Duplex closes by itself (and its tunnel with it).
      if (!client.closed) yield* Effect.promise(() => new Promise((resolve) => client.once("close", resolve)))
      expect(client.destroyed).toBe(true)
    }))

  it.live("a Duplex whose scope we close (a listener closing) closes without an 'error' event", () =>
    Effect.gen(function*() {
      const { streamA, scopeA } = yield* streamPair()
      const client = new PeerDuplex(streamA)
      const errors: Array<Error> = []
      client.on("error", (error) => errors.push(error))
      yield* Scope.close(scopeA, Exit.void)
      if (!client.closed) yield* Effect.promise(() => new Promise((resolve) => client.once("close", resolve)))
      expect(client.destroyed).toBe(true)
      expect(errors).toEqual([])
    }))

  it.live("small writes queued behind one in flight go out as few large messages, every byte in order", () =>
    Effect.gen(function*() {
      const { streamA, streamB } = yield* streamPair()
      const client = new PeerDuplex(streamA)
      const pieces = Array.from({ length: 2000 }, (_, i) => Buffer.from(randomData(100 + (i % 7))))
      for (const piece of pieces) client.write(piece)
      client.end()
      // Each message the peer reads is one chunk: count them.
      let messages = 0
      const received: Array<Uint8Array> = []
      while (true) {
        const chunk = yield* streamB.read
        if (Option.isNone(chunk)) break
        messages++
        received.push(chunk.value)
      }
      expect(Buffer.concat(received).equals(Buffer.concat(pieces))).toBe(true)
      expect(messages).toBeLessThan(pieces.length / 10)
      client.destroy()
    }))

  it.live("leaving a for-await loop early destroys the Duplex (as on Node, on every runtime)", () =>
    Effect.gen(function*() {
      const { streamA, streamB } = yield* streamPair()
      const client = new PeerDuplex(streamA)
      const server = new PeerDuplex(streamB)
      client.write("first")
      yield* Effect.promise(async () => {
        for await (const _chunk of server) break
      })
      expect(server.destroyed).toBe(true)
      client.destroy()
    }))

  it.live("a tunnel error destroys the Duplex with a PeerStreamError", () =>
    Effect.gen(function*() {
      const { streamA, end } = yield* streamPair()
      const socket = new PeerDuplex(streamA)
      const failed = Effect.promise(() => new Promise<Error>((resolve) => socket.once("error", resolve)))
      yield* end("Reset")
      const error = yield* failed
      expect(error.name).toBe("PeerStreamError")
      expect(error.message).toContain("Reset")
    }))

  it.live("writes wait while the peer does not read (backpressure), then all arrive", () =>
    Effect.gen(function*() {
      const { streamA, streamB } = yield* streamPair()
      const writer = new PeerDuplex(streamA)
      let written = 0
      const chunk = Buffer.alloc(64 * 1024, 1)
      const pump = Effect.promise(async () => {
        for (let i = 0; i < 64; i++) {
          written += chunk.length
          if (!writer.write(chunk)) await new Promise((resolve) => writer.once("drain", resolve))
        }
        writer.end()
      })
      const fiber = yield* Effect.forkChild(pump)
      yield* Effect.sleep(200)
      // Nobody reads B: the writer is held back, far below the 4 MiB it wants to send.
      expect(written).toBeLessThan(2 * 1024 * 1024)
      const total = (yield* readAllEffect(streamB)).length
      expect(total).toBe(64 * chunk.length)
      yield* Fiber.join(fiber)
    }))
})
