/**
 * Keepalive (PROTOCOL.md "Keepalive") as a pure state machine: it wraps each
 * application message in a packed KaMessage, sends `keepAlive` when we have
 * been quiet, and closes when the peer has been quiet (Offset's
 * components/keepalive).
 *
 * How to drive it: `makeKeepalive(config)`, then `stepKeepalive(state, event)` for
 * every event, running the returned commands in order before the next event.
 * - `Received { data }`: a packed KaMessage the peer sent (one user message of
 *   the secure channel below). Anything received restarts the close countdown.
 * - `Send { data }`: an application message to send; it restarts the
 *   keepalive countdown.
 * - `Tick { receivePaused? }`: one tick passed. After `keepaliveTicks` ticks
 *   with nothing received we close ("KeepaliveTimeout", on exactly that tick);
 *   after `keepaliveTicks / 2` ticks with nothing sent we send `keepAlive`.
 * - Commands: `Transmit { data }` (a packed KaMessage for the channel below),
 *   `Deliver { data }` (an application message; keepalives never reach the
 *   application), `Close { error }` (once; afterwards events do nothing).
 *
 * Backpressure: when the application stops reading and the adapter stops
 * reading the socket, the peer's messages wait in TCP buffers and we would
 * wrongly time the peer out. The adapter marks such ticks
 * `receivePaused: true`; they do not count toward the close countdown (they
 * still count toward sending our own keepalives, since writing is not
 * paused). When reading resumes, whatever the peer sent meanwhile arrives.
 */
import { type DecodeError, decodeKaMessage, defaultMaxUnpackedBytes, encodeKaMessage } from "./messages.ts"
import { unpackBound } from "./unpack-bound.ts"
import { absurd } from "./absurd.ts"

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

/** What happened to the keepalive layer. */
export type KeepaliveEvent =
  | { readonly _tag: "Received"; readonly data: Uint8Array }
  /**
   * `packed`, when given, is `data` already as a packed KaMessage (the
   * `packed` of a Deliver: a relay forwarding what one side sent); it is
   * sent as is instead of being encoded again.
   */
  | { readonly _tag: "Send"; readonly data: Uint8Array; readonly packed?: Uint8Array | undefined }
  | { readonly _tag: "Tick"; readonly receivePaused?: boolean | undefined }

/** What the driver of the keepalive layer must do, in order. */
export type KeepaliveCommand =
  | { readonly _tag: "Transmit"; readonly data: Uint8Array }
  /** `packed`: the KaMessage `data` arrived in, which a relay can forward without encoding it again. */
  | { readonly _tag: "Deliver"; readonly data: Uint8Array; readonly packed: Uint8Array }
  | { readonly _tag: "Close"; readonly error: KeepaliveError }

/** The keepalive countdowns. */
export interface KeepaliveState {
  readonly keepaliveTicks: number
  readonly maxExpansion: number
  /** Unpaused ticks left before the peer counts as dead. */
  readonly ticksUntilClose: number
  /** Ticks left before we must send something. */
  readonly ticksUntilKeepalive: number
  readonly closed: KeepaliveError | undefined
}

/** The result of one step: the next state and the commands to run in order. */
export type KeepaliveStep = readonly [KeepaliveState, ReadonlyArray<KeepaliveCommand>]

const noCommands: ReadonlyArray<KeepaliveCommand> = []

// A keepAlive encodes the same every time; share one buffer (never mutated).
let keepAliveBytes: Uint8Array | undefined

/** The packed KaMessage `keepAlive`. */
export const encodedKeepAlive = (): Uint8Array => (keepAliveBytes ??= encodeKaMessage({ _tag: "KeepAlive" }))


/** Half of keepaliveTicks, rounded down (Offset's keepalive_ticks / 2). */
const sendInterval = (keepaliveTicks: number): number => Math.floor(keepaliveTicks / 2)

/** Fresh countdowns; a keepaliveTicks below 2 is a configuration bug and throws a RangeError. */
export const makeKeepalive = (config: KeepaliveConfig = {}): KeepaliveState => {
  const keepaliveTicks = config.keepaliveTicks ?? DEFAULT_KEEPALIVE_TICKS
  if (!Number.isSafeInteger(keepaliveTicks) || keepaliveTicks < 2) {
    throw new RangeError(`keepaliveTicks must be an integer of at least 2, got ${keepaliveTicks}`)
  }
  const maxExpansion = config.maxExpansion ?? Number.POSITIVE_INFINITY
  if (!(maxExpansion >= 1)) throw new RangeError(`maxExpansion must be at least 1 or Infinity, got ${maxExpansion}`)
  return {
    keepaliveTicks,
    maxExpansion,
    ticksUntilClose: keepaliveTicks,
    ticksUntilKeepalive: sendInterval(keepaliveTicks),
    closed: undefined
  }
}

/** Advances the state by one event; see the module header for the rules. */
export const stepKeepalive = (state: KeepaliveState, event: KeepaliveEvent): KeepaliveStep => {
  if (state.closed !== undefined) return [state, noCommands]
  switch (event._tag) {
    case "Received": {
      const decoded = decodeKaMessage(event.data, {
        maxUnpackedBytes: Math.min(defaultMaxUnpackedBytes, unpackBound(state.maxExpansion, event.data.length))
      })
      if (decoded._tag === "Err") {
        const error: KeepaliveError = {
          _tag: "KeepaliveError",
          reason: "MalformedMessage",
          message: `KaMessage: ${decoded.error.message}`,
          decodeError: decoded.error
        }
        return [{ ...state, closed: error }, [{ _tag: "Close", error }]]
      }
      const next: KeepaliveState = { ...state, ticksUntilClose: state.keepaliveTicks }
      const message = decoded.value
      switch (message._tag) {
        case "KeepAlive":
          return [next, noCommands]
        case "Message":
          return [next, [{ _tag: "Deliver", data: message.data, packed: event.data }]]
        default:
          return absurd(message)
      }
    }
    case "Send":
      return [
        { ...state, ticksUntilKeepalive: sendInterval(state.keepaliveTicks) },
        [{ _tag: "Transmit", data: event.packed ?? encodeKaMessage({ _tag: "Message", data: event.data }) }]
      ]
    case "Tick": {
      const ticksUntilClose = event.receivePaused === true ? state.ticksUntilClose : state.ticksUntilClose - 1
      if (ticksUntilClose <= 0) {
        const error: KeepaliveError = {
          _tag: "KeepaliveError",
          reason: "KeepaliveTimeout",
          message: `nothing received from the peer for ${state.keepaliveTicks} ticks`
        }
        return [{ ...state, ticksUntilClose: 0, closed: error }, [{ _tag: "Close", error }]]
      }
      const ticksUntilKeepalive = state.ticksUntilKeepalive - 1
      if (ticksUntilKeepalive <= 0) {
        return [
          { ...state, ticksUntilClose, ticksUntilKeepalive: sendInterval(state.keepaliveTicks) },
          [{ _tag: "Transmit", data: encodedKeepAlive() }]
        ]
      }
      return [{ ...state, ticksUntilClose, ticksUntilKeepalive }, noCommands]
    }
    default:
      return absurd(event)
  }
}
