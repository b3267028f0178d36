/**
 * Property tests of the message codecs: round trips of arbitrary values,
 * total decoding of arbitrary and mutated bytes, the unpacked-size bound, and
 * packing against capnp-es's implementation.
 */
import fc from "fast-check"
import { Message } from "capnp-es"
import { describe, expect, it } from "vitest"
import { pack, packedSizeBound, unpack } from "../src/core/capnp.ts"
import * as M from "../src/core/messages.ts"

// ---- arbitraries ----

const fixed = (length: number): fc.Arbitrary<Uint8Array> =>
  fc.oneof(
    { weight: 4, arbitrary: fc.uint8Array({ minLength: length, maxLength: length }) },
    { weight: 1, arbitrary: fc.constant(new Uint8Array(length)) },
    { weight: 1, arbitrary: fc.constant(new Uint8Array(length).fill(0xff)) },
    // Mostly zeros: every packing tag shape.
    {
      weight: 2,
      arbitrary: fc
        .uint8Array({ minLength: length, maxLength: length })
        .map((b) => b.map((x) => (x < 160 ? 0 : x)))
    }
  )

const data: fc.Arbitrary<Uint8Array> = fc.oneof(
  fc.uint8Array({ maxLength: 64 }),
  fc.uint8Array({ maxLength: 3000 }),
  fc.uint8Array({ maxLength: 3000 }).map((b) => b.map((x) => (x < 200 ? 0 : x))),
  fc.integer({ min: 0, max: 5000 }).map((n) => new Uint8Array(n)),
  fc.integer({ min: 0, max: 5000 }).map((n) => new Uint8Array(n).fill(7))
)

const initConnection: fc.Arbitrary<M.InitConnection> = fc.oneof(
  fc.constant({ _tag: "Listen" as const }),
  fixed(32).map((publicKey) => ({ _tag: "Accept" as const, publicKey })),
  fixed(32).map((publicKey) => ({ _tag: "Connect" as const, publicKey }))
)
const keyMessage = fixed(32).map((publicKey) => ({ publicKey }))
const kaMessage: fc.Arbitrary<M.KaMessage> = fc.oneof(
  fc.constant({ _tag: "KeepAlive" as const }),
  data.map((d) => ({ _tag: "Message" as const, data: d }))
)
const exchangeRandNonce: fc.Arbitrary<M.ExchangeRandNonce> = fc.record({
  randNonce: fixed(16),
  srcPublicKey: fixed(32),
  optDestPublicKey: fc.option(fixed(32), { nil: undefined })
})
const exchangeDh: fc.Arbitrary<M.ExchangeDh> = fc.record({
  dhPublicKey: fixed(32),
  randNonce: fixed(16),
  keySalt: fixed(32),
  signature: fixed(64)
})
const rekey: fc.Arbitrary<M.Rekey> = fc.record({ dhPublicKey: fixed(32), keySalt: fixed(32) })
const channelMessage: fc.Arbitrary<M.ChannelMessage> = fc.record({
  randPadding: fc.oneof(fc.uint8Array({ maxLength: 255 }), data),
  content: fc.oneof(
    rekey.map((r) => ({ _tag: "Rekey" as const, rekey: r })),
    data.map((d) => ({ _tag: "User" as const, data: d }))
  )
})

interface Codec<A> {
  readonly name: string
  readonly arbitrary: fc.Arbitrary<A>
  readonly encode: (value: A) => Uint8Array
  readonly decode: (bytes: Uint8Array, options?: M.DecodeOptions) => M.DecodeResult<A>
}

const codec = <A>(c: Codec<A>): Codec<unknown> => c as Codec<unknown>

const codecs: ReadonlyArray<Codec<unknown>> = [
  codec({ name: "InitConnection", arbitrary: initConnection, encode: M.encodeInitConnection, decode: M.decodeInitConnection }),
  codec({ name: "RejectConnection", arbitrary: keyMessage, encode: M.encodeRejectConnection, decode: M.decodeRejectConnection }),
  codec({
    name: "IncomingConnection",
    arbitrary: keyMessage,
    encode: M.encodeIncomingConnection,
    decode: M.decodeIncomingConnection
  }),
  codec({ name: "KaMessage", arbitrary: kaMessage, encode: M.encodeKaMessage, decode: M.decodeKaMessage }),
  codec({
    name: "ExchangeRandNonce",
    arbitrary: exchangeRandNonce,
    encode: M.encodeExchangeRandNonce,
    decode: M.decodeExchangeRandNonce
  }),
  codec({ name: "ExchangeDh", arbitrary: exchangeDh, encode: M.encodeExchangeDh, decode: M.decodeExchangeDh }),
  codec({ name: "Rekey", arbitrary: rekey, encode: M.encodeRekey, decode: M.decodeRekey }),
  codec({ name: "ChannelMessage", arbitrary: channelMessage, encode: M.encodeChannelMessage, decode: M.decodeChannelMessage })
]

const reasons = new Set([
  "Truncated",
  "TooLarge",
  "BadSegmentTable",
  "BadPointer",
  "TraversalLimit",
  "UnknownUnionMember",
  "BadLength"
])

/** A decode result is well formed: Ok, or an error with a known reason and a one-line message (never the "bug" fallback). */
const checkResult = (result: M.DecodeResult<unknown>): void => {
  if (result._tag === "Ok") return
  expect(result.error._tag).toBe("DecodeError")
  expect(reasons.has(result.error.reason), result.error.reason).toBe(true)
  expect(result.error.message).not.toMatch(/\n/)
  expect(result.error.message).not.toMatch(/\(bug\)/)
}

// Every Data field of a decoded value, to check where its bytes live.
const dataViews = (value: unknown): Array<Uint8Array> => {
  const out: Array<Uint8Array> = []
  const walk = (v: unknown): void => {
    if (v instanceof Uint8Array) out.push(v)
    else if (typeof v === "object" && v !== null) for (const x of Object.values(v)) walk(x)
  }
  walk(value)
  return out
}

// ---- structured random messages: pointer-shaped words in valid framing ----

const u32 = (n: number): bigint => BigInt(n >>> 0)
const pointerWord: fc.Arbitrary<bigint> = fc.oneof(
  fc.constant(0n),
  fc.bigInt({ min: 0n, max: 3n }), // small discriminants
  fc
    .tuple(fc.integer({ min: -8, max: 8 }), fc.integer({ min: 0, max: 5 }), fc.integer({ min: 0, max: 5 }))
    .map(([o, d, p]) => u32(o << 2) | (BigInt(d) << 32n) | (BigInt(p) << 48n)),
  fc
    .tuple(fc.integer({ min: -8, max: 8 }), fc.integer({ min: 0, max: 7 }), fc.integer({ min: 0, max: 80 }))
    .map(([o, s, n]) => u32((o << 2) | 1) | (BigInt(s) << 32n) | (BigInt(n) << 35n)),
  fc
    .tuple(fc.integer({ min: 0, max: 8 }), fc.integer({ min: 0, max: 4 }), fc.boolean())
    .map(([w, seg, dbl]) => u32((w << 3) | (dbl ? 4 : 0) | 2) | (BigInt(seg) << 32n)),
  fc.bigInt({ min: 0n, max: (1n << 64n) - 1n })
)

const structuredMessage: fc.Arbitrary<Uint8Array> = fc
  .array(fc.array(pointerWord, { minLength: 0, maxLength: 16 }), { minLength: 1, maxLength: 5 })
  .map((segments) => {
    const table: Array<number> = [segments.length - 1, ...segments.map((s) => s.length)]
    if (table.length % 2 === 1) table.push(0)
    const words: Array<bigint> = []
    for (let i = 0; i < table.length; i += 2) words.push(u32(table[i]!) | (u32(table[i + 1]!) << 32n))
    words.push(...segments.flat())
    const out = new Uint8Array(words.length * 8)
    const view = new DataView(out.buffer)
    words.forEach((w, i) => view.setBigUint64(i * 8, w, true))
    return pack(out)
  })

// ---- word-aligned buffers biased to every packing case ----

const word: fc.Arbitrary<ReadonlyArray<number>> = fc.oneof(
  fc.constant([0, 0, 0, 0, 0, 0, 0, 0]),
  fc.array(fc.integer({ min: 1, max: 255 }), { minLength: 8, maxLength: 8 }),
  fc
    .tuple(fc.array(fc.integer({ min: 1, max: 255 }), { minLength: 8, maxLength: 8 }), fc.integer({ min: 0, max: 7 }))
    .map(([w, z]) => w.map((b, i) => (i === z ? 0 : b))),
  fc
    .tuple(
      fc.array(fc.integer({ min: 1, max: 255 }), { minLength: 8, maxLength: 8 }),
      fc.integer({ min: 0, max: 7 }),
      fc.integer({ min: 0, max: 7 })
    )
    .map(([w, z1, z2]) => w.map((b, i) => (i === z1 || i === z2 ? 0 : b))),
  fc.array(fc.integer({ min: 0, max: 255 }), { minLength: 8, maxLength: 8 })
)

// Long runs of one kind of word cross the 255-word run limits.
const wordBuffer: fc.Arbitrary<Uint8Array> = fc
  .array(fc.tuple(word, fc.oneof(fc.constant(1), fc.integer({ min: 1, max: 300 }))), { minLength: 1, maxLength: 12 })
  .map((runs) => Uint8Array.from(runs.flatMap(([w, n]) => Array.from({ length: n }, () => w).flat())))

describe("round trip of arbitrary values", () => {
  for (const c of codecs) {
    it(c.name, () => {
      fc.assert(
        fc.property(c.arbitrary, (value) => {
          const bytes = c.encode(value)
          expect(c.decode(bytes)).toEqual({ _tag: "Ok", value })
        }),
        { numRuns: 200 }
      )
    })
  }
})

describe("decoding arbitrary bytes never throws", () => {
  for (const c of codecs) {
    it(`${c.name}: random bytes`, () => {
      fc.assert(
        fc.property(fc.uint8Array({ maxLength: 600 }), (bytes) => checkResult(c.decode(bytes))),
        { numRuns: 1000 }
      )
    })
    it(`${c.name}: pointer-shaped words in a valid segment table`, () => {
      fc.assert(
        fc.property(structuredMessage, (bytes) => checkResult(c.decode(bytes))),
        { numRuns: 1000 }
      )
    })
  }

  it("structured messages reach every error reason and successful decodes", () => {
    // Guards the generator above: if it stopped reaching the pointer code, the
    // never-throws properties would prove little.
    const seen = new Set<string>()
    fc.assert(
      fc.property(structuredMessage, (bytes) => {
        for (const c of codecs) {
          const r = c.decode(bytes)
          seen.add(r._tag === "Ok" ? "Ok" : r.error.reason)
        }
      }),
      { numRuns: 2000, seed: 42 }
    )
    for (const reason of ["Ok", "BadPointer", "UnknownUnionMember", "BadSegmentTable"]) {
      expect(seen.has(reason), reason).toBe(true)
    }
  })
})

type Mutation =
  | { readonly kind: "flip"; readonly at: number; readonly bit: number }
  | { readonly kind: "truncate"; readonly at: number }
  | { readonly kind: "insert"; readonly at: number; readonly bytes: Uint8Array }
  | { readonly kind: "set"; readonly at: number; readonly byte: number }

const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ kind: fc.constant("flip" as const), at: fc.nat(), bit: fc.integer({ min: 0, max: 7 }) }),
  fc.record({ kind: fc.constant("truncate" as const), at: fc.nat() }),
  fc.record({ kind: fc.constant("insert" as const), at: fc.nat(), bytes: fc.uint8Array({ minLength: 1, maxLength: 16 }) }),
  fc.record({ kind: fc.constant("set" as const), at: fc.nat(), byte: fc.constantFrom(0, 0xff, 1, 0x80) })
)

const mutate = (bytes: Uint8Array, m: Mutation): Uint8Array => {
  if (bytes.length === 0) return bytes
  const at = m.at % bytes.length
  switch (m.kind) {
    case "flip": {
      const out = bytes.slice()
      out[at]! ^= 1 << m.bit
      return out
    }
    case "truncate":
      return bytes.slice(0, at)
    case "insert": {
      const out = new Uint8Array(bytes.length + m.bytes.length)
      out.set(bytes.subarray(0, at))
      out.set(m.bytes, at)
      out.set(bytes.subarray(at), at + m.bytes.length)
      return out
    }
    case "set": {
      const out = bytes.slice()
      out[at] = m.byte
      return out
    }
  }
}

describe("decoding mutated valid encodings never throws", () => {
  for (const c of codecs) {
    it(`${c.name}: mutations of the packed bytes`, () => {
      fc.assert(
        fc.property(c.arbitrary, fc.array(mutation, { minLength: 1, maxLength: 4 }), (value, mutations) => {
          const bytes = mutations.reduce(mutate, c.encode(value))
          checkResult(c.decode(bytes))
        }),
        { numRuns: 300 }
      )
    })
    it(`${c.name}: mutations of the unpacked words (reach the pointer code)`, () => {
      fc.assert(
        fc.property(c.arbitrary, fc.array(mutation, { minLength: 1, maxLength: 4 }), (value, mutations) => {
          const unpacked = unpack(c.encode(value), Infinity)
          if (unpacked._tag === "Err") throw new Error(unpacked.error.message)
          const mutated = mutations.reduce(mutate, unpacked.value)
          const aligned = mutated.slice(0, mutated.length - (mutated.length % 8))
          checkResult(c.decode(pack(aligned)))
        }),
        { numRuns: 300 }
      )
    })
  }
})

describe("reading a KaMessage's header agrees with decoding it", () => {
  // What the keepalive layer learns either way: the member, the payload, or the error.
  const viaHeader = (bytes: Uint8Array, maxUnpackedBytes?: number) => {
    const read = M.readKaMessageHeader(bytes, { maxUnpackedBytes })
    if (read._tag === "Err") return { error: read.error.reason }
    const header = read.value
    if (header._tag === "KeepAlive") return { keepAlive: true }
    const payload = header.data ?? M.kaMessagePayload(bytes, header.dataLength)
    expect(payload.length).toBe(header.dataLength)
    return { payload: [...payload] }
  }
  const viaDecode = (bytes: Uint8Array, maxUnpackedBytes?: number) => {
    const decoded = M.decodeKaMessage(bytes, { maxUnpackedBytes })
    if (decoded._tag === "Err") return { error: decoded.error.reason }
    return decoded.value._tag === "KeepAlive" ? { keepAlive: true } : { payload: [...decoded.value.data] }
  }

  it("honest encodings skip the payload, and give it back exactly on demand", () => {
    fc.assert(
      fc.property(data, (payload) => {
        const bytes = M.encodeKaMessage({ _tag: "Message", data: payload })
        const read = M.readKaMessageHeader(bytes)
        expect(read).toEqual({ _tag: "Ok", value: { _tag: "Message", dataLength: payload.length, data: undefined } })
        expect(M.kaMessagePayload(bytes, payload.length)).toEqual(payload)
      }),
      { numRuns: 300 }
    )
  })

  it("every single flipped bit of small honest encodings: the same answer as the full decoder", () => {
    for (const payload of [new Uint8Array(0), Uint8Array.of(1, 1, 1, 1), new Uint8Array(9).fill(0xab), new Uint8Array(24).fill(3)]) {
      const honest = M.encodeKaMessage({ _tag: "Message", data: payload })
      for (let bit = 0; bit < honest.length * 8; bit++) {
        const bytes = honest.slice()
        bytes[bit >> 3] = bytes[bit >> 3]! ^ (1 << (bit & 7))
        expect(viaHeader(bytes), `payload of ${payload.length} bytes, bit ${bit}`).toEqual(viaDecode(bytes))
      }
    }
  })

  it("mutated encodings: the same member, payload or error reason as the full decoder", () => {
    fc.assert(
      fc.property(kaMessage, fc.array(mutation, { minLength: 1, maxLength: 4 }), fc.boolean(), (value, mutations, inWords) => {
        let bytes: Uint8Array
        if (inWords) {
          const unpacked = unpack(M.encodeKaMessage(value), Infinity)
          if (unpacked._tag === "Err") throw new Error(unpacked.error.message)
          const mutated = mutations.reduce(mutate, unpacked.value)
          bytes = pack(mutated.slice(0, mutated.length - (mutated.length % 8)))
        } else {
          bytes = mutations.reduce(mutate, M.encodeKaMessage(value))
        }
        expect(viaHeader(bytes)).toEqual(viaDecode(bytes))
        expect(viaHeader(bytes, 64)).toEqual(viaDecode(bytes, 64))
      }),
      { numRuns: 1000 }
    )
  })
})

describe("the unpacked size bound", () => {
  const bound = 512
  const packedInput = fc.oneof(
    fc.uint8Array({ maxLength: 400 }),
    structuredMessage,
    // Zero-run bombs and raw runs, possibly after a plausible table.
    fc
      .tuple(fc.integer({ min: 1, max: 2000 }), fc.uint8Array({ maxLength: 16 }))
      .map(([n, prefix]) => Uint8Array.from([...prefix, ...Array.from({ length: n }, (_, i) => (i % 2 === 0 ? 0 : 0xff))])),
    codecs[3]!.arbitrary.map((v) => codecs[3]!.encode(v)),
    codecs[7]!.arbitrary.map((v) => codecs[7]!.encode(v))
  )

  it("unpack never returns more than the bound", () => {
    fc.assert(
      fc.property(packedInput, (bytes) => {
        const r = unpack(bytes, bound)
        if (r._tag === "Ok") expect(r.value.length).toBeLessThanOrEqual(bound)
        else expect(["TooLarge", "Truncated"]).toContain(r.error.reason)
      }),
      { numRuns: 1000 }
    )
  })

  it("decoded Data lives in a buffer no larger than the bound", () => {
    fc.assert(
      fc.property(packedInput, (bytes) => {
        for (const c of codecs) {
          const r = c.decode(bytes, { maxUnpackedBytes: bound })
          checkResult(r)
          if (r._tag === "Ok") {
            for (const view of dataViews(r.value)) expect(view.buffer.byteLength).toBeLessThanOrEqual(bound)
          }
        }
      }),
      { numRuns: 500 }
    )
  })

  it("a message over the bound is TooLarge and one within it decodes", () => {
    fc.assert(
      fc.property(kaMessage, (value) => {
        const bytes = M.encodeKaMessage(value)
        const size = unpack(bytes, Infinity)
        if (size._tag === "Err") throw new Error(size.error.message)
        const n = size.value.length
        expect(M.decodeKaMessage(bytes, { maxUnpackedBytes: n })._tag).toBe("Ok")
        const under = M.decodeKaMessage(bytes, { maxUnpackedBytes: n - 1 })
        expect(under._tag === "Err" && under.error.reason).toBe("TooLarge")
      }),
      { numRuns: 200 }
    )
  })
})

describe("packing", () => {
  it("unpack(pack(x)) = x for word-aligned buffers", () => {
    fc.assert(
      fc.property(wordBuffer, (buffer) => {
        const packed = pack(buffer)
        expect(packed.length).toBeLessThanOrEqual(packedSizeBound(buffer.length))
        expect(unpack(packed, Infinity)).toEqual({ _tag: "Ok", value: buffer })
      }),
      { numRuns: 500 }
    )
  })

  it("the size bound holds for the worst pattern (0xff word, then a word with two zeros)", () => {
    const worst = (words: number): Uint8Array =>
      Uint8Array.from({ length: words * 8 }, (_, i) => (Math.floor(i / 8) % 2 === 0 ? 0xaa : i % 8 < 2 ? 0 : 0xbb))
    for (const n of [1, 2, 3, 4, 5, 100, 101, 1000]) {
      const buffer = worst(n)
      const packed = pack(buffer)
      expect(packed.length, `${n} words`).toBeLessThanOrEqual(packedSizeBound(buffer.length))
      expect(unpack(packed, Infinity)).toEqual({ _tag: "Ok", value: buffer })
    }
  })

  it("an unaligned view packs the same as an aligned copy (the u32 and the byte scans agree)", () => {
    fc.assert(
      fc.property(wordBuffer, fc.integer({ min: 1, max: 7 }), (buffer, shift) => {
        const backing = new Uint8Array(buffer.length + shift)
        backing.set(buffer, shift)
        expect(pack(backing.subarray(shift))).toEqual(pack(buffer))
      }),
      { numRuns: 300 }
    )
  })

  it("equals capnp-es's packing of a single-segment message", () => {
    fc.assert(
      fc.property(wordBuffer, (buffer) => {
        const theirs = new Uint8Array(new Message(buffer, false, true).toPackedArrayBuffer())
        // capnp-es packs the segment table and the segment separately, as the C++ library does.
        const frame = new Uint8Array(8)
        new DataView(frame.buffer).setUint32(4, buffer.length / 8, true)
        const ours = Uint8Array.from([...pack(frame), ...pack(buffer)])
        expect(ours).toEqual(theirs)
      }),
      { numRuns: 300 }
    )
  })

  it("refuses (throws on) a length that is not whole words: a caller's bug", () => {
    expect(() => pack(new Uint8Array(7))).toThrow(RangeError)
  })
})

describe("encoders refuse wrong-length fixed fields (a caller's bug)", () => {
  it("throws RangeError for a 31-byte key", () => {
    expect(() => M.encodeRejectConnection({ publicKey: new Uint8Array(31) })).toThrow(RangeError)
    expect(() => M.encodeInitConnection({ _tag: "Connect", publicKey: new Uint8Array(33) })).toThrow(RangeError)
    expect(() =>
      M.encodeExchangeDh({
        dhPublicKey: new Uint8Array(32),
        randNonce: new Uint8Array(16),
        keySalt: new Uint8Array(32),
        signature: new Uint8Array(63)
      })
    ).toThrow(RangeError)
  })
})
