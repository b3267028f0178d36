/**
 * Which runtime runs the tests. `npm run test:runtimes` sets
 * OFFSET_RELAY_EXPECT_RUNTIME to deno or bun, so a runner that quietly fell
 * back to Node for its workers would fail here rather than pass for the
 * wrong runtime; under plain `npm test` it checks Node.
 */
import { describe, expect, it } from "vitest"

const current = (): string =>
  "Bun" in globalThis ? "bun" : "Deno" in globalThis ? "deno" : "node"

describe("runtime", () => {
  it(`the tests run on ${process.env.OFFSET_RELAY_EXPECT_RUNTIME ?? "node"}`, () => {
    expect(current()).toBe(process.env.OFFSET_RELAY_EXPECT_RUNTIME ?? "node")
  })
})
