/**
 * The Crypto service: the deterministic primitives of src/core/crypto.ts plus
 * a secure random source, so adapters can hand the pure core both the
 * functions it calls and the random bytes it is given.
 *
 * Two layers: `layerNode` (node:crypto, the fast default on Node) and
 * `layerNoble` (pure JavaScript @noble/*, runs anywhere with
 * globalThis.crypto.getRandomValues). Both agree byte for byte on every
 * deterministic primitive (test/crypto.test.ts checks it).
 */
import * as NodeCrypto from "node:crypto"
import { randomBytes as nobleRandomBytes } from "@noble/hashes/utils.js"
import * as Context from "effect/Context"
import * as Layer from "effect/Layer"
import type { CryptoPrimitives } from "../core/crypto.ts"
import { nobleCrypto } from "./crypto-noble.ts"
import { nodeCrypto } from "./crypto-node.ts"

/** The primitives plus a cryptographically secure random source. */
export interface CryptoService extends CryptoPrimitives {
  /** `length` fresh bytes from the operating system's CSPRNG. */
  readonly randomBytes: (length: number) => Uint8Array
}

const nodeRandomBytes = (length: number): Uint8Array => {
  const bytes = NodeCrypto.randomBytes(length)
  return new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.length)
}

/** The node:crypto implementation of the service. */
export const nodeCryptoService: CryptoService = { ...nodeCrypto, randomBytes: nodeRandomBytes }

/** The @noble/* implementation of the service (randomness from globalThis.crypto). */
export const nobleCryptoService: CryptoService = { ...nobleCrypto, randomBytes: (length) => nobleRandomBytes(length) }

/** Service key for the crypto primitives and secure randomness. */
export class Crypto extends Context.Service<Crypto, CryptoService>()("offset-relay/Crypto") {
  /** node:crypto primitives and randomness: the default on Node. */
  static readonly layerNode: Layer.Layer<Crypto> = Layer.succeed(this, nodeCryptoService)
  /** Pure-JavaScript @noble/* primitives; randomness from globalThis.crypto. */
  static readonly layerNoble: Layer.Layer<Crypto> = Layer.succeed(this, nobleCryptoService)
}

/** node:crypto primitives and randomness: the default on Node. */
export const layerNode: Layer.Layer<Crypto> = Crypto.layerNode

/** Pure-JavaScript @noble/* primitives; randomness from globalThis.crypto. */
export const layerNoble: Layer.Layer<Crypto> = Crypto.layerNoble

/**
 * A layer with the given primitives and random source, e.g. node primitives
 * with `makeDeterministicRandom` (src/core/random.ts) for replayable tests.
 */
export const layerWith = (primitives: CryptoPrimitives, randomBytes: (length: number) => Uint8Array): Layer.Layer<Crypto> =>
  Layer.succeed(Crypto, { ...primitives, randomBytes })
