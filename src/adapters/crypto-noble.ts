/**
 * CryptoPrimitives on @noble/curves, @noble/hashes and @noble/ciphers: pure
 * JavaScript, so it runs wherever JavaScript does (browsers, Deno, Bun, old
 * Node); slower than node:crypto. No `node:` import here or in anything this
 * module imports: browser bundles include it.
 *
 * Agreement with the node layer (crypto-node.ts):
 * - Length rules are the same: our own secrets of the wrong size throw a
 *   RangeError; peer data (public keys, signatures, sealed frames) never
 *   throws and gives false / undefined.
 * - Ed25519 verification first applies our own encoding rules
 *   (src/core/ed25519-rules.ts: no small-order or non-canonical keys, R or
 *   S), as the node layer does, then noble's strict mode (zip215: false): canonical
 *   encodings only and small-order public keys rejected, as OpenSSL and ring
 *   (Offset's library) do, rather than noble's permissive ZIP-215 default.
 *   One difference remains and is accepted: noble checks the cofactored
 *   equation, OpenSSL the cofactorless one, so a signature deliberately
 *   built with a small-order component in R can verify here and not there.
 *   Only the key's owner can build one, and for the handshake it still
 *   proves possession of the key; honest signatures verify in both.
 * - X25519 rejects exactly the low-order peer keys, i.e. those whose shared
 *   secret would be all zeros; OpenSSL rejects the same set by its output.
 */
import { ed25519, x25519 } from "@noble/curves/ed25519.js"
import { chacha20poly1305 } from "@noble/ciphers/chacha.js"
import { hkdf } from "@noble/hashes/hkdf.js"
import { sha512_256 } from "@noble/hashes/sha2.js"
import type { CryptoPrimitives } from "../core/crypto.ts"
import { ed25519EncodingsAcceptable } from "../core/ed25519-rules.ts"

const tagLength = 16
const strictVerify = { zip215: false } as const

const requireLength = (what: string, bytes: Uint8Array, length: number): void => {
  if (bytes.length !== length) {
    throw new RangeError(`${what} must be ${length} bytes, got ${bytes.length}`)
  }
}

/** CryptoPrimitives backed by the pure-JavaScript @noble libraries; see the module header. */
export const nobleCrypto: CryptoPrimitives = {
  name: "noble",

  ed25519PublicKey: (seed) => {
    requireLength("Ed25519 seed", seed, 32)
    return ed25519.getPublicKey(seed)
  },

  ed25519Sign: (seed, message) => {
    requireLength("Ed25519 seed", seed, 32)
    return ed25519.sign(message, seed)
  },

  ed25519Verify: (publicKey, message, signature) => {
    if (!ed25519EncodingsAcceptable(publicKey, signature)) return false
    try {
      return ed25519.verify(signature, message, publicKey, strictVerify)
    } catch {
      // noble throws on some malformed inputs; to us they are simply not valid.
      return false
    }
  },

  x25519PublicKey: (secret) => {
    requireLength("X25519 secret", secret, 32)
    return x25519.getPublicKey(secret)
  },

  x25519: (secret, peerPublicKey) => {
    requireLength("X25519 secret", secret, 32)
    if (peerPublicKey.length !== 32) return undefined
    try {
      return x25519.getSharedSecret(secret, peerPublicKey)
    } catch {
      // noble throws exactly for the low-order points (checked before the ladder).
      return undefined
    }
  },

  hkdfSha512_256: (salt, ikm, info, length) => hkdf(sha512_256, ikm, salt, info, length),

  aeadSeal: (key, nonce, plaintext, prefix) => {
    requireLength("ChaCha20-Poly1305 key", key, 32)
    requireLength("ChaCha20-Poly1305 nonce", nonce, 12)
    if (prefix === undefined || prefix.length === 0) return chacha20poly1305(key, nonce).encrypt(plaintext)
    // noble writes into a given output, so the prefix costs no extra copy.
    const sealed = new Uint8Array(prefix.length + plaintext.length + tagLength)
    sealed.set(prefix, 0)
    chacha20poly1305(key, nonce).encrypt(plaintext, sealed.subarray(prefix.length))
    return sealed
  },

  aeadOpen: (key, nonce, sealed) => {
    requireLength("ChaCha20-Poly1305 key", key, 32)
    requireLength("ChaCha20-Poly1305 nonce", nonce, 12)
    if (sealed.length < tagLength) return undefined
    try {
      return chacha20poly1305(key, nonce).decrypt(sealed)
    } catch {
      // noble checks the tag before decrypting, so nothing unauthenticated leaks.
      return undefined
    }
  }
}
