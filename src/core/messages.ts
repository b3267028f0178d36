/**
 * Typed values of every Offset protocol message and their packed Cap'n Proto
 * codecs (PROTOCOL.md). Layouts follow schema/*.capnp; fixed-size byte fields
 * (keys, nonces, salts, signatures) are Uint8Arrays of their exact length.
 *
 * Decoders never throw: bad bytes give a DecodeError value. Data fields of a
 * decoded message may be views into a buffer the decoder allocated (never
 * into the caller's input), so they stay valid after the input is reused.
 *
 * Encoders throw a RangeError only for a caller's bug (a fixed-size field of
 * the wrong length).
 */
import {
  createMessage,
  finishPacked,
  initStruct,
  type MessageBuilder,
  type MessageReader,
  openMessage,
  readDataField,
  readRoot,
  readStructField,
  readU16,
  readWordsBigEndian,
  recordError,
  rootPointer,
  setData,
  type StructReader,
  unpack,
  unpackedByteLength,
  unpackPrefix,
  writeWordsBigEndian
} from "./capnp.ts"
import { absurd } from "./absurd.ts"

/** Bytes of a field; fixed-size fields have their exact length. */
export type Bytes = Uint8Array

/** A client's first message to a relay: what the connection is for. */
export type InitConnection =
  | { readonly _tag: "Listen" }
  | { readonly _tag: "Accept"; readonly publicKey: Bytes }
  | { readonly _tag: "Connect"; readonly publicKey: Bytes }

/** Client → relay on a listen channel: close that connector's pending connect channel. */
export interface RejectConnection {
  readonly publicKey: Bytes
}

/** Relay → client on a listen channel: `publicKey` wants to connect; answer with accept or RejectConnection. */
export interface IncomingConnection {
  readonly publicKey: Bytes
}

/** The keepalive layer's message: a keepalive, or one application message. */
export type KaMessage =
  | { readonly _tag: "KeepAlive" }
  | { readonly _tag: "Message"; readonly data: Bytes }

/** The first handshake message of the secure channel. */
export interface ExchangeRandNonce {
  /** 16 bytes. */
  readonly randNonce: Bytes
  /** 32 bytes: the sender's identity key. */
  readonly srcPublicKey: Bytes
  /** 32 bytes, or undefined for the `empty` member. */
  readonly optDestPublicKey: Bytes | undefined
}

/** The second handshake message: our ephemeral DH key and salt, signed with our identity. */
export interface ExchangeDh {
  /** 32 bytes. */
  readonly dhPublicKey: Bytes
  /** 16 bytes: the nonce the OTHER side sent. */
  readonly randNonce: Bytes
  /** 32 bytes. */
  readonly keySalt: Bytes
  /** 64 bytes. */
  readonly signature: Bytes
}

/** A fresh ephemeral DH key and salt for new transport keys. */
export interface Rekey {
  /** 32 bytes. */
  readonly dhPublicKey: Bytes
  /** 32 bytes. */
  readonly keySalt: Bytes
}

/** What a transport frame carries: a rekey, or one user message. */
export type ChannelContent =
  | { readonly _tag: "Rekey"; readonly rekey: Rekey }
  | { readonly _tag: "User"; readonly data: Bytes }

/** The plaintext of a transport frame: padding that hides its length, then the content. */
export interface ChannelMessage {
  readonly randPadding: Bytes
  readonly content: ChannelContent
}

/** Why bytes could not be decoded as a message. */
export interface DecodeError {
  readonly _tag: "DecodeError"
  readonly reason:
    | "Truncated" // input ends inside a packed word, the segment table or a segment
    | "TooLarge" // unpacked size or segment count over the decoder's bound
    | "BadSegmentTable"
    | "BadPointer" // wrong pointer kind, or pointing outside its segment
    | "TraversalLimit" // too many words read: pointer loops, amplification
    | "UnknownUnionMember"
    | "BadLength" // a fixed-size field or list of the wrong size
  readonly message: string
}

/** A decoded value, or why the bytes are not one. */
export type DecodeResult<A> =
  | { readonly _tag: "Ok"; readonly value: A }
  | { readonly _tag: "Err"; readonly error: DecodeError }

// ---------------------------------------------------------------------------
// Codecs

/** Options of every decoder. */
export interface DecodeOptions {
  /** Refuse ("TooLarge") input that unpacks to more bytes than this, before allocating. Default 8 MiB. */
  readonly maxUnpackedBytes?: number
}

/** Default bound of a decoder's unpacked buffer: 8 × the 1 MiB frame limit, the worst honest packing ratio. */
export const defaultMaxUnpackedBytes = 8 * 1024 * 1024

/**
 * Struct layouts of schema/*.capnp as [data words, pointer count].
 * test/capnp-golden.test.ts checks them against the generated classes.
 */
export const structLayouts = {
  Buffer128: [2, 0],
  Buffer256: [4, 0],
  Buffer512: [8, 0],
  PublicKey: [0, 1],
  DhPublicKey: [0, 1],
  Salt: [0, 1],
  RandValue: [0, 1],
  Signature: [0, 1],
  InitConnection: [1, 1],
  RejectConnection: [0, 1],
  IncomingConnection: [0, 1],
  KaMessage: [1, 1],
  ExchangeRandNonce: [1, 3],
  ExchangeDh: [0, 4],
  Rekey: [0, 2],
  ChannelContent: [1, 1],
  ChannelMessage: [0, 2]
} as const satisfies Record<string, readonly [number, number]>

/** Byte lengths of the fixed-size fields (PublicKey, DhPublicKey, Salt: 32; RandValue: 16; Signature: 64). */
export const fixedLengths = { publicKey: 32, dhPublicKey: 32, salt: 32, randValue: 16, signature: 64 } as const

const L = structLayouts
type Layout = readonly [dataWords: number, pointerCount: number]

// Words a struct occupies, and the byte offset of its pointer i.
const words = (layout: Layout): number => layout[0] + layout[1]
const pointerAt = (struct: number, layout: Layout, index: number): number => struct + (layout[0] + index) * 8
const init = (builder: MessageBuilder, pointer: number, layout: Layout): number =>
  initStruct(builder, pointer, layout[0], layout[1])

// Words of a fixed-size field: its wrapper struct (one pointer) and the BufferN.
const fixedWords = (length: number): number => words(L.PublicKey) + length / 8
const dataWords = (data: Bytes): number => Math.ceil(data.length / 8)
// The root pointer is one word of every message.
const rootWords = 1

// Every encoder below sizes its message first, then places objects in
// pre-order depth-first field order: the order in which the C++ library lays
// out a copied message, so our bytes equal `capnp encode --packed`.
// Union discriminants of our schemas all sit at byte 0 of the data section.

// The fixed field at `pointer`: wrapper struct, then its BufferN. Wrong
// lengths are a caller's bug (types cannot say "32 bytes"), hence the throw.
const writeFixed = (builder: MessageBuilder, pointer: number, bytes: Bytes, length: number, what: string): void => {
  if (bytes.length !== length) throw new RangeError(`${what} must be ${length} bytes, got ${bytes.length}`)
  const wrapper = init(builder, pointer, L.PublicKey)
  const buffer = initStruct(builder, pointerAt(wrapper, L.PublicKey, 0), length / 8, 0)
  writeWordsBigEndian(builder, buffer, bytes)
}

const writeRekey = (builder: MessageBuilder, pointer: number, rekey: Rekey): void => {
  const struct = init(builder, pointer, L.Rekey)
  writeFixed(builder, pointerAt(struct, L.Rekey, 0), rekey.dhPublicKey, fixedLengths.dhPublicKey, "Rekey.dhPublicKey")
  writeFixed(builder, pointerAt(struct, L.Rekey, 1), rekey.keySalt, fixedLengths.salt, "Rekey.keySalt")
}

const rekeyWords = words(L.Rekey) + fixedWords(fixedLengths.dhPublicKey) + fixedWords(fixedLengths.salt)

/** Packed bytes of an InitConnection. */
export const encodeInitConnection = (value: InitConnection): Uint8Array => {
  const keyed = value._tag !== "Listen"
  const builder = createMessage(rootWords + words(L.InitConnection) + (keyed ? fixedWords(fixedLengths.publicKey) : 0))
  const root = init(builder, rootPointer, L.InitConnection)
  const key = pointerAt(root, L.InitConnection, 0)
  switch (value._tag) {
    case "Listen":
      break
    case "Accept":
      builder.view.setUint16(root, 1, true)
      writeFixed(builder, key, value.publicKey, fixedLengths.publicKey, "InitConnection.accept")
      break
    case "Connect":
      builder.view.setUint16(root, 2, true)
      writeFixed(builder, key, value.publicKey, fixedLengths.publicKey, "InitConnection.connect")
      break
    default:
      return absurd(value)
  }
  return finishPacked(builder)
}

const encodeKeyOnly = (layout: Layout, publicKey: Bytes, what: string): Uint8Array => {
  const builder = createMessage(rootWords + words(layout) + fixedWords(fixedLengths.publicKey))
  const root = init(builder, rootPointer, layout)
  writeFixed(builder, pointerAt(root, layout, 0), publicKey, fixedLengths.publicKey, what)
  return finishPacked(builder)
}

/** Packed bytes of a RejectConnection. */
export const encodeRejectConnection = (value: RejectConnection): Uint8Array =>
  encodeKeyOnly(L.RejectConnection, value.publicKey, "RejectConnection.publicKey")

/** Packed bytes of an IncomingConnection. */
export const encodeIncomingConnection = (value: IncomingConnection): Uint8Array =>
  encodeKeyOnly(L.IncomingConnection, value.publicKey, "IncomingConnection.publicKey")

/** Packed bytes of a KaMessage (data path: one message buffer, one packed buffer). */
export const encodeKaMessage = (value: KaMessage): Uint8Array => {
  if (value._tag === "KeepAlive") {
    const builder = createMessage(rootWords + words(L.KaMessage))
    init(builder, rootPointer, L.KaMessage)
    return finishPacked(builder)
  }
  const builder = createMessage(rootWords + words(L.KaMessage) + dataWords(value.data))
  const root = init(builder, rootPointer, L.KaMessage)
  builder.view.setUint16(root, 1, true)
  setData(builder, pointerAt(root, L.KaMessage, 0), value.data)
  return finishPacked(builder)
}

/** Packed bytes of an ExchangeRandNonce. */
export const encodeExchangeRandNonce = (value: ExchangeRandNonce): Uint8Array => {
  const dest = value.optDestPublicKey
  const layout = L.ExchangeRandNonce
  const builder = createMessage(
    rootWords +
      words(layout) +
      fixedWords(fixedLengths.randValue) +
      fixedWords(fixedLengths.publicKey) +
      (dest === undefined ? 0 : fixedWords(fixedLengths.publicKey))
  )
  const root = init(builder, rootPointer, layout)
  const nonce = pointerAt(root, layout, 0)
  const src = pointerAt(root, layout, 1)
  writeFixed(builder, nonce, value.randNonce, fixedLengths.randValue, "ExchangeRandNonce.randNonce")
  writeFixed(builder, src, value.srcPublicKey, fixedLengths.publicKey, "ExchangeRandNonce.srcPublicKey")
  if (dest !== undefined) {
    builder.view.setUint16(root, 1, true)
    const destPointer = pointerAt(root, layout, 2)
    writeFixed(builder, destPointer, dest, fixedLengths.publicKey, "ExchangeRandNonce.optDestPublicKey")
  }
  return finishPacked(builder)
}

/** Packed bytes of an ExchangeDh. */
export const encodeExchangeDh = (value: ExchangeDh): Uint8Array => {
  const layout = L.ExchangeDh
  const builder = createMessage(
    rootWords +
      words(layout) +
      fixedWords(fixedLengths.dhPublicKey) +
      fixedWords(fixedLengths.randValue) +
      fixedWords(fixedLengths.salt) +
      fixedWords(fixedLengths.signature)
  )
  const root = init(builder, rootPointer, layout)
  const at = (i: number): number => pointerAt(root, layout, i)
  writeFixed(builder, at(0), value.dhPublicKey, fixedLengths.dhPublicKey, "ExchangeDh.dhPublicKey")
  writeFixed(builder, at(1), value.randNonce, fixedLengths.randValue, "ExchangeDh.randNonce")
  writeFixed(builder, at(2), value.keySalt, fixedLengths.salt, "ExchangeDh.keySalt")
  writeFixed(builder, at(3), value.signature, fixedLengths.signature, "ExchangeDh.signature")
  return finishPacked(builder)
}

/** Packed bytes of a Rekey as a message of its own. */
export const encodeRekey = (value: Rekey): Uint8Array => {
  const builder = createMessage(rootWords + rekeyWords)
  writeRekey(builder, rootPointer, value)
  return finishPacked(builder)
}

/** Packed bytes of a ChannelMessage (data path: one message buffer, one packed buffer). */
export const encodeChannelMessage = (value: ChannelMessage): Uint8Array => encodeChannel(value, false)

/**
 * Packed bytes of a ChannelMessage in a buffer the next call reuses: for the
 * secure channel, which seals them at once (one allocation less per message).
 */
export const encodeChannelMessageTransient = (value: ChannelMessage): Uint8Array => encodeChannel(value, true)

const encodeChannel = (value: ChannelMessage, transient: boolean): Uint8Array => {
  const content = value.content
  const contentWords = words(L.ChannelContent) + (content._tag === "User" ? dataWords(content.data) : rekeyWords)
  const builder = createMessage(rootWords + words(L.ChannelMessage) + dataWords(value.randPadding) + contentWords)
  const root = init(builder, rootPointer, L.ChannelMessage)
  setData(builder, pointerAt(root, L.ChannelMessage, 0), value.randPadding)
  const contentStruct = init(builder, pointerAt(root, L.ChannelMessage, 1), L.ChannelContent)
  const member = pointerAt(contentStruct, L.ChannelContent, 0)
  switch (content._tag) {
    case "Rekey":
      writeRekey(builder, member, content.rekey)
      break
    case "User":
      builder.view.setUint16(contentStruct, 1, true)
      setData(builder, member, content.data)
      break
    default:
      return absurd(content)
  }
  return finishPacked(builder, transient)
}


// Decoding: each reader returns undefined only after recording an error on
// the MessageReader (capnp.ts's sticky error), so `reader.error` is then set.

const readFixed = (reader: MessageReader, parent: StructReader, index: number, length: number): Bytes | undefined => {
  const wrapper = readStructField(reader, parent, index)
  if (wrapper === undefined) return undefined
  const buffer = readStructField(reader, wrapper, 0)
  if (buffer === undefined) return undefined
  return readWordsBigEndian(reader, buffer, length / 8)
}

const unknownMember = (reader: MessageReader, union: string, which: number): undefined =>
  recordError(reader, "UnknownUnionMember", `${union} has union discriminant ${which}, which this schema does not define`)

const readInitConnection = (reader: MessageReader, root: StructReader): InitConnection | undefined => {
  const which = readU16(reader, root, 0)
  switch (which) {
    case 0:
      return { _tag: "Listen" }
    case 1:
    case 2: {
      const publicKey = readFixed(reader, root, 0, fixedLengths.publicKey)
      if (publicKey === undefined) return undefined
      return which === 1 ? { _tag: "Accept", publicKey } : { _tag: "Connect", publicKey }
    }
    default:
      return unknownMember(reader, "InitConnection", which)
  }
}

const readKeyOnly = (reader: MessageReader, root: StructReader): { readonly publicKey: Bytes } | undefined => {
  const publicKey = readFixed(reader, root, 0, fixedLengths.publicKey)
  return publicKey === undefined ? undefined : { publicKey }
}

const readKaMessage = (reader: MessageReader, root: StructReader): KaMessage | undefined => {
  const which = readU16(reader, root, 0)
  switch (which) {
    case 0:
      return { _tag: "KeepAlive" }
    case 1: {
      const data = readDataField(reader, root, 0)
      return data === undefined ? undefined : { _tag: "Message", data }
    }
    default:
      return unknownMember(reader, "KaMessage", which)
  }
}

const readExchangeRandNonce = (reader: MessageReader, root: StructReader): ExchangeRandNonce | undefined => {
  const randNonce = readFixed(reader, root, 0, fixedLengths.randValue)
  if (randNonce === undefined) return undefined
  const srcPublicKey = readFixed(reader, root, 1, fixedLengths.publicKey)
  if (srcPublicKey === undefined) return undefined
  const which = readU16(reader, root, 0)
  switch (which) {
    case 0:
      return { randNonce, srcPublicKey, optDestPublicKey: undefined }
    case 1: {
      const optDestPublicKey = readFixed(reader, root, 2, fixedLengths.publicKey)
      return optDestPublicKey === undefined ? undefined : { randNonce, srcPublicKey, optDestPublicKey }
    }
    default:
      return unknownMember(reader, "ExchangeRandNonce.optDestPublicKey", which)
  }
}

const readExchangeDh = (reader: MessageReader, root: StructReader): ExchangeDh | undefined => {
  const dhPublicKey = readFixed(reader, root, 0, fixedLengths.dhPublicKey)
  if (dhPublicKey === undefined) return undefined
  const randNonce = readFixed(reader, root, 1, fixedLengths.randValue)
  if (randNonce === undefined) return undefined
  const keySalt = readFixed(reader, root, 2, fixedLengths.salt)
  if (keySalt === undefined) return undefined
  const signature = readFixed(reader, root, 3, fixedLengths.signature)
  if (signature === undefined) return undefined
  return { dhPublicKey, randNonce, keySalt, signature }
}

const readRekey = (reader: MessageReader, struct: StructReader): Rekey | undefined => {
  const dhPublicKey = readFixed(reader, struct, 0, fixedLengths.dhPublicKey)
  if (dhPublicKey === undefined) return undefined
  const keySalt = readFixed(reader, struct, 1, fixedLengths.salt)
  if (keySalt === undefined) return undefined
  return { dhPublicKey, keySalt }
}

const readChannelMessage = (reader: MessageReader, root: StructReader): ChannelMessage | undefined => {
  const randPadding = readDataField(reader, root, 0)
  if (randPadding === undefined) return undefined
  const contentStruct = readStructField(reader, root, 1)
  if (contentStruct === undefined) return undefined
  const which = readU16(reader, contentStruct, 0)
  switch (which) {
    case 0: {
      const rekeyStruct = readStructField(reader, contentStruct, 0)
      if (rekeyStruct === undefined) return undefined
      const rekey = readRekey(reader, rekeyStruct)
      return rekey === undefined ? undefined : { randPadding, content: { _tag: "Rekey", rekey } }
    }
    case 1: {
      const data = readDataField(reader, contentStruct, 0)
      return data === undefined ? undefined : { randPadding, content: { _tag: "User", data } }
    }
    default:
      return unknownMember(reader, "ChannelContent", which)
  }
}

// Unpack (bounded), open the framing, read the root with `read`.
const decodeWith = <A>(
  bytes: Uint8Array,
  options: DecodeOptions | undefined,
  read: (reader: MessageReader, root: StructReader) => A | undefined
): DecodeResult<A> => {
  const unpacked = unpack(bytes, options?.maxUnpackedBytes ?? defaultMaxUnpackedBytes)
  if (unpacked._tag === "Err") return unpacked
  const opened = openMessage(unpacked.value)
  if (opened._tag === "Err") return opened
  const reader = opened.value
  const root = readRoot(reader)
  const value = root === undefined ? undefined : read(reader, root)
  if (reader.error !== undefined) return { _tag: "Err", error: reader.error }
  if (value === undefined) {
    // Unreachable: readers return undefined only after recording an error.
    return {
      _tag: "Err",
      error: { _tag: "DecodeError", reason: "BadPointer", message: "decoder returned no value and no error (bug)" }
    }
  }
  return { _tag: "Ok", value }
}

/** Decodes a packed InitConnection; never throws. */
export const decodeInitConnection = (bytes: Uint8Array, options?: DecodeOptions): DecodeResult<InitConnection> =>
  decodeWith(bytes, options, readInitConnection)

/** Decodes a packed RejectConnection; never throws. */
export const decodeRejectConnection = (bytes: Uint8Array, options?: DecodeOptions): DecodeResult<RejectConnection> =>
  decodeWith(bytes, options, readKeyOnly)

/** Decodes a packed IncomingConnection; never throws. */
export const decodeIncomingConnection = (
  bytes: Uint8Array,
  options?: DecodeOptions
): DecodeResult<IncomingConnection> => decodeWith(bytes, options, readKeyOnly)

/** Decodes a packed KaMessage; never throws. `data` is a view into the decoder's own buffer. */
export const decodeKaMessage = (bytes: Uint8Array, options?: DecodeOptions): DecodeResult<KaMessage> =>
  decodeWith(bytes, options, readKaMessage)

/**
 * A KaMessage as the keepalive layer needs it: which member, the payload's
 * length, and the payload itself only on demand (`payload`).
 */
export type KaMessageHeader =
  | { readonly _tag: "KeepAlive" }
  | {
    readonly _tag: "Message"
    readonly dataLength: number
    /** The payload, when reading the header already unpacked it (an unusual layout). */
    readonly data: Bytes | undefined
  }

// The layout every honest encoder gives KaMessage.message: one segment (its
// table in word 0), the root pointer (word 1: struct at offset 0, one data
// word, one pointer), the discriminant (word 2), the Data pointer (word 3:
// byte list at offset 0), then the payload from byte 32.
const kaHeaderBytes = 32
const kaRootPointerHigh = 1 | (1 << 16)

/**
 * Reads a packed KaMessage without unpacking its payload when it has the
 * usual layout (above): the length scan and a 32-byte header decide exactly
 * what `decodeKaMessage` would, so a relay forwarding the message as it came
 * never copies the payload. Any other layout, and every error, goes through
 * `decodeKaMessage`. Never throws.
 */
export const readKaMessageHeader = (bytes: Uint8Array, options?: DecodeOptions): DecodeResult<KaMessageHeader> => {
  const size = unpackedByteLength(bytes, options?.maxUnpackedBytes ?? defaultMaxUnpackedBytes)
  if (size._tag === "Ok" && size.value >= kaHeaderBytes) {
    const header = new DataView(unpackPrefix(bytes, kaHeaderBytes).buffer)
    const dataLength = header.getUint32(28, true) >>> 3
    if (
      header.getUint32(0, true) === 0 &&
      header.getUint32(4, true) * 8 + 8 === size.value &&
      header.getUint32(8, true) === 0 &&
      header.getUint32(12, true) === kaRootPointerHigh &&
      header.getUint16(16, true) === 1 &&
      header.getUint32(24, true) === 1 &&
      (header.getUint32(28, true) & 7) === 2 &&
      kaHeaderBytes + Math.ceil(dataLength / 8) * 8 <= size.value
    ) {
      return { _tag: "Ok", value: { _tag: "Message", dataLength, data: undefined } }
    }
  }
  const decoded = decodeKaMessage(bytes, options)
  if (decoded._tag === "Err") return decoded
  const message = decoded.value
  return {
    _tag: "Ok",
    value: message._tag === "KeepAlive"
      ? message
      : { _tag: "Message", dataLength: message.data.length, data: message.data }
  }
}

/** The payload of a packed KaMessage that `readKaMessageHeader` read as a usual `Message` of `dataLength` bytes. */
export const kaMessagePayload = (bytes: Uint8Array, dataLength: number): Bytes => {
  const unpacked = unpack(bytes, Number.POSITIVE_INFINITY)
  // The header read proved the input whole and the payload inside it.
  if (unpacked._tag === "Err") throw new Error(`kaMessagePayload: ${unpacked.error.message} (input not read by readKaMessageHeader)`)
  return unpacked.value.subarray(kaHeaderBytes, kaHeaderBytes + dataLength)
}

/** Decodes a packed ExchangeRandNonce; never throws. */
export const decodeExchangeRandNonce = (bytes: Uint8Array, options?: DecodeOptions): DecodeResult<ExchangeRandNonce> =>
  decodeWith(bytes, options, readExchangeRandNonce)

/** Decodes a packed ExchangeDh; never throws. */
export const decodeExchangeDh = (bytes: Uint8Array, options?: DecodeOptions): DecodeResult<ExchangeDh> =>
  decodeWith(bytes, options, readExchangeDh)

/** Decodes a packed Rekey sent as a message of its own; never throws. */
export const decodeRekey = (bytes: Uint8Array, options?: DecodeOptions): DecodeResult<Rekey> =>
  decodeWith(bytes, options, readRekey)

/** Decodes a packed ChannelMessage; never throws. Data fields are views into the decoder's own buffer. */
export const decodeChannelMessage = (bytes: Uint8Array, options?: DecodeOptions): DecodeResult<ChannelMessage> =>
  decodeWith(bytes, options, readChannelMessage)
