import { describe, expect, it } from "vitest"
import fc from "fast-check"
import { makeTokenBucket, takeTokens } from "../src/core/token-bucket.ts"

describe("token bucket", () => {
  it("lets a burst through, then asks to wait in proportion to the debt", () => {
    const bucket = makeTokenBucket(1000, 500, 0)
    expect(takeTokens(bucket, 500, 0)).toBe(0)
    expect(takeTokens(bucket, 1000, 0)).toBe(1000) // 1000 bytes of debt at 1000 B/s
    expect(takeTokens(bucket, 0, 1000)).toBe(0) // paid back after a second
  })

  it("never lets the long-run average exceed the rate plus the burst", () => {
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 1, max: 10_000 }), { minLength: 1, maxLength: 200 }), (reads) => {
        const rate = 5000
        const burst = 2000
        const bucket = makeTokenBucket(rate, burst, 0)
        let now = 0
        let total = 0
        for (const bytes of reads) {
          total += bytes
          now += takeTokens(bucket, bytes, now) // a reader that obeys the wait
        }
        // Everything read before the last wait finished was paid for.
        expect(total).toBeLessThanOrEqual(burst + (now * rate) / 1000 + 1)
      })
    )
  })
})
