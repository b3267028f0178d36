/**
 * The browser build's entry (`dist/browser/offset-relay.js`, bundled by
 * esbuild): the pure core, the wire codecs and the portable crypto service
 * (noble, randomness from `crypto.getRandomValues`). Nothing here or below
 * imports `node:*`; the browser transport comes with WebSocket support.
 */
export * from "./core/index.ts"
export * from "./wire.ts"
export {
  Crypto,
  CRYPTO_CHOICES,
  type CryptoChoice,
  type CryptoService,
  layerNoble,
  layerWith,
  nobleCryptoService
} from "./adapters/crypto-service.ts"
export { nobleCrypto } from "./adapters/crypto-noble.ts"
