import fc from "fast-check"
import { describe, expect, it } from "vitest"
import { runWire, wireHelp } from "../src/adapters/cli/wire.ts"
import { bytesToHex } from "../src/core/keys.ts"
import * as M from "../src/core/messages.ts"
import { decodeWire, encodeWire, isWireType, type WireResult, wireTypes } from "../src/core/wire-json.ts"

const bytes = (n: number, start = 1): Uint8Array => Uint8Array.from({ length: n }, (_, i) => (start + i) & 0xff)
const key = bytes(32)
const key2 = bytes(32, 100)
const hexOf = bytesToHex

const okValue = (r: WireResult): string => {
  if (r._tag === "Err") throw new Error(`expected Ok, got Err: ${r.message}`)
  return r.value
}
const errMessage = (r: WireResult): string => {
  if (r._tag === "Ok") throw new Error(`expected Err, got Ok: ${r.value}`)
  return r.message
}

interface Example {
  readonly type: (typeof wireTypes)[number]
  readonly json: string
  readonly packed: Uint8Array
}

const examples: ReadonlyArray<Example> = [
  { type: "InitConnection", json: `{"listen":null}`, packed: M.encodeInitConnection({ _tag: "Listen" }) },
  {
    type: "InitConnection",
    json: `{"accept":"${hexOf(key)}"}`,
    packed: M.encodeInitConnection({ _tag: "Accept", publicKey: key })
  },
  {
    type: "InitConnection",
    json: `{"connect":"${hexOf(key2)}"}`,
    packed: M.encodeInitConnection({ _tag: "Connect", publicKey: key2 })
  },
  {
    type: "RejectConnection",
    json: `{"publicKey":"${hexOf(key)}"}`,
    packed: M.encodeRejectConnection({ publicKey: key })
  },
  {
    type: "IncomingConnection",
    json: `{"publicKey":"${hexOf(key2)}"}`,
    packed: M.encodeIncomingConnection({ publicKey: key2 })
  },
  { type: "KaMessage", json: `{"keepAlive":null}`, packed: M.encodeKaMessage({ _tag: "KeepAlive" }) },
  {
    type: "KaMessage",
    json: `{"message":"00ff"}`,
    packed: M.encodeKaMessage({ _tag: "Message", data: Uint8Array.of(0, 255) })
  },
  { type: "KaMessage", json: `{"message":""}`, packed: M.encodeKaMessage({ _tag: "Message", data: new Uint8Array(0) }) },
  {
    type: "ExchangeRandNonce",
    json: `{"randNonce":"${hexOf(bytes(16))}","srcPublicKey":"${hexOf(key)}","optDestPublicKey":{"empty":null}}`,
    packed: M.encodeExchangeRandNonce({ randNonce: bytes(16), srcPublicKey: key, optDestPublicKey: undefined })
  },
  {
    type: "ExchangeRandNonce",
    json: `{"randNonce":"${hexOf(bytes(16))}","srcPublicKey":"${hexOf(key)}","optDestPublicKey":{"publicKey":"${hexOf(key2)}"}}`,
    packed: M.encodeExchangeRandNonce({ randNonce: bytes(16), srcPublicKey: key, optDestPublicKey: key2 })
  },
  {
    type: "ExchangeDh",
    json: `{"dhPublicKey":"${hexOf(key)}","randNonce":"${hexOf(bytes(16, 7))}","keySalt":"${hexOf(key2)}","signature":"${hexOf(bytes(64, 9))}"}`,
    packed: M.encodeExchangeDh({ dhPublicKey: key, randNonce: bytes(16, 7), keySalt: key2, signature: bytes(64, 9) })
  },
  {
    type: "ChannelMessage",
    json: `{"randPadding":"","content":{"user":"abcd"}}`,
    packed: M.encodeChannelMessage({ randPadding: new Uint8Array(0), content: { _tag: "User", data: Uint8Array.of(0xab, 0xcd) } })
  },
  {
    type: "ChannelMessage",
    json: `{"randPadding":"0102","content":{"rekey":{"dhPublicKey":"${hexOf(key)}","keySalt":"${hexOf(key2)}"}}}`,
    packed: M.encodeChannelMessage({
      randPadding: Uint8Array.of(1, 2),
      content: { _tag: "Rekey", rekey: { dhPublicKey: key, keySalt: key2 } }
    })
  }
]

describe("JSON conventions, every type and union member", () => {
  for (const e of examples) {
    it(`${e.type} ${e.json.slice(0, 40)}`, () => {
      expect(okValue(encodeWire(e.type, e.json))).toBe(hexOf(e.packed))
      expect(okValue(decodeWire(e.type, hexOf(e.packed)))).toBe(e.json)
    })
  }

  it("covers all seven types", () => {
    expect(new Set(examples.map((e) => e.type))).toEqual(new Set(wireTypes))
    expect(wireTypes).toHaveLength(7)
    expect(isWireType("KaMessage")).toBe(true)
    expect(isWireType("Rekey")).toBe(false)
  })

  it("decode takes hex with whitespace and either case", () => {
    const hex = hexOf(M.encodeKaMessage({ _tag: "Message", data: Uint8Array.of(0xde, 0xad) }))
    const messy = `  ${hex.toUpperCase().replace(/(....)/g, "$1 \n\t")}  \n`
    expect(okValue(decodeWire("KaMessage", messy))).toBe(`{"message":"dead"}`)
  })

  it("encode takes uppercase hex in JSON strings and writes lowercase", () => {
    expect(okValue(decodeWire("KaMessage", okValue(encodeWire("KaMessage", `{"message":"DEAD"}`))))).toBe(
      `{"message":"dead"}`
    )
  })

  it("encode takes pretty-printed JSON", () => {
    expect(okValue(encodeWire("KaMessage", `{\n  "keepAlive": null\n}\n`))).toBe(hexOf(M.encodeKaMessage({ _tag: "KeepAlive" })))
  })
})

describe("round trips of arbitrary messages through JSON", () => {
  const fixed = (n: number) => fc.uint8Array({ minLength: n, maxLength: n })
  const arbitraries: ReadonlyArray<readonly [(typeof wireTypes)[number], fc.Arbitrary<Uint8Array>]> = [
    [
      "InitConnection",
      fc
        .oneof(
          fc.constant<M.InitConnection>({ _tag: "Listen" }),
          fixed(32).map((publicKey): M.InitConnection => ({ _tag: "Connect", publicKey })),
          fixed(32).map((publicKey): M.InitConnection => ({ _tag: "Accept", publicKey }))
        )
        .map(M.encodeInitConnection)
    ],
    ["RejectConnection", fixed(32).map((publicKey) => M.encodeRejectConnection({ publicKey }))],
    ["IncomingConnection", fixed(32).map((publicKey) => M.encodeIncomingConnection({ publicKey }))],
    [
      "KaMessage",
      fc
        .option(fc.uint8Array({ maxLength: 300 }), { nil: undefined })
        .map((d) => M.encodeKaMessage(d === undefined ? { _tag: "KeepAlive" } : { _tag: "Message", data: d }))
    ],
    [
      "ExchangeRandNonce",
      fc
        .record({ randNonce: fixed(16), srcPublicKey: fixed(32), optDestPublicKey: fc.option(fixed(32), { nil: undefined }) })
        .map(M.encodeExchangeRandNonce)
    ],
    [
      "ExchangeDh",
      fc
        .record({ dhPublicKey: fixed(32), randNonce: fixed(16), keySalt: fixed(32), signature: fixed(64) })
        .map(M.encodeExchangeDh)
    ],
    [
      "ChannelMessage",
      fc
        .record({
          randPadding: fc.uint8Array({ maxLength: 255 }),
          content: fc.oneof(
            fc.uint8Array({ maxLength: 300 }).map((data): M.ChannelContent => ({ _tag: "User", data })),
            fc
              .record({ dhPublicKey: fixed(32), keySalt: fixed(32) })
              .map((rekey): M.ChannelContent => ({ _tag: "Rekey", rekey }))
          )
        })
        .map(M.encodeChannelMessage)
    ]
  ]
  for (const [type, arbitrary] of arbitraries) {
    it(type, () => {
      fc.assert(
        fc.property(arbitrary, (packed) => {
          const json = okValue(decodeWire(type, hexOf(packed)))
          expect(json).not.toMatch(/\n/)
          expect(okValue(encodeWire(type, json))).toBe(hexOf(packed))
        }),
        { numRuns: 100 }
      )
    })
  }
})

describe("errors are one-line values", () => {
  const k = hexOf(key)
  const cases: ReadonlyArray<readonly [string, () => WireResult, RegExp]> = [
    ["unknown type (encode)", () => encodeWire("Nope", "{}"), /unknown type "Nope"; expected one of InitConnection, /],
    ["unknown type (decode)", () => decodeWire("Rekey", "00"), /unknown type "Rekey"/],
    ["bad JSON", () => encodeWire("KaMessage", `{"message":`), /^bad JSON: /],
    ["bad JSON over several lines", () => encodeWire("KaMessage", `{\n"message":\n\n`), /^bad JSON: /],
    ["not an object", () => encodeWire("RejectConnection", `"abc"`), /RejectConnection: expected an object with keys "publicKey", got a string/],
    ["array", () => encodeWire("RejectConnection", `[]`), /got an array/],
    ["missing key", () => encodeWire("ExchangeDh", `{"dhPublicKey":"${k}"}`), /ExchangeDh: missing key "randNonce"/],
    ["extra key", () => encodeWire("RejectConnection", `{"publicKey":"${k}","x":1}`), /RejectConnection: unexpected key "x"/],
    ["__proto__ key", () => encodeWire("RejectConnection", `{"publicKey":"${k}","__proto__":{}}`), /unexpected key "__proto__"/],
    ["union with no key", () => encodeWire("KaMessage", `{}`), /KaMessage: expected an object with exactly one of the keys "keepAlive", "message", got no keys/],
    ["union with two keys", () => encodeWire("InitConnection", `{"listen":null,"connect":"${k}"}`), /got keys "listen", "connect"/],
    ["unknown union member", () => encodeWire("InitConnection", `{"bind":null}`), /InitConnection: unknown member "bind"/],
    ["named group union", () => encodeWire("ExchangeRandNonce", `{"randNonce":"${hexOf(bytes(16))}","srcPublicKey":"${k}","optDestPublicKey":null}`), /ExchangeRandNonce\.optDestPublicKey: expected an object with exactly one of the keys "empty", "publicKey", got null/],
    ["Void not null", () => encodeWire("KaMessage", `{"keepAlive":true}`), /KaMessage\.keepAlive: expected null \(Void\), got a boolean/],
    ["wrong hex length", () => encodeWire("InitConnection", `{"connect":"${k.slice(2)}"}`), /InitConnection\.connect: expected 64 hex digits \(32 bytes\), got 62 hex digits/],
    ["odd hex", () => encodeWire("KaMessage", `{"message":"abc"}`), /KaMessage\.message: odd number of hex digits \(3\)/],
    ["non-hex", () => encodeWire("ChannelMessage", `{"randPadding":"zz","content":{"user":""}}`), /ChannelMessage\.randPadding: non-hex character "z" at position 1/],
    ["hex not a string", () => encodeWire("KaMessage", `{"message":12}`), /KaMessage\.message: expected a hex string, got a number/],
    ["nested path", () => encodeWire("ChannelMessage", `{"randPadding":"","content":{"rekey":{"dhPublicKey":"${k}","keySalt":"00"}}}`), /ChannelMessage\.content\.rekey\.keySalt: expected 64 hex digits/],
    ["odd hex input", () => decodeWire("KaMessage", "abc"), /odd number of hex digits \(3\) in the input/],
    ["non-hex input", () => decodeWire("KaMessage", "00 0g"), /non-hex character "g" at digit 4 of the input/],
    ["empty input", () => decodeWire("KaMessage", "  \n"), /cannot decode KaMessage \(Truncated\)/],
    ["decode error", () => decodeWire("KaMessage", "100350010101020000"), /cannot decode KaMessage \(UnknownUnionMember\)/],
    ["truncated", () => decodeWire("ChannelMessage", "1012400211"), /cannot decode ChannelMessage \(Truncated\)/]
  ]
  for (const [name, run, pattern] of cases) {
    it(name, () => {
      const message = errMessage(run())
      expect(message).toMatch(pattern)
      expect(message).not.toMatch(/[\r\n]/)
    })
  }
})

describe("runWire", () => {
  it("--help lists every type and the conventions, exit 0", () => {
    for (const args of [["--help"], ["decode", "--help"], ["encode", "KaMessage", "-h"]]) {
      const out = runWire(args, "")
      expect(out.exitCode).toBe(0)
      expect(out.stderr).toBe("")
      expect(out.stdout).toBe(`${wireHelp}\n`)
    }
    for (const type of wireTypes) expect(wireHelp).toContain(type)
    expect(wireHelp).toMatch(/Void is null/)
    expect(wireHelp).toMatch(/exactly one key/)
  })

  it("the help's examples work", () => {
    const encoded = runWire(["encode", "KaMessage"], `{"message":"00ff"}`)
    expect(encoded).toEqual({ stdout: "1004500101010111011202ff\n", stderr: "", exitCode: 0 })
    expect(runWire(["decode", "KaMessage"], "1004500101010111011202ff\n")).toEqual({
      stdout: `{"message":"00ff"}\n`,
      stderr: "",
      exitCode: 0
    })
  })

  it("decode then encode round trips on stdin/stdout", () => {
    const hex = hexOf(M.encodeChannelMessage({ randPadding: bytes(5), content: { _tag: "User", data: bytes(40) } }))
    const decoded = runWire(["decode", "ChannelMessage"], hex)
    expect(decoded.exitCode).toBe(0)
    expect(runWire(["encode", "ChannelMessage"], decoded.stdout)).toEqual({ stdout: `${hex}\n`, stderr: "", exitCode: 0 })
  })

  const failures: ReadonlyArray<readonly [string, ReadonlyArray<string>, string, RegExp]> = [
    ["no command", [], "", /missing command/],
    ["unknown command", ["print", "KaMessage"], "", /unknown command "print"/],
    ["missing type", ["decode"], "", /missing type after decode: expected one of InitConnection/],
    ["unknown type", ["encode", "Foo"], "{}", /unknown type "Foo"/],
    ["extra argument", ["decode", "KaMessage", "more"], "", /unexpected argument "more"/],
    ["bad JSON", ["encode", "KaMessage"], "{", /bad JSON/],
    ["bad hex", ["decode", "KaMessage"], "xyz0", /non-hex character/],
    ["decode error", ["decode", "KaMessage"], "00", /cannot decode KaMessage/]
  ]
  for (const [name, args, stdin, pattern] of failures) {
    it(`${name}: one line on stderr, exit 2`, () => {
      const out = runWire(args, stdin)
      expect(out.exitCode).toBe(2)
      expect(out.stdout).toBe("")
      expect(out.stderr).toMatch(pattern)
      expect(out.stderr).toMatch(/^offset-relay wire: [^\n]*\n$/)
    })
  }
})
