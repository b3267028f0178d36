/**
 * The Crypto service with all its layers: the deterministic primitives of
 * src/core/crypto.ts plus a secure random source, so adapters can hand the
 * pure core both the functions it calls and the random bytes it is given.
 *
 * Three layers: `layerNode` (node:crypto, fast), `layerNoble` (pure
 * JavaScript @noble/*, runs anywhere with globalThis.crypto.getRandomValues)
 * and `layerAuto` (node:crypto where this runtime's node:crypto has
 * everything we need and agrees with noble, noble otherwise: Bun's lacks
 * ChaCha20-Poly1305, Node before 24.x lacks the raw key formats). Both agree
 * byte for byte on every deterministic primitive (test/crypto.test.ts).
 *
 * This module imports node:crypto; code that must run in a browser takes
 * the service and `layerNoble` from crypto-service.ts instead.
 */
import * as NodeCrypto from "node:crypto"
import * as Layer from "effect/Layer"
import { nobleCrypto } from "./crypto-noble.ts"
import { nodeCrypto, nodeHasRawKeyFormats } from "./crypto-node.ts"
import {
  Crypto as CryptoKey,
  type CryptoChoice,
  type CryptoService,
  layerNoble as nobleLayer,
  nobleCryptoService
} from "./crypto-service.ts"

export { CRYPTO_CHOICES, type CryptoChoice, type CryptoService, layerWith, nobleCryptoService } from "./crypto-service.ts"

// Small draws (nonces, DH secrets, every message's padding: at most a few
// hundred bytes) come from a block filled by one CSPRNG call. Each byte is
// handed out once, as a copy, so no draw shares memory with another; a
// message's padding used to cost two CSPRNG calls (4.5% of a relay's CPU).
const RANDOM_POOL_BYTES = 4096
const POOLED_DRAW_LIMIT = 256
let randomPool = new Uint8Array(0)
let randomPoolUsed = 0

const nodeRandomBytes = (length: number): Uint8Array => {
  if (length > POOLED_DRAW_LIMIT) {
    const bytes = NodeCrypto.randomBytes(length)
    return new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.length)
  }
  if (randomPoolUsed + length > randomPool.length) {
    randomPool = NodeCrypto.randomFillSync(new Uint8Array(RANDOM_POOL_BYTES))
    randomPoolUsed = 0
  }
  const draw = randomPool.slice(randomPoolUsed, randomPoolUsed + length)
  randomPoolUsed += length
  return draw
}

/** The node:crypto implementation of the service. */
export const nodeCryptoService: CryptoService = { ...nodeCrypto, randomBytes: nodeRandomBytes }

const sameBytes = (a: Uint8Array | undefined, b: Uint8Array | undefined): boolean =>
  a !== undefined && b !== undefined && a.length === b.length && a.every((byte, i) => byte === b[i])

/**
 * Why this runtime's node:crypto cannot serve (Bun's throws "Unknown cipher"
 * for ChaCha20-Poly1305), or undefined when it can: every primitive is run on
 * a fixed sample (public constants only) and must agree with noble, so a
 * runtime that lacks or differs in a primitive is caught here rather than in
 * a handshake. Decided once.
 */
export const nodeCryptoProblem = (): string | undefined => {
  if (nodeProblem !== null) return nodeProblem
  try {
    const seed = new Uint8Array(32).fill(7)
    const message = new Uint8Array([1, 2, 3])
    const nonce = new Uint8Array(12).fill(1)
    const signature = nodeCrypto.ed25519Sign(seed, message)
    const otherPublic = nobleCrypto.x25519PublicKey(seed.map((byte) => byte ^ 1))
    const checks: ReadonlyArray<readonly [string, boolean]> = [
      ["Ed25519 public key", sameBytes(nodeCrypto.ed25519PublicKey(seed), nobleCrypto.ed25519PublicKey(seed))],
      ["Ed25519 signature", sameBytes(signature, nobleCrypto.ed25519Sign(seed, message))],
      ["Ed25519 verify", nodeCrypto.ed25519Verify(nobleCrypto.ed25519PublicKey(seed), message, signature)],
      ["X25519", sameBytes(nodeCrypto.x25519(seed, otherPublic), nobleCrypto.x25519(seed, otherPublic))],
      ["ChaCha20-Poly1305 seal", sameBytes(nodeCrypto.aeadSeal(seed, nonce, message), nobleCrypto.aeadSeal(seed, nonce, message))],
      ["ChaCha20-Poly1305 open", sameBytes(nodeCrypto.aeadOpen(seed, nonce, nobleCrypto.aeadSeal(seed, nonce, message)), message)],
      ["HKDF-SHA-512/256", sameBytes(nodeCrypto.hkdfSha512_256(nonce, seed, message, 32), nobleCrypto.hkdfSha512_256(nonce, seed, message, 32))]
    ]
    const wrong = checks.find(([, ok]) => !ok)
    nodeProblem = wrong === undefined ? undefined : `this runtime's node:crypto disagrees with noble on ${wrong[0]}`
  } catch (error) {
    nodeProblem = `this runtime's node:crypto fails: ${error instanceof Error ? error.message : String(error)}`
  }
  return nodeProblem
}
let nodeProblem: string | undefined | null = null

/** A crypto implementation was chosen that this runtime cannot run. */
export class CryptoUnavailableError extends Error {
  override readonly name = "CryptoUnavailableError"
}

let autoService: CryptoService | undefined

/**
 * The service `auto` picks on this runtime (decided once, on first use):
 * node:crypto where it has the raw key formats and passes
 * `nodeCryptoProblem`, noble otherwise.
 */
export const autoCryptoService = (): CryptoService =>
  autoService ??= nodeHasRawKeyFormats && nodeCryptoProblem() === undefined ? nodeCryptoService : nobleCryptoService

/**
 * The service for a choice; `auto` as `autoCryptoService`. Throws a
 * CryptoUnavailableError for "node" where node:crypto cannot serve, rather
 * than fail later inside a connection.
 */
export const cryptoServiceFor = (choice: CryptoChoice): CryptoService => {
  switch (choice) {
    case "node": {
      const problem = nodeCryptoProblem()
      if (problem !== undefined) throw new CryptoUnavailableError(`crypto "node": ${problem}; use "noble" or "auto"`)
      return nodeCryptoService
    }
    case "noble":
      return nobleCryptoService
    case "auto":
      return autoCryptoService()
  }
}

/** node:crypto primitives and randomness: fast, needs Node's node:crypto (Bun's lacks ChaCha20-Poly1305). */
export const layerNode: Layer.Layer<CryptoKey> = Layer.succeed(CryptoKey, nodeCryptoService)

/** Pure-JavaScript @noble/* primitives; randomness from globalThis.crypto. Runs on every runtime. */
export const layerNoble: Layer.Layer<CryptoKey> = nobleLayer

/** node:crypto where this runtime's has all we need, noble otherwise; the default. */
export const layerAuto: Layer.Layer<CryptoKey> = Layer.sync(CryptoKey, autoCryptoService)

/** The layer for a choice (`--crypto node|noble|auto`); "node" where it cannot serve dies with a CryptoUnavailableError. */
export const layerFor = (choice: CryptoChoice): Layer.Layer<CryptoKey> =>
  choice === "node" ? Layer.sync(CryptoKey, () => cryptoServiceFor("node")) : choice === "noble" ? layerNoble : layerAuto

/**
 * Service key for the crypto primitives and secure randomness (the same key
 * as crypto-service.ts's `Crypto`), with every layer as a static.
 */
export class Crypto extends CryptoKey {
  /** node:crypto primitives and randomness. */
  static readonly layerNode: Layer.Layer<Crypto> = layerNode
  /** Pure-JavaScript @noble/* primitives; randomness from globalThis.crypto. */
  static readonly layerNoble: Layer.Layer<Crypto> = layerNoble
  /** node:crypto where it has all we need, noble otherwise. */
  static readonly layerAuto: Layer.Layer<Crypto> = layerAuto
}
