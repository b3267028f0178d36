/**
 * A token bucket for byte rates: `ratePerSecond` tokens accrue continuously
 * up to `burst`; taking n tokens may drive the balance negative, and the
 * answer is how long the caller should wait before reading more so the
 * average stays at the rate. Time is an input (milliseconds, never going
 * backwards), so the bucket is pure and testable.
 */
export interface TokenBucket {
  readonly ratePerSecond: number
  readonly burst: number
  tokens: number
  lastMs: number
}

/** A full bucket at time `nowMs`. */
export const makeTokenBucket = (ratePerSecond: number, burst: number, nowMs: number): TokenBucket => ({
  ratePerSecond,
  burst,
  tokens: burst,
  lastMs: nowMs
})

/** Takes `bytes` tokens at `nowMs`; returns the milliseconds to wait before the next read (0 = none). */
export const takeTokens = (bucket: TokenBucket, bytes: number, nowMs: number): number => {
  const elapsed = Math.max(0, nowMs - bucket.lastMs)
  bucket.lastMs = Math.max(bucket.lastMs, nowMs)
  bucket.tokens = Math.min(bucket.burst, bucket.tokens + (elapsed * bucket.ratePerSecond) / 1000) - bytes
  return bucket.tokens >= 0 ? 0 : Math.ceil((-bucket.tokens * 1000) / bucket.ratePerSecond)
}
