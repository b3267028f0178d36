/** Hex helpers for keys: exact round trips, strict validation, clear errors. */
import fc from "fast-check"
import { describe, expect, it } from "vitest"
import { bytesToHex, hexToBytes, parsePublicKeyHex, publicKeyHex, shortKeyHex } from "../src/core/keys.ts"

describe("bytesToHex / hexToBytes", () => {
  it("match Buffer's hex encoding", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), (bytes) => {
        expect(bytesToHex(bytes)).toBe(Buffer.from(bytes).toString("hex"))
      })
    )
  })

  it("round trip, in either case", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), fc.boolean(), (bytes, upper) => {
        const text = upper ? bytesToHex(bytes).toUpperCase() : bytesToHex(bytes)
        expect(hexToBytes(text)).toEqual(bytes)
      })
    )
  })

  it("known values", () => {
    expect(bytesToHex(Uint8Array.of(0, 1, 0x0f, 0x10, 0xab, 0xff))).toBe("00010f10abff")
    expect(hexToBytes("00010F10aBfF")).toEqual(Uint8Array.of(0, 1, 0x0f, 0x10, 0xab, 0xff))
    expect(hexToBytes("")).toEqual(new Uint8Array(0))
  })

  it("give undefined for odd lengths and every non-hex character", () => {
    expect(hexToBytes("abc")).toBeUndefined()
    for (const bad of ["g0", "0g", " 00", "00 ", "0x00", "-1", "zz", "\u00e9a", "a\u0660", "\ud83d\ude00"]) {
      expect(hexToBytes(bad), JSON.stringify(bad)).toBeUndefined()
    }
    // Every single character outside [0-9a-fA-F], in either position of a byte.
    for (let code = 0; code < 0x200; code++) {
      const char = String.fromCharCode(code)
      const isHex = /^[0-9a-fA-F]$/.test(char)
      expect(hexToBytes(`${char}0`) === undefined, `code ${code}`).toBe(!isHex)
      expect(hexToBytes(`0${char}`) === undefined, `code ${code}`).toBe(!isHex)
    }
  })

  it("agree with a regular expression on arbitrary strings", () => {
    fc.assert(
      fc.property(fc.string({ maxLength: 12 }), (text) => {
        const valid = text.length % 2 === 0 && /^[0-9a-fA-F]*$/.test(text)
        expect(hexToBytes(text) !== undefined).toBe(valid)
      })
    )
  })
})

describe("parsePublicKeyHex", () => {
  const key = Uint8Array.from({ length: 32 }, (_, i) => i * 7)
  const text = publicKeyHex(key)

  it("publicKeyHex is 64 lowercase hex digits that parse back", () => {
    expect(text).toMatch(/^[0-9a-f]{64}$/)
    expect(parsePublicKeyHex(text)).toEqual({ _tag: "Ok", value: key })
    expect(parsePublicKeyHex(text.toUpperCase())).toEqual({ _tag: "Ok", value: key })
    expect(parsePublicKeyHex(`  ${text}\n`)).toEqual({ _tag: "Ok", value: key })
  })

  it("refuses the wrong length, saying how long it is and should be", () => {
    for (const bad of ["", text.slice(0, 62), text.slice(0, 63), `${text}0`, `${text}00`]) {
      const result = parsePublicKeyHex(bad)
      expect(result._tag).toBe("Err")
      if (result._tag !== "Err") continue
      expect(result.error.reason).toBe("WrongLength")
      expect(result.error.message).toContain(`${bad.length} characters`)
      expect(result.error.message).toContain("64 hex digits")
    }
  })

  it("refuses a non-hex character, naming it and its position", () => {
    const bad = `${text.slice(0, 10)}x${text.slice(11)}`
    const result = parsePublicKeyHex(bad)
    expect(result._tag).toBe("Err")
    if (result._tag !== "Err") return
    expect(result.error.reason).toBe("NotHex")
    expect(result.error.message).toContain("\"x\" at position 11")
  })

  it("shortens very long input in its message", () => {
    const result = parsePublicKeyHex("a".repeat(10_000))
    expect(result._tag === "Err" && result.error.message.length < 300).toBe(true)
  })

  it("shortKeyHex shows the first 4 bytes", () => {
    expect(shortKeyHex(key)).toBe("00070e15…")
  })
})
