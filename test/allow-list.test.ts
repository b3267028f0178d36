import { describe, expect, it } from "vitest"
import { parseAllowList } from "../src/core/allow-list.ts"

const key = "ab".repeat(32)

describe("allow-list file", () => {
  it("takes one key per line, ignoring blanks and comments, normalising case", () => {
    const keys = parseAllowList(`# friends\n\n${key.toUpperCase()}  # alice\n${"cd".repeat(32)}\n`)
    expect(keys).toEqual(new Set([key, "cd".repeat(32)]))
  })

  it("names the first bad line", () => {
    const problem = parseAllowList(`${key}\nnot-a-key\n`)
    expect("_tag" in problem && problem.line).toBe(2)
    expect("_tag" in problem && problem.message).toMatch(/^line 2: /)
  })
})
