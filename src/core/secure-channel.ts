/**
 * The secure channel (PROTOCOL.md "Secure channel") as a pure state machine:
 * handshake, transport encryption and rekeying, for either side of a
 * connection, with or without an expected remote identity.
 *
 * How to drive it:
 * - `makeSecureChannel(config)` gives the state; feed `Start` first, then
 *   `FrameReceived` for every frame the peer sent (in order), `Send` for each
 *   application message (only after the `Authenticated` command), and `Tick`
 *   once per tick (1 s in Offset). `stepSecureChannel(state, event)` returns the next state
 *   and the commands to run, IN ORDER, before feeding the next event.
 * - Commands: `SendFrame` (write one frame to the peer), `Deliver` (an
 *   application message arrived), `Authenticated` (exactly once, when the
 *   handshake completes), `Close` (exactly once; the channel is over).
 * - Peer misbehaviour is never thrown: it ends the channel with a `Close`
 *   command carrying a `SecureChannelError`. After that every event does
 *   nothing. A caller's own mistake (a frame before `Start`, `Send` before
 *   `Authenticated`, `Start` twice) throws `ChannelMisuseError` and leaves
 *   the state as it was; a correct adapter never sees it.
 * - Time and randomness are inputs: ticks are events; every nonce, salt,
 *   ephemeral key and padding byte comes from `config.random`.
 *
 * Protocol details taken from Offset (components/secure_channel, crypto):
 * - Handshake frames are plaintext packed ExchangeRandNonce, then ExchangeDh.
 *   The signature covers dhPublicKey ‖ randNonce ‖ keySalt (80 raw bytes).
 * - Every transport frame is nonce ‖ ChaCha20-Poly1305(ChannelMessage). Each
 *   key has its own 12-byte counter starting at zero, incremented as a
 *   little-endian number after each use; a receiver accepts only exactly the
 *   next nonce, and advances only after the tag verified.
 * - Rekey: the initiator sends Rekey under its current send key and keeps
 *   sending under that key until the answer arrives (the rekey is "pending";
 *   no second rekey starts meanwhile). A side that receives a Rekey while
 *   not pending answers with its own Rekey encrypted under its OLD send key,
 *   then switches both keys; a side that receives a Rekey while pending takes
 *   it as the answer and switches. So when both sides start a rekey at once,
 *   each takes the other's Rekey as its answer and they derive matching keys.
 *   New keys start with nonce counters at zero. The previous receive key is
 *   kept until a frame decrypts under the new one, for frames the peer sent
 *   before it switched.
 * - The rekey countdown restarts when we start a rekey and whenever a rekey
 *   completes on either side's initiative (as Offset does), so the two sides
 *   rarely start one at the same moment.
 *
 * Where we are stricter than Offset (wire-compatible; an honest Offset peer
 * never trips these): a peer whose optDestPublicKey names someone other than
 * us is refused at once (it would refuse our key anyway); an X25519 public key
 * of low order is refused; a Rekey that arrives under a superseded receive
 * key is refused (an honest peer sends at most one Rekey per send key).
 */
import type { CryptoPrimitives } from "./crypto.ts"
import {
  type ChannelContent,
  type DecodeError,
  decodeChannelMessage,
  defaultMaxUnpackedBytes,
  decodeExchangeDh,
  decodeExchangeRandNonce,
  encodeChannelMessageTransient,
  encodeExchangeDh,
  encodeExchangeRandNonce,
  fixedLengths,
  type Rekey
} from "./messages.ts"
import { unpackBound } from "./unpack-bound.ts"
import { absurd } from "./absurd.ts"
import type { Identity } from "./keys.ts"

/** Bytes of the nonce at the start of every transport frame. */
export const TRANSPORT_NONCE_LENGTH = 12
/** Bytes of the Poly1305 tag at the end of every transport frame. */
export const TRANSPORT_TAG_LENGTH = 16
/** Offset's rekey interval: one hour of 1-second ticks. */
export const DEFAULT_REKEY_INTERVAL_TICKS = 3600
/** Our cap on padding per message (PROTOCOL.md (fix): Offset sends up to 64 KiB). */
export const DEFAULT_MAX_PADDING_BYTES = 255
/** Ticks allowed for the handshake by default (Offset's keepalive_ticks). */
export const DEFAULT_HANDSHAKE_TIMEOUT_TICKS = 32

// Random values we draw are exactly the wire fields they fill.
const RAND_NONCE_LENGTH = fixedLengths.randValue
const SALT_LENGTH = fixedLengths.salt
const DH_SECRET_LENGTH = 32
const SYMMETRIC_KEY_LENGTH = 32
// The padding length is drawn from one or two random bytes, so it fits a u16.
const MAX_PADDING_LIMIT = 0xffff
const emptyBytes = new Uint8Array(0)

/** A long-term Ed25519 identity (keys.ts). */
export type { Identity } from "./keys.ts"

/** What a secure channel needs; optional fields default to Offset's values. */
export interface SecureChannelConfig {
  readonly crypto: CryptoPrimitives
  readonly identity: Identity
  /** The identity the peer must have; undefined accepts any peer (a relay accepting clients). */
  readonly expectedRemotePublicKey?: Uint8Array | undefined
  /** Returns `length` fresh random bytes (secure in production, seeded in tests). */
  readonly random: (length: number) => Uint8Array
  /** Largest padding sent per message, 0..65535; default 255; 0 sends no padding. */
  readonly maxPaddingBytes?: number | undefined
  /** Ticks between rekeys we start; default 3600; Infinity never starts one (still answers). */
  readonly rekeyIntervalTicks?: number | undefined
  /** Ticks from Start until the handshake must be done; default 32; Infinity waits forever. */
  readonly handshakeTimeoutTicks?: number | undefined
  /**
   * Most bytes a received message may unpack to per byte on the wire (plus
   * `unpackSlackBytes`), or Infinity (the default: only the decoder's 8 MiB
   * bound). A relay hop sets a small factor: honest hop traffic is tiny relay
   * messages and ciphertext, which do not compress, so a message that claims
   * far more than it occupies is an attack on memory and CPU.
   */
  readonly maxExpansion?: number | undefined
  /**
   * Rekeys the peer may start: a burst of `burst`, then one more per
   * `refillTicks` ticks; more closes the channel "RekeyFlood". Undefined (the
   * default) allows any number. Honest peers rekey once an hour.
   */
  readonly peerRekeyLimit?: { readonly burst: number; readonly refillTicks: number } | undefined
}


/** Why a secure channel ended: always the peer's doing (or a dead link), never the caller's. */
export type SecureChannelErrorReason =
  /** The peer's identity is not the expected one. */
  | "UnexpectedRemoteKey"
  /** The peer expects an identity that is not ours. */
  | "UnexpectedDestination"
  /** The peer's ExchangeDh does not echo the nonce we sent. */
  | "WrongNonceEcho"
  /** The peer's ExchangeDh signature does not verify under its claimed identity. */
  | "BadSignature"
  /** The peer's X25519 key (handshake or rekey) is a low-order point. */
  | "LowOrderPoint"
  /** A handshake frame, or a decrypted ChannelMessage, does not decode; see `decodeError`. */
  | "MalformedMessage"
  /** A transport frame too short to hold a nonce and a tag. */
  | "ShortFrame"
  /** A transport frame whose nonce is not the next expected one (replay, loss, reordering). */
  | "UnexpectedNonce"
  /** A transport frame whose tag does not verify (tampering, wrong key). */
  | "DecryptFailed"
  /** A Rekey under a receive key that a rekey already superseded. */
  | "UnexpectedMessage"
  /** 2^53 frames under one key: never in practice, but never wrap a nonce. */
  | "NonceExhausted"
  /** The handshake did not finish within handshakeTimeoutTicks. */
  | "HandshakeTimeout"
  /** The peer started more rekeys than `peerRekeyLimit` allows. */
  | "RekeyFlood"

/** The typed reason a secure channel closed. */
export interface SecureChannelError {
  readonly _tag: "SecureChannelError"
  readonly reason: SecureChannelErrorReason
  readonly message: string
  /** Set for "MalformedMessage": why the bytes did not decode. */
  readonly decodeError?: DecodeError | undefined
}

/** A caller's mistake in driving a channel or connection (not the peer's): a bug in the adapter. */
export class ChannelMisuseError extends Error {
  readonly _tag = "ChannelMisuseError"
  readonly reason: "NotStarted" | "AlreadyStarted" | "NotAuthenticated"
  constructor(reason: "NotStarted" | "AlreadyStarted" | "NotAuthenticated", message: string) {
    super(message)
    this.name = "ChannelMisuseError"
    this.reason = reason
  }
}

/** What happened to a secure channel. */
export type SecureChannelEvent =
  | { readonly _tag: "Start" }
  | { readonly _tag: "FrameReceived"; readonly frame: Uint8Array }
  | { readonly _tag: "Send"; readonly data: Uint8Array }
  | { readonly _tag: "Tick" }

/** What the driver of a secure channel must do, in order. */
export type SecureChannelCommand =
  | { readonly _tag: "SendFrame"; readonly frame: Uint8Array }
  | { readonly _tag: "Deliver"; readonly data: Uint8Array }
  | { readonly _tag: "Authenticated"; readonly remotePublicKey: Uint8Array }
  | { readonly _tag: "Close"; readonly error: SecureChannelError }

/** One direction's key and the counter of the next nonce under it. */
export interface DirectionKey {
  readonly key: Uint8Array
  readonly counter: number
}

/** Our half of a rekey we started and whose answer has not arrived. */
export interface PendingRekey {
  readonly dhSecret: Uint8Array
  readonly keySalt: Uint8Array
}

/** The configuration with every default filled in. */
export interface SecureChannelSettings {
  readonly crypto: CryptoPrimitives
  readonly identity: Identity
  readonly expectedRemotePublicKey: Uint8Array | undefined
  readonly random: (length: number) => Uint8Array
  readonly maxPaddingBytes: number
  readonly rekeyIntervalTicks: number
  readonly handshakeTimeoutTicks: number
  readonly maxExpansion: number
  readonly peerRekeyLimit: { readonly burst: number; readonly refillTicks: number } | undefined
}

/** Where the channel is, named after what it waits for; each holds only what is valid there. */
export type SecureChannelPhase =
  | { readonly _tag: "NotStarted" }
  | {
      readonly _tag: "AwaitingRandNonce"
      readonly localNonce: Uint8Array
      readonly ticks: number
    }
  | {
      readonly _tag: "AwaitingDh"
      readonly localNonce: Uint8Array
      readonly remotePublicKey: Uint8Array
      readonly dhSecret: Uint8Array
      readonly keySalt: Uint8Array
      readonly ticks: number
    }
  | {
      readonly _tag: "Established"
      readonly remotePublicKey: Uint8Array
      readonly send: DirectionKey
      readonly receive: DirectionKey
      /** The receive key before the last rekey, until a frame decrypts under `receive`. */
      readonly previousReceive: DirectionKey | undefined
      readonly pendingRekey: PendingRekey | undefined
      readonly ticksUntilRekey: number
      /** Rekeys the peer may still start now (peerRekeyLimit); Infinity without a limit. */
      readonly peerRekeyTokens: number
      /** Ticks until one more peer rekey is allowed. */
      readonly ticksUntilRekeyToken: number
    }
  | { readonly _tag: "Closed"; readonly error: SecureChannelError }

/** The whole state of one secure channel. */
export interface SecureChannelState {
  readonly settings: SecureChannelSettings
  readonly phase: SecureChannelPhase
}

type EstablishedPhase = Extract<SecureChannelPhase, { readonly _tag: "Established" }>

/** The result of one step: the next state and the commands to run in order. */
export type SecureChannelStep = readonly [SecureChannelState, ReadonlyArray<SecureChannelCommand>]

const noCommands: ReadonlyArray<SecureChannelCommand> = []


const requireTicks = (what: string, value: number): number => {
  if (!(value === Number.POSITIVE_INFINITY || (Number.isSafeInteger(value) && value >= 1))) {
    throw new RangeError(`${what} must be a positive integer or Infinity, got ${value}`)
  }
  return value
}

/** Fills in defaults and checks ranges; a bad value is a configuration bug and throws a RangeError. */
const secureChannelSettings = (config: SecureChannelConfig): SecureChannelSettings => {
  const maxPaddingBytes = config.maxPaddingBytes ?? DEFAULT_MAX_PADDING_BYTES
  if (!Number.isSafeInteger(maxPaddingBytes) || maxPaddingBytes < 0 || maxPaddingBytes > MAX_PADDING_LIMIT) {
    throw new RangeError(`maxPaddingBytes must be an integer in 0..${MAX_PADDING_LIMIT}, got ${maxPaddingBytes}`)
  }
  if (config.identity.publicKey.length !== 32 || config.identity.seed.length !== 32) {
    throw new RangeError("identity seed and public key must be 32 bytes each")
  }
  if (config.expectedRemotePublicKey !== undefined && config.expectedRemotePublicKey.length !== 32) {
    throw new RangeError(`expectedRemotePublicKey must be 32 bytes, got ${config.expectedRemotePublicKey.length}`)
  }
  return {
    crypto: config.crypto,
    identity: config.identity,
    expectedRemotePublicKey: config.expectedRemotePublicKey,
    random: config.random,
    maxPaddingBytes,
    rekeyIntervalTicks: requireTicks("rekeyIntervalTicks", config.rekeyIntervalTicks ?? DEFAULT_REKEY_INTERVAL_TICKS),
    handshakeTimeoutTicks: requireTicks(
      "handshakeTimeoutTicks",
      config.handshakeTimeoutTicks ?? DEFAULT_HANDSHAKE_TIMEOUT_TICKS
    ),
    maxExpansion: requireExpansion(config.maxExpansion ?? Number.POSITIVE_INFINITY),
    peerRekeyLimit: config.peerRekeyLimit === undefined
      ? undefined
      : {
        burst: requireTicks("peerRekeyLimit.burst", config.peerRekeyLimit.burst),
        refillTicks: requireTicks("peerRekeyLimit.refillTicks", config.peerRekeyLimit.refillTicks)
      }
  }
}

const requireExpansion = (value: number): number => {
  if (!(value >= 1)) throw new RangeError(`maxExpansion must be at least 1 or Infinity, got ${value}`)
  return value
}

/** A channel that has not started; feed it `Start`. */
export const makeSecureChannel = (config: SecureChannelConfig): SecureChannelState => ({
  settings: secureChannelSettings(config),
  phase: { _tag: "NotStarted" }
})

/** True once the handshake is done and `Send` is allowed (false again after close). */
export const isEstablished = (state: SecureChannelState): boolean => state.phase._tag === "Established"

/** The close reason, or undefined while the channel is open. */
export const closeError = (state: SecureChannelState): SecureChannelError | undefined =>
  state.phase._tag === "Closed" ? state.phase.error : undefined

/** The bytes an ExchangeDh signature covers: dhPublicKey ‖ randNonce ‖ keySalt (Offset's signature_buffer). */
export const exchangeDhSignatureInput = (
  dhPublicKey: Uint8Array,
  randNonce: Uint8Array,
  keySalt: Uint8Array
): Uint8Array => {
  const out = new Uint8Array(dhPublicKey.length + randNonce.length + keySalt.length)
  out.set(dhPublicKey, 0)
  out.set(randNonce, dhPublicKey.length)
  out.set(keySalt, dhPublicKey.length + randNonce.length)
  return out
}

/** The 12-byte little-endian nonce for a counter value (below 2^53). */
export const transportNonce = (counter: number): Uint8Array => {
  const nonce = new Uint8Array(TRANSPORT_NONCE_LENGTH)
  writeNonce(nonce, counter)
  return nonce
}

const writeNonce = (target: Uint8Array, counter: number): void => {
  const low = counter >>> 0
  const high = Math.floor(counter / 0x1_0000_0000)
  target[0] = low & 0xff
  target[1] = (low >>> 8) & 0xff
  target[2] = (low >>> 16) & 0xff
  target[3] = low >>> 24
  target[4] = high & 0xff
  target[5] = (high >>> 8) & 0xff
  target[6] = (high >>> 16) & 0xff
  target[7] = high >>> 24
  // Bytes 8..11 stay zero: a counter below 2^53 never reaches them.
}

// True when the frame's first 12 bytes are exactly the little-endian `counter`.
const nonceIs = (frame: Uint8Array, counter: number): boolean => {
  // Indexes below 12 exist: callers checked the frame holds nonce and tag.
  const low = (frame[0]! | (frame[1]! << 8) | (frame[2]! << 16) | (frame[3]! << 24)) >>> 0
  const high = (frame[4]! | (frame[5]! << 8) | (frame[6]! << 16) | (frame[7]! << 24)) >>> 0
  return (
    frame[8] === 0 &&
    frame[9] === 0 &&
    frame[10] === 0 &&
    frame[11] === 0 &&
    low === counter >>> 0 &&
    high === Math.floor(counter / 0x1_0000_0000)
  )
}

const bytesEqual = (a: Uint8Array, b: Uint8Array): boolean => {
  if (a.length !== b.length) return false
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false
  return true
}

const fail = (
  state: SecureChannelState,
  reason: SecureChannelErrorReason,
  message: string,
  decodeError?: DecodeError
): SecureChannelStep => {
  const error: SecureChannelError =
    decodeError === undefined
      ? { _tag: "SecureChannelError", reason, message }
      : { _tag: "SecureChannelError", reason, message, decodeError }
  return [{ settings: state.settings, phase: { _tag: "Closed", error } }, [{ _tag: "Close", error }]]
}

const deriveKey = (crypto: CryptoPrimitives, salt: Uint8Array, shared: Uint8Array): Uint8Array =>
  crypto.hkdfSha512_256(salt, shared, emptyBytes, SYMMETRIC_KEY_LENGTH)

/** Random padding of random length in 0..maxPaddingBytes; random bytes, since zeros would pack away. */
const makePadding = (settings: SecureChannelSettings): Uint8Array => {
  const max = settings.maxPaddingBytes
  if (max === 0) return emptyBytes
  // Modulo bias only skews a length that merely blurs message sizes; for the
  // default (255) one byte gives an exactly uniform 0..255.
  const draw = settings.random(max < 256 ? 1 : 2)
  const value = max < 256 ? draw[0]! : (draw[0]! << 8) | draw[1]!
  const length = value % (max + 1)
  return length === 0 ? emptyBytes : settings.random(length)
}

type SealResult =
  | { readonly _tag: "Ok"; readonly frame: Uint8Array; readonly send: DirectionKey }
  | { readonly _tag: "Exhausted" }

/** Encrypts one ChannelMessage under `send`: the frame and the advanced counter. */
const seal = (settings: SecureChannelSettings, send: DirectionKey, content: ChannelContent): SealResult => {
  if (send.counter >= Number.MAX_SAFE_INTEGER) return { _tag: "Exhausted" }
  // Transient: sealed right here, before anything else is encoded.
  const plaintext = encodeChannelMessageTransient({ randPadding: makePadding(settings), content })
  const nonce = transportNonce(send.counter)
  const frame = settings.crypto.aeadSeal(send.key, nonce, plaintext, nonce)
  return { _tag: "Ok", frame, send: { key: send.key, counter: send.counter + 1 } }
}

const exhausted = (state: SecureChannelState): SecureChannelStep =>
  fail(state, "NonceExhausted", "send nonce counter reached 2^53; refusing to reuse a nonce")

/** Advances the state by one event; see the module header for the rules. */
export const stepSecureChannel = (state: SecureChannelState, event: SecureChannelEvent): SecureChannelStep => {
  const phase = state.phase
  if (phase._tag === "Closed") return [state, noCommands]
  switch (event._tag) {
    case "Start":
      return onStart(state)
    case "FrameReceived":
      switch (phase._tag) {
        case "NotStarted":
          throw new ChannelMisuseError("NotStarted", "FrameReceived before Start")
        case "AwaitingRandNonce":
          return onRandNonce(state, phase, event.frame)
        case "AwaitingDh":
          return onDh(state, phase, event.frame)
        case "Established":
          return onTransportFrame(state, phase, event.frame)
        default:
          return absurd(phase)
      }
    case "Send":
      if (phase._tag !== "Established") {
        throw new ChannelMisuseError("NotAuthenticated", "Send before the channel is authenticated")
      }
      return onSend(state, phase, event.data)
    case "Tick":
      return onTick(state)
    default:
      return absurd(event)
  }
}

const onStart = (state: SecureChannelState): SecureChannelStep => {
  if (state.phase._tag !== "NotStarted") throw new ChannelMisuseError("AlreadyStarted", "Start fed twice")
  const { settings } = state
  const localNonce = settings.random(RAND_NONCE_LENGTH)
  const frame = encodeExchangeRandNonce({
    randNonce: localNonce,
    srcPublicKey: settings.identity.publicKey,
    optDestPublicKey: settings.expectedRemotePublicKey
  })
  return [
    { settings, phase: { _tag: "AwaitingRandNonce", localNonce, ticks: 0 } },
    [{ _tag: "SendFrame", frame }]
  ]
}

const onRandNonce = (
  state: SecureChannelState,
  phase: Extract<SecureChannelPhase, { readonly _tag: "AwaitingRandNonce" }>,
  frame: Uint8Array
): SecureChannelStep => {
  const { settings } = state
  const decoded = decodeExchangeRandNonce(frame)
  if (decoded._tag === "Err") {
    return fail(state, "MalformedMessage", `ExchangeRandNonce: ${decoded.error.message}`, decoded.error)
  }
  const peer = decoded.value
  const expected = settings.expectedRemotePublicKey
  if (expected !== undefined && !bytesEqual(peer.srcPublicKey, expected)) {
    return fail(state, "UnexpectedRemoteKey", "the peer's identity is not the expected public key")
  }
  if (peer.optDestPublicKey !== undefined && !bytesEqual(peer.optDestPublicKey, settings.identity.publicKey)) {
    return fail(state, "UnexpectedDestination", "the peer expects a different identity than ours")
  }
  // Offset's order: ephemeral key first, then salt.
  const dhSecret = settings.random(DH_SECRET_LENGTH)
  const keySalt = settings.random(SALT_LENGTH)
  const dhPublicKey = settings.crypto.x25519PublicKey(dhSecret)
  const signature = settings.crypto.ed25519Sign(
    settings.identity.seed,
    exchangeDhSignatureInput(dhPublicKey, peer.randNonce, keySalt)
  )
  const out = encodeExchangeDh({ dhPublicKey, randNonce: peer.randNonce, keySalt, signature })
  return [
    {
      settings,
      phase: {
        _tag: "AwaitingDh",
        localNonce: phase.localNonce,
        remotePublicKey: peer.srcPublicKey,
        dhSecret,
        keySalt,
        ticks: phase.ticks
      }
    },
    [{ _tag: "SendFrame", frame: out }]
  ]
}

const onDh = (
  state: SecureChannelState,
  phase: Extract<SecureChannelPhase, { readonly _tag: "AwaitingDh" }>,
  frame: Uint8Array
): SecureChannelStep => {
  const { settings } = state
  const { crypto } = settings
  const decoded = decodeExchangeDh(frame)
  if (decoded._tag === "Err") {
    return fail(state, "MalformedMessage", `ExchangeDh: ${decoded.error.message}`, decoded.error)
  }
  const dh = decoded.value
  if (!bytesEqual(dh.randNonce, phase.localNonce)) {
    return fail(state, "WrongNonceEcho", "the peer's ExchangeDh does not echo our nonce")
  }
  const signed = exchangeDhSignatureInput(dh.dhPublicKey, dh.randNonce, dh.keySalt)
  if (!crypto.ed25519Verify(phase.remotePublicKey, signed, dh.signature)) {
    return fail(state, "BadSignature", "the peer's ExchangeDh signature does not verify under its identity")
  }
  const shared = crypto.x25519(phase.dhSecret, dh.dhPublicKey)
  if (shared === undefined) return fail(state, "LowOrderPoint", "the peer's handshake DH key is a low-order point")
  return [
    {
      settings,
      phase: {
        _tag: "Established",
        remotePublicKey: phase.remotePublicKey,
        send: { key: deriveKey(crypto, phase.keySalt, shared), counter: 0 },
        receive: { key: deriveKey(crypto, dh.keySalt, shared), counter: 0 },
        previousReceive: undefined,
        pendingRekey: undefined,
        ticksUntilRekey: settings.rekeyIntervalTicks,
        peerRekeyTokens: settings.peerRekeyLimit?.burst ?? Number.POSITIVE_INFINITY,
        ticksUntilRekeyToken: settings.peerRekeyLimit?.refillTicks ?? Number.POSITIVE_INFINITY
      }
    },
    [{ _tag: "Authenticated", remotePublicKey: phase.remotePublicKey }]
  ]
}

const onSend = (state: SecureChannelState, phase: EstablishedPhase, data: Uint8Array): SecureChannelStep => {
  const sealed = seal(state.settings, phase.send, { _tag: "User", data })
  if (sealed._tag === "Exhausted") return exhausted(state)
  return [
    { settings: state.settings, phase: { ...phase, send: sealed.send } },
    [{ _tag: "SendFrame", frame: sealed.frame }]
  ]
}

const onTransportFrame = (state: SecureChannelState, phase: EstablishedPhase, frame: Uint8Array): SecureChannelStep => {
  const { settings } = state
  if (frame.length < TRANSPORT_NONCE_LENGTH + TRANSPORT_TAG_LENGTH) {
    return fail(state, "ShortFrame", `transport frame of ${frame.length} bytes is shorter than nonce and tag`)
  }
  // While a previous key is kept its counter is at least 1 (it carried the
  // peer's Rekey) and the new key's is 0, so the nonce says which key to try.
  const previous = phase.previousReceive
  const underPrevious = previous !== undefined && nonceIs(frame, previous.counter)
  const direction = underPrevious ? previous : phase.receive
  if (!underPrevious && !nonceIs(frame, direction.counter)) {
    return fail(state, "UnexpectedNonce", `transport frame nonce is not the expected counter ${direction.counter}`)
  }
  const plaintext = settings.crypto.aeadOpen(
    direction.key,
    frame.subarray(0, TRANSPORT_NONCE_LENGTH),
    frame.subarray(TRANSPORT_NONCE_LENGTH)
  )
  if (plaintext === undefined) return fail(state, "DecryptFailed", "transport frame tag does not verify")
  const advanced: DirectionKey = { key: direction.key, counter: direction.counter + 1 }
  const decoded = decodeChannelMessage(plaintext, {
    maxUnpackedBytes: Math.min(defaultMaxUnpackedBytes, unpackBound(settings.maxExpansion, frame.length))
  })
  if (decoded._tag === "Err") {
    return fail(state, "MalformedMessage", `ChannelMessage: ${decoded.error.message}`, decoded.error)
  }
  const content = decoded.value.content
  // A frame under the current key retires the previous one (Offset's try_decrypt).
  const next: EstablishedPhase = underPrevious
    ? { ...phase, previousReceive: advanced }
    : { ...phase, receive: advanced, previousReceive: undefined }
  switch (content._tag) {
    case "User":
      return [{ settings, phase: next }, [{ _tag: "Deliver", data: content.data }]]
    case "Rekey":
      if (underPrevious) {
        return fail(state, "UnexpectedMessage", "a Rekey arrived under a receive key a rekey already replaced")
      }
      return onRekey(state, next, content.rekey)
    default:
      return absurd(content)
  }
}

const onRekey = (state: SecureChannelState, phase: EstablishedPhase, rekey: Rekey): SecureChannelStep => {
  const { settings } = state
  const { crypto } = settings
  const pending = phase.pendingRekey
  if (pending !== undefined) {
    // The peer's Rekey answers ours (or crossed it): both sides now derive the same pair.
    const shared = crypto.x25519(pending.dhSecret, rekey.dhPublicKey)
    if (shared === undefined) return fail(state, "LowOrderPoint", "the peer's rekey DH key is a low-order point")
    return [
      {
        settings,
        phase: {
          ...phase,
          send: { key: deriveKey(crypto, pending.keySalt, shared), counter: 0 },
          receive: { key: deriveKey(crypto, rekey.keySalt, shared), counter: 0 },
          previousReceive: phase.receive,
          pendingRekey: undefined,
          ticksUntilRekey: settings.rekeyIntervalTicks
        }
      },
      noCommands
    ]
  }
  // The peer starts this rekey: each costs us a key pair, an X25519 and two
  // HKDFs, so a peer rekeying in a loop is refused rather than served.
  if (phase.peerRekeyTokens < 1) {
    return fail(state, "RekeyFlood", `the peer started more rekeys than ${settings.peerRekeyLimit?.burst} per ${settings.peerRekeyLimit?.refillTicks} ticks`)
  }
  const dhSecret = settings.random(DH_SECRET_LENGTH)
  const keySalt = settings.random(SALT_LENGTH)
  const shared = crypto.x25519(dhSecret, rekey.dhPublicKey)
  if (shared === undefined) return fail(state, "LowOrderPoint", "the peer's rekey DH key is a low-order point")
  // Our answer goes under the OLD send key: the peer switches its receive key only on reading it.
  const answer = seal(settings, phase.send, {
    _tag: "Rekey",
    rekey: { dhPublicKey: crypto.x25519PublicKey(dhSecret), keySalt }
  })
  if (answer._tag === "Exhausted") return exhausted(state)
  return [
    {
      settings,
      phase: {
        ...phase,
        send: { key: deriveKey(crypto, keySalt, shared), counter: 0 },
        receive: { key: deriveKey(crypto, rekey.keySalt, shared), counter: 0 },
        previousReceive: phase.receive,
        ticksUntilRekey: settings.rekeyIntervalTicks,
        peerRekeyTokens: phase.peerRekeyTokens - 1
      }
    },
    [{ _tag: "SendFrame", frame: answer.frame }]
  ]
}

const onTick = (state: SecureChannelState): SecureChannelStep => {
  const { settings } = state
  const phase = state.phase
  switch (phase._tag) {
    case "NotStarted":
    case "Closed":
      // Time before Start does not count against the handshake.
      return [state, noCommands]
    case "AwaitingRandNonce":
    case "AwaitingDh": {
      const ticks = phase.ticks + 1
      if (ticks >= settings.handshakeTimeoutTicks) {
        return fail(state, "HandshakeTimeout", `handshake not finished within ${settings.handshakeTimeoutTicks} ticks`)
      }
      return [{ settings, phase: { ...phase, ticks } }, noCommands]
    }
    case "Established": {
      const ticksUntilRekey = phase.ticksUntilRekey - 1
      const refill = refillRekeyTokens(settings, phase)
      if (ticksUntilRekey > 0) return [{ settings, phase: { ...phase, ...refill, ticksUntilRekey } }, noCommands]
      // Due, but our previous rekey is unanswered: try again next tick (as Offset does).
      if (phase.pendingRekey !== undefined) {
        return [{ settings, phase: { ...phase, ...refill, ticksUntilRekey: 0 } }, noCommands]
      }
      return startRekey(state, { ...phase, ...refill })
    }
    default:
      return absurd(phase)
  }
}

// One tick of the peer's rekey allowance: a token back every refillTicks, up to the burst.
const refillRekeyTokens = (
  settings: SecureChannelSettings,
  phase: EstablishedPhase
): Pick<EstablishedPhase, "peerRekeyTokens" | "ticksUntilRekeyToken"> => {
  const limit = settings.peerRekeyLimit
  if (limit === undefined) return phase
  if (phase.ticksUntilRekeyToken > 1) {
    return { peerRekeyTokens: phase.peerRekeyTokens, ticksUntilRekeyToken: phase.ticksUntilRekeyToken - 1 }
  }
  return { peerRekeyTokens: Math.min(limit.burst, phase.peerRekeyTokens + 1), ticksUntilRekeyToken: limit.refillTicks }
}

const startRekey = (state: SecureChannelState, phase: EstablishedPhase): SecureChannelStep => {
  const { settings } = state
  const dhSecret = settings.random(DH_SECRET_LENGTH)
  const keySalt = settings.random(SALT_LENGTH)
  const sealed = seal(settings, phase.send, {
    _tag: "Rekey",
    rekey: { dhPublicKey: settings.crypto.x25519PublicKey(dhSecret), keySalt }
  })
  if (sealed._tag === "Exhausted") return exhausted(state)
  return [
    {
      settings,
      phase: {
        ...phase,
        send: sealed.send,
        pendingRekey: { dhSecret, keySalt },
        ticksUntilRekey: settings.rekeyIntervalTicks
      }
    },
    [{ _tag: "SendFrame", frame: sealed.frame }]
  ]
}
