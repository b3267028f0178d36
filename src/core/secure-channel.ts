/**
 * The secure channel (PROTOCOL.md "Secure channel") as a pure state machine:
 * handshake, transport encryption and rekeying, for either side of a
 * connection, with or without an expected remote identity.
 *
 * How to drive it (quinn-proto's shape: feed, then drain):
 * - `new SecureChannel(config)`; call `start()` first, then `handleFrame`
 *   for every frame the peer sent (in order), `send` for each application
 *   message (only after the `Authenticated` event), and `tick()` once per
 *   tick (1 s in Offset).
 * - After each call, drain `pollTransmit()` (the frames to write to the
 *   peer, in order) and then `pollEvent()` (`Authenticated` exactly once
 *   when the handshake completes, `Deliver` for each application message,
 *   `Closed` exactly once when the channel is over), each until it returns
 *   undefined. Transmits before events: frames queued before a `Closed`
 *   still belong on the wire (a refused peer needs our handshake frame to
 *   say which key we hold).
 * - The machine changes in place: no state copies, no command arrays; a
 *   sealed frame is the only buffer a `send` allocates besides the cipher's.
 * - Peer misbehaviour is never thrown: it ends the channel with a `Closed`
 *   event carrying a `SecureChannelError`. After that every call does
 *   nothing. A caller's own mistake (a frame before `start`, `send` before
 *   `Authenticated`, `start` twice) throws `ChannelMisuseError` and leaves
 *   the machine as it was; a correct adapter never sees it.
 * - Time and randomness are inputs: ticks are calls; every nonce, salt,
 *   ephemeral key and padding byte comes from `config.random`. The same
 *   calls with the same random bytes give the same frames and events.
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
import { CommandQueue } from "./command-queue.ts"

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

/** What the driver learns from a secure channel (`pollEvent`), in order. */
export type SecureChannelEvent =
  | { readonly _tag: "Authenticated"; readonly remotePublicKey: Uint8Array }
  | { readonly _tag: "Deliver"; readonly data: Uint8Array }
  | { readonly _tag: "Closed"; readonly error: SecureChannelError }

/** One direction's key and the counter of the next nonce under it (advanced in place per frame). */
export interface DirectionKey {
  readonly key: Uint8Array
  counter: number
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

/**
 * Where the channel is, named after what it waits for; each holds only what
 * is valid there. A new phase object marks each step of the handshake and
 * the close; while established, the phase's fields change in place.
 */
export type SecureChannelPhase =
  | { readonly _tag: "NotStarted" }
  | {
      readonly _tag: "AwaitingRandNonce"
      readonly localNonce: Uint8Array
      ticks: number
    }
  | {
      readonly _tag: "AwaitingDh"
      readonly localNonce: Uint8Array
      readonly remotePublicKey: Uint8Array
      readonly dhSecret: Uint8Array
      readonly keySalt: Uint8Array
      ticks: number
    }
  | EstablishedPhase
  | { readonly _tag: "Closed"; readonly error: SecureChannelError }

/** The established channel's keys and countdowns. */
export interface EstablishedPhase {
  readonly _tag: "Established"
  readonly remotePublicKey: Uint8Array
  send: DirectionKey
  receive: DirectionKey
  /** The receive key before the last rekey, until a frame decrypts under `receive`. */
  previousReceive: DirectionKey | undefined
  pendingRekey: PendingRekey | undefined
  ticksUntilRekey: number
  /** Rekeys the peer may still start now (peerRekeyLimit); Infinity without a limit. */
  peerRekeyTokens: number
  /** Ticks until one more peer rekey is allowed. */
  ticksUntilRekeyToken: number
}

const NOT_STARTED: SecureChannelPhase = { _tag: "NotStarted" }

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


/** One secure channel; see the module header for how to drive it. */
export class SecureChannel {
  readonly settings: SecureChannelSettings
  private current: SecureChannelPhase = NOT_STARTED
  private readonly transmits = new CommandQueue<Uint8Array>()
  private readonly events = new CommandQueue<SecureChannelEvent>()

  /** A channel that has not started; bad settings throw a RangeError here, not later. */
  constructor(config: SecureChannelConfig) {
    this.settings = secureChannelSettings(config)
  }

  /** Where the channel is (read-only: inspect, do not change). */
  get phase(): SecureChannelPhase {
    return this.current
  }

  /** True once the handshake is done and `send` is allowed (false again after close). */
  get isEstablished(): boolean {
    return this.current._tag === "Established"
  }

  /** The close reason, or undefined while the channel is open. */
  get closeError(): SecureChannelError | undefined {
    return this.current._tag === "Closed" ? this.current.error : undefined
  }

  /** The next frame to write to the peer, in order; undefined when there is none. */
  pollTransmit(): Uint8Array | undefined {
    return this.transmits.poll()
  }

  /** The next event, in order; undefined when there is none. */
  pollEvent(): SecureChannelEvent | undefined {
    return this.events.poll()
  }

  /** Sends our ExchangeRandNonce; once, before anything else. */
  start(): void {
    if (this.current._tag === "Closed") return
    if (this.current._tag !== "NotStarted") throw new ChannelMisuseError("AlreadyStarted", "start called twice")
    const { settings } = this
    const localNonce = settings.random(RAND_NONCE_LENGTH)
    this.transmits.push(encodeExchangeRandNonce({
      randNonce: localNonce,
      srcPublicKey: settings.identity.publicKey,
      optDestPublicKey: settings.expectedRemotePublicKey
    }))
    this.current = { _tag: "AwaitingRandNonce", localNonce, ticks: 0 }
  }

  /** One frame from the peer, in arrival order. */
  handleFrame(frame: Uint8Array): void {
    const phase = this.current
    switch (phase._tag) {
      case "Closed":
        return
      case "NotStarted":
        throw new ChannelMisuseError("NotStarted", "handleFrame before start")
      case "AwaitingRandNonce":
        return this.onRandNonce(phase, frame)
      case "AwaitingDh":
        return this.onDh(phase, frame)
      case "Established":
        return this.onTransportFrame(phase, frame)
      default:
        return absurd(phase)
    }
  }

  /** Seals one application message; only after `Authenticated`. */
  send(data: Uint8Array): void {
    const phase = this.current
    if (phase._tag === "Closed") return
    if (phase._tag !== "Established") {
      throw new ChannelMisuseError("NotAuthenticated", "send before the channel is authenticated")
    }
    this.seal(phase.send, { _tag: "User", data })
  }

  /** One tick: the handshake deadline before authentication, rekeying after. */
  tick(): void {
    const { settings } = this
    const phase = this.current
    switch (phase._tag) {
      case "NotStarted":
      case "Closed":
        // Time before start does not count against the handshake.
        return
      case "AwaitingRandNonce":
      case "AwaitingDh":
        phase.ticks++
        if (phase.ticks >= settings.handshakeTimeoutTicks) {
          this.fail("HandshakeTimeout", `handshake not finished within ${settings.handshakeTimeoutTicks} ticks`)
        }
        return
      case "Established":
        refillRekeyTokens(settings, phase)
        if (phase.ticksUntilRekey > 1) {
          phase.ticksUntilRekey--
          return
        }
        // Due, but our previous rekey is unanswered: try again next tick (as Offset does).
        phase.ticksUntilRekey = 0
        if (phase.pendingRekey === undefined) this.startRekey(phase)
        return
      default:
        return absurd(phase)
    }
  }

  // ---------------------------------------------------------------- handshake

  private onRandNonce(phase: Extract<SecureChannelPhase, { readonly _tag: "AwaitingRandNonce" }>, frame: Uint8Array): void {
    const { settings } = this
    const decoded = decodeExchangeRandNonce(frame)
    if (decoded._tag === "Err") {
      return this.fail("MalformedMessage", `ExchangeRandNonce: ${decoded.error.message}`, decoded.error)
    }
    const peer = decoded.value
    const expected = settings.expectedRemotePublicKey
    if (expected !== undefined && !bytesEqual(peer.srcPublicKey, expected)) {
      return this.fail("UnexpectedRemoteKey", "the peer's identity is not the expected public key")
    }
    if (peer.optDestPublicKey !== undefined && !bytesEqual(peer.optDestPublicKey, settings.identity.publicKey)) {
      return this.fail("UnexpectedDestination", "the peer expects a different identity than ours")
    }
    // Offset's order: ephemeral key first, then salt.
    const dhSecret = settings.random(DH_SECRET_LENGTH)
    const keySalt = settings.random(SALT_LENGTH)
    const dhPublicKey = settings.crypto.x25519PublicKey(dhSecret)
    const signature = settings.crypto.ed25519Sign(
      settings.identity.seed,
      exchangeDhSignatureInput(dhPublicKey, peer.randNonce, keySalt)
    )
    this.transmits.push(encodeExchangeDh({ dhPublicKey, randNonce: peer.randNonce, keySalt, signature }))
    this.current = {
      _tag: "AwaitingDh",
      localNonce: phase.localNonce,
      remotePublicKey: peer.srcPublicKey,
      dhSecret,
      keySalt,
      ticks: phase.ticks
    }
  }

  private onDh(phase: Extract<SecureChannelPhase, { readonly _tag: "AwaitingDh" }>, frame: Uint8Array): void {
    const { settings } = this
    const { crypto } = settings
    const decoded = decodeExchangeDh(frame)
    if (decoded._tag === "Err") {
      return this.fail("MalformedMessage", `ExchangeDh: ${decoded.error.message}`, decoded.error)
    }
    const dh = decoded.value
    if (!bytesEqual(dh.randNonce, phase.localNonce)) {
      return this.fail("WrongNonceEcho", "the peer's ExchangeDh does not echo our nonce")
    }
    const signed = exchangeDhSignatureInput(dh.dhPublicKey, dh.randNonce, dh.keySalt)
    if (!crypto.ed25519Verify(phase.remotePublicKey, signed, dh.signature)) {
      return this.fail("BadSignature", "the peer's ExchangeDh signature does not verify under its identity")
    }
    const shared = crypto.x25519(phase.dhSecret, dh.dhPublicKey)
    if (shared === undefined) return this.fail("LowOrderPoint", "the peer's handshake DH key is a low-order point")
    this.current = {
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
    this.events.push({ _tag: "Authenticated", remotePublicKey: phase.remotePublicKey })
  }

  // ---------------------------------------------------------------- transport

  private onTransportFrame(phase: EstablishedPhase, frame: Uint8Array): void {
    const { settings } = this
    if (frame.length < TRANSPORT_NONCE_LENGTH + TRANSPORT_TAG_LENGTH) {
      return this.fail("ShortFrame", `transport frame of ${frame.length} bytes is shorter than nonce and tag`)
    }
    // While a previous key is kept its counter is at least 1 (it carried the
    // peer's Rekey) and the new key's is 0, so the nonce says which key to try.
    const previous = phase.previousReceive
    const underPrevious = previous !== undefined && nonceIs(frame, previous.counter)
    const direction = underPrevious ? previous : phase.receive
    if (!underPrevious && !nonceIs(frame, direction.counter)) {
      return this.fail("UnexpectedNonce", `transport frame nonce is not the expected counter ${direction.counter}`)
    }
    const plaintext = settings.crypto.aeadOpen(
      direction.key,
      frame.subarray(0, TRANSPORT_NONCE_LENGTH),
      frame.subarray(TRANSPORT_NONCE_LENGTH)
    )
    if (plaintext === undefined) return this.fail("DecryptFailed", "transport frame tag does not verify")
    direction.counter++
    // A frame under the current key retires the previous one (Offset's try_decrypt).
    if (!underPrevious) phase.previousReceive = undefined
    const decoded = decodeChannelMessage(plaintext, {
      maxUnpackedBytes: Math.min(defaultMaxUnpackedBytes, unpackBound(settings.maxExpansion, frame.length))
    })
    if (decoded._tag === "Err") {
      return this.fail("MalformedMessage", `ChannelMessage: ${decoded.error.message}`, decoded.error)
    }
    const content = decoded.value.content
    switch (content._tag) {
      case "User":
        this.events.push({ _tag: "Deliver", data: content.data })
        return
      case "Rekey":
        if (underPrevious) {
          return this.fail("UnexpectedMessage", "a Rekey arrived under a receive key a rekey already replaced")
        }
        return this.onRekey(phase, content.rekey)
      default:
        return absurd(content)
    }
  }

  private onRekey(phase: EstablishedPhase, rekey: Rekey): void {
    const { settings } = this
    const { crypto } = settings
    const pending = phase.pendingRekey
    if (pending !== undefined) {
      // The peer's Rekey answers ours (or crossed it): both sides now derive the same pair.
      const shared = crypto.x25519(pending.dhSecret, rekey.dhPublicKey)
      if (shared === undefined) return this.fail("LowOrderPoint", "the peer's rekey DH key is a low-order point")
      phase.previousReceive = phase.receive
      phase.send = { key: deriveKey(crypto, pending.keySalt, shared), counter: 0 }
      phase.receive = { key: deriveKey(crypto, rekey.keySalt, shared), counter: 0 }
      phase.pendingRekey = undefined
      phase.ticksUntilRekey = settings.rekeyIntervalTicks
      return
    }
    // The peer starts this rekey: each costs us a key pair, an X25519 and two
    // HKDFs, so a peer rekeying in a loop is refused rather than served.
    if (phase.peerRekeyTokens < 1) {
      return this.fail(
        "RekeyFlood",
        `the peer started more rekeys than ${settings.peerRekeyLimit?.burst} per ${settings.peerRekeyLimit?.refillTicks} ticks`
      )
    }
    const dhSecret = settings.random(DH_SECRET_LENGTH)
    const keySalt = settings.random(SALT_LENGTH)
    const shared = crypto.x25519(dhSecret, rekey.dhPublicKey)
    if (shared === undefined) return this.fail("LowOrderPoint", "the peer's rekey DH key is a low-order point")
    // Our answer goes under the OLD send key: the peer switches its receive key only on reading it.
    const answered = this.seal(phase.send, {
      _tag: "Rekey",
      rekey: { dhPublicKey: crypto.x25519PublicKey(dhSecret), keySalt }
    })
    if (!answered) return
    phase.previousReceive = phase.receive
    phase.send = { key: deriveKey(crypto, keySalt, shared), counter: 0 }
    phase.receive = { key: deriveKey(crypto, rekey.keySalt, shared), counter: 0 }
    phase.ticksUntilRekey = settings.rekeyIntervalTicks
    phase.peerRekeyTokens--
  }

  private startRekey(phase: EstablishedPhase): void {
    const { settings } = this
    const dhSecret = settings.random(DH_SECRET_LENGTH)
    const keySalt = settings.random(SALT_LENGTH)
    const sealed = this.seal(phase.send, {
      _tag: "Rekey",
      rekey: { dhPublicKey: settings.crypto.x25519PublicKey(dhSecret), keySalt }
    })
    if (!sealed) return
    phase.pendingRekey = { dhSecret, keySalt }
    phase.ticksUntilRekey = settings.rekeyIntervalTicks
  }

  // Encrypts one ChannelMessage under `send` and queues the frame; false
  // (and closed) when the key's nonces are used up.
  private seal(send: DirectionKey, content: ChannelContent): boolean {
    if (send.counter >= Number.MAX_SAFE_INTEGER) {
      this.fail("NonceExhausted", "send nonce counter reached 2^53; refusing to reuse a nonce")
      return false
    }
    const { settings } = this
    // Transient: sealed right here, before anything else is encoded.
    const plaintext = encodeChannelMessageTransient({ randPadding: makePadding(settings), content })
    const nonce = transportNonce(send.counter)
    this.transmits.push(settings.crypto.aeadSeal(send.key, nonce, plaintext, nonce))
    send.counter++
    return true
  }

  private fail(reason: SecureChannelErrorReason, message: string, decodeError?: DecodeError): void {
    const error: SecureChannelError = decodeError === undefined
      ? { _tag: "SecureChannelError", reason, message }
      : { _tag: "SecureChannelError", reason, message, decodeError }
    this.current = { _tag: "Closed", error }
    this.events.push({ _tag: "Closed", error })
  }
}

// One tick of the peer's rekey allowance: a token back every refillTicks, up to the burst.
const refillRekeyTokens = (settings: SecureChannelSettings, phase: EstablishedPhase): void => {
  const limit = settings.peerRekeyLimit
  if (limit === undefined) return
  if (phase.ticksUntilRekeyToken > 1) {
    phase.ticksUntilRekeyToken--
    return
  }
  phase.peerRekeyTokens = Math.min(limit.burst, phase.peerRekeyTokens + 1)
  phase.ticksUntilRekeyToken = limit.refillTicks
}
