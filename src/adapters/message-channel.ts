/**
 * An authenticated message channel: the secure channel and keepalive of
 * PROTOCOL.md (the pure machine in src/core/connection.ts) run over a frame
 * link. Used by clients for their hop to a relay and, over a tunnel, end to
 * end between two clients.
 *
 * A channel is a driver with no fiber and no timer of its own, in the shape
 * of the relay's per-connection driver (relay-hop.ts): frames arrive by
 * callback from its link (a stream's data events through the frame decoder,
 * or, inside a tunnel, the outer channel's deliveries), go through the
 * machine, and what the machine delivers goes into the inbox; the frames the
 * machine emits are written to the link at once, in the order it numbered
 * them. Nothing hops between fibers per frame, so a message costs the
 * machine's work and the socket's, no scheduling. `receive` and `send` are
 * Effects that suspend on a waiter only when there is nothing to take or the
 * transport is full.
 *
 * Backpressure: `send` completes once its frames were written, at once when
 * the transport took them under its high-water mark, else on the next
 * `drain`; so one slow peer holds at most one message per sender here. The
 * inbox holds at most `inboxBytes` (plus the rest of one chunk); when it is
 * full the channel pauses its link (`stream.pause()`; inside a tunnel, the
 * outer channel's delivery, which pauses the outer stream in turn), so TCP
 * pushes back on the sender, and `receive` resumes it once the inbox is
 * below the bound again. While we pause reading, the peer's silence is not
 * held against it (we are the ones not reading).
 *
 * Ticks are driven by the owner (`tick`; the client's one shared timer,
 * channel-ticker.ts): the channel has no timer of its own, and a tick never
 * waits on a slow socket, so keepalive still judges a peer whose writes are
 * stuck.
 *
 * Closing the channel's scope ends it and waits, up to CLOSE_FLUSH_MS, for
 * the transport to drain what was already written (there is no queue of our
 * own left to flush).
 */
import * as Data from "effect/Data"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Scope from "effect/Scope"
import type { CryptoService } from "./crypto.ts"
import { LinkError, type FrameLink, type FrameLinkHandlers } from "./frame-link.ts"
import { CLOSED_BEFORE_VERSION, type ChannelFailureDetail, type ChannelFailureReason } from "../core/connect-outcome.ts"
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
   * frame, and what was written and the transport has not sent yet.
   */
  readonly bufferedBytes: () => number
}

/** What a channel needs beyond the link. */
export interface ChannelOptions {
  readonly crypto: CryptoService
  readonly identity: Identity
  /** The key the peer must prove; undefined accepts any (a relay accepting clients). */
  readonly expectedRemotePublicKey?: Uint8Array | undefined
  /** Wall-clock bound on the handshake. */
  readonly handshakeTimeoutMs?: number
  /** Inbox bound in bytes before the channel pauses its link (default 256 KiB). */
  readonly inboxBytes?: number
  /** Machine settings (padding, rekey interval, keepalive ticks). */
  readonly machine?: Partial<
    Pick<ConnectionConfig, "maxPaddingBytes" | "rekeyIntervalTicks" | "keepaliveTicks" | "maxExpansion" | "peerRekeyLimit">
  >
}

/** How long closing a channel waits for frames already written to leave the transport's buffer. */
export const CLOSE_FLUSH_MS = 1000

/** Default inbox bound: enough to keep a fast link busy, small enough for 10k tunnels. */
export const DEFAULT_INBOX_BYTES = 256 * 1024

// Why the link is paused; it resumes when none is left.
const PAUSED_BY_INBOX = 1 // the inbox is at its bound
const PAUSED_BY_RIDER = 2 // the tunnel channel riding on this one is full
const PAUSED_BY_END = 4 // the channel has ended: nothing more is read
// Paused by us, so the peer's silence does not count against it.
const PAUSED_BY_US = PAUSED_BY_INBOX | PAUSED_BY_RIDER

/**
 * Runs the handshake over `link` and returns the channel once the peer is
 * authenticated. The channel lives in the current scope: closing it ends the
 * channel and waits (up to CLOSE_FLUSH_MS) until what was written has left
 * the transport's buffer.
 */
export const establishChannel = (
  link: FrameLink,
  options: ChannelOptions
): Effect.Effect<ChannelDriver, ChannelError, Scope.Scope> =>
  Effect.gen(function*() {
    const channel = new ChannelDriver(link, options)
    yield* Effect.addFinalizer(() => channel.closeAndFlush)
    channel.start()
    const handshake = Deferred.await(channel.authenticated)
    if (options.handshakeTimeoutMs === undefined) yield* handshake
    else {
      yield* handshake.pipe(
        Effect.timeoutOrElse({
          duration: options.handshakeTimeoutMs,
          orElse: () => {
            const error = new ChannelError({
              reason: "HandshakeTimeout",
              message: `handshake did not finish within ${options.handshakeTimeoutMs} ms`
            })
            channel.end(error)
            return Effect.fail(error)
          }
        })
      )
    }
    return channel
  })

/**
 * One channel; see the module header. Made by `establishChannel`, which
 * hands it out once the peer is authenticated.
 */
export class ChannelDriver implements MessageChannel {
  remotePublicKey: Uint8Array = EMPTY
  /** Completes with the peer's key once authenticated, fails if the channel ends first. */
  readonly authenticated = Deferred.makeUnsafe<Uint8Array, ChannelError>()

  private readonly link: FrameLink
  private readonly inboxLimit: number
  private readonly config: ConnectionConfig
  // Made at Start (inside `step`, like every use of the machine).
  private machine: Connection | undefined
  private readonly endedDeferred = Deferred.makeUnsafe<ChannelError>()
  private endError: ChannelError | undefined
  private paused = 0
  // Inbox: messages delivered by the machine, not taken yet. An entry keeps
  // the buffer it views alive (the unpacked KaMessage), so that buffer's
  // whole size counts toward the bound, not just the payload.
  private inbox: Array<Uint8Array> = []
  private inboxHead = 0
  private inboxBytes = 0
  // Fibers waiting in `receive` for a message or the end.
  private receivers: Array<() => void> = []
  // Fibers waiting for the link's `drain` (a write returned false).
  private drainWaiters: Array<() => void> = []
  // A write returned false and no `drain` came since.
  private full = false
  // A tunnel channel riding on this one: it takes every message as a frame.
  private rider: FrameLinkHandlers | undefined
  private riderPaused = false
  private riderEnded = false
  private pumping = false

  constructor(link: FrameLink, options: ChannelOptions) {
    this.link = link
    this.inboxLimit = options.inboxBytes ?? DEFAULT_INBOX_BYTES
    this.config = {
      crypto: options.crypto,
      identity: options.identity,
      expectedRemotePublicKey: options.expectedRemotePublicKey,
      random: options.crypto.randomBytes,
      // The adapter bounds the handshake in wall time (handshakeTimeoutMs).
      handshakeTimeoutTicks: Infinity,
      ...options.machine
    }
  }

  /** Starts the machine (our first handshake frame), then the link. */
  start(): void {
    // Start first: a frame fed before Start is a misuse the machine throws
    // on, and a tunnel's outer channel may hand over a frame at once.
    this.step((machine) => machine.start())
    this.link.start({
      frame: (frame) => this.onFrame(frame),
      drain: () => this.onDrain(),
      end: (error) => this.end(fromLinkError(error))
    })
  }

  // ------------------------------------------------------------ MessageChannel

  readonly receive: Effect.Effect<Uint8Array, ChannelError> = Effect.suspend(() => {
    const message = this.take()
    if (message !== undefined) return Effect.succeed(message)
    if (this.endError !== undefined) return Effect.fail(this.endError)
    return Effect.andThen(waitOn(this.receivers), this.receive)
  })


  readonly send = (data: Uint8Array): Effect.Effect<void, ChannelError> =>
    Effect.suspend(() => {
      if (this.endError !== undefined) return Effect.fail(this.endError)
      if (this.step((machine) => machine.send(data))) return Effect.void
      return this.awaitDrain
    })

  // Waits for the next drain; fails if the channel ends first.
  private readonly awaitDrain: Effect.Effect<void, ChannelError> = Effect.andThen(
    Effect.suspend(() => (this.full && this.endError === undefined ? waitOn(this.drainWaiters) : Effect.void)),
    Effect.suspend(() => (this.endError !== undefined ? Effect.fail(this.endError) : Effect.void))
  )

  readonly tick = (): void => {
    if (this.endError !== undefined) return
    const receivePaused = (this.paused & PAUSED_BY_US) !== 0
    this.step((machine) => machine.tick(receivePaused))
  }

  readonly close: Effect.Effect<void> = Effect.sync(() => this.end(LOCAL_CLOSE))

  readonly ended: Effect.Effect<ChannelError> = Deferred.await(this.endedDeferred)

  readonly bufferedBytes = (): number => this.inboxBytes + this.link.bufferedBytes()

  /**
   * Ends the channel and waits, up to CLOSE_FLUSH_MS, until frames already
   * written have left the transport's buffer: a relay that refuses a client
   * has written its own handshake frame first, and the client needs it to
   * say which key the relay holds.
   */
  readonly closeAndFlush: Effect.Effect<void> = Effect.suspend(() => {
    this.end(LOCAL_CLOSE)
    if (!this.full) return Effect.void
    return waitOn(this.drainWaiters).pipe(
      Effect.timeoutOrElse({ duration: CLOSE_FLUSH_MS, orElse: () => Effect.void })
    )
  })

  /** Ends the channel with `error` (the first end wins). */
  end(error: ChannelError): void {
    if (this.endError !== undefined) return
    this.endError = error
    this.pause(PAUSED_BY_END)
    Deferred.doneUnsafe(this.authenticated, Exit.fail(error))
    Deferred.doneUnsafe(this.endedDeferred, Exit.succeed(error))
    wakeAll(this.receivers)
    this.receivers = []
    const drainWaiters = this.drainWaiters
    // Those still waiting for a drain are told the channel ended; a close's
    // flush waits on for the transport.
    this.drainWaiters = []
    for (const waiter of drainWaiters) waiter()
    this.pump()
  }

  // ---------------------------------------------------------------- tunnel

  /**
   * A frame link inside the tunnel this channel carries: each message of
   * this channel is one frame of the inner channel. Messages go to the inner
   * channel as they are delivered (this inbox holds them only while it is
   * paused), writes are this channel's sends, and pausing the inner link
   * pauses this channel's own link.
   */
  tunnelLink(): FrameLink {
    return {
      start: (handlers) => {
        if (this.rider !== undefined) throw new Error("a channel carries one tunnel")
        this.rider = handlers
        this.pump()
      },
      write: (frames) => {
        if (this.endError !== undefined) return true // dropped: the inner channel hears the end
        let flushed = true
        for (const frame of frames) if (!this.step((machine) => machine.send(frame))) flushed = false
        return flushed
      },
      pause: () => {
        this.riderPaused = true
        this.pause(PAUSED_BY_RIDER)
      },
      resume: () => {
        this.riderPaused = false
        this.pump()
        if (!this.riderPaused) this.resume(PAUSED_BY_RIDER)
      },
      bufferedBytes: () => this.bufferedBytes()
    }
  }

  // Hands the inbox to the rider while it takes frames; once this channel
  // has ended, everything left goes over (the inner channel's own bound is
  // exceeded by at most this inbox) and the rider hears the end.
  private pump(): void {
    const rider = this.rider
    if (rider === undefined || this.pumping || this.riderEnded) return
    this.pumping = true
    try {
      while (this.inboxHead < this.inbox.length && (!this.riderPaused || this.endError !== undefined)) {
        rider.frame(this.take()!)
      }
      if (this.endError !== undefined && this.inboxHead === this.inbox.length) {
        this.riderEnded = true
        rider.end(toLinkError(this.endError))
        rider.drain()
      }
    } finally {
      this.pumping = false
    }
  }

  // ---------------------------------------------------------------- events

  private onFrame(frame: Uint8Array): void {
    if (this.endError !== undefined) return
    try {
      this.step((machine) => machine.handleFrame(frame))
    } catch (defect) {
      // The machine throws only on our own misuse: end rather than throw
      // into the transport's event handler.
      this.end(new ChannelError({ reason: "Reset", message: `channel stopped unexpectedly: ${String(defect)}` }))
    }
    if (this.inboxHead < this.inbox.length) {
      if (this.rider !== undefined) this.pump()
      else {
        const receivers = this.receivers
        this.receivers = []
        wakeAll(receivers)
      }
      if (this.inboxBytes >= this.inboxLimit) this.pause(PAUSED_BY_INBOX)
    }
  }

  private onDrain(): void {
    this.full = false
    const waiters = this.drainWaiters
    this.drainWaiters = []
    wakeAll(waiters)
    this.rider?.drain()
  }

  // ---------------------------------------------------------------- machine

  // Feeds the connection machine one call and carries out what it queued:
  // the one place the machine is made and touched. Frames go to the link in
  // one write, in the machine's order; true when that write did not pass the
  // transport's high-water mark (`full` says a drain is awaited).
  private step(feed: (machine: Connection) => void): boolean {
    const machine = (this.machine ??= new Connection(this.config))
    feed(machine)
    let frames: Array<Uint8Array> | undefined
    for (let frame = machine.pollTransmit(); frame !== undefined; frame = machine.pollTransmit()) {
      if (frames === undefined) frames = []
      frames.push(frame)
    }
    let closed: ChannelError | undefined
    for (let event = machine.pollEvent(); event !== undefined; event = machine.pollEvent()) {
      switch (event._tag) {
        case "Deliver": {
          // The payload is unpacked here: the application reads it anyway,
          // and the inbox then keeps only its buffer alive.
          const data = event.data
          this.inbox.push(data)
          this.inboxBytes += data.buffer.byteLength
          break
        }
        case "Authenticated":
          this.remotePublicKey = event.remotePublicKey
          Deferred.doneUnsafe(this.authenticated, Exit.succeed(event.remotePublicKey))
          break
        case "Closed":
          closed = new ChannelError({ reason: "Protocol", detail: event.error.reason, message: event.error.message })
          break
        default:
          return absurd(event)
      }
    }
    let flushed = true
    if (frames !== undefined && !this.link.write(frames)) {
      this.full = true
      flushed = false
    }
    // Frames written before the close still go out (best effort).
    if (closed !== undefined) this.end(closed)
    return flushed
  }

  // ---------------------------------------------------------------- inbox

  private take(): Uint8Array | undefined {
    if (this.inboxHead === this.inbox.length) return undefined
    const message = this.inbox[this.inboxHead]!
    this.inbox[this.inboxHead++] = EMPTY
    this.inboxBytes -= message.buffer.byteLength
    if (this.inboxHead === this.inbox.length) {
      this.inbox = []
      this.inboxHead = 0
    }
    if (this.inboxBytes < this.inboxLimit) this.resume(PAUSED_BY_INBOX)
    return message
  }

  private pause(why: number): void {
    if (this.paused === 0) this.link.pause()
    this.paused |= why
  }

  private resume(why: number): void {
    if ((this.paused & why) === 0) return
    this.paused &= ~why
    if (this.paused === 0) this.link.resume()
  }
}

/**
 * A frame link inside a relayed tunnel: each message of the outer channel is
 * one frame of the inner, end-to-end channel (no length prefix, no version).
 */
export const tunnelFrameLink = (outer: ChannelDriver): FrameLink => outer.tunnelLink()

// Suspends until one of `waiters` is called (the caller re-checks its condition).
const waitOn = (waiters: Array<() => void>): Effect.Effect<void> =>
  Effect.callback<void>((resume) => {
    const waiter = () => resume(Effect.void)
    waiters.push(waiter)
    return Effect.sync(() => {
      const i = waiters.indexOf(waiter)
      if (i >= 0) waiters.splice(i, 1)
    })
  })

const wakeAll = (waiters: ReadonlyArray<() => void>): void => {
  for (const waiter of waiters) waiter()
}

const EMPTY = new Uint8Array(0)

// Every channel closed by its owner ends with this one value: it says all
// there is to say, and building an error (its stack trace) per close cost
// more than the rest of the close.
const LOCAL_CLOSE = new ChannelError({ reason: "LocalClose", message: "channel closed locally" })

const fromLinkError = (error: LinkError): ChannelError =>
  new ChannelError({
    reason: error.reason,
    ...(error.beforeVersion === true ? { detail: CLOSED_BEFORE_VERSION } : {}),
    message: error.message
  })

const toLinkError = (error: ChannelError): LinkError =>
  new LinkError({
    reason: error.reason === "Closed" || error.reason === "LocalClose" ? "Closed" : "Reset",
    message: `tunnel: ${error.message}`
  })
