/**
 * A small, bounded Cap'n Proto codec: packing, the stream framing, a reader
 * for the pointer kinds our schemas use (structs, far pointers, Data) and a
 * single-segment builder.
 *
 * Why not capnp-es at runtime: its unpacker has no bound (a 2-byte packed run
 * expands to 2 KiB) and it trusts the segment count. Here every size is
 * computed and checked before anything is allocated, every offset is bounds
 * checked, and nothing throws on hostile input: errors are DecodeError values.
 *
 * How to use the reader: `unpack` → `openMessage` → `readRoot` →
 * `readStructField` / `readDataField` / `readU16` / `readWordsBigEndian`.
 * Reader functions that can fail return undefined and leave the error on the
 * MessageReader (`reader.error`), which is sticky like an error of rustls: once
 * set, the decode is over.
 *
 * Packing follows the reference C++ implementation byte for byte
 * (capnp/serialize-packed.c++), so that our encodings equal `capnp encode
 * --packed`.
 */
import type { DecodeError } from "./messages.ts"

/** A value or the reason bytes could not be read. */
export type CapnpResult<A> =
  | { readonly _tag: "Ok"; readonly value: A }
  | { readonly _tag: "Err"; readonly error: DecodeError }

/** Most segments a message may have; Offset's messages have a handful at most. */
export const maxSegments = 64

const decodeError = (reason: DecodeError["reason"], message: string): DecodeError => ({
  _tag: "DecodeError",
  reason,
  message
})

const err = <A>(reason: DecodeError["reason"], message: string): CapnpResult<A> => ({
  _tag: "Err",
  error: decodeError(reason, message)
})

// Number of set bits per tag byte: how many literal bytes follow a tag.
const popcount = new Uint8Array(256)
for (let i = 1; i < 256; i++) popcount[i] = (i & 1) + popcount[i >>> 1]!

// ---------------------------------------------------------------------------
// Packing

/**
 * Upper bound of the packed size of `unpackedBytes` bytes (a multiple of 8).
 *
 * Per word the packed form costs at most 8 bytes, except a word with tag 0xff,
 * which costs 10 (tag, 8 bytes, run count). A 0xff word is followed by the end,
 * by 255 raw words (8 bytes each), or by a word with at least two zero bytes
 * (at most 7 bytes): so the excess over 8 per word is at most 1 per 2 words,
 * plus 2 for a final 0xff word.
 */
export const packedSizeBound = (unpackedBytes: number): number => unpackedBytes + Math.floor(unpackedBytes / 16) + 2

/**
 * Packs word-aligned bytes exactly as the C++ `capnp::PackedOutputStream`
 * does: a tag byte per word whose bit i says byte i is nonzero, followed by
 * the nonzero bytes; tag 0x00 is followed by the count (≤ 255) of further
 * all-zero words; tag 0xff is followed by the count (≤ 255) of further words
 * copied raw, taken while each has at most one zero byte.
 *
 * The result is a view of a buffer up to 1/16 larger than needed (no second
 * copy on the data path). Throws a RangeError when the length is not a
 * multiple of 8: that is a caller's bug, not a peer's input.
 */
export const pack = (src: Uint8Array, into?: Uint8Array): Uint8Array => {
  const len = src.length
  if ((len & 7) !== 0) throw new RangeError(`pack: ${len} bytes is not a whole number of words`)
  const bound = packedSizeBound(len)
  if (into !== undefined && into.length < bound) throw new RangeError(`pack: output of ${into.length} bytes is under ${bound}`)
  const out = into ?? new Uint8Array(bound)
  // Random payloads (ciphertext) pack as long raw runs: scanning them a u32 at
  // a time is most of the speed. Needs 4-byte alignment, which our builders'
  // buffers have (each starts at offset 0 of its own ArrayBuffer).
  const words32 = (src.byteOffset & 3) === 0 ? new Uint32Array(src.buffer, src.byteOffset, len >>> 2) : undefined
  let i = 0
  let o = 0
  while (i < len) {
    // i + 7 < len because len is a multiple of 8 and i < len: all eight reads are defined.
    const b0 = src[i]!
    const b1 = src[i + 1]!
    const b2 = src[i + 2]!
    const b3 = src[i + 3]!
    const b4 = src[i + 4]!
    const b5 = src[i + 5]!
    const b6 = src[i + 6]!
    const b7 = src[i + 7]!
    i += 8
    const tagAt = o++
    let tag = 0
    if (b0 !== 0) {
      tag |= 1
      out[o++] = b0
    }
    if (b1 !== 0) {
      tag |= 2
      out[o++] = b1
    }
    if (b2 !== 0) {
      tag |= 4
      out[o++] = b2
    }
    if (b3 !== 0) {
      tag |= 8
      out[o++] = b3
    }
    if (b4 !== 0) {
      tag |= 16
      out[o++] = b4
    }
    if (b5 !== 0) {
      tag |= 32
      out[o++] = b5
    }
    if (b6 !== 0) {
      tag |= 64
      out[o++] = b6
    }
    if (b7 !== 0) {
      tag |= 128
      out[o++] = b7
    }
    out[tagAt] = tag
    if (tag === 0) {
      // Count the further all-zero words, at most 255 (the count is one byte).
      const limit = Math.min(len, i + 255 * 8)
      const start = i
      while (
        i < limit &&
        // i + 7 < len as above.
        (src[i]! | src[i + 1]! | src[i + 2]! | src[i + 3]! | src[i + 4]! | src[i + 5]! | src[i + 6]! | src[i + 7]!) === 0
      ) {
        i += 8
      }
      out[o++] = (i - start) >>> 3
    } else if (tag === 0xff) {
      // Copy raw the further words with at most one zero byte: from two zeros on,
      // packing the word saves space again (C++ "c >= 2").
      const limit = Math.min(len, i + 255 * 8)
      const start = i
      if (words32 !== undefined) {
        // Word-at-a-time zero-byte detection: 0x80 marks each zero byte of a u32.
        while (i < limit) {
          // i + 7 < len, so both u32 indexes are inside the view.
          const a = words32[i >>> 2]!
          const b = words32[(i >>> 2) + 1]!
          const za = ~(((a & 0x7f7f7f7f) + 0x7f7f7f7f) | a | 0x7f7f7f7f)
          const zb = ~(((b & 0x7f7f7f7f) + 0x7f7f7f7f) | b | 0x7f7f7f7f)
          if ((za & (za - 1)) !== 0 || (zb & (zb - 1)) !== 0 || (za !== 0 && zb !== 0)) break
          i += 8
        }
      } else {
        while (i < limit) {
          // i + 7 < len as above.
          const zeros =
            (src[i] === 0 ? 1 : 0) +
            (src[i + 1] === 0 ? 1 : 0) +
            (src[i + 2] === 0 ? 1 : 0) +
            (src[i + 3] === 0 ? 1 : 0) +
            (src[i + 4] === 0 ? 1 : 0) +
            (src[i + 5] === 0 ? 1 : 0) +
            (src[i + 6] === 0 ? 1 : 0) +
            (src[i + 7] === 0 ? 1 : 0)
          if (zeros >= 2) break
          i += 8
        }
      }
      out[o++] = (i - start) >>> 3
      if (i > start) {
        out.set(src.subarray(start, i), o)
        o += i - start
      }
    }
  }
  return out.subarray(0, o)
}

/**
 * The unpacked size in bytes of packed input, found without allocating:
 * "Truncated" when the input ends inside a packed word or run, "TooLarge" as
 * soon as the size passes maxBytes (so a zero-run bomb costs a few steps per
 * 2 KiB it claims, up to the bound, never the claimed memory).
 */
export const unpackedByteLength = (packed: Uint8Array, maxBytes: number): CapnpResult<number> => {
  // NaN or negative bounds allow nothing; Infinity allows everything.
  const maxWords = maxBytes >= 0 ? Math.floor(maxBytes / 8) : 0
  const n = packed.length
  let i = 0
  let words = 0
  while (i < n) {
    // i < n.
    const tag = packed[i]!
    i++
    if (tag === 0) {
      if (i >= n) return err("Truncated", `packed input ends after a zero tag at byte ${i - 1}, before its run count`)
      // i < n.
      words += 1 + packed[i]!
      i++
    } else if (tag === 0xff) {
      i += 8
      if (i >= n) return err("Truncated", `packed input ends inside a 0xff word or before its run count (${n} bytes)`)
      // i < n.
      const run = packed[i]!
      i += 1 + run * 8
      if (i > n) return err("Truncated", `packed input ends inside a raw run of ${run} words (${n} bytes)`)
      words += 1 + run
    } else {
      // popcount has 256 entries and tag is a byte.
      i += popcount[tag]!
      if (i > n) return err("Truncated", `packed input ends inside a packed word (${n} bytes)`)
      words++
    }
    if (words > maxWords) {
      return err("TooLarge", `packed input unpacks to more than ${maxWords * 8} bytes (the decoder's bound)`)
    }
  }
  return { _tag: "Ok", value: words * 8 }
}

/**
 * Unpacks packed input into a fresh buffer, refusing ("TooLarge") before any
 * allocation when the unpacked size would pass maxBytes.
 */
export const unpack = (packed: Uint8Array, maxBytes: number): CapnpResult<Uint8Array> => {
  const size = unpackedByteLength(packed, maxBytes)
  if (size._tag === "Err") return size
  const dst = new Uint8Array(size.value)
  unpackInto(packed, dst)
  return { _tag: "Ok", value: dst }
}

/**
 * The first `bytes` bytes (a multiple of 8) of the unpacked form of input
 * whose whole length `unpackedByteLength` already accepted, and that holds
 * at least that many: a header read without unpacking the rest.
 */
export const unpackPrefix = (packed: Uint8Array, bytes: number): Uint8Array => {
  const dst = new Uint8Array(bytes)
  unpackInto(packed, dst)
  return dst
}

// Unpacks into the zero-filled `dst` (a whole number of words) until it is
// full. The caller's length scan proved every tag's bytes and runs lie
// inside the input and that it unpacks to at least dst.length bytes, so the
// reads below are all defined.
const unpackInto = (packed: Uint8Array, dst: Uint8Array): void => {
  const end = dst.length
  let i = 0
  let o = 0
  while (o < end) {
    const tag = packed[i++]!
    if (tag === 0) {
      // dst is zero-filled: skipping is writing the zeros.
      o += (1 + packed[i++]!) * 8
    } else if (tag === 0xff) {
      dst[o] = packed[i]!
      dst[o + 1] = packed[i + 1]!
      dst[o + 2] = packed[i + 2]!
      dst[o + 3] = packed[i + 3]!
      dst[o + 4] = packed[i + 4]!
      dst[o + 5] = packed[i + 5]!
      dst[o + 6] = packed[i + 6]!
      dst[o + 7] = packed[i + 7]!
      o += 8
      const runBytes = packed[i + 8]! * 8
      i += 9
      const take = Math.min(runBytes, end - o)
      if (take > 0) dst.set(packed.subarray(i, i + take), o)
      i += runBytes
      o += runBytes
    } else {
      if ((tag & 1) !== 0) dst[o] = packed[i++]!
      if ((tag & 2) !== 0) dst[o + 1] = packed[i++]!
      if ((tag & 4) !== 0) dst[o + 2] = packed[i++]!
      if ((tag & 8) !== 0) dst[o + 3] = packed[i++]!
      if ((tag & 16) !== 0) dst[o + 4] = packed[i++]!
      if ((tag & 32) !== 0) dst[o + 5] = packed[i++]!
      if ((tag & 64) !== 0) dst[o + 6] = packed[i++]!
      if ((tag & 128) !== 0) dst[o + 7] = packed[i++]!
      o += 8
    }
  }
}

// ---------------------------------------------------------------------------
// Reading

/**
 * An unpacked message being read. Mutable on purpose: it carries the
 * traversal budget, the sticky error, and the result of the last pointer
 * resolution (so resolving allocates nothing).
 */
export interface MessageReader {
  /** The unpacked message: segment table, then the segments. */
  readonly bytes: Uint8Array
  readonly view: DataView
  /** Byte offset in `bytes` where segment k starts. */
  readonly segmentStart: ReadonlyArray<number>
  /** Byte offset in `bytes` where segment k ends (exclusive). */
  readonly segmentEnd: ReadonlyArray<number>
  /** Words that may still be read before "TraversalLimit". */
  budget: number
  /** The first error met; once set, reading is over. */
  error: DecodeError | undefined
  // Result of the last `resolve`: the kind of the pointer (-1 for null), the
  // segment and byte offset of its target, and its upper 32 bits (sizes).
  kind: number
  targetSegment: number
  target: number
  sizeBits: number
}

/** Where a struct's sections lie in the message; a null pointer reads as the empty (all-default) struct. */
export interface StructReader {
  readonly segment: number
  /** Byte offset of the data section. */
  readonly data: number
  /** Size of the data section in bytes. */
  readonly dataBytes: number
  /** Byte offset of the pointer section. */
  readonly pointers: number
  readonly pointerCount: number
}

/** The default struct (all fields default), what a null struct pointer reads as. */
const emptyStruct: StructReader = { segment: 0, data: 0, dataBytes: 0, pointers: 0, pointerCount: 0 }

/**
 * Parses the stream framing of an unpacked message (u32 LE segment count - 1,
 * u32 LE segment sizes in words, padding to a word, then the segments, which
 * must fill the rest exactly). The traversal budget is 8 × the message's words
 * + 64: far more than any honest message needs (each object is read once), and
 * small enough that aliasing or looping pointers are refused.
 */
export const openMessage = (bytes: Uint8Array): CapnpResult<MessageReader> => {
  if (bytes.length < 8) return err("Truncated", `message of ${bytes.length} bytes has no segment table`)
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  const count = view.getUint32(0, true) + 1
  if (count > maxSegments) {
    return err("TooLarge", `segment table claims ${count} segments; at most ${maxSegments} are accepted`)
  }
  // 4 bytes of count and 4 per size, padded to a whole word.
  const tableBytes = Math.ceil((4 + 4 * count) / 8) * 8
  if (bytes.length < tableBytes) {
    return err("Truncated", `segment table of ${count} segments needs ${tableBytes} bytes; message has ${bytes.length}`)
  }
  const segmentStart: Array<number> = []
  const segmentEnd: Array<number> = []
  let at = tableBytes
  for (let k = 0; k < count; k++) {
    segmentStart.push(at)
    at += view.getUint32(4 + 4 * k, true) * 8
    segmentEnd.push(at)
  }
  if (at > bytes.length) {
    return err("Truncated", `segment table claims ${at} bytes; message has ${bytes.length}`)
  }
  if (at < bytes.length) {
    return err("BadSegmentTable", `${bytes.length - at} bytes follow the last segment`)
  }
  if (segmentEnd[0] === segmentStart[0]) {
    return err("BadSegmentTable", "the first segment is empty: no root pointer")
  }
  const words = (bytes.length - tableBytes) / 8
  return {
    _tag: "Ok",
    value: {
      bytes,
      view,
      segmentStart,
      segmentEnd,
      budget: 8 * words + 64,
      error: undefined,
      kind: -1,
      targetSegment: 0,
      target: 0,
      sizeBits: 0
    }
  }
}

/** Records the first error of a read (later ones are consequences) and returns undefined for the caller to pass on. */
export const recordError = (reader: MessageReader, reason: DecodeError["reason"], message: string): undefined => {
  reader.error ??= decodeError(reason, message)
  return undefined
}

const pointerKindStruct = 0
const pointerKindList = 1
const pointerKindFar = 2
const pointerNull = -1
const elementSizeByte = 2

/**
 * Resolves the pointer at byte offset `at` of `segment` (following a single
 * or double far pointer) into reader.kind / targetSegment / target /
 * sizeBits. False (with reader.error set) when the pointer is malformed.
 * Bounds of the target object are checked by the caller, who knows its size.
 */
const resolve = (reader: MessageReader, segment: number, at: number): boolean => {
  const view = reader.view
  const lo = view.getUint32(at, true)
  const hi = view.getUint32(at + 4, true)
  if (lo === 0 && hi === 0) {
    reader.kind = pointerNull
    return true
  }
  const kind = lo & 3
  if (kind === pointerKindStruct || kind === pointerKindList) {
    reader.kind = kind
    reader.targetSegment = segment
    // Signed 30-bit word offset from the end of the pointer.
    reader.target = at + 8 + (lo >> 2) * 8
    reader.sizeBits = hi
    return true
  }
  if (kind !== pointerKindFar) {
    recordError(reader, "BadPointer", `capability pointer at byte ${at}: no capabilities in this protocol`)
    return false
  }
  const padSegment = hi
  if (padSegment >= reader.segmentStart.length) {
    recordError(reader, "BadPointer", `far pointer at byte ${at} names segment ${padSegment}, which does not exist`)
    return false
  }
  const doubleFar = (lo & 4) !== 0
  // Segment ids were checked against the table, so the lookups are defined.
  const pad = reader.segmentStart[padSegment]! + (lo >>> 3) * 8
  if (pad + (doubleFar ? 16 : 8) > reader.segmentEnd[padSegment]!) {
    recordError(reader, "BadPointer", `far pointer at byte ${at} has its landing pad outside segment ${padSegment}`)
    return false
  }
  // Pointers are only counted as a word read when they are far: a chain of
  // pads costs budget, so no pointer graph is free to walk.
  reader.budget -= doubleFar ? 2 : 1
  const padLo = view.getUint32(pad, true)
  const padHi = view.getUint32(pad + 4, true)
  if (!doubleFar) {
    // A single-far landing pad must be a plain pointer (no far chains).
    if ((padLo & 3) === pointerKindFar) {
      recordError(reader, "BadPointer", `far pointer at byte ${at} lands on another far pointer`)
      return false
    }
    if ((padLo & 3) !== pointerKindStruct && (padLo & 3) !== pointerKindList) {
      recordError(reader, "BadPointer", `far pointer at byte ${at} lands on a capability pointer`)
      return false
    }
    reader.kind = padLo & 3
    reader.targetSegment = padSegment
    reader.target = pad + 8 + (padLo >> 2) * 8
    reader.sizeBits = padHi
    return true
  }
  // Double far: the pad is a single far pointer to the content, then a tag
  // that says what the content is (its offset is unused).
  if ((padLo & 7) !== pointerKindFar) {
    recordError(reader, "BadPointer", `double-far landing pad at byte ${pad} does not start with a single far pointer`)
    return false
  }
  const contentSegment = padHi
  if (contentSegment >= reader.segmentStart.length) {
    recordError(reader, "BadPointer", `double-far landing pad at byte ${pad} names segment ${contentSegment}, which does not exist`)
    return false
  }
  const tagLo = view.getUint32(pad + 8, true)
  const tagKind = tagLo & 3
  if (tagKind !== pointerKindStruct && tagKind !== pointerKindList) {
    recordError(reader, "BadPointer", `double-far tag at byte ${pad + 8} is not a struct or list pointer`)
    return false
  }
  reader.kind = tagKind
  reader.targetSegment = contentSegment
  // contentSegment was checked against the table.
  reader.target = reader.segmentStart[contentSegment]! + (padLo >>> 3) * 8
  reader.sizeBits = view.getUint32(pad + 12, true)
  return true
}

const kindName = (kind: number): string =>
  kind === pointerKindStruct ? "struct" : kind === pointerKindList ? "list" : "other"

const spend = (reader: MessageReader, words: number): boolean => {
  reader.budget -= words
  if (reader.budget < 0) {
    recordError(reader, "TraversalLimit", "read more words than the message's traversal limit: looping or aliased pointers")
    return false
  }
  return true
}

/** The struct a pointer at byte `at` of `segment` points to; undefined on error (see reader.error). */
const readStructAt = (reader: MessageReader, segment: number, at: number): StructReader | undefined => {
  if (!resolve(reader, segment, at)) return undefined
  if (reader.kind === pointerNull) return emptyStruct
  if (reader.kind !== pointerKindStruct) {
    return recordError(reader, "BadPointer", `${kindName(reader.kind)} pointer at byte ${at} where a struct is expected`)
  }
  const dataWords = reader.sizeBits & 0xffff
  const pointerCount = reader.sizeBits >>> 16
  const start = reader.target
  const seg = reader.targetSegment
  // seg is a checked segment id.
  if (start < reader.segmentStart[seg]! || start + (dataWords + pointerCount) * 8 > reader.segmentEnd[seg]!) {
    return recordError(reader, "BadPointer", `struct pointer at byte ${at} points outside segment ${seg}`)
  }
  if (!spend(reader, dataWords + pointerCount)) return undefined
  return { segment: seg, data: start, dataBytes: dataWords * 8, pointers: start + dataWords * 8, pointerCount }
}

/** The root struct of the message; undefined on error (see reader.error). */
export const readRoot = (reader: MessageReader): StructReader | undefined =>
  // openMessage checked that segment 0 has a word for the root pointer.
  readStructAt(reader, 0, reader.segmentStart[0]!)

/**
 * The struct in pointer field `index` of `parent`: the default struct when
 * the pointer is null or beyond the parent's pointer section (an older or
 * newer schema); undefined on error (see reader.error).
 */
export const readStructField = (
  reader: MessageReader,
  parent: StructReader,
  index: number
): StructReader | undefined => {
  if (index >= parent.pointerCount) return emptyStruct
  return readStructAt(reader, parent.segment, parent.pointers + index * 8)
}

const noBytes = new Uint8Array(0)

/**
 * The Data (list of bytes) in pointer field `index` of `parent`, as a view
 * into the message; empty when null or absent; undefined on error.
 */
export const readDataField = (reader: MessageReader, parent: StructReader, index: number): Uint8Array | undefined => {
  if (index >= parent.pointerCount) return noBytes
  const at = parent.pointers + index * 8
  if (!resolve(reader, parent.segment, at)) return undefined
  if (reader.kind === pointerNull) return noBytes
  if (reader.kind !== pointerKindList) {
    return recordError(reader, "BadPointer", `${kindName(reader.kind)} pointer at byte ${at} where Data is expected`)
  }
  const elementSize = reader.sizeBits & 7
  if (elementSize !== elementSizeByte) {
    return recordError(reader, "BadPointer", `list of element size code ${elementSize} at byte ${at} where Data (bytes) is expected`)
  }
  const length = reader.sizeBits >>> 3
  const words = Math.ceil(length / 8)
  const start = reader.target
  const seg = reader.targetSegment
  // seg is a checked segment id.
  if (start < reader.segmentStart[seg]! || start + words * 8 > reader.segmentEnd[seg]!) {
    return recordError(reader, "BadPointer", `Data of ${length} bytes at byte ${at} points outside segment ${seg}`)
  }
  if (!spend(reader, words)) return undefined
  return reader.bytes.subarray(start, start + length)
}

/** The UInt16 at byte `offset` of the struct's data section; 0 (the default) beyond it. */
export const readU16 = (reader: MessageReader, struct: StructReader, offset: number): number =>
  offset + 2 <= struct.dataBytes ? reader.view.getUint16(struct.data + offset, true) : 0

/**
 * The struct's first `words` UInt64 fields as bytes, word i giving bytes
 * [8i, 8i+8) big-endian (the BufferN convention); words beyond the data
 * section read as zero.
 */
export const readWordsBigEndian = (reader: MessageReader, struct: StructReader, words: number): Uint8Array => {
  const out = new Uint8Array(words * 8)
  const bytes = reader.bytes
  const present = Math.min(words, struct.dataBytes >>> 3)
  for (let w = 0; w < present; w++) {
    const from = struct.data + w * 8
    const to = w * 8
    // from + 7 lies inside the struct, which was bounds checked.
    for (let j = 0; j < 8; j++) out[to + j] = bytes[from + 7 - j]!
  }
  return out
}

// ---------------------------------------------------------------------------
// Building

/**
 * A single-segment message under construction, allocated at its final size.
 * Objects are placed in call order; calling in pre-order depth-first field
 * order gives the same bytes as the C++ implementation's copy of a message.
 */
export interface MessageBuilder {
  /** Segment table (one word) and the segment. */
  readonly bytes: Uint8Array
  readonly view: DataView
  /** Byte offset of the next free word. */
  next: number
}

/** Byte offset of the root pointer in a MessageBuilder. */
export const rootPointer = 8

// The unpacked form of a message we encode lives only until finishPacked
// packs it, and encoders never build two messages at once (the core is
// synchronous), so one scratch buffer serves them all: the data path then
// allocates only the packed output, not a zeroed copy of every message too.
// Messages over the retained size get a buffer of their own.
const scratchRetainedBytes = 1024 * 1024 + 4096
let scratch = new ArrayBuffer(64 * 1024)

/**
 * A builder for a single-segment message of exactly `segmentWords` words
 * (root pointer included). Its bytes may be the shared scratch buffer: valid
 * only until the next createMessage, so pack (finishPacked) before building another.
 */
export const createMessage = (segmentWords: number): MessageBuilder => {
  const size = 8 + segmentWords * 8
  if (size > scratch.byteLength) {
    if (size > scratchRetainedBytes) return builderOn(new Uint8Array(size), segmentWords)
    scratch = new ArrayBuffer(Math.min(scratchRetainedBytes, Math.max(size, scratch.byteLength * 2)))
  }
  const bytes = new Uint8Array(scratch, 0, size)
  bytes.fill(0) // builders rely on zeroed words: defaults, padding, null pointers
  return builderOn(bytes, segmentWords)
}

const builderOn = (bytes: Uint8Array, segmentWords: number): MessageBuilder => {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  // Segment count - 1 = 0 stays zero.
  view.setUint32(4, segmentWords, true)
  return { bytes, view, next: 16 }
}

/** Allocates a struct and points the pointer at byte `pointer` to it; returns the struct's byte offset. */
export const initStruct = (builder: MessageBuilder, pointer: number, dataWords: number, pointerCount: number): number => {
  const at = builder.next
  builder.next += (dataWords + pointerCount) * 8
  builder.view.setUint32(pointer, (((at - pointer - 8) / 8) << 2) >>> 0, true)
  builder.view.setUint32(pointer + 4, (dataWords | (pointerCount << 16)) >>> 0, true)
  return at
}

/** Largest Data a list pointer can describe (29-bit element count). */
const maxDataLength = 2 ** 29 - 1

/**
 * Allocates a Data copy of `data` and points the pointer at byte `pointer`
 * to it. An empty Data points at the next free word, like the C++ builder.
 */
export const setData = (builder: MessageBuilder, pointer: number, data: Uint8Array): void => {
  const length = data.length
  if (length > maxDataLength) throw new RangeError(`Data of ${length} bytes exceeds the Cap'n Proto list limit`)
  const at = builder.next
  builder.next += Math.ceil(length / 8) * 8
  builder.view.setUint32(pointer, ((((at - pointer - 8) / 8) << 2) | pointerKindList) >>> 0, true)
  builder.view.setUint32(pointer + 4, length * 8 + elementSizeByte, true)
  builder.bytes.set(data, at)
}

/** Writes `bytes` (a multiple of 8 long) at byte `at` as UInt64 words, word i = bytes [8i, 8i+8) big-endian. */
export const writeWordsBigEndian = (builder: MessageBuilder, at: number, bytes: Uint8Array): void => {
  const out = builder.bytes
  for (let i = 0; i < bytes.length; i += 8) {
    // i + 7 < bytes.length for a multiple-of-8 length.
    for (let j = 0; j < 8; j++) out[at + i + j] = bytes[i + 7 - j]!
  }
}

/**
 * Packs the finished message. Throws if fewer or more words were allocated
 * than declared (an encoder bug). With `transient`, the result is a view of
 * a buffer the next transient pack reuses: for bytes consumed at once.
 */
export const finishPacked = (builder: MessageBuilder, transient = false): Uint8Array => {
  if (builder.next !== builder.bytes.length) {
    throw new Error(`capnp builder: allocated ${builder.next} of ${builder.bytes.length} bytes (encoder size bug)`)
  }
  if (!transient) return pack(builder.bytes)
  const bound = packedSizeBound(builder.bytes.length)
  if (bound > packScratch.length) {
    if (bound > scratchRetainedBytes) return pack(builder.bytes)
    packScratch = new Uint8Array(Math.min(scratchRetainedBytes, Math.max(bound, packScratch.length * 2)))
  }
  return pack(builder.bytes, packScratch)
}

// The output of transient packs (see finishPacked).
let packScratch = new Uint8Array(64 * 1024)
