/**
 * The browser build's entry (`dist/browser/offset-relay.js`, bundled by
 * esbuild): the pure core, the wire codecs and the portable crypto service
 * (noble, randomness from `crypto.getRandomValues`). Nothing here or below
 * imports `node:*`. The client (listen, connect) reaches relays over
 * WebSocket (transport-ws-dial.ts); the build swaps transport-tcp.ts for
 * transport-tcp-unavailable.ts, so a TCP relay address fails with a reason.
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
export {
  BrowserListener,
  type BrowserClientOptions,
  type BrowserConnectOptions,
  type BrowserListenOptions,
  connect,
  ConnectError,
  createIdentity,
  type Identity,
  InvalidArgumentError,
  listen,
  type ListenerEvent,
  loadOrCreateIdentity,
  PeerConnection,
  PeerStreamError,
  type RelayStatus
} from "./adapters/client/browser-client.ts"
