/**
 * The Crypto service key and its portable layer: the deterministic
 * primitives of src/core/crypto.ts plus a secure random source, so adapters
 * can hand the pure core both the functions it calls and the random bytes it
 * is given.
 *
 * No `node:` import here or below: browser bundles and Deno/Bun programs
 * take the service and `layerNoble` from this module. The node:crypto layer
 * and the `auto` choice live in crypto.ts, which re-exports all of this.
 */
import { randomBytes as nobleRandomBytes } from "@noble/hashes/utils.js"
import * as Context from "effect/Context"
import * as Layer from "effect/Layer"
import type { CryptoPrimitives } from "../core/crypto.ts"
import { nobleCrypto } from "./crypto-noble.ts"

/** The primitives plus a cryptographically secure random source. */
export interface CryptoService extends CryptoPrimitives {
  /** `length` fresh bytes from the operating system's CSPRNG. */
  readonly randomBytes: (length: number) => Uint8Array
}

/** Which implementation to use: node:crypto, @noble/*, or `auto` (node:crypto where it has all we need, else noble). */
export type CryptoChoice = "node" | "noble" | "auto"

/** The accepted CryptoChoice values, for option parsing. */
export const CRYPTO_CHOICES: ReadonlyArray<CryptoChoice> = ["auto", "node", "noble"]

/** The @noble/* implementation of the service (randomness from globalThis.crypto.getRandomValues). */
export const nobleCryptoService: CryptoService = { ...nobleCrypto, randomBytes: (length) => nobleRandomBytes(length) }

/** Service key for the crypto primitives and secure randomness. */
export class Crypto extends Context.Service<Crypto, CryptoService>()("offset-relay/Crypto") {}

/** Pure-JavaScript @noble/* primitives; randomness from globalThis.crypto. Runs on every runtime. */
export const layerNoble: Layer.Layer<Crypto> = Layer.succeed(Crypto, nobleCryptoService)

/**
 * A layer with the given primitives and random source, e.g. node primitives
 * with `makeDeterministicRandom` (src/core/random.ts) for replayable tests.
 */
export const layerWith = (primitives: CryptoPrimitives, randomBytes: (length: number) => Uint8Array): Layer.Layer<Crypto> =>
  Layer.succeed(Crypto, { ...primitives, randomBytes })
