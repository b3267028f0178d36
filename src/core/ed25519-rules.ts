/**
 * Our own Ed25519 encoding rules, checked before any library verifies a
 * signature, so that "valid" means the same on every runtime and crypto
 * layer. Libraries disagree on edge cases (Node's OpenSSL rejects a forged
 * signature under a small-order public key; Bun's and Deno's node:crypto
 * accept it; noble's default ZIP-215 mode accepts non-canonical encodings).
 *
 * Refused, whatever the library would say:
 * - a public key or the signature's R whose y coordinate is not canonical
 *   (y >= p, p = 2^255 - 19);
 * - a public key or R of small order (the 8 points of order 1, 2, 4 or 8:
 *   their y is 0, 1, p - 1, or ±c below); under such a key one forged
 *   signature verifies for every message;
 * - an S that is not canonical (S >= L, the group order): malleability.
 *
 * An honest key or signature never hits these rules (a random point is of
 * small order with probability 0). Pure arithmetic on the encodings: no
 * point decompression, cheap next to the verification itself.
 */

const p = (1n << 255n) - 19n
const L = (1n << 252n) + 27742317777372353535851937790883648493n

// y of the two x-symmetric pairs of points of order 8 (libsodium's blocklist
// holds the same encodings); c + (p - c) = p.
const c = 0x05fc536d880238b13933c6d305acdfd5f098eff289f4c345b027b2c28f95e826n
const smallOrderY: ReadonlySet<bigint> = new Set([0n, 1n, p - 1n, c, p - c])

/** The little-endian integer of `bytes[from, from + 32)`, with the top bit (x's sign) masked when `maskSign`. */
const readLittleEndian = (bytes: Uint8Array, from: number, maskSign: boolean): bigint => {
  let value = 0n
  for (let i = from + 31; i >= from; i--) {
    const byte = i === from + 31 && maskSign ? bytes[i]! & 0x7f : bytes[i]!
    value = (value << 8n) | BigInt(byte)
  }
  return value
}

/** Why an encoding is refused; undefined when it is acceptable. */
export type Ed25519Problem = "length" | "non-canonical-point" | "small-order-point" | "non-canonical-scalar"

/** Checks a 32-byte point encoding (a public key or a signature's R) at `from`. */
const pointProblem = (bytes: Uint8Array, from: number): Ed25519Problem | undefined => {
  const y = readLittleEndian(bytes, from, true)
  if (y >= p) return "non-canonical-point"
  if (smallOrderY.has(y)) return "small-order-point"
  return undefined
}

/** Why this public key is refused (see the module header), or undefined. */
export const ed25519PublicKeyProblem = (publicKey: Uint8Array): Ed25519Problem | undefined =>
  publicKey.length !== 32 ? "length" : pointProblem(publicKey, 0)

/** Why this signature R ‖ S is refused (see the module header), or undefined. */
export const ed25519SignatureProblem = (signature: Uint8Array): Ed25519Problem | undefined => {
  if (signature.length !== 64) return "length"
  const r = pointProblem(signature, 0)
  if (r !== undefined) return r
  return readLittleEndian(signature, 32, false) >= L ? "non-canonical-scalar" : undefined
}

/**
 * True when the key and signature pass our rules; every crypto layer calls
 * this before its library's verify, and returns false when it does not.
 */
export const ed25519EncodingsAcceptable = (publicKey: Uint8Array, signature: Uint8Array): boolean =>
  ed25519PublicKeyProblem(publicKey) === undefined && ed25519SignatureProblem(signature) === undefined
