/**
 * The cryptographic primitives the pure core needs, as plain synchronous
 * functions. They are deterministic, so code that takes them stays pure;
 * randomness is NOT part of this interface (the core is handed random bytes).
 *
 * Two implementations live in src/adapters: one on node:crypto (fast), one on
 * @noble/* (portable). Both must agree byte for byte.
 *
 * "Never throws" below is about values a peer can send (public keys,
 * signatures, sealed frames): those give false / undefined. A seed, secret,
 * key or nonce of the wrong size is the caller's own bug and throws a
 * RangeError in both implementations.
 */
export interface CryptoPrimitives {
  /** Short name for logs and benchmarks ("node", "noble"). */
  readonly name: string
  /** Ed25519 public key (32 bytes) of a 32-byte secret seed. */
  readonly ed25519PublicKey: (seed: Uint8Array) => Uint8Array
  /** Ed25519 signature (64 bytes) of message by the 32-byte secret seed. */
  readonly ed25519Sign: (seed: Uint8Array, message: Uint8Array) => Uint8Array
  /** True when signature is a valid Ed25519 signature of message under publicKey; never throws. */
  readonly ed25519Verify: (publicKey: Uint8Array, message: Uint8Array, signature: Uint8Array) => boolean
  /** X25519 public key (32 bytes) of a 32-byte secret. */
  readonly x25519PublicKey: (secret: Uint8Array) => Uint8Array
  /**
   * X25519 shared secret (32 bytes), or undefined when the peer's key is a
   * low-order point (the result would be all zeros); never throws.
   */
  readonly x25519: (secret: Uint8Array, peerPublicKey: Uint8Array) => Uint8Array | undefined
  /** HKDF (RFC 5869) with SHA-512/256: Expand(Extract(salt, ikm), info, length). */
  readonly hkdfSha512_256: (salt: Uint8Array, ikm: Uint8Array, info: Uint8Array, length: number) => Uint8Array
  /**
   * ChaCha20-Poly1305 (RFC 8439) seal, no AAD: prefix ‖ ciphertext ‖ 16-byte
   * tag. The optional prefix (a transport frame's nonce) is written into the
   * same buffer, saving the data path a copy of every message.
   */
  readonly aeadSeal: (key: Uint8Array, nonce: Uint8Array, plaintext: Uint8Array, prefix?: Uint8Array) => Uint8Array
  /** ChaCha20-Poly1305 open, no AAD: the plaintext, or undefined when the tag does not verify; never throws. */
  readonly aeadOpen: (key: Uint8Array, nonce: Uint8Array, sealed: Uint8Array) => Uint8Array | undefined
}
