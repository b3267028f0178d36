/**
 * CryptoPrimitives on node:crypto (OpenSSL): the fast default on Node.
 *
 * Raw 32-byte keys become KeyObjects by prefixing the fixed DER header of a
 * PKCS#8 / SPKI structure (RFC 8410); the header is the same for every key of
 * a given algorithm, so no ASN.1 encoder is needed. KeyObjects are made per
 * call and never cached: nothing secret outlives the call that used it.
 *
 * Length rules shared with the noble layer (crypto-noble.ts): our own secrets
 * (seeds, keys, nonces) of the wrong size are a caller bug and throw a
 * RangeError; data that can come from a peer (public keys, signatures,
 * sealed frames) never throws and gives false / undefined instead.
 */
import * as NodeCrypto from "node:crypto"
import type { CryptoPrimitives } from "../core/crypto.ts"

const ed25519Pkcs8Prefix = Buffer.from("302e020100300506032b657004220420", "hex")
const ed25519SpkiPrefix = Buffer.from("302a300506032b6570032100", "hex")
const x25519Pkcs8Prefix = Buffer.from("302e020100300506032b656e04220420", "hex")
const x25519SpkiPrefix = Buffer.from("302a300506032b656e032100", "hex")
// Both SPKI prefixes are 12 bytes; the raw key follows.
const spkiPrefixLength = 12
const tagLength = 16

const requireLength = (what: string, bytes: Uint8Array, length: number): void => {
  if (bytes.length !== length) {
    throw new RangeError(`${what} must be ${length} bytes, got ${bytes.length}`)
  }
}

const derKey = (prefix: Buffer, raw: Uint8Array): Buffer => {
  const der = Buffer.allocUnsafe(prefix.length + raw.length)
  prefix.copy(der, 0)
  der.set(raw, prefix.length)
  return der
}

const privateKey = (prefix: Buffer, seed: Uint8Array): NodeCrypto.KeyObject => {
  const der = derKey(prefix, seed)
  try {
    return NodeCrypto.createPrivateKey({ key: der, format: "der", type: "pkcs8" })
  } finally {
    // The DER copy holds the secret; wipe it rather than leave it to the GC.
    der.fill(0)
  }
}

const publicKey = (prefix: Buffer, raw: Uint8Array): NodeCrypto.KeyObject =>
  NodeCrypto.createPublicKey({ key: derKey(prefix, raw), format: "der", type: "spki" })

const rawPublicKey = (key: NodeCrypto.KeyObject): Uint8Array => {
  const spki = key.export({ format: "der", type: "spki" })
  return new Uint8Array(spki.buffer, spki.byteOffset + spkiPrefixLength, spki.length - spkiPrefixLength)
}

// Callers get plain Uint8Arrays from both layers (a Buffer compares unequal
// to a Uint8Array in some deep-equality checks); the view shares memory, no copy.
const asUint8Array = (buffer: Buffer): Uint8Array => new Uint8Array(buffer.buffer, buffer.byteOffset, buffer.length)

const isAllZero = (bytes: Uint8Array): boolean => {
  let acc = 0
  for (let i = 0; i < bytes.length; i++) acc |= bytes[i]!
  return acc === 0
}

/** CryptoPrimitives backed by node:crypto; see the module header for the length rules. */
export const nodeCrypto: CryptoPrimitives = {
  name: "node",

  ed25519PublicKey: (seed) => {
    requireLength("Ed25519 seed", seed, 32)
    return rawPublicKey(NodeCrypto.createPublicKey(privateKey(ed25519Pkcs8Prefix, seed)))
  },

  ed25519Sign: (seed, message) => {
    requireLength("Ed25519 seed", seed, 32)
    const signature = NodeCrypto.sign(null, message, privateKey(ed25519Pkcs8Prefix, seed))
    return asUint8Array(signature)
  },

  ed25519Verify: (key, message, signature) => {
    if (key.length !== 32 || signature.length !== 64) return false
    try {
      return NodeCrypto.verify(null, message, publicKey(ed25519SpkiPrefix, key), signature)
    } catch {
      // A public key that is not a curve point fails to import: that is "not valid", not a bug.
      return false
    }
  },

  x25519PublicKey: (secret) => {
    requireLength("X25519 secret", secret, 32)
    return rawPublicKey(NodeCrypto.createPublicKey(privateKey(x25519Pkcs8Prefix, secret)))
  },

  x25519: (secret, peerPublicKey) => {
    requireLength("X25519 secret", secret, 32)
    if (peerPublicKey.length !== 32) return undefined
    let shared: Buffer
    try {
      shared = NodeCrypto.diffieHellman({
        privateKey: privateKey(x25519Pkcs8Prefix, secret),
        publicKey: publicKey(x25519SpkiPrefix, peerPublicKey)
      })
    } catch {
      // OpenSSL refuses an all-zero shared secret (RFC 7748 §6.1): a low-order peer key.
      return undefined
    }
    // Belt and braces: never hand out an all-zero secret whatever the OpenSSL version does.
    if (isAllZero(shared)) return undefined
    return asUint8Array(shared)
  },

  hkdfSha512_256: (salt, ikm, info, length) =>
    // OpenSSL refuses to derive 0 bytes, which RFC 5869 allows; hkdfSync
    // returns an ArrayBuffer, and wrapping it is free.
    length === 0 ? new Uint8Array(0) : new Uint8Array(NodeCrypto.hkdfSync("sha512-256", ikm, salt, info, length)),

  aeadSeal: (key, nonce, plaintext) => {
    requireLength("ChaCha20-Poly1305 key", key, 32)
    requireLength("ChaCha20-Poly1305 nonce", nonce, 12)
    const cipher = NodeCrypto.createCipheriv("chacha20-poly1305", key, nonce, { authTagLength: tagLength })
    // One allocation for ciphertext ‖ tag: update() must allocate its own
    // output, so this costs one copy of the ciphertext and none of the tag's
    // concatenation.
    const sealed = Buffer.allocUnsafe(plaintext.length + tagLength)
    sealed.set(cipher.update(plaintext), 0)
    cipher.final()
    sealed.set(cipher.getAuthTag(), plaintext.length)
    return asUint8Array(sealed)
  },

  aeadOpen: (key, nonce, sealed) => {
    requireLength("ChaCha20-Poly1305 key", key, 32)
    requireLength("ChaCha20-Poly1305 nonce", nonce, 12)
    if (sealed.length < tagLength) return undefined
    const ciphertextLength = sealed.length - tagLength
    const decipher = NodeCrypto.createDecipheriv("chacha20-poly1305", key, nonce, { authTagLength: tagLength })
    decipher.setAuthTag(sealed.subarray(ciphertextLength))
    const plaintext = decipher.update(sealed.subarray(0, ciphertextLength))
    try {
      decipher.final()
    } catch {
      // Unauthenticated plaintext must not escape: wipe it before returning.
      plaintext.fill(0)
      return undefined
    }
    return asUint8Array(plaintext)
  }
}
