/**
 * Golden tests against the reference `capnp` tool: our packed encoding of
 * every message type equals `capnp encode --packed`, we decode the tool's
 * bytes (multi-segment ones too), and `capnp decode --packed` reads ours.
 *
 * Needs /usr/bin/capnp (Debian's `capnproto` package); without it these tests
 * FAIL on purpose, saying so: a skipped golden test proves nothing.
 */
import { execFileSync } from "node:child_process"
import { fileURLToPath } from "node:url"
import { describe, expect, it } from "vitest"
import { unpack } from "../src/core/capnp.ts"
import * as channelSchema from "../src/core/generated/channel.ts"
import * as commonSchema from "../src/core/generated/common.ts"
import * as keepaliveSchema from "../src/core/generated/keepalive.ts"
import * as relaySchema from "../src/core/generated/relay.ts"
import * as M from "../src/core/messages.ts"
import { makeDeterministicRandom } from "../src/core/random.ts"

const repoRoot = fileURLToPath(new URL("..", import.meta.url))

const capnp = (args: ReadonlyArray<string>, input: string | Uint8Array): Buffer => {
  try {
    return execFileSync("capnp", args, { input, cwd: repoRoot, maxBuffer: 256 * 1024 * 1024, stdio: "pipe" })
  } catch (cause) {
    if ((cause as NodeJS.ErrnoException).code === "ENOENT") {
      throw new Error("the `capnp` tool is missing: install Debian's `capnproto` package (apt-get install capnproto)")
    }
    const stderr = (cause as { stderr?: Buffer }).stderr?.toString() ?? ""
    throw new Error(`capnp ${args.join(" ")} failed: ${stderr}`)
  }
}

const hex = (bytes: Uint8Array): string => Buffer.from(bytes).toString("hex")

// Text forms of field values in the schema language.
const fixedText = (bytes: Uint8Array): string => {
  const words: Array<string> = []
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  for (let i = 0; i < bytes.length; i += 8) words.push(`x${i / 8} = ${view.getBigUint64(i, false)}`)
  return `(inner = (${words.join(", ")}))`
}
// The text parser refuses 0x"" but takes "" as empty Data.
const dataText = (bytes: Uint8Array): string => (bytes.length === 0 ? `""` : `0x"${hex(bytes)}"`)

const rekeyText = (r: M.Rekey): string => `(dhPublicKey = ${fixedText(r.dhPublicKey)}, keySalt = ${fixedText(r.keySalt)})`

const random = makeDeterministicRandom(20240601)
const zeros = (n: number): Uint8Array => new Uint8Array(n)
const ones = (n: number): Uint8Array => new Uint8Array(n).fill(0xff)
// Bytes with many single and double zero bytes, to exercise every packing tag.
const sparse = (n: number): Uint8Array => random(n).map((b, i) => (i % 3 === 0 || b < 64 ? 0 : b))

interface Case<A> {
  readonly name: string
  readonly value: A
  readonly text: string
}

interface TypeSuite<A> {
  readonly type: string
  readonly file: string
  readonly encode: (value: A) => Uint8Array
  readonly decode: (bytes: Uint8Array) => M.DecodeResult<A>
  readonly cases: ReadonlyArray<Case<A>>
}

const keyVariants = (): ReadonlyArray<readonly [string, Uint8Array]> => [
  ["zero key", zeros(32)],
  ["0xff key", ones(32)],
  ["random key", random(32)],
  ["sparse key", sparse(32)]
]

const bigDataVariants = (): ReadonlyArray<readonly [string, Uint8Array]> => [
  ["empty", zeros(0)],
  ["1 byte", random(1)],
  ["7 bytes", random(7)],
  ["8 bytes", random(8)],
  ["9 bytes zero", zeros(9)],
  ["300 bytes sparse", sparse(300)],
  ["3000 bytes 0xff", ones(3000)],
  ["100 KiB random", random(100 * 1024)],
  ["100 KiB zeros", zeros(100 * 1024)],
  ["100 KiB sparse", sparse(100 * 1024)]
]

const suites: ReadonlyArray<TypeSuite<any>> = [
  {
    type: "InitConnection",
    file: "relay",
    encode: M.encodeInitConnection,
    decode: (b) => M.decodeInitConnection(b),
    cases: [
      { name: "listen", value: { _tag: "Listen" }, text: "(listen = void)" },
      ...keyVariants().flatMap(([name, key]) => [
        {
          name: `accept ${name}`,
          value: { _tag: "Accept" as const, publicKey: key },
          text: `(accept = ${fixedText(key)})`
        },
        {
          name: `connect ${name}`,
          value: { _tag: "Connect" as const, publicKey: key },
          text: `(connect = ${fixedText(key)})`
        }
      ])
    ]
  } satisfies TypeSuite<M.InitConnection>,
  {
    type: "RejectConnection",
    file: "relay",
    encode: M.encodeRejectConnection,
    decode: (b) => M.decodeRejectConnection(b),
    cases: keyVariants().map(([name, key]) => ({
      name,
      value: { publicKey: key },
      text: `(publicKey = ${fixedText(key)})`
    }))
  } satisfies TypeSuite<M.RejectConnection>,
  {
    type: "IncomingConnection",
    file: "relay",
    encode: M.encodeIncomingConnection,
    decode: (b) => M.decodeIncomingConnection(b),
    cases: keyVariants().map(([name, key]) => ({
      name,
      value: { publicKey: key },
      text: `(publicKey = ${fixedText(key)})`
    }))
  } satisfies TypeSuite<M.IncomingConnection>,
  {
    type: "KaMessage",
    file: "keepalive",
    encode: M.encodeKaMessage,
    decode: (b) => M.decodeKaMessage(b),
    cases: [
      { name: "keepAlive", value: { _tag: "KeepAlive" }, text: "(keepAlive = void)" },
      ...bigDataVariants().map(([name, data]) => ({
        name: `message ${name}`,
        value: { _tag: "Message" as const, data },
        text: `(message = ${dataText(data)})`
      }))
    ]
  } satisfies TypeSuite<M.KaMessage>,
  {
    type: "ExchangeRandNonce",
    file: "channel",
    encode: M.encodeExchangeRandNonce,
    decode: (b) => M.decodeExchangeRandNonce(b),
    cases: [
      ...keyVariants().map(([name, key]) => {
        const randNonce = name === "zero key" ? zeros(16) : name === "0xff key" ? ones(16) : random(16)
        return {
          name: `empty dest, ${name}`,
          value: { randNonce, srcPublicKey: key, optDestPublicKey: undefined },
          text: `(randNonce = ${fixedText(randNonce)}, srcPublicKey = ${fixedText(key)}, optDestPublicKey = (empty = void))`
        }
      }),
      ...keyVariants().map(([name, key]) => {
        const randNonce = random(16)
        const src = random(32)
        return {
          name: `dest ${name}`,
          value: { randNonce, srcPublicKey: src, optDestPublicKey: key },
          text: `(randNonce = ${fixedText(randNonce)}, srcPublicKey = ${fixedText(src)}, optDestPublicKey = (publicKey = ${fixedText(key)}))`
        }
      })
    ]
  } satisfies TypeSuite<M.ExchangeRandNonce>,
  {
    type: "ExchangeDh",
    file: "channel",
    encode: M.encodeExchangeDh,
    decode: (b) => M.decodeExchangeDh(b),
    cases: (
      [
        ["zeros", zeros],
        ["0xff", ones],
        ["random", random],
        ["sparse", sparse]
      ] as const
    ).map(([name, gen]) => {
      const value = { dhPublicKey: gen(32), randNonce: gen(16), keySalt: gen(32), signature: gen(64) }
      return {
        name,
        value,
        text: `(dhPublicKey = ${fixedText(value.dhPublicKey)}, randNonce = ${fixedText(value.randNonce)}, keySalt = ${fixedText(value.keySalt)}, signature = ${fixedText(value.signature)})`
      }
    })
  } satisfies TypeSuite<M.ExchangeDh>,
  {
    type: "Rekey",
    file: "channel",
    encode: M.encodeRekey,
    decode: (b) => M.decodeRekey(b),
    cases: (
      [
        ["zeros", zeros],
        ["0xff", ones],
        ["random", random],
        ["sparse", sparse]
      ] as const
    ).map(([name, gen]) => {
      const value = { dhPublicKey: gen(32), keySalt: gen(32) }
      return { name, value, text: rekeyText(value) }
    })
  } satisfies TypeSuite<M.Rekey>,
  {
    type: "ChannelMessage",
    file: "channel",
    encode: M.encodeChannelMessage,
    decode: (b) => M.decodeChannelMessage(b),
    cases: [
      ...(
        [
          ["zeros", zeros],
          ["0xff", ones],
          ["random", random]
        ] as const
      ).map(([name, gen]) => {
        const rekey = { dhPublicKey: gen(32), keySalt: gen(32) }
        const randPadding = gen(name === "random" ? 255 : 3)
        return {
          name: `rekey ${name}`,
          value: { randPadding, content: { _tag: "Rekey" as const, rekey } },
          text: `(randPadding = ${dataText(randPadding)}, content = (rekey = ${rekeyText(rekey)}))`
        }
      }),
      ...bigDataVariants().map(([name, data]) => {
        const randPadding = random(data.length % 256)
        return {
          name: `user ${name}`,
          value: { randPadding, content: { _tag: "User" as const, data } },
          text: `(randPadding = ${dataText(randPadding)}, content = (user = ${dataText(data)}))`
        }
      }),
      (() => {
        const randPadding = random(64 * 1024)
        const data = sparse(50 * 1024)
        return {
          name: "64 KiB padding, 50 KiB sparse user",
          value: { randPadding, content: { _tag: "User" as const, data } },
          text: `(randPadding = ${dataText(randPadding)}, content = (user = ${dataText(data)}))`
        }
      })()
    ]
  } satisfies TypeSuite<M.ChannelMessage>
]

const segmentCount = (packed: Uint8Array): number => {
  const unpacked = unpack(packed, Infinity)
  if (unpacked._tag === "Err") throw new Error(`the tool's output does not unpack: ${unpacked.error.message}`)
  return new DataView(unpacked.value.buffer).getUint32(0, true) + 1
}

/**
 * The tool's encoding as one segment. capnp ≥ 1.0 always writes one segment;
 * 0.9 splits messages over 1024 words unless given a fixed segment size, so
 * then we ask again with one that fits the whole message.
 */
const toolSingleSegment = (file: string, type: string, text: string, defaultOutput: Uint8Array): Uint8Array =>
  segmentCount(defaultOutput) === 1
    ? defaultOutput
    : new Uint8Array(capnp(["encode", "--packed", "--segment-size=1048576", `schema/${file}.capnp`, type], text))

describe("capnp tool", () => {
  it("is installed (Debian package capnproto)", () => {
    const version = capnp(["--version"], "").toString()
    expect(version).toMatch(/Cap'n Proto version/)
  })
})

describe("struct layouts equal the generated capnp-es classes", () => {
  const generated: Record<string, { readonly _capnp: { readonly size: { dataByteLength: number; pointerLength: number } } }> =
    { ...commonSchema, ...relaySchema, ...keepaliveSchema, ...channelSchema } as never
  for (const [name, [dataWords, pointers]] of Object.entries(M.structLayouts)) {
    it(name, () => {
      const cls = generated[name]
      expect(cls, `generated class ${name}`).toBeDefined()
      expect([cls!._capnp.size.dataByteLength / 8, cls!._capnp.size.pointerLength]).toEqual([dataWords, pointers])
    })
  }
})

for (const suite of suites) {
  describe(`${suite.type} matches capnp encode/decode --packed`, () => {
    for (const c of suite.cases) {
      it(c.name, () => {
        const schema = `schema/${suite.file}.capnp`
        const ours = suite.encode(c.value)
        const toolDefault = new Uint8Array(capnp(["encode", "--packed", schema, suite.type], c.text))

        // Byte-identical encoding.
        const toolFlat = toolSingleSegment(suite.file, suite.type, c.text, toolDefault)
        expect(hex(ours)).toBe(hex(toolFlat))

        // We decode the tool's bytes, including its multi-segment (far pointer) form.
        expect(suite.decode(toolDefault)).toEqual({ _tag: "Ok", value: c.value })
        expect(suite.decode(toolFlat)).toEqual({ _tag: "Ok", value: c.value })
        expect(suite.decode(ours)).toEqual({ _tag: "Ok", value: c.value })

        // The tool reads our bytes as the same message.
        const ourText = capnp(["decode", "--packed", schema, suite.type], ours).toString()
        const toolText = capnp(["decode", "--packed", schema, suite.type], toolDefault).toString()
        expect(ourText).toBe(toolText)
      })
    }
  })
}

describe("multi-segment input from the tool", () => {
  it("is really exercised: a small fixed segment size gives far pointers we follow", () => {
    const data = random(5000)
    const randPadding = random(100)
    const text = `(randPadding = ${dataText(randPadding)}, content = (user = ${dataText(data)}))`
    const bytes = new Uint8Array(
      capnp(["encode", "--packed", "--segment-size=64", "schema/channel.capnp", "ChannelMessage"], text)
    )
    expect(segmentCount(bytes)).toBeGreaterThan(1)
    expect(M.decodeChannelMessage(bytes)).toEqual({
      _tag: "Ok",
      value: { randPadding, content: { _tag: "User", data } }
    })
  })

  it("a rekey spread over tiny segments (landing pads in every segment)", () => {
    const rekey = { dhPublicKey: random(32), keySalt: random(32) }
    const text = `(randPadding = "", content = (rekey = ${rekeyText(rekey)}))`
    const bytes = new Uint8Array(
      capnp(["encode", "--packed", "--segment-size=2", "schema/channel.capnp", "ChannelMessage"], text)
    )
    expect(segmentCount(bytes)).toBeGreaterThan(3)
    expect(M.decodeChannelMessage(bytes)).toEqual({
      _tag: "Ok",
      value: { randPadding: new Uint8Array(0), content: { _tag: "Rekey", rekey } }
    })
  })
})
