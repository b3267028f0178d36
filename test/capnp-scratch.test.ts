/**
 * The encoders' reused buffers (capnp.ts createMessage scratch and transient
 * packs): bytes are the same as a fresh encoding, and a message is never
 * corrupted by the next one unless it was asked for as transient.
 */
import { describe, expect, it } from "vitest"
import fc from "fast-check"
import { pack, packedSizeBound } from "../src/core/capnp.ts"
import {
  type ChannelMessage,
  encodeChannelMessage,
  encodeChannelMessageTransient,
  encodeKaMessage
} from "../src/core/messages.ts"

const channelMessage = fc.record({
  randPadding: fc.uint8Array({ maxLength: 300 }),
  data: fc.uint8Array({ maxLength: 5000 })
}).map(({ randPadding, data }): ChannelMessage => ({ randPadding, content: { _tag: "User", data } }))

describe("encoder scratch buffers", () => {
  it("a transient ChannelMessage has the same bytes as a fresh one", () => {
    fc.assert(
      fc.property(channelMessage, (message) => {
        const fresh = encodeChannelMessage(message)
        expect(Buffer.from(encodeChannelMessageTransient(message)).equals(fresh)).toBe(true)
      })
    )
  })

  it("messages encoded one after another do not disturb each other (non-transient)", () => {
    fc.assert(
      fc.property(fc.array(channelMessage, { minLength: 2, maxLength: 6 }), (messages) => {
        const encoded = messages.map(encodeChannelMessage)
        const again = messages.map(encodeChannelMessage)
        encoded.forEach((bytes, i) => expect(Buffer.from(bytes).equals(again[i]!)).toBe(true))
      })
    )
  })

  it("a message larger than the retained scratch still encodes correctly, transient or not", () => {
    const data = new Uint8Array(2 * 1024 * 1024).fill(7)
    const message: ChannelMessage = { randPadding: new Uint8Array(0), content: { _tag: "User", data } }
    expect(Buffer.from(encodeChannelMessageTransient(message)).equals(encodeChannelMessage(message))).toBe(true)
    expect(encodeKaMessage({ _tag: "Message", data }).length).toBeGreaterThan(0)
  })

  it("pack into a given buffer gives the same bytes and refuses one too small", () => {
    const words = new Uint8Array(64).map((_, i) => (i % 3 === 0 ? 0 : i))
    const into = new Uint8Array(packedSizeBound(words.length))
    expect(Buffer.from(pack(words, into)).equals(pack(words))).toBe(true)
    expect(() => pack(words, new Uint8Array(8))).toThrow(RangeError)
  })
})
