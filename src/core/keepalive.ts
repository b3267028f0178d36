/**
 * Keepalive (PROTOCOL.md "Keepalive") as a pure state machine: it wraps each
 * application message in a packed KaMessage, sends `keepAlive` when we have
 * been quiet, and closes when the peer has been quiet (Offset's
 * components/keepalive).
 *
 * How to drive it: `new Keepalive(config)`, then after each call drain
 * `pollTransmit()` and `pollEvent()` until each returns undefined.
 * - `received(data)`: a packed KaMessage the peer sent (one user message of
 *   the secure channel below). Anything received restarts the close countdown.
 * - `send(data)`: an application message to send, or `sendPacked(packed)`:
 *   one already packed as a KaMessage (forwarded as it came); either
 *   restarts the keepalive countdown.
 * - `tick(receivePaused?)`: one tick passed. After `keepaliveTicks` ticks
 *   with nothing received we close ("KeepaliveTimeout", on exactly that tick);
 *   after `keepaliveTicks / 2` ticks with nothing sent we send `keepAlive`.
 * - Transmits are packed KaMessages for the channel below; events are
 *   `Delivered` (an application message, its payload unpacked only when
 *   read; keepalives never reach the application) and `Closed { error }` (once; afterwards calls
 *   do nothing). The countdowns change in place.
 *
 * Backpressure: when the application stops reading and the adapter stops
 * reading the socket, the peer's messages wait in TCP buffers and we would
 * wrongly time the peer out. The adapter marks such ticks
 * `receivePaused: true`; they do not count toward the close countdown (they
 * still count toward sending our own keepalives, since writing is not
 * paused). When reading resumes, whatever the peer sent meanwhile arrives.
 */
import { type DecodeError, defaultMaxUnpackedBytes, encodeKaMessage, kaMessagePayload, readKaMessageHeader } from "./messages.ts"
import { unpackBound } from "./unpack-bound.ts"
import { absurd } from "./absurd.ts"
import { CommandQueue } from "./command-queue.ts"

/** Offset's keepalive_ticks: close after this many quiet ticks, ping after half. */
export const DEFAULT_KEEPALIVE_TICKS = 32

/** Keepalive timing; defaults to Offset's. */
export interface KeepaliveConfig {
  /** Ticks of silence from the peer before closing; at least 2; default 32. */
  readonly keepaliveTicks?: number | undefined
  /** As the secure channel's `maxExpansion`, for the KaMessage inside each message; default Infinity. */
  readonly maxExpansion?: number | undefined
}

/** Why the keepalive layer closed a connection. */
export interface KeepaliveError {
  readonly _tag: "KeepaliveError"
  readonly reason:
    /** Nothing arrived from the peer for keepaliveTicks (unpaused) ticks. */
    | "KeepaliveTimeout"
    /** A message from the peer is not a packed KaMessage; see `decodeError`. */
    | "MalformedMessage"
  readonly message: string
  readonly decodeError?: DecodeError | undefined
}

/**
 * One application message from the peer: `packed` is the KaMessage it came
 * in, which a relay forwards as is; the payload (`data`) is unpacked only
 * when read, so forwarding never copies it.
 */
export class Delivered {
  readonly _tag = "Deliver" as const
  readonly packed: Uint8Array
  /** The payload's length, known without unpacking it. */
  readonly dataLength: number
  private payload: Uint8Array | undefined

  constructor(packed: Uint8Array, dataLength: number, payload: Uint8Array | undefined) {
    this.packed = packed
    this.dataLength = dataLength
    this.payload = payload
  }

  /** The payload (unpacked on first read). */
  get data(): Uint8Array {
    return (this.payload ??= kaMessagePayload(this.packed, this.dataLength))
  }

  /** Bytes this message keeps alive (memory accounting): the buffers `packed` and, once read, `data` view. */
  heldBytes(): number {
    const packedBuffer = this.packed.buffer
    const payload = this.payload
    return packedBuffer.byteLength + (payload === undefined || payload.buffer === packedBuffer ? 0 : payload.buffer.byteLength)
  }
}

/** What the driver learns from the keepalive layer (`pollEvent`), in order. */
export type KeepaliveEvent = Delivered | { readonly _tag: "Closed"; readonly error: KeepaliveError }

// A keepAlive encodes the same every time; share one buffer (never mutated).
let keepAliveBytes: Uint8Array | undefined

/** The packed KaMessage `keepAlive`. */
export const encodedKeepAlive = (): Uint8Array => (keepAliveBytes ??= encodeKaMessage({ _tag: "KeepAlive" }))

/** Half of keepaliveTicks, rounded down (Offset's keepalive_ticks / 2). */
const sendInterval = (keepaliveTicks: number): number => Math.floor(keepaliveTicks / 2)

/** The keepalive countdowns of one connection; see the module header. */
export class Keepalive {
  readonly keepaliveTicks: number
  readonly maxExpansion: number
  // Unpaused ticks left before the peer counts as dead.
  private closeCountdown: number
  // Ticks left before we must send something.
  private keepaliveCountdown: number
  private closeError: KeepaliveError | undefined = undefined
  private readonly transmits = new CommandQueue<Uint8Array>()
  private readonly events = new CommandQueue<KeepaliveEvent>()

  /** Fresh countdowns; a keepaliveTicks below 2 is a configuration bug and throws a RangeError. */
  constructor(config: KeepaliveConfig = {}) {
    const keepaliveTicks = config.keepaliveTicks ?? DEFAULT_KEEPALIVE_TICKS
    if (!Number.isSafeInteger(keepaliveTicks) || keepaliveTicks < 2) {
      throw new RangeError(`keepaliveTicks must be an integer of at least 2, got ${keepaliveTicks}`)
    }
    const maxExpansion = config.maxExpansion ?? Number.POSITIVE_INFINITY
    if (!(maxExpansion >= 1)) throw new RangeError(`maxExpansion must be at least 1 or Infinity, got ${maxExpansion}`)
    this.keepaliveTicks = keepaliveTicks
    this.maxExpansion = maxExpansion
    this.closeCountdown = keepaliveTicks
    this.keepaliveCountdown = sendInterval(keepaliveTicks)
  }

  /** Unpaused ticks left before the peer counts as dead. */
  get ticksUntilClose(): number {
    return this.closeCountdown
  }

  /** Why the layer closed, once it has. */
  get closed(): KeepaliveError | undefined {
    return this.closeError
  }

  /** The next packed KaMessage for the channel below; undefined when there is none. */
  pollTransmit(): Uint8Array | undefined {
    return this.transmits.poll()
  }

  /** The next event; undefined when there is none. */
  pollEvent(): KeepaliveEvent | undefined {
    return this.events.poll()
  }

  /** A packed KaMessage from the peer. */
  received(data: Uint8Array): void {
    if (this.closed !== undefined) return
    const decoded = readKaMessageHeader(data, {
      maxUnpackedBytes: Math.min(defaultMaxUnpackedBytes, unpackBound(this.maxExpansion, data.length))
    })
    if (decoded._tag === "Err") {
      return this.close({
        _tag: "KeepaliveError",
        reason: "MalformedMessage",
        message: `KaMessage: ${decoded.error.message}`,
        decodeError: decoded.error
      })
    }
    this.closeCountdown = this.keepaliveTicks
    const message = decoded.value
    switch (message._tag) {
      case "KeepAlive":
        return
      case "Message":
        this.events.push(new Delivered(data, message.dataLength, message.data))
        return
      default:
        return absurd(message)
    }
  }

  /** An application message to send, wrapped in a KaMessage here. */
  send(data: Uint8Array): void {
    this.sendPacked(encodeKaMessage({ _tag: "Message", data }))
  }

  /** A packed KaMessage to send as is (a relay forwarding a `Delivered`'s `packed`). */
  sendPacked(packed: Uint8Array): void {
    if (this.closed !== undefined) return
    this.keepaliveCountdown = sendInterval(this.keepaliveTicks)
    this.transmits.push(packed)
  }

  /** One tick; `receivePaused` when we were the ones not reading (see the header). */
  tick(receivePaused = false): void {
    if (this.closed !== undefined) return
    if (!receivePaused) this.closeCountdown--
    if (this.closeCountdown <= 0) {
      this.closeCountdown = 0
      return this.close({
        _tag: "KeepaliveError",
        reason: "KeepaliveTimeout",
        message: `nothing received from the peer for ${this.keepaliveTicks} ticks`
      })
    }
    this.keepaliveCountdown--
    if (this.keepaliveCountdown <= 0) {
      this.keepaliveCountdown = sendInterval(this.keepaliveTicks)
      this.transmits.push(encodedKeepAlive())
    }
  }

  private close(error: KeepaliveError): void {
    this.closeError = error
    this.events.push({ _tag: "Closed", error })
  }
}
