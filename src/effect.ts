/**
 * `offset-relay/effect`: services and layers for Effect programs. The
 * `Crypto` service and its layers (`layerAuto`, `layerNode`, `layerNoble`),
 * the client (`RelayClient`, `RelayListener`), the relay server
 * (`makeRelayServer`, scoped) and identity files.
 *
 *     import { layerAuto, makeRelayServer, RelayClient } from "offset-relay/effect"
 */
export * from "./adapters/client/effect.ts"
export {
  autoCryptoService,
  Crypto,
  CRYPTO_CHOICES,
  type CryptoChoice,
  type CryptoService,
  cryptoServiceFor,
  CryptoUnavailableError,
  layerAuto,
  layerFor,
  layerNoble,
  layerNode,
  layerWith,
  nobleCryptoService,
  nodeCryptoProblem,
  nodeCryptoService
} from "./adapters/crypto.ts"
export {
  formatIdentityFile,
  generateIdentity,
  type Identity,
  IdentityFileError,
  type IdentityFileErrorReason,
  loadOrCreateIdentity,
  parseIdentityFile,
  readIdentityFile,
  writeIdentityFile
} from "./adapters/identity.ts"
export {
  defaultRelayServerOptions,
  makeRelayServer,
  type RelayIdentity,
  type RelayServer,
  type RelayServerOptions,
  type RelayServerStats,
  ServerStartError
} from "./adapters/relay-server.ts"
export { Metrics } from "./adapters/metrics.ts"
export { type ByteStream, type StreamHandlers, type Transport, type TransportAddress, TransportError } from "./adapters/transport.ts"
export {
  type LinkProfile,
  makeMemoryNetwork,
  type MemoryNetwork,
  type MemoryNetworkOptions,
  type MemoryNetworkStats,
  type NetworkClock,
  realTimeNetworkClock
} from "./adapters/transport-memory.ts"
