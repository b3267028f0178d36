/**
 * Our Ed25519 encoding rules (src/core/ed25519-rules.ts) in every crypto
 * layer, against the known bad vectors: small-order public keys and R,
 * non-canonical point encodings, non-canonical S. Each forged vector is
 * first shown to fool a permissive verifier (noble's ZIP-215 mode), so the
 * test proves the rule is what refuses it, on every runtime.
 */
import { ed25519 } from "@noble/curves/ed25519.js"
import { describe, expect, it } from "vitest"
import type { CryptoPrimitives } from "../src/core/crypto.ts"
import { ed25519PublicKeyProblem, ed25519SignatureProblem } from "../src/core/ed25519-rules.ts"
import { autoCryptoService } from "../src/adapters/crypto.ts"
import { nobleCrypto } from "../src/adapters/crypto-noble.ts"
import { makeNodeCrypto, nodeCrypto } from "../src/adapters/crypto-node.ts"

const layers: ReadonlyArray<readonly [string, CryptoPrimitives]> = [
  ["node", nodeCrypto],
  ["node via PKCS#8/JWK", makeNodeCrypto({ rawKeyFormats: false })],
  ["noble", nobleCrypto],
  ["auto", autoCryptoService()]
]

const p = (1n << 255n) - 19n
const L = (1n << 252n) + 27742317777372353535851937790883648493n

const littleEndian = (value: bigint, length = 32): Uint8Array => {
  const bytes = new Uint8Array(length)
  for (let i = 0; i < length; i++) bytes[i] = Number((value >> BigInt(8 * i)) & 0xffn)
  return bytes
}
const readLittleEndian = (bytes: Uint8Array): bigint => bytes.reduceRight((acc, byte) => (acc << 8n) | BigInt(byte), 0n)
const withSign = (bytes: Uint8Array): Uint8Array => {
  const copy = Uint8Array.from(bytes)
  copy[31] = copy[31]! | 0x80
  return copy
}
const concat = (a: Uint8Array, b: Uint8Array): Uint8Array => {
  const out = new Uint8Array(a.length + b.length)
  out.set(a, 0)
  out.set(b, a.length)
  return out
}

// The 8 points of small order, by encoding (libsodium's blocklist, computed here).
const c = 0x05fc536d880238b13933c6d305acdfd5f098eff289f4c345b027b2c28f95e826n
const identity = littleEndian(1n)
const smallOrderEncodings: ReadonlyArray<Uint8Array> = [
  identity, // order 1
  littleEndian(p - 1n), // order 2
  littleEndian(0n), withSign(littleEndian(0n)), // order 4
  littleEndian(c), withSign(littleEndian(c)), littleEndian(p - c), withSign(littleEndian(p - c)) // order 8
]
// Non-canonical encodings: y >= p (y + p for y in 0..18), which permissive decoders reduce mod p.
const nonCanonicalEncodings: ReadonlyArray<Uint8Array> = [littleEndian(p), littleEndian(p + 1n), withSign(littleEndian(p + 1n))]

const message = new TextEncoder().encode("any message at all")
const seed = new Uint8Array(32).fill(42)
const honestKey = nobleCrypto.ed25519PublicKey(seed)
const honestSignature = nobleCrypto.ed25519Sign(seed, message)

// R = identity, S = 0 verifies under every small-order key for every
// message in a cofactored, ZIP-215 verifier: [8][0]B = [8](R + [k]A) = 0.
const forged = concat(identity, new Uint8Array(32))
// The same signature with S + L: the same point equation, another encoding
// (ZIP-215 and OpenSSL refuse it too; our rule makes sure every layer does).
const malleated = concat(honestSignature.subarray(0, 32), littleEndian(readLittleEndian(honestSignature.subarray(32)) + L))

describe("the bad vectors are real", () => {
  it("every small-order encoding decodes to a small-order point", () => {
    for (const encoding of smallOrderEncodings) {
      expect(ed25519.Point.fromBytes(encoding, true).isSmallOrder()).toBe(true)
    }
  })

  it("a permissive verifier accepts the forged signature under every small-order key", () => {
    for (const key of smallOrderEncodings) expect(ed25519.verify(forged, message, key, { zip215: true })).toBe(true)
  })
})

describe("our rules", () => {
  it("refuse small-order and non-canonical keys, R and S; accept honest ones", () => {
    for (const encoding of smallOrderEncodings) expect(ed25519PublicKeyProblem(encoding)).toBe("small-order-point")
    for (const encoding of nonCanonicalEncodings) expect(ed25519PublicKeyProblem(encoding)).toBe("non-canonical-point")
    expect(ed25519SignatureProblem(forged)).toBe("small-order-point")
    expect(ed25519SignatureProblem(malleated)).toBe("non-canonical-scalar")
    expect(ed25519SignatureProblem(concat(littleEndian(p + 1n), honestSignature.subarray(32)))).toBe("non-canonical-point")
    expect(ed25519PublicKeyProblem(honestKey)).toBeUndefined()
    expect(ed25519SignatureProblem(honestSignature)).toBeUndefined()
    expect(ed25519PublicKeyProblem(new Uint8Array(31))).toBe("length")
    expect(ed25519SignatureProblem(new Uint8Array(63))).toBe("length")
  })

  it("accept 200 honest keys and signatures", () => {
    for (let i = 0; i < 200; i++) {
      const s = new Uint8Array(32).fill(i)
      s[0] = i ^ 0x5a
      expect(ed25519PublicKeyProblem(nobleCrypto.ed25519PublicKey(s))).toBeUndefined()
      expect(ed25519SignatureProblem(nobleCrypto.ed25519Sign(s, message))).toBeUndefined()
    }
  })
})

describe.each(layers)("the %s layer", (_name, layer) => {
  it("refuses the forged signature under every small-order key", () => {
    for (const key of smallOrderEncodings) expect(layer.ed25519Verify(key, message, forged)).toBe(false)
  })

  it("refuses non-canonical keys, R and S", () => {
    for (const key of nonCanonicalEncodings) expect(layer.ed25519Verify(key, message, forged)).toBe(false)
    expect(layer.ed25519Verify(honestKey, message, malleated)).toBe(false)
    expect(layer.ed25519Verify(honestKey, message, concat(littleEndian(p + 1n), honestSignature.subarray(32)))).toBe(false)
  })

  it("still accepts an honest signature and refuses it for another message", () => {
    expect(layer.ed25519Verify(honestKey, message, honestSignature)).toBe(true)
    expect(layer.ed25519Verify(honestKey, new Uint8Array([1]), honestSignature)).toBe(false)
  })
})
