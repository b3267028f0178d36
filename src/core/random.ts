/**
 * A seeded, deterministic byte generator for tests and replays.
 *
 * NOT SECURE: its output is predictable from the seed. Never use it for keys,
 * nonces or salts outside tests; production randomness comes from the Crypto
 * service (src/adapters/crypto.ts).
 */

/**
 * A function returning `length` pseudo-random bytes per call, the same
 * sequence for the same seed (splitmix32). NOT cryptographically secure.
 */
export const makeDeterministicRandom = (seed: number): ((length: number) => Uint8Array) => {
  // Only the low 32 bits of the seed count; 0 is a fine seed for splitmix.
  let state = seed | 0
  const next32 = (): number => {
    state = (state + 0x9e3779b9) | 0
    let t = state ^ (state >>> 16)
    t = Math.imul(t, 0x21f0aaad)
    t = t ^ (t >>> 15)
    t = Math.imul(t, 0x735a2d97)
    return (t ^ (t >>> 15)) >>> 0
  }
  return (length) => {
    const out = new Uint8Array(length)
    let i = 0
    for (; i + 4 <= length; i += 4) {
      const word = next32()
      out[i] = word & 0xff
      out[i + 1] = (word >>> 8) & 0xff
      out[i + 2] = (word >>> 16) & 0xff
      out[i + 3] = word >>> 24
    }
    if (i < length) {
      let word = next32()
      for (; i < length; i++) {
        out[i] = word & 0xff
        word >>>= 8
      }
    }
    return out
  }
}
