/**
 * One authenticated, encrypted, kept-alive connection: the secure channel
 * (secure-channel.ts) with keepalive (keepalive.ts) on top, as one pure state
 * machine. The same machine serves a TCP hop to a relay (the adapter handles
 * frame lengths and the version prefix and feeds whole frames) and the end-to-
 * end channel inside a tunnel (one tunnel message = one frame).
 *
 * How to drive it:
 * 1. `state = makeConnection(config)`; then `[state, commands] =
 *    stepConnection(state, event)` for every event, running the commands IN ORDER
 *    before feeding the next event.
 * 2. Feed `Start` first: it emits our first handshake frame.
 * 3. Feed every frame from the peer as `FrameReceived`, in arrival order.
 * 4. Feed `Tick` once per tick (1 s in Offset). Before `Authenticated` ticks
 *    count toward `handshakeTimeoutTicks`; after, toward rekeying and
 *    keepalive. Set `receivePaused: true` on ticks during which the adapter
 *    deliberately did not read the socket (the application was not taking
 *    messages); those ticks do not count toward closing an idle peer.
 * 5. Feed application messages as `Send` only after the `Authenticated`
 *    command; before, `Send` throws `ChannelMisuseError` (queue them in the
 *    adapter instead).
 * Commands: `SendFrame { frame }` (write one frame), `Deliver { data }` (one
 * application message; keepalives are consumed here), `Authenticated {
 * remotePublicKey }` (once), `Close { error }` (once; drop the transport).
 * After `Close` every event does nothing. Peer misbehaviour and timeouts
 * arrive only as `Close`; only the caller's own misuse throws.
 *
 * Data path: Send(data) → packed KaMessage → packed ChannelMessage →
 * ChaCha20-Poly1305 → nonce ‖ sealed; the frame is the only buffer the
 * adapter writes. Received frames are opened in place (subarray views).
 */
import {
  type KeepaliveCommand,
  type KeepaliveError,
  type KeepaliveState,
  makeKeepalive,
  stepKeepalive
} from "./keepalive.ts"
import {
  ChannelMisuseError,
  makeSecureChannel,
  type SecureChannelCommand,
  type SecureChannelConfig,
  type SecureChannelError,
  type SecureChannelState,
  stepSecureChannel
} from "./secure-channel.ts"
import { absurd } from "./absurd.ts"

/** A secure channel's config plus keepalive timing; optional fields default to Offset's values. */
export interface ConnectionConfig extends SecureChannelConfig {
  /** Ticks of silence from the peer before closing (keepalive sent after half); default 32. */
  readonly keepaliveTicks?: number | undefined
}

/** Why a connection closed: the secure channel's or the keepalive layer's reason. */
export type ConnectionError = SecureChannelError | KeepaliveError

/** What happened to a connection. */
export type ConnectionEvent =
  | { readonly _tag: "Start" }
  | { readonly _tag: "FrameReceived"; readonly frame: Uint8Array }
  /** `packed`: see keepalive.ts (a Deliver's `packed`, forwarded as is). */
  | { readonly _tag: "Send"; readonly data: Uint8Array; readonly packed?: Uint8Array | undefined }
  | { readonly _tag: "Tick"; readonly receivePaused?: boolean | undefined }

/** What the driver of a connection must do, in order. */
export type ConnectionCommand =
  | { readonly _tag: "SendFrame"; readonly frame: Uint8Array }
  /** `packed`: the KaMessage `data` arrived in (see keepalive.ts). */
  | { readonly _tag: "Deliver"; readonly data: Uint8Array; readonly packed: Uint8Array }
  | { readonly _tag: "Authenticated"; readonly remotePublicKey: Uint8Array }
  | { readonly _tag: "Close"; readonly error: ConnectionError }

/** The whole state of one connection. */
export interface ConnectionState {
  readonly channel: SecureChannelState
  /** Undefined until authenticated: keepalive starts with the channel (as in Offset). */
  readonly keepalive: KeepaliveState | undefined
  readonly keepaliveTicks: number
  /** As ConnectionConfig's maxExpansion, for the keepalive layer made at authentication. */
  readonly maxExpansion: number | undefined
  readonly closed: ConnectionError | undefined
}

/** The result of one step: the next state and the commands to run in order. */
export type ConnectionStep = readonly [ConnectionState, ReadonlyArray<ConnectionCommand>]

export { ChannelMisuseError }

const noCommands: ReadonlyArray<ConnectionCommand> = []


/** A connection that has not started; bad settings throw a RangeError here, not later. */
export const makeConnection = (config: ConnectionConfig): ConnectionState => {
  const keepaliveTicks = makeKeepalive({ keepaliveTicks: config.keepaliveTicks }).keepaliveTicks
  return {
    channel: makeSecureChannel(config),
    keepalive: undefined,
    keepaliveTicks,
    maxExpansion: config.maxExpansion,
    closed: undefined
  }
}

/** True once `Send` is allowed: authenticated and not closed. */
export const isAuthenticated = (state: ConnectionState): boolean =>
  state.closed === undefined && state.keepalive !== undefined

/** Advances the state by one event; see the module header for the rules. */
export const stepConnection = (state: ConnectionState, event: ConnectionEvent): ConnectionStep => {
  if (state.closed !== undefined) return [state, noCommands]
  const out: Array<ConnectionCommand> = []
  switch (event._tag) {
    case "Start":
    case "FrameReceived": {
      const [channel, channelCommands] = stepSecureChannel(state.channel, event)
      return [absorb({ ...state, channel }, channelCommands, out, applyChannel), out]
    }
    case "Send": {
      const keepalive = state.keepalive
      if (keepalive === undefined) {
        throw new ChannelMisuseError("NotAuthenticated", "Send before the connection is authenticated")
      }
      const [nextKeepalive, kaCommands] = stepKeepalive(keepalive, event)
      return [absorb({ ...state, keepalive: nextKeepalive }, kaCommands, out, applyKeepalive), out]
    }
    case "Tick": {
      const [channel, channelCommands] = stepSecureChannel(state.channel, { _tag: "Tick" })
      const afterChannel = absorb({ ...state, channel }, channelCommands, out, applyChannel)
      if (afterChannel.closed !== undefined || afterChannel.keepalive === undefined) return [afterChannel, out]
      const [keepalive, kaCommands] = stepKeepalive(afterChannel.keepalive, event)
      return [absorb({ ...afterChannel, keepalive }, kaCommands, out, applyKeepalive), out]
    }
    default:
      return absurd(event)
  }
}

// Runs one layer's commands in order, appending connection commands to `out`;
// stops at a close (a layer's Close is its last command anyway).
const absorb = <C>(
  initial: ConnectionState,
  commands: ReadonlyArray<C>,
  out: Array<ConnectionCommand>,
  apply: (state: ConnectionState, command: C, out: Array<ConnectionCommand>) => ConnectionState
): ConnectionState => {
  let state = initial
  for (const command of commands) {
    state = apply(state, command, out)
    if (state.closed !== undefined) break
  }
  return state
}

// One secure-channel command: passed on, except that Authenticated starts the
// keepalive layer and a Deliver (a packed KaMessage) goes up through it.
const applyChannel = (
  state: ConnectionState,
  command: SecureChannelCommand,
  out: Array<ConnectionCommand>
): ConnectionState => {
  switch (command._tag) {
    case "SendFrame":
      out.push(command)
      return state
    case "Authenticated":
      out.push(command)
      return { ...state, keepalive: makeKeepalive({ keepaliveTicks: state.keepaliveTicks, maxExpansion: state.maxExpansion }) }
    case "Close":
      out.push(command)
      return { ...state, closed: command.error }
    case "Deliver": {
      // A channel Deliver follows Authenticated, so the keepalive layer exists.
      const [keepalive, kaCommands] = stepKeepalive(state.keepalive!, { _tag: "Received", data: command.data })
      return absorb({ ...state, keepalive }, kaCommands, out, applyKeepalive)
    }
    default:
      return absurd(command)
  }
}

// One keepalive command: passed on, except that a Transmit goes down through
// the channel (which answers it with exactly one SendFrame, or a Close).
const applyKeepalive = (
  state: ConnectionState,
  command: KeepaliveCommand,
  out: Array<ConnectionCommand>
): ConnectionState => {
  switch (command._tag) {
    case "Deliver":
      out.push(command)
      return state
    case "Close":
      out.push(command)
      return { ...state, closed: command.error }
    case "Transmit": {
      const [channel, channelCommands] = stepSecureChannel(state.channel, { _tag: "Send", data: command.data })
      return absorb({ ...state, channel }, channelCommands, out, applyChannel)
    }
    default:
      return absurd(command)
  }
}
