/**
 * Handcrafted hostile messages: each must give the right DecodeError reason
 * (never a throw, never a big allocation), and the odd-but-legal shapes that
 * Cap'n Proto allows (short or long structs, null pointers, far pointers) must
 * read as the rules say.
 */
import { describe, expect, it } from "vitest"
import { maxSegments, pack, unpack, unpackedByteLength } from "../src/core/capnp.ts"
import * as M from "../src/core/messages.ts"

// ---- building raw messages word by word ----

type Word = bigint

const u32 = (n: number): bigint => BigInt(n >>> 0)

/** Struct pointer: signed word offset from the end of the pointer, data words, pointer count. */
const structPtr = (offset: number, dataWords: number, pointers: number): Word =>
  u32(offset << 2) | (BigInt(dataWords) << 32n) | (BigInt(pointers) << 48n)

/** List pointer; element size code 2 = bytes (Data). */
const listPtr = (offset: number, elementSize: number, count: number): Word =>
  u32((offset << 2) | 1) | (BigInt(elementSize) << 32n) | (BigInt(count) << 35n)

const dataPtr = (offset: number, length: number): Word => listPtr(offset, 2, length)

/** Far pointer to word `padWord` of segment `segment`. */
const farPtr = (padWord: number, segment: number, doubleFar = false): Word =>
  u32((padWord << 3) | (doubleFar ? 4 : 0) | 2) | (BigInt(segment) << 32n)

const capabilityPtr = (index: number): Word => 3n | (BigInt(index) << 32n)

/** A word holding up to 8 bytes, byte i at bit 8i (the wire's little-endian order). */
const bytesWord = (bytes: ReadonlyArray<number>): Word =>
  bytes.reduce((w, b, i) => w | (BigInt(b) << BigInt(8 * i)), 0n)

const wordsToBytes = (words: ReadonlyArray<Word>): Uint8Array => {
  const out = new Uint8Array(words.length * 8)
  const view = new DataView(out.buffer)
  words.forEach((w, i) => view.setBigUint64(i * 8, BigInt.asUintN(64, w), true))
  return out
}

/** Unpacked message with a correct segment table for these segments. */
const unpackedMessage = (segments: ReadonlyArray<ReadonlyArray<Word>>): Uint8Array => {
  const table: Array<number> = [segments.length - 1, ...segments.map((s) => s.length)]
  if (table.length % 2 === 1) table.push(0)
  const tableWords: Array<Word> = []
  for (let i = 0; i < table.length; i += 2) tableWords.push(u32(table[i]!) | (u32(table[i + 1]!) << 32n))
  return wordsToBytes([...tableWords, ...segments.flat()])
}

const packed = (...segments: ReadonlyArray<ReadonlyArray<Word>>): Uint8Array => pack(unpackedMessage(segments))

const reasonOf = (result: M.DecodeResult<unknown>): string =>
  result._tag === "Err" ? result.error.reason : `Ok(${JSON.stringify(result.value)})`

// A Buffer256 struct's four words holding bytes 0..31 big-endian per word.
const keyBytes = Uint8Array.from({ length: 32 }, (_, i) => i + 1)
const keyWords: ReadonlyArray<Word> = [0, 1, 2, 3].map((w) =>
  bytesWord(Array.from({ length: 8 }, (_, j) => keyBytes[w * 8 + 7 - j]!))
)

describe("segment table", () => {
  it("refuses a huge segment count before reading further (TooLarge)", () => {
    const bytes = pack(wordsToBytes([0xffffffffn]))
    expect(reasonOf(M.decodeKaMessage(bytes))).toBe("TooLarge")
  })

  it(`accepts ${maxSegments} segments and refuses ${maxSegments + 1}`, () => {
    const ok = Array.from({ length: maxSegments }, (_, i) => (i === 0 ? [structPtr(0, 1, 1), 0n, 0n] : [0n]))
    expect(reasonOf(M.decodeKaMessage(packed(...ok)))).toBe(`Ok({"_tag":"KeepAlive"})`)
    const tooMany = [...ok, [0n]]
    expect(reasonOf(M.decodeKaMessage(packed(...tooMany)))).toBe("TooLarge")
  })

  it("refuses segment sizes beyond the input (Truncated)", () => {
    const bytes = pack(wordsToBytes([u32(0) | (u32(1000) << 32n), structPtr(0, 1, 1), 0n, 0n]))
    expect(reasonOf(M.decodeKaMessage(bytes))).toBe("Truncated")
  })

  it("refuses a 4-byte segment size of 2^32 - 1 words without allocating it (Truncated)", () => {
    const bytes = pack(wordsToBytes([u32(0) | (u32(0xffffffff) << 32n)]))
    expect(reasonOf(M.decodeKaMessage(bytes))).toBe("Truncated")
  })

  it("refuses a segment table cut short (Truncated)", () => {
    // 3 segments need two table words; only one is there.
    expect(reasonOf(M.decodeKaMessage(pack(wordsToBytes([u32(2) | (u32(1) << 32n)]))))).toBe("Truncated")
  })

  it("refuses words after the last segment (BadSegmentTable)", () => {
    const bytes = pack(wordsToBytes([u32(0) | (u32(3) << 32n), structPtr(0, 1, 1), 0n, 0n, 0n]))
    expect(reasonOf(M.decodeKaMessage(bytes))).toBe("BadSegmentTable")
  })

  it("refuses an empty first segment: no root pointer (BadSegmentTable)", () => {
    expect(reasonOf(M.decodeKaMessage(packed([])))).toBe("BadSegmentTable")
  })

  it("refuses empty input (Truncated)", () => {
    expect(reasonOf(M.decodeKaMessage(new Uint8Array(0)))).toBe("Truncated")
  })
})

describe("packed input", () => {
  const valid = [
    M.encodeKaMessage({ _tag: "Message", data: Uint8Array.from({ length: 3000 }, (_, i) => (i * 7) & 0xff) }),
    M.encodeChannelMessage({
      randPadding: new Uint8Array(40),
      content: { _tag: "Rekey", rekey: { dhPublicKey: keyBytes, keySalt: new Uint8Array(32).fill(255) } }
    }),
    M.encodeExchangeRandNonce({ randNonce: new Uint8Array(16), srcPublicKey: keyBytes, optDestPublicKey: undefined })
  ]

  it("every proper prefix of a valid encoding is Truncated", () => {
    for (const bytes of valid) {
      for (let n = 0; n < bytes.length; n++) {
        const prefix = bytes.subarray(0, n)
        const result =
          bytes === valid[0]
            ? M.decodeKaMessage(prefix)
            : bytes === valid[1]
              ? M.decodeChannelMessage(prefix)
              : M.decodeExchangeRandNonce(prefix)
        expect(reasonOf(result), `prefix of ${n} bytes`).toBe("Truncated")
      }
    }
  })

  it("a tag promising more bytes than remain is Truncated", () => {
    expect(reasonOf(M.decodeKaMessage(Uint8Array.of(0xff, 1, 2, 3)))).toBe("Truncated") // 0xff word cut
    expect(reasonOf(M.decodeKaMessage(Uint8Array.of(0x0f, 1, 2)))).toBe("Truncated") // 4 bytes promised
    expect(reasonOf(M.decodeKaMessage(Uint8Array.of(0x00)))).toBe("Truncated") // zero tag without count
    // 0xff word with a raw run of 3 words but only one present.
    expect(reasonOf(M.decodeKaMessage(Uint8Array.of(0xff, 1, 1, 1, 1, 1, 1, 1, 1, 3, 1, 1, 1, 1, 1, 1, 1, 1)))).toBe(
      "Truncated"
    )
  })

  it("a zero-run bomb (1 MiB of 00 ff = 1 GiB unpacked) is TooLarge without allocating", () => {
    const bomb = new Uint8Array(1024 * 1024)
    for (let i = 1; i < bomb.length; i += 2) bomb[i] = 0xff
    expect(reasonOf(M.decodeChannelMessage(bomb))).toBe("TooLarge")
    const size = unpackedByteLength(bomb, 8 * 1024 * 1024)
    expect(size._tag).toBe("Err")
    // Without a bound it would claim 1 GiB: the bound is what saves us.
    const unbounded = unpackedByteLength(bomb, Infinity)
    expect(unbounded).toEqual({ _tag: "Ok", value: (bomb.length / 2) * 256 * 8 })
  })

  it("a 0xff-run bomb (raw runs are bounded by the input) is bounded by maxUnpackedBytes too", () => {
    const data = new Uint8Array(64 * 1024).fill(1)
    const bytes = M.encodeKaMessage({ _tag: "Message", data })
    expect(reasonOf(M.decodeKaMessage(bytes, { maxUnpackedBytes: 32 * 1024 }))).toBe("TooLarge")
    expect(M.decodeKaMessage(bytes, { maxUnpackedBytes: 80 * 1024 })._tag).toBe("Ok")
  })

  it("a bound that is NaN or negative allows nothing", () => {
    const bytes = M.encodeKaMessage({ _tag: "KeepAlive" })
    expect(reasonOf(M.decodeKaMessage(bytes, { maxUnpackedBytes: Number.NaN }))).toBe("TooLarge")
    expect(reasonOf(M.decodeKaMessage(bytes, { maxUnpackedBytes: -1 }))).toBe("TooLarge")
    expect(unpack(bytes, 31)._tag).toBe("Err")
    expect(unpack(bytes, 32)._tag).toBe("Ok")
  })
})

describe("pointer loops and amplification", () => {
  it("a root struct pointing to itself (its pointer read as Data) is BadPointer", () => {
    // ChannelMessage at word 0: its randPadding pointer is the root struct pointer itself.
    expect(reasonOf(M.decodeChannelMessage(packed([structPtr(-1, 0, 2), 0n])))).toBe("BadPointer")
  })

  it("fields looping back to their own struct are stopped by the traversal limit", () => {
    // An ExchangeDh of 1000 pointers whose four fields all point back at the
    // struct itself: each field reads the 1000-word struct twice (wrapper and
    // BufferN), 9× the message, over the 8× + 64 budget.
    const pointers = 1000
    const struct: Array<Word> = Array.from({ length: pointers }, (_, i) => (i < 4 ? structPtr(-(i + 1), 0, pointers) : 0n))
    expect(reasonOf(M.decodeExchangeDh(packed([structPtr(0, 0, pointers), ...struct])))).toBe("TraversalLimit")
  })

  it("two Data fields aliasing one object are legal Cap'n Proto and read once each", () => {
    // randPadding and user both point at the same 4 words.
    const seg = [
      structPtr(0, 0, 2), // root → word 1
      dataPtr(3, 32), // randPadding → word 5
      structPtr(0, 1, 1), // content → word 3
      bytesWord([1]), // content data: union = user
      dataPtr(0, 32), // user → word 5
      ...keyWords
    ]
    const result = M.decodeChannelMessage(packed(seg))
    expect(result._tag).toBe("Ok")
    if (result._tag === "Ok" && result.value.content._tag === "User") {
      expect(result.value.randPadding).toEqual(result.value.content.data)
    }
  })

  it("a single-far pointer landing on itself is BadPointer", () => {
    expect(reasonOf(M.decodeKaMessage(packed([farPtr(0, 0)])))).toBe("BadPointer")
  })

  it("far pointers cycling between two segments are BadPointer (no far chains)", () => {
    expect(reasonOf(M.decodeKaMessage(packed([farPtr(0, 1)], [farPtr(0, 0)])))).toBe("BadPointer")
  })

  it("a chain of far pointers across segments is BadPointer at the first hop", () => {
    const segments = Array.from({ length: 10 }, (_, i) => [farPtr(0, (i + 1) % 10)])
    expect(reasonOf(M.decodeKaMessage(packed(...segments)))).toBe("BadPointer")
  })

  it("a double-far pad that starts with a double-far pointer is BadPointer", () => {
    expect(reasonOf(M.decodeKaMessage(packed([farPtr(0, 1, true)], [farPtr(0, 1, true), structPtr(0, 1, 1)])))).toBe(
      "BadPointer"
    )
  })
})

describe("far pointers", () => {
  it("single far: struct in another segment, Data in a third", () => {
    const bytes = packed(
      [farPtr(0, 1)],
      [structPtr(0, 1, 1), bytesWord([1]), farPtr(1, 2)],
      [0n, dataPtr(0, 5), bytesWord([9, 8, 7, 6, 5])]
    )
    expect(M.decodeKaMessage(bytes)).toEqual({ _tag: "Ok", value: { _tag: "Message", data: Uint8Array.of(9, 8, 7, 6, 5) } })
  })

  it("double far: pad in segment 1, content in segment 2", () => {
    const bytes = packed([farPtr(0, 1, true)], [farPtr(1, 2), structPtr(0, 1, 1)], [0n, bytesWord([1]), dataPtr(0, 2), bytesWord([4, 2])])
    expect(M.decodeKaMessage(bytes)).toEqual({ _tag: "Ok", value: { _tag: "Message", data: Uint8Array.of(4, 2) } })
  })

  it("a far pointer to a segment that does not exist is BadPointer", () => {
    expect(reasonOf(M.decodeKaMessage(packed([farPtr(0, 5)])))).toBe("BadPointer")
  })

  it("a far pointer whose landing pad is past its segment is BadPointer", () => {
    expect(reasonOf(M.decodeKaMessage(packed([farPtr(1, 1)], [structPtr(0, 0, 0)])))).toBe("BadPointer")
    expect(reasonOf(M.decodeKaMessage(packed([farPtr(0x1fffffff, 1)], [0n])))).toBe("BadPointer")
  })

  it("a double-far pad needing two words with one left in its segment is BadPointer", () => {
    expect(reasonOf(M.decodeKaMessage(packed([farPtr(0, 1, true)], [farPtr(0, 2)], [0n])))).toBe("BadPointer")
  })

  it("a double-far pad pointing to content out of bounds is BadPointer", () => {
    expect(
      reasonOf(M.decodeKaMessage(packed([farPtr(0, 1, true)], [farPtr(3, 2), structPtr(0, 1, 1)], [0n, 0n])))
    ).toBe("BadPointer")
  })

  it("a double-far pad naming a missing content segment is BadPointer", () => {
    expect(reasonOf(M.decodeKaMessage(packed([farPtr(0, 1, true)], [farPtr(0, 9), structPtr(0, 1, 1)])))).toBe(
      "BadPointer"
    )
  })

  it("a double-far tag that is itself far is BadPointer", () => {
    expect(reasonOf(M.decodeKaMessage(packed([farPtr(0, 1, true)], [farPtr(0, 2), farPtr(0, 2)], [0n, 0n])))).toBe(
      "BadPointer"
    )
  })
})

describe("bounds and pointer kinds", () => {
  it("a struct pointer past the end of its segment is BadPointer", () => {
    expect(reasonOf(M.decodeKaMessage(packed([structPtr(5, 1, 1), 0n, 0n])))).toBe("BadPointer")
    expect(reasonOf(M.decodeKaMessage(packed([structPtr(0, 0xffff, 0xffff)])))).toBe("BadPointer")
  })

  it("a struct pointer before the start of its segment is BadPointer", () => {
    expect(reasonOf(M.decodeKaMessage(packed([structPtr(-2, 1, 1), 0n])))).toBe("BadPointer")
    expect(reasonOf(M.decodeKaMessage(packed([structPtr(-(1 << 29), 1, 1), 0n])))).toBe("BadPointer")
  })

  it("a huge Data length (2^29 - 1 bytes) is BadPointer, not an allocation", () => {
    const bytes = packed([structPtr(0, 1, 1), bytesWord([1]), dataPtr(0, 2 ** 29 - 1)])
    expect(reasonOf(M.decodeKaMessage(bytes))).toBe("BadPointer")
  })

  it("Data one byte longer than its segment is BadPointer", () => {
    expect(reasonOf(M.decodeKaMessage(packed([structPtr(0, 1, 1), bytesWord([1]), dataPtr(0, 9), 0n])))).toBe(
      "BadPointer"
    )
  })

  it("a list pointer where a struct is expected is BadPointer", () => {
    expect(reasonOf(M.decodeKaMessage(packed([dataPtr(0, 0)])))).toBe("BadPointer")
    // A key field given as Data.
    expect(reasonOf(M.decodeRejectConnection(packed([structPtr(0, 0, 1), dataPtr(0, 32), ...keyWords])))).toBe(
      "BadPointer"
    )
  })

  it("a struct pointer where Data is expected is BadPointer", () => {
    // (A struct pointer of offset 0 and size 0 is the null pointer, so give it a word.)
    expect(reasonOf(M.decodeKaMessage(packed([structPtr(0, 1, 1), bytesWord([1]), structPtr(0, 1, 0), 0n])))).toBe(
      "BadPointer"
    )
    // The canonical empty struct (offset -1, size 0) is not Data either.
    expect(reasonOf(M.decodeKaMessage(packed([structPtr(0, 1, 1), bytesWord([1]), structPtr(-1, 0, 0)])))).toBe(
      "BadPointer"
    )
  })

  it("Data of the wrong element size is BadPointer", () => {
    for (const elementSize of [0, 1, 3, 4, 5, 6, 7]) {
      const bytes = packed([structPtr(0, 1, 1), bytesWord([1]), listPtr(0, elementSize, 1), 0n, 0n, 0n, 0n, 0n, 0n, 0n, 0n])
      expect(reasonOf(M.decodeKaMessage(bytes)), `element size ${elementSize}`).toBe("BadPointer")
    }
  })

  it("a capability pointer is BadPointer", () => {
    expect(reasonOf(M.decodeKaMessage(packed([capabilityPtr(0)])))).toBe("BadPointer")
    expect(reasonOf(M.decodeKaMessage(packed([structPtr(0, 1, 1), bytesWord([1]), capabilityPtr(0)])))).toBe("BadPointer")
  })
})

describe("union discriminants", () => {
  it("an unknown KaMessage member is UnknownUnionMember", () => {
    expect(reasonOf(M.decodeKaMessage(packed([structPtr(0, 1, 1), bytesWord([2]), 0n])))).toBe("UnknownUnionMember")
  })

  it("an unknown InitConnection member is UnknownUnionMember", () => {
    expect(reasonOf(M.decodeInitConnection(packed([structPtr(0, 1, 1), bytesWord([3]), 0n])))).toBe(
      "UnknownUnionMember"
    )
    expect(reasonOf(M.decodeInitConnection(packed([structPtr(0, 1, 1), bytesWord([0xff, 0xff]), 0n])))).toBe(
      "UnknownUnionMember"
    )
  })

  it("an unknown optDestPublicKey member is UnknownUnionMember", () => {
    expect(reasonOf(M.decodeExchangeRandNonce(packed([structPtr(0, 1, 3), bytesWord([2]), 0n, 0n, 0n])))).toBe(
      "UnknownUnionMember"
    )
  })

  it("an unknown ChannelContent member is UnknownUnionMember", () => {
    expect(reasonOf(M.decodeChannelMessage(packed([structPtr(0, 0, 2), 0n, structPtr(0, 1, 1), bytesWord([2]), 0n])))).toBe(
      "UnknownUnionMember"
    )
  })

  it("an inactive member's garbage pointer is never followed", () => {
    // keepAlive selected; the pointer slot holds a wild pointer.
    expect(M.decodeKaMessage(packed([structPtr(0, 1, 1), 0n, structPtr(1000, 1, 1)]))).toEqual({
      _tag: "Ok",
      value: { _tag: "KeepAlive" }
    })
  })
})

describe("Cap'n Proto defaults: short, long and null structs", () => {
  it("a null root reads as the default struct", () => {
    expect(M.decodeKaMessage(packed([0n]))).toEqual({ _tag: "Ok", value: { _tag: "KeepAlive" } })
    expect(M.decodeInitConnection(packed([0n]))).toEqual({ _tag: "Ok", value: { _tag: "Listen" } })
    expect(M.decodeRejectConnection(packed([0n]))).toEqual({ _tag: "Ok", value: { publicKey: new Uint8Array(32) } })
    expect(M.decodeChannelMessage(packed([0n]))).toEqual({
      _tag: "Ok",
      value: {
        randPadding: new Uint8Array(0),
        content: { _tag: "Rekey", rekey: { dhPublicKey: new Uint8Array(32), keySalt: new Uint8Array(32) } }
      }
    })
  })

  it("a struct with no data section reads its discriminant as 0", () => {
    expect(M.decodeKaMessage(packed([structPtr(0, 0, 1), dataPtr(0, 1), bytesWord([7])]))).toEqual({
      _tag: "Ok",
      value: { _tag: "KeepAlive" }
    })
  })

  it("a struct missing a pointer field reads it as null", () => {
    // ExchangeRandNonce with only its data word and one pointer: srcPublicKey absent.
    const bytes = packed([structPtr(0, 1, 1), 0n, 0n])
    expect(M.decodeExchangeRandNonce(bytes)).toEqual({
      _tag: "Ok",
      value: { randNonce: new Uint8Array(16), srcPublicKey: new Uint8Array(32), optDestPublicKey: undefined }
    })
  })

  it("a Buffer256 with a short data section (wrong fixed size) reads the missing words as zero", () => {
    const bytes = packed([structPtr(0, 0, 1), structPtr(0, 0, 1), structPtr(0, 2, 0), keyWords[0]!, keyWords[1]!])
    const expected = new Uint8Array(32)
    expected.set(keyBytes.subarray(0, 16))
    expect(M.decodeRejectConnection(bytes)).toEqual({ _tag: "Ok", value: { publicKey: expected } })
  })

  it("a Buffer256 with a long data section and extra pointers (wrong fixed size) reads its first four words", () => {
    const bytes = packed([
      structPtr(0, 0, 1),
      structPtr(0, 0, 1),
      structPtr(0, 6, 2),
      ...keyWords,
      0xdeadn,
      0xbeefn,
      structPtr(5000, 0, 0),
      0n
    ])
    expect(M.decodeRejectConnection(bytes)).toEqual({ _tag: "Ok", value: { publicKey: keyBytes } })
  })

  it("a larger root struct (a newer schema) is read, extra fields ignored", () => {
    const bytes = packed([structPtr(0, 3, 3), bytesWord([1]), 0x1234n, 0x5678n, dataPtr(2, 3), 0n, 0n, bytesWord([1, 2, 3])])
    expect(M.decodeKaMessage(bytes)).toEqual({ _tag: "Ok", value: { _tag: "Message", data: Uint8Array.of(1, 2, 3) } })
  })

  it("Data views point into the decoder's own buffer, not the caller's input", () => {
    const input = M.encodeKaMessage({ _tag: "Message", data: new Uint8Array(64).fill(0x5a) })
    const result = M.decodeKaMessage(input)
    expect(result._tag).toBe("Ok")
    if (result._tag === "Ok" && result.value._tag === "Message") {
      expect(result.value.data.buffer).not.toBe(input.buffer)
      input.fill(0)
      expect(result.value.data).toEqual(new Uint8Array(64).fill(0x5a))
    }
  })
})
