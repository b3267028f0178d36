/**
 * An authenticated message channel: the secure channel and keepalive of
 * PROTOCOL.md (the pure machine in src/core/connection.ts) run over a frame
 * link. Used by clients for their hop to a relay and, over a tunnel, end to
 * end between two clients.
 *
 * Fibers: a reader (link -> machine -> inbox) and a writer (outbox -> link)
 * per channel, both in the caller's scope. The machine is stepped
 * synchronously by whoever has an event (reader, sender, ticker); the frames
 * it produces go to the outbox in the order the machine numbered them, and
 * only the writer writes, so the peer sees them in that order. A tick never
 * waits for a slow socket, so keepalive still judges a peer whose writes are
 * stuck.
 *
 * Backpressure: `send` completes once its frames were handed to the link
 * (which waits while the socket's buffer is full), so one slow peer holds at
 * most one message per sender here. The inbox holds at most `inboxBytes`
 * (plus one message); when it is full the reader stops reading the link, so
 * TCP pushes back on the sender. While the reader waits on a full inbox, or
 * the link's read throttle holds it back, the peer's silence is not held
 * against it (we are the ones not reading).
 *
 * Ticks are driven by the owner (`tick`), so a server with thousands of
 * channels runs one timer, not thousands.
 */
import * as Data from "effect/Data"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Scope from "effect/Scope"
import type { CryptoService } from "./crypto.ts"
import { LinkError, type FrameLink } from "./frame-link.ts"
import type { ChannelFailureDetail, ChannelFailureReason } from "../core/connect-outcome.ts"
import { Connection, type ConnectionConfig } from "../core/connection.ts"
import { absurd } from "../core/absurd.ts"
import type { Identity } from "../core/keys.ts"

/** Why a message channel ended. */
export class ChannelError extends Data.TaggedError("ChannelError")<{
  readonly reason: ChannelFailureReason
  /** The machine's own reason for "Protocol" (e.g. BadSignature, KeepaliveTimeout). */
  readonly detail?: ChannelFailureDetail
  readonly message: string
}> {}

/** One end of an authenticated message channel. */
export interface MessageChannel {
  /** The peer's Ed25519 identity, proven in the handshake. */
  readonly remotePublicKey: Uint8Array
  /** The next message, in order; fails once the channel has ended and every earlier message was taken. */
  readonly receive: Effect.Effect<Uint8Array, ChannelError>
  /** Sends one message; completes once the transport took it (waits while the peer is slow). */
  readonly send: (data: Uint8Array) => Effect.Effect<void, ChannelError>
  /** Advances the channel's clock by one tick (keepalive, rekey); never waits. */
  readonly tick: () => void
  /** Ends the channel with LocalClose (idempotent); messages already sent stay sent. */
  readonly close: Effect.Effect<void>
  /** Completes with the reason once the channel has ended. */
  readonly ended: Effect.Effect<ChannelError>
  /**
   * Bytes this channel holds (memory accounting): received messages not yet
   * taken by `receive` (their whole backing buffers), the link's partial
   * and decoded-ahead frames, and frames queued for the link.
   */
  readonly bufferedBytes: () => number
}

// A received message together with the packed KaMessage it came in (which
// keeps its own backing buffer alive).
interface ForwardableMessage {
  readonly data: Uint8Array
  readonly packed: Uint8Array
}

/** What a channel needs beyond the link. */
export interface ChannelOptions {
  readonly crypto: CryptoService
  readonly identity: Identity
  /** The key the peer must prove; undefined accepts any (a relay accepting clients). */
  readonly expectedRemotePublicKey?: Uint8Array | undefined
  /** Wall-clock bound on the handshake. */
  readonly handshakeTimeoutMs?: number
  /** Inbox bound in bytes before the reader stops reading the link (default 256 KiB). */
  readonly inboxBytes?: number
  /** Machine settings (padding, rekey interval, keepalive ticks). */
  readonly machine?: Partial<
    Pick<ConnectionConfig, "maxPaddingBytes" | "rekeyIntervalTicks" | "keepaliveTicks" | "maxExpansion" | "peerRekeyLimit">
  >
}

/** How long closing a channel waits for frames already queued to reach the transport. */
export const CLOSE_FLUSH_MS = 1000

/** Default inbox bound: enough to keep a fast link busy, small enough for 10k tunnels. */
export const DEFAULT_INBOX_BYTES = 256 * 1024

/**
 * Runs the handshake over `link` and returns the channel once the peer is
 * authenticated. The reader fiber and the channel live in the current scope.
 */
export const establishChannel = (
  link: FrameLink,
  options: ChannelOptions
): Effect.Effect<MessageChannel, ChannelError, Scope.Scope> =>
  Effect.gen(function*() {
    const scope = yield* Effect.scope
    const inboxLimit = options.inboxBytes ?? DEFAULT_INBOX_BYTES
    const machine = new Connection({
      crypto: options.crypto,
      identity: options.identity,
      expectedRemotePublicKey: options.expectedRemotePublicKey,
      random: options.crypto.randomBytes,
      // The adapter bounds the handshake in wall time (handshakeTimeoutMs).
      handshakeTimeoutTicks: Infinity,
      ...options.machine
    })
    const authenticated = yield* Deferred.make<Uint8Array, ChannelError>()
    const endedDeferred = yield* Deferred.make<ChannelError>()
    let ended: ChannelError | undefined

    // Inbox: messages delivered by the machine, waiting for `receive`.
    // An entry keeps the buffers it views alive (the unpacked KaMessage and
    // ChannelMessage), so their whole size counts toward the bound, not just
    // the payload: a small payload in a large unpacked message costs what it holds.
    const inbox: Array<ForwardableMessage> = []
    let inboxHead = 0
    let inboxBytes = 0
    let readerBlocked = false
    const receiveSignal = new Signal()
    const spaceSignal = new Signal()

    // Outbox: frames in machine order; `queuedSeq` counts frames queued,
    // `writtenSeq` frames the link has taken.
    let outbox: Array<Uint8Array> = []
    let outboxBytes = 0
    let queuedSeq = 0
    let writtenSeq = 0
    const outboxSignal = new Signal()
    const writtenSignal = new Signal()

    const end = (error: ChannelError): void => {
      if (ended !== undefined) return
      ended = error
      Deferred.doneUnsafe(authenticated, Exit.fail(error))
      Deferred.doneUnsafe(endedDeferred, Exit.succeed(error))
      receiveSignal.wake()
      spaceSignal.wake()
      writtenSignal.wake()
      outboxSignal.wake()
    }

    // Feeds the machine one call and applies what it queued; returns the
    // sequence number the outbox must reach for those frames to be written.
    const step = (feed: (machine: Connection) => void): number => {
      if (ended !== undefined) return queuedSeq
      feed(machine)
      for (let frame = machine.pollTransmit(); frame !== undefined; frame = machine.pollTransmit()) {
        outbox.push(frame)
        outboxBytes += frame.length
        queuedSeq++
      }
      for (let event = machine.pollEvent(); event !== undefined; event = machine.pollEvent()) {
        switch (event._tag) {
          case "Deliver":
            inbox.push(event)
            inboxBytes += heldBy(event)
            receiveSignal.wake()
            break
          case "Authenticated":
            Deferred.doneUnsafe(authenticated, Exit.succeed(event.remotePublicKey))
            break
          case "Closed":
            // Frames queued before the close are still written (best effort).
            end(new ChannelError({ reason: "Protocol", detail: event.error.reason, message: event.error.message }))
            break
          default:
            return absurd(event)
        }
      }
      if (outbox.length > 0) outboxSignal.wake()
      return queuedSeq
    }

    const writeLoop: Effect.Effect<void> = Effect.gen(function*() {
      while (true) {
        if (outbox.length === 0) {
          if (ended !== undefined) return
          yield* outboxSignal.wait
          continue
        }
        const frames = outbox
        outbox = []
        // Handed to the link: from here the socket's own buffer holds them.
        outboxBytes = 0
        yield* link.write(frames)
        writtenSeq += frames.length
        writtenSignal.wake()
      }
    }).pipe(Effect.catch((error: LinkError) => Effect.sync(() => end(fromLinkError(error)))), endsChannel)

    const readLoop: Effect.Effect<void> = Effect.gen(function*() {
      while (ended === undefined) {
        if (inboxBytes >= inboxLimit) {
          readerBlocked = true
          yield* spaceSignal.wait
          readerBlocked = false
          continue
        }
        const frame = yield* link.read
        step((machine) => machine.handleFrame(frame))
      }
    }).pipe(Effect.catch((error: LinkError) => Effect.sync(() => end(fromLinkError(error)))), endsChannel)

    // Whatever stops a loop (even a defect) ends the channel, so no receive
    // or send can wait forever on a loop that is gone.
    function endsChannel<A, E>(loop: Effect.Effect<A, E>): Effect.Effect<A, E> {
      return Effect.ensuring(
        loop,
        Effect.sync(() => end(new ChannelError({ reason: "Reset", message: "channel stopped unexpectedly" })))
      )
    }

    // Start before the reader runs: a frame fed before Start is a misuse the
    // machine throws on, and the peer's first frame may already be buffered.
    step((machine) => machine.start())
    const reader = yield* Effect.forkIn(readLoop, scope)
    const writer = yield* Effect.forkIn(writeLoop, scope)
    // Frames queued before the end are still written, bounded by
    // CLOSE_FLUSH_MS: a relay that refuses a client has queued its own
    // handshake frame first, and the client needs it to say which key the
    // relay holds. The writer stops by itself once the outbox is empty.
    yield* Scope.addFinalizer(
      scope,
      Effect.suspend(() => {
        end(new ChannelError({ reason: "LocalClose", message: "channel closed locally" }))
        return Effect.andThen(
          Fiber.interrupt(reader),
          Fiber.await(writer).pipe(
            Effect.timeoutOrElse({ duration: CLOSE_FLUSH_MS, orElse: () => Fiber.interrupt(writer) }),
            Effect.asVoid
          )
        )
      })
    )

    const handshake = Deferred.await(authenticated)
    const remotePublicKey = yield* (options.handshakeTimeoutMs === undefined
      ? handshake
      : handshake.pipe(
        Effect.timeoutOrElse({
          duration: options.handshakeTimeoutMs,
          orElse: () => {
            const error = new ChannelError({
              reason: "HandshakeTimeout",
              message: `handshake did not finish within ${options.handshakeTimeoutMs} ms`
            })
            end(error)
            return Effect.fail(error)
          }
        })
      ))

    const receiveForwardable: Effect.Effect<ForwardableMessage, ChannelError> = Effect.suspend(() => {
      if (inboxHead < inbox.length) {
        const message = inbox[inboxHead]!
        inbox[inboxHead++] = TAKEN
        inboxBytes -= heldBy(message)
        if (inboxHead === inbox.length) {
          inbox.length = 0
          inboxHead = 0
        }
        if (inboxBytes < inboxLimit) spaceSignal.wake()
        return Effect.succeed(message)
      }
      if (ended !== undefined) return Effect.fail(ended)
      return Effect.flatMap(receiveSignal.wait, () => receiveForwardable)
    })

    // Waits until the outbox has written up to `seq`, or the channel ended.
    const written = (seq: number): Effect.Effect<void, ChannelError> =>
      Effect.suspend(() => {
        if (writtenSeq >= seq) return Effect.void
        if (ended !== undefined) return Effect.fail(ended)
        return Effect.flatMap(writtenSignal.wait, () => written(seq))
      })

    return {
      remotePublicKey,
      receive: Effect.map(receiveForwardable, (message) => message.data),
      send: (data) =>
        Effect.suspend(() => (ended !== undefined ? Effect.fail(ended) : written(step((machine) => machine.send(data))))),
      tick: () => {
        // Paused by us when the inbox is full or a rate limit holds reads back.
        const receivePaused = readerBlocked || (link.readPaused?.() ?? false)
        step((machine) => machine.tick(receivePaused))
      },
      close: Effect.sync(() => end(new ChannelError({ reason: "LocalClose", message: "channel closed locally" }))),
      ended: Deferred.await(endedDeferred),
      bufferedBytes: () => inboxBytes + outboxBytes + link.bufferedBytes()
    } satisfies MessageChannel
  })

// The bytes a delivered message keeps alive: the buffers its views point into.
const heldBy = (message: ForwardableMessage): number =>
  message.data.buffer.byteLength + (message.packed.buffer === message.data.buffer ? 0 : message.packed.buffer.byteLength)

const EMPTY = new Uint8Array(0)
const TAKEN: ForwardableMessage = { data: EMPTY, packed: EMPTY }

/**
 * A wake-up for fibers waiting on a condition they re-check themselves
 * (every waiter is woken; spurious wake-ups are fine).
 */
class Signal {
  private waiters: Array<() => void> = []
  readonly wait: Effect.Effect<void> = Effect.callback<void>((resume) => {
    const waiter = () => resume(Effect.void)
    this.waiters.push(waiter)
    return Effect.sync(() => {
      const i = this.waiters.indexOf(waiter)
      if (i >= 0) this.waiters.splice(i, 1)
    })
  })
  wake(): void {
    if (this.waiters.length === 0) return
    const waiters = this.waiters
    this.waiters = []
    for (const w of waiters) w()
  }
}

const fromLinkError = (error: LinkError): ChannelError => new ChannelError({ reason: error.reason, message: error.message })


/**
 * A frame link inside a relayed tunnel: each message of the outer channel is
 * one frame of the inner, end-to-end channel (no length prefix, no version).
 */
export const tunnelFrameLink = (outer: MessageChannel): FrameLink => ({
  read: Effect.mapError(outer.receive, (e) => toLinkError(e)),
  write: (frames) => Effect.forEach(frames, (f) => outer.send(f), { discard: true }).pipe(Effect.mapError(toLinkError)),
  bufferedBytes: () => outer.bufferedBytes(),
  // A tunnel's pace is set by the hop channels it rides on.
  setReadThrottle: () => {}
})

const toLinkError = (error: ChannelError): LinkError =>
  new LinkError({
    reason: error.reason === "Closed" || error.reason === "LocalClose" ? "Closed" : "Reset",
    message: `tunnel: ${error.message}`
  })
