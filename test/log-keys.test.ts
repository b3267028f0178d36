import { describe, expect, it } from "vitest"
import { formatKeyForLog, parseLogKeys } from "../src/core/log-keys.ts"

const bytes = Uint8Array.from({ length: 32 }, (_, i) => 0xa0 + i)
const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")

describe("formatKeyForLog", () => {
  it("keeps the first 8 hex digits by default", () => {
    expect(formatKeyForLog(bytes)).toBe("a0a1a2a3")
    expect(formatKeyForLog(hex)).toBe("a0a1a2a3")
    expect(formatKeyForLog(hex.toUpperCase(), "short")).toBe("a0a1a2a3")
  })
  it("writes the whole key with full", () => {
    expect(formatKeyForLog(bytes, "full")).toBe(hex)
    expect(formatKeyForLog(hex.toUpperCase(), "full")).toBe(hex)
  })
  it("writes - for a connection without a key yet", () => {
    expect(formatKeyForLog(undefined)).toBe("-")
    expect(formatKeyForLog(undefined, "full")).toBe("-")
  })
  it("parses the flag's values and nothing else", () => {
    expect(parseLogKeys("short")).toBe("short")
    expect(parseLogKeys("full")).toBe("full")
    expect(parseLogKeys("FULL")).toBeUndefined()
    expect(parseLogKeys("")).toBeUndefined()
  })
})
