/**
 * `offset-relay`: the client (Promises and Node streams) and the relay
 * server (`startRelay`) for code without Effect. The Effect API is
 * `offset-relay/effect`; the pure machines `offset-relay/core`; the wire
 * codecs `offset-relay/wire`.
 *
 *     import { connect, listen, startRelay, createIdentity } from "offset-relay"
 */
export * from "./adapters/client/index.ts"
export { type Relay, startRelay, type StartRelayOptions } from "./adapters/start-relay.ts"
export { defaultRelayServerOptions, type RelayServerOptions, type RelayServerStats, ServerStartError } from "./adapters/relay-server.ts"
export { CryptoUnavailableError } from "./adapters/crypto.ts"
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
