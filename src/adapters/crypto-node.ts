/**
 * CryptoPrimitives on node:crypto (OpenSSL): the fast default on Node.
 *
 * Raw 32-byte secrets become KeyObjects once per key array and are cached
 * for exactly as long as that array lives (a WeakMap keyed by it): a relay
 * signs every handshake with one identity seed, and uses each ephemeral DH
 * secret twice (its public key, then the shared secret). Importing a
 * private key derives its public key, a scalar multiplication, so doing it
 * per call cost a third of a handshake's crypto; nothing secret outlives
 * the array the caller holds anyway. The import path matters for speed
 * (measured on Node 24): the "raw-private"/"raw-public" key formats skip
 * OpenSSL's DER decoders and are 1.5-2x cheaper than PKCS#8/SPKI, and
 * exporting a public key as raw bytes or JWK is ~20x cheaper than as SPKI.
 * Node releases without the raw formats (they arrived during Node 24) fall
 * back to PKCS#8 for private keys and JWK for public ones. Likewise a
 * ChaCha20 key or HKDF input wrapped in a secret KeyObject makes
 * createCipheriv / hkdfSync several microseconds cheaper than a raw buffer,
 * which dominates small frames.
 *
 * Length rules shared with the noble layer (crypto-noble.ts): our own secrets
 * (seeds, keys, nonces) of the wrong size are a caller bug and throw a
 * RangeError; data that can come from a peer (public keys, signatures,
 * sealed frames) never throws and gives false / undefined instead.
 */
import * as NodeCrypto from "node:crypto"
import type { CryptoPrimitives } from "../core/crypto.ts"
import { ed25519EncodingsAcceptable } from "../core/ed25519-rules.ts"

type CurveName = "ed25519" | "x25519"

const emptyPrefix = new Uint8Array(0)
const tagLength = 16
const pkcs8Prefix: Record<CurveName, Buffer> = {
  ed25519: Buffer.from("302e020100300506032b657004220420", "hex"),
  x25519: Buffer.from("302e020100300506032b656e04220420", "hex")
}
const jwkCurve: Record<CurveName, string> = { ed25519: "Ed25519", x25519: "X25519" }

/** True when this Node imports and exports raw keys ("raw-private"/"raw-public" formats). */
export const nodeHasRawKeyFormats: boolean = ((): boolean => {
  // Feature test with the X25519 base point: a public constant, nothing secret.
  try {
    const basePoint = Buffer.alloc(32)
    basePoint[0] = 9
    NodeCrypto.createPublicKey({ key: basePoint, format: "raw-public", asymmetricKeyType: "x25519" })
    return true
  } catch {
    return false
  }
})()

const requireLength = (what: string, bytes: Uint8Array, length: number): void => {
  if (bytes.length !== length) {
    throw new RangeError(`${what} must be ${length} bytes, got ${bytes.length}`)
  }
}

// A Buffer view of the same memory: node's typings want Buffers; no copy.
const asBuffer = (bytes: Uint8Array): Buffer => Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length)

// Callers get plain Uint8Arrays from both layers (a Buffer compares unequal
// to a Uint8Array in some deep-equality checks); the view shares memory, no copy.
const asUint8Array = (buffer: Buffer): Uint8Array => new Uint8Array(buffer.buffer, buffer.byteOffset, buffer.length)

// A channel seals and opens every message with the same key array; making a
// KeyObject for each call cost more than a small message's cipher work. The
// cache holds the key's bytes too, so an array whose contents changed (a
// caller reusing a buffer) gets a fresh KeyObject, never a stale one.
const secretKeys = new WeakMap<Uint8Array, { readonly bytes: Buffer; readonly key: NodeCrypto.KeyObject }>()
const secretKeyOf = (key: Uint8Array): NodeCrypto.KeyObject => {
  const cached = secretKeys.get(key)
  if (cached !== undefined && cached.bytes.equals(key)) return cached.key
  const entry = { bytes: Buffer.from(key), key: NodeCrypto.createSecretKey(key) }
  secretKeys.set(key, entry)
  return entry.key
}

type CachedKey = { readonly bytes: Buffer; readonly key: NodeCrypto.KeyObject }

// The private KeyObject of a secret array, made once per array and curve
// (per crypto layer, so each import path is the one used); the entry keeps
// a copy of the bytes, so a reused array whose contents changed gets a
// fresh KeyObject, never a stale one.
const privateKeyCache = (rawKeyFormats: boolean) => {
  const caches: Record<CurveName, WeakMap<Uint8Array, CachedKey>> = { ed25519: new WeakMap(), x25519: new WeakMap() }
  return (curve: CurveName, secret: Uint8Array): NodeCrypto.KeyObject => {
    const cache = caches[curve]
    const cached = cache.get(secret)
    if (cached !== undefined && cached.bytes.equals(secret)) return cached.key
    const entry = { bytes: Buffer.from(secret), key: importPrivateKey(rawKeyFormats, curve, secret) }
    cache.set(secret, entry)
    return entry.key
  }
}

// Node's key import first asks whether its options object is a KeyObject,
// and for a plain object that check throws and catches an error inside
// node:crypto: capturing the stack was two thirds of an import's 20 µs
// (Node 24), a sixth of a relay's handshake CPU. No stack is ever wanted
// from it (errors of an import are caught here and turned into values).
const withoutStackTraces = <A>(f: () => A): A => {
  const limit = Error.stackTraceLimit
  Error.stackTraceLimit = 0
  try {
    return f()
  } finally {
    Error.stackTraceLimit = limit
  }
}

const importPrivateKey = (rawKeyFormats: boolean, curve: CurveName, secret: Uint8Array): NodeCrypto.KeyObject => {
  if (rawKeyFormats) {
    return withoutStackTraces(() =>
      NodeCrypto.createPrivateKey({ key: asBuffer(secret), format: "raw-private", asymmetricKeyType: curve })
    )
  }
  const prefix = pkcs8Prefix[curve]
  const der = Buffer.allocUnsafe(prefix.length + secret.length)
  prefix.copy(der, 0)
  der.set(secret, prefix.length)
  try {
    return NodeCrypto.createPrivateKey({ key: der, format: "der", type: "pkcs8" })
  } finally {
    // The DER copy holds the secret; wipe it rather than leave it to the GC.
    der.fill(0)
  }
}

const publicKey = (rawKeyFormats: boolean, curve: CurveName, raw: Uint8Array): NodeCrypto.KeyObject =>
  withoutStackTraces(() =>
    rawKeyFormats
      ? NodeCrypto.createPublicKey({ key: asBuffer(raw), format: "raw-public", asymmetricKeyType: curve })
      : NodeCrypto.createPublicKey({
        key: { kty: "OKP", crv: jwkCurve[curve], x: asBuffer(raw).toString("base64url") },
        format: "jwk"
      })
  )

const rawPublicKey = (rawKeyFormats: boolean, key: NodeCrypto.KeyObject): Uint8Array => {
  if (rawKeyFormats) return asUint8Array(key.export({ format: "raw-public" }))
  // An OKP public JWK always carries x.
  return asUint8Array(Buffer.from(key.export({ format: "jwk" }).x!, "base64url"))
}

const isAllZero = (bytes: Uint8Array): boolean => {
  let acc = 0
  for (let i = 0; i < bytes.length; i++) acc |= bytes[i]!
  return acc === 0
}

/**
 * CryptoPrimitives backed by node:crypto, importing keys through the raw
 * formats or through PKCS#8/JWK; exported so tests can cover both paths.
 */
export const makeNodeCrypto = (options: { readonly rawKeyFormats: boolean }): CryptoPrimitives => {
  const raw = options.rawKeyFormats
  const privateKey = privateKeyCache(raw)
  return {
    name: "node",

    ed25519PublicKey: (seed) => {
      requireLength("Ed25519 seed", seed, 32)
      return rawPublicKey(raw, NodeCrypto.createPublicKey(privateKey("ed25519", seed)))
    },

    ed25519Sign: (seed, message) => {
      requireLength("Ed25519 seed", seed, 32)
      return asUint8Array(NodeCrypto.sign(null, message, privateKey("ed25519", seed)))
    },

    ed25519Verify: (key, message, signature) => {
      // Our rules first: Bun's and Deno's node:crypto accept what OpenSSL refuses.
      if (!ed25519EncodingsAcceptable(key, signature)) return false
      try {
        return NodeCrypto.verify(null, message, publicKey(raw, "ed25519", key), signature)
      } catch {
        // A public key OpenSSL refuses to import is "not valid", not a bug.
        return false
      }
    },

    x25519PublicKey: (secret) => {
      requireLength("X25519 secret", secret, 32)
      return rawPublicKey(raw, NodeCrypto.createPublicKey(privateKey("x25519", secret)))
    },

    x25519: (secret, peerPublicKey) => {
      requireLength("X25519 secret", secret, 32)
      if (peerPublicKey.length !== 32) return undefined
      let shared: Buffer
      try {
        shared = NodeCrypto.diffieHellman({
          privateKey: privateKey("x25519", secret),
          publicKey: publicKey(raw, "x25519", peerPublicKey)
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
      // OpenSSL refuses to derive 0 bytes, which RFC 5869 allows. hkdfSync
      // returns an ArrayBuffer, and wrapping it is free.
      length === 0
        ? new Uint8Array(0)
        : new Uint8Array(NodeCrypto.hkdfSync("sha512-256", NodeCrypto.createSecretKey(ikm), salt, info, length)),

    aeadSeal: (key, nonce, plaintext, prefix = emptyPrefix) => {
      requireLength("ChaCha20-Poly1305 key", key, 32)
      requireLength("ChaCha20-Poly1305 nonce", nonce, 12)
      const cipher = NodeCrypto.createCipheriv("chacha20-poly1305", secretKeyOf(key), nonce, {
        authTagLength: tagLength
      })
      // One allocation for prefix ‖ ciphertext ‖ tag: update() must allocate
      // its own output, so this costs one copy of the ciphertext and no
      // concatenation.
      const at = prefix.length
      const sealed = Buffer.allocUnsafe(at + plaintext.length + tagLength)
      sealed.set(prefix, 0)
      sealed.set(cipher.update(plaintext), at)
      cipher.final()
      sealed.set(cipher.getAuthTag(), at + plaintext.length)
      return asUint8Array(sealed)
    },

    aeadOpen: (key, nonce, sealed) => {
      requireLength("ChaCha20-Poly1305 key", key, 32)
      requireLength("ChaCha20-Poly1305 nonce", nonce, 12)
      if (sealed.length < tagLength) return undefined
      const ciphertextLength = sealed.length - tagLength
      const decipher = NodeCrypto.createDecipheriv("chacha20-poly1305", secretKeyOf(key), nonce, {
        authTagLength: tagLength
      })
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
}

/** CryptoPrimitives backed by node:crypto; see the module header for the length rules. */
export const nodeCrypto: CryptoPrimitives = makeNodeCrypto({ rawKeyFormats: nodeHasRawKeyFormats })
