/**
 * One client connection of the relay (a hop), driven directly by its
 * stream's events and the server's tick: no fiber, no timer, no queue of
 * its own. Everything it decides comes from the pure machines — the
 * connection machine (secure channel + keepalive, core/connection.ts) for
 * the bytes, the relay core (through `HopServer.dispatch`) for what the
 * connection is and when it closes; the hop only carries out what they
 * queue (frames and events polled from the connection, commands from the
 * core).
 *
 * Data path: a chunk arrives → frames (u64 length, capped at 4 KiB for the
 * three frames before authentication) → the machine opens each frame →
 * a delivered message goes to the core (the first message, listen
 * channels), into the held buffer (a connect channel waiting for accept),
 * or straight into the tunnel peer's machine (`sendPacked`: the KaMessage as
 * it came, its payload never unpacked here), which seals it and writes it
 * to the peer's stream. Nothing waits in between: when the peer's stream is
 * past its high-water mark (`write` returned false), this hop stops reading
 * until the peer drains, so TCP pushes back on the sender and the relay
 * holds at most one chunk beyond the streams' own buffers.
 *
 * Reading stops for any of: the core's memory budget (PauseReading), the
 * client's rate limit, a full peer, a full held buffer. While it is stopped
 * because of us, the keepalive does not judge the client's silence.
 *
 * Closing is the core's: an end the hop sees goes to the core as `Ended`,
 * and the core's `Close` says how (`close`). Both end the stream after what
 * was already written; "abort" reads nothing more and cuts the stream at
 * the next tick, "graceful" drops what still arrives until the client's
 * FIN, up to the linger deadline, checked on ticks.
 */
import { Connection, type ConnectionConfig, type ConnectionEvent } from "../core/connection.ts"
import type { Delivered } from "../core/keepalive.ts"
import { absurd } from "../core/absurd.ts"
import { type Identity, publicKeyHex } from "../core/keys.ts"
import { encodeFrameHeader, FRAME_HEADER_LENGTH, FrameDecoder, MAX_FRAME_LENGTH } from "../core/frame.ts"
import {
  type CloseMode,
  type CloseReason,
  type ConnectionId,
  type ConnectionRole,
  endReasonOfChannelFailure,
  type EndReason,
  type RelayEvent,
  type RelayLimit
} from "../core/relay-core.ts"
import { takeTokens, type TokenBucket } from "../core/token-bucket.ts"
import { checkVersion, encodeVersion } from "../core/version.ts"
import type { CryptoService } from "./crypto.ts"
import type { ByteStream, TransportError } from "./transport.ts"

/** What a hop needs from its server: the core, the clock, and where to report. */
export interface HopServer {
  readonly crypto: CryptoService
  readonly identity: Identity
  readonly machine: Pick<ConnectionConfig, "keepaliveTicks" | "rekeyIntervalTicks" | "maxPaddingBytes" | "maxExpansion" | "peerRekeyLimit">
  /**
   * Bytes a hop may hold for its client before reading stops: a connect
   * channel's messages while it waits for accept, and what a tunnel peer's
   * stream has not sent yet.
   */
  readonly heldBytesLimit: number
  readonly closeLingerMs: number
  readonly dispatch: (event: RelayEvent) => void
  readonly roleOf: (id: ConnectionId) => ConnectionRole | undefined
  /** The client proved its key: the rate limit's bucket for it, if any. */
  readonly authenticated: (hop: Hop) => TokenBucket | undefined
  /** Tunnel payload went from one hop to its peer. */
  readonly relayed: (bytes: number) => void
  /** The version or secure-channel handshake failed, for metrics. */
  readonly handshakeFailed: (reason: string) => void
  /** The close is decided (reason, limit, detail): count and log it once. */
  readonly closing: (hop: Hop, reason: CloseReason, detail: string) => void
  /** The stream is gone: forget the hop. */
  readonly gone: (hop: Hop) => void
  /** Milliseconds on the server's clock. */
  readonly now: () => number
  /** Runs `wake` after `ms` on the server's clock; returns a cancel. */
  readonly after: (ms: number, wake: () => void) => () => void
}

/** Version, ExchangeRandNonce, ExchangeDh: the frames before the client is authenticated, capped at HANDSHAKE_FRAME_LIMIT. */
const HANDSHAKE_FRAMES = 3

// Why reading is stopped; reading resumes when none is left.
const PAUSED_BY_CORE = 1
const PAUSED_BY_RATE = 2
const PAUSED_BY_PEER = 4
const PAUSED_BY_HELD = 8

/** One client connection of the relay; see the module header. */
export class Hop {
  readonly id: ConnectionId
  readonly ip: string
  readonly stream: ByteStream
  /** The client's key (hex), once authenticated. */
  clientKey: string | undefined
  /** The limit an "over-limit" close names. */
  limit: RelayLimit | undefined
  /** The other side of the tunnel, once spliced. */
  peer: Hop | undefined
  /** Tunnel payload bytes written to this hop so far. */
  delivered = 0
  /** The rate limit's bucket for the client key, once authenticated (with --rate-limit). */
  bucket: TokenBucket | undefined
  /** The reason it closes with, once decided. */
  closeReason: CloseReason | undefined

  private readonly server: HopServer
  private readonly decoder = new FrameDecoder(MAX_FRAME_LENGTH)
  private machine: Connection | undefined
  private framesRead = 0
  private paused = 0
  // Messages of a connect channel waiting for accept, and the bytes they keep alive.
  private held: Array<Delivered> = []
  private heldBytes = 0
  // Hops paused because this one's stream was full; resumed on its drain.
  private blocked: Hop | undefined
  // IncomingConnection messages written while the stream was past its high-water mark.
  private incomingUnflushed = 0
  private cancelRateWait: (() => void) | undefined
  private lingerUntil: number | undefined
  // What the hop saw when it ended (for the close's log line).
  private endDetail = ""
  private closed = false
  private gone = false

  constructor(server: HopServer, id: ConnectionId, stream: ByteStream) {
    this.server = server
    this.id = id
    this.stream = stream
    this.ip = stream.remoteAddress
  }

  /** Bytes this hop holds: partial frames, held messages, what its stream has not sent. */
  heldBytesNow(): number {
    return this.decoder.bufferedBytes + this.heldBytes + this.stream.writableLength()
  }

  /** Starts reading and writes our version; the core has admitted the connection. */
  start(): void {
    this.stream.start({
      data: (chunk) => this.onData(chunk),
      drain: () => this.onDrain(),
      end: () => this.end("client-closed", "the client closed the connection", "Closed"),
      close: (error) => this.onClose(error)
    })
    const version = encodeVersion()
    this.stream.write([encodeFrameHeader(version.length), version])
  }

  /** Refused at admission (its Close already ran): cut off at once, no handshake, gone now. */
  refuse(): void {
    this.closed = true
    this.stream.start({ data: () => {}, drain: () => {}, end: () => {}, close: () => {} })
    this.stream.destroy()
    this.onClose(undefined)
  }

  /** One server tick: keepalive and rekey, and the linger deadline of a closing hop. */
  tick(now: number): void {
    if (this.closed) {
      if (this.lingerUntil !== undefined && now >= this.lingerUntil) this.stream.destroy()
      return
    }
    const machine = this.machine
    if (machine === undefined) return
    machine.tick(this.paused !== 0)
    this.drain(machine)
  }

  /** Sends one relay message (IncomingConnection) on this hop; the core hears when it is written. */
  sendToClient(message: Uint8Array): void {
    const machine = this.machine
    if (this.closed || machine === undefined) {
      this.server.dispatch({ _tag: "IncomingConnectionWritten", id: this.id })
      return
    }
    machine.send(message)
    const flushed = this.drain(machine)
    if (flushed) this.server.dispatch({ _tag: "IncomingConnectionWritten", id: this.id })
    else this.incomingUnflushed++
  }

  /** The core made this held connect channel a tunnel with `accept`: its held messages go first. */
  splice(accept: Hop): void {
    this.peer = accept
    accept.peer = this
    const held = this.held
    this.held = []
    this.heldBytes = 0
    this.resume(PAUSED_BY_HELD)
    for (const message of held) this.forward(message)
  }

  pauseByCore(): void {
    this.pause(PAUSED_BY_CORE)
  }

  resumeByCore(): void {
    this.resume(PAUSED_BY_CORE)
  }

  /** Carries out the core's Close. */
  close(reason: CloseReason, mode: CloseMode, limit: RelayLimit | undefined): void {
    if (this.closed) return
    this.closed = true
    this.closeReason = reason
    if (limit !== undefined) this.limit = limit
    const detail = this.endDetail
    this.cancelRateWait?.()
    this.cancelRateWait = undefined
    // A peer we held back reads again: it is closing too, or its own close follows.
    this.releaseBlocked()
    this.server.closing(this, reason, detail)
    // Either way what was already written still goes out: a client refused
    // in its handshake needs our ExchangeRandNonce to say which key we hold,
    // and a runtime whose socket writes are asynchronous (Deno) would drop
    // it on a destroy right after. An aborted client is not read any more
    // and is cut at the next tick; a graceful one is read (and dropped)
    // until its FIN, up to the linger.
    this.stream.end()
    if (mode === "abort") {
      this.stream.pause()
      this.lingerUntil = this.server.now()
      return
    }
    this.lingerUntil = this.server.now() + this.server.closeLingerMs
    this.stream.resume()
  }

  /** Destroys the stream at once (the server is stopping). */
  destroy(): void {
    this.stream.destroy()
  }

  // ------------------------------------------------------------------ events

  private onData(chunk: Uint8Array): void {
    if (this.closed) return // closing gracefully: what still arrives is dropped
    const result = this.decoder.push(chunk)
    if (result._tag === "Error") return this.end("frame-too-long", result.error.message, "FrameTooLong")
    for (const frame of result.frames) {
      if (this.closed) return
      if (this.framesRead < HANDSHAKE_FRAMES && frame.length > HANDSHAKE_FRAME_LIMIT) {
        return this.end(
          "frame-too-long",
          `frame of ${frame.length} bytes is over the handshake limit of ${HANDSHAKE_FRAME_LIMIT} bytes`,
          "FrameTooLong"
        )
      }
      this.framesRead++
      this.onFrame(frame)
    }
    if (this.closed) return
    // A capped partial frame is refused once it holds more than its cap.
    if (this.framesRead < HANDSHAKE_FRAMES && this.decoder.bufferedBytes > HANDSHAKE_FRAME_LIMIT + FRAME_HEADER_LENGTH) {
      return this.end("frame-too-long", `a handshake frame of over ${HANDSHAKE_FRAME_LIMIT} bytes`, "FrameTooLong")
    }
    this.server.dispatch({ _tag: "Usage", id: this.id, heldBytes: this.heldBytesNow(), deliveredBytes: this.delivered })
    this.takeRate(chunk.length)
  }

  private onFrame(frame: Uint8Array): void {
    let machine = this.machine
    if (machine === undefined) {
      // The first frame is the version; the machine starts once it is ours.
      const error = checkVersion(frame)
      if (error !== undefined) return this.end("version-mismatch", error.message, "VersionMismatch")
      machine = new Connection({
        crypto: this.server.crypto,
        identity: this.server.identity,
        random: this.server.crypto.randomBytes,
        // The core's handshake deadline is the relay's one.
        handshakeTimeoutTicks: Infinity,
        ...this.server.machine
      })
      this.machine = machine
      machine.start()
      this.drain(machine)
      return
    }
    // The second frame is the ExchangeRandNonce: the client is really starting a handshake.
    if (this.framesRead === 2) this.server.dispatch({ _tag: "HelloReceived", id: this.id })
    machine.handleFrame(frame)
    this.drain(machine)
  }

  private onDrain(): void {
    if (this.incomingUnflushed > 0) {
      const written = this.incomingUnflushed
      this.incomingUnflushed = 0
      for (let i = 0; i < written; i++) this.server.dispatch({ _tag: "IncomingConnectionWritten", id: this.id })
    }
    this.releaseBlocked()
  }

  private onClose(error: TransportError | undefined): void {
    if (this.gone) return
    this.gone = true
    this.cancelRateWait?.()
    this.releaseBlocked()
    if (!this.closed) {
      if (error === undefined) this.end("client-closed", "the client closed the connection", "Closed")
      // A WebSocket message over the cap is that transport's frame too long,
      // and a text message its garbage bytes: closed and counted as on TCP.
      else if (error.reason === "MessageTooLarge") this.end("frame-too-long", error.message, "FrameTooLong")
      else if (error.reason === "Protocol") {
        this.end(this.clientKey === undefined ? "handshake-failed" : "protocol-violation", error.message, "Protocol")
      } else this.end("connection-lost", error.message, "Reset")
    }
    this.server.gone(this)
  }

  // ---------------------------------------------------------------- machine

  // Writes what the machine queued, then carries out its events; true when
  // the frames went out without passing the stream's high-water mark.
  private drain(machine: Connection): boolean {
    let flushed = true
    let frame = machine.pollTransmit()
    if (frame !== undefined) {
      const pieces: Array<Uint8Array> = []
      for (; frame !== undefined; frame = machine.pollTransmit()) pieces.push(encodeFrameHeader(frame.length), frame)
      flushed = this.stream.write(pieces)
    }
    for (let event = machine.pollEvent(); event !== undefined && !this.closed; event = machine.pollEvent()) {
      this.onEvent(event)
    }
    return flushed
  }

  private onEvent(event: ConnectionEvent): void {
    switch (event._tag) {
      case "Authenticated":
        this.clientKey = publicKeyHex(event.remotePublicKey)
        this.bucket = this.server.authenticated(this)
        this.server.dispatch({ _tag: "Authenticated", id: this.id, publicKey: event.remotePublicKey })
        return
      case "Deliver":
        return this.onMessage(event)
      case "Closed":
        return this.end(
          endReasonOfChannelFailure(event.error.reason, this.clientKey !== undefined),
          event.error.message,
          event.error.reason
        )
      default:
        return absurd(event)
    }
  }

  private onMessage(message: Delivered): void {
    const role = this.server.roleOf(this.id)
    switch (role) {
      case "awaiting-init":
      case "listen":
        this.server.dispatch({ _tag: "Received", id: this.id, message: message.data })
        return
      case "pending-connect":
        this.held.push(message)
        this.heldBytes += message.heldBytes()
        if (this.heldBytes >= this.server.heldBytesLimit) this.pause(PAUSED_BY_HELD)
        return
      case "tunnel":
        this.forward(message)
        return
      case "handshaking":
      case undefined:
        // Closed by the core in this very chunk: nothing more is read.
        return
      default:
        absurd(role)
    }
  }

  // Relays one message to the tunnel peer. Once the peer's stream holds
  // `heldBytesLimit` unsent bytes (what the client has not read yet), this
  // hop stops reading until the peer's stream has drained. Pausing at the
  // stream's own high-water mark instead would pause and resume around
  // nearly every large message, and leave a slow reader too little to read.
  private forward(message: Delivered): void {
    const peer = this.peer
    const machine = peer?.machine
    if (peer === undefined || peer.closed || machine === undefined) return
    // The packed KaMessage goes on as it came: its payload is never unpacked here.
    machine.sendPacked(message.packed)
    peer.drain(machine)
    peer.delivered += message.dataLength
    this.server.relayed(message.dataLength)
    if (!peer.closed && peer.stream.writableLength() >= this.server.heldBytesLimit) {
      peer.blocked = this
      this.pause(PAUSED_BY_PEER)
    }
  }

  private releaseBlocked(): void {
    const blocked = this.blocked
    this.blocked = undefined
    blocked?.resume(PAUSED_BY_PEER)
  }

  // ---------------------------------------------------------------- reading

  private pause(why: number): void {
    if (this.paused === 0) this.stream.pause()
    this.paused |= why
  }

  private resume(why: number): void {
    if ((this.paused & why) === 0) return
    this.paused &= ~why
    if (this.paused === 0 && !this.closed) this.stream.resume()
  }

  // The client's rate limit: past its tokens, reading waits until they are back.
  private takeRate(bytes: number): void {
    const bucket = this.bucket
    if (bucket === undefined || this.closed) return
    const waitMs = takeTokens(bucket, bytes, this.server.now())
    if (waitMs <= 0) return
    this.pause(PAUSED_BY_RATE)
    this.cancelRateWait?.()
    this.cancelRateWait = this.server.after(waitMs, () => {
      this.cancelRateWait = undefined
      this.resume(PAUSED_BY_RATE)
    })
  }

  // An end this hop saw: the core decides how it closes (its Close comes
  // back through `close`). `failure` labels a handshake that failed this way.
  private end(reason: EndReason, detail: string, failure: string): void {
    if (this.closed) return
    if (this.clientKey === undefined) this.server.handshakeFailed(failure)
    this.endDetail = detail
    this.server.dispatch({ _tag: "Ended", id: this.id, reason })
    // The core answers every id it tracks with a Close; one it no longer
    // tracks has nothing left to decide: cut the stream, and it is gone.
    if (!this.closed) this.stream.destroy()
  }
}

/**
 * Largest handshake frame the relay takes from a client. The version frame
 * is 4 bytes, ExchangeRandNonce and ExchangeDh a few hundred (fixed-size
 * fields, no padding), so 4 KiB leaves room for any honest encoding while
 * a stranger can make the relay hold no more than that before it proves a
 * key (at most maxHandshakes of them at once).
 */
export const HANDSHAKE_FRAME_LIMIT = 4096
