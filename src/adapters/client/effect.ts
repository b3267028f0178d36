/**
 * The client library for Effect programs: a `RelayClient` service (who we
 * are, and timing) with `listen` and `connect`, and a `RelayListener` service
 * for programs that listen for their whole life.
 *
 *     const program = Effect.gen(function*() {
 *       const client = yield* RelayClient
 *       const stream = yield* client.connect(peerKey, [relay])   // scoped
 *       yield* stream.write(new TextEncoder().encode("hello"))
 *       yield* stream.end                                         // half close
 *       const answer = yield* stream.read                         // Option<bytes>
 *     }).pipe(Effect.scoped, Effect.provide(RelayClient.layer({ identity })), Effect.provide(layerAuto))
 *
 * Every stream and listener is a scoped resource: closing its scope closes
 * every socket, channel and fiber it opened.
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import type * as FileSystem from "effect/FileSystem"
import * as Layer from "effect/Layer"
import type * as Scope from "effect/Scope"
import type { RelayAddress } from "../../core/relay-address.ts"
import { Crypto, type CryptoChoice, cryptoServiceFor } from "../crypto.ts"
import { type Identity, type IdentityFileError, readIdentityFile } from "../identity.ts"
import { type ConnectError, type ConnectOptions, connectToPeer } from "./connector.ts"
import { type Listener, type ListenerOptions, makeListener } from "./listener.ts"
import type { ClientSettings } from "./tunnel.ts"
import type { PeerStream } from "./tunnel-stream.ts"

export type { AccessPolicy, Listener, ListenerEvent, ListenerOptions, RelayStatus } from "./listener.ts"
export { ListenerClosedError } from "./listener.ts"
export { ConnectError, type ConnectOptions } from "./connector.ts"
export { PeerDuplex } from "./peer-duplex.ts"
export { type PeerStream, PeerStreamError, StreamAbort } from "./tunnel-stream.ts"
export type { StreamErrorCode, StreamErrorReport } from "../../core/stream-state.ts"
export { TunnelOpenError } from "./tunnel.ts"

/**
 * Client settings without the crypto service: the layer takes it from
 * `Crypto` (e.g. `layerAuto`), or from `crypto` when that is given.
 */
export type RelayClientConfig = Omit<ClientSettings, "crypto"> & {
  /** Use this implementation instead of the `Crypto` service, which is then not needed. */
  readonly crypto?: CryptoChoice
}

/** What `RelayClient.layer(config)` needs: `Crypto` unless the config chooses one. */
export type RelayClientLayerNeeds<C extends RelayClientConfig> = C extends { readonly crypto: CryptoChoice } ? never : Crypto

/** The client side of the relay protocol, for one identity. */
export interface RelayClientService {
  /** Our public key: what peers connect to. */
  readonly publicKey: Uint8Array
  /** Listens on every relay given; the listener lives in the current scope. */
  readonly listen: (options: ListenerOptions) => Effect.Effect<Listener, never, Scope.Scope>
  /** Reaches `peer` through its relays; the stream lives in the current scope. */
  readonly connect: (
    peer: Uint8Array,
    relays: ReadonlyArray<RelayAddress>,
    options?: ConnectOptions
  ) => Effect.Effect<PeerStream, ConnectError, Scope.Scope>
}

/** Service key of the relay client. */
export class RelayClient extends Context.Service<RelayClient, RelayClientService>()("offset-relay/RelayClient") {
  /** A client with the given identity and settings. */
  static readonly layer = <C extends RelayClientConfig>(config: C): Layer.Layer<RelayClient, never, RelayClientLayerNeeds<C>> => {
    const choice = config.crypto
    const layer = choice === undefined
      ? Layer.effect(RelayClient, Effect.map(Crypto, (crypto) => makeRelayClient({ ...config, crypto })))
      : Layer.sync(RelayClient, () => makeRelayClient({ ...config, crypto: cryptoServiceFor(choice) }))
    // Needs Crypto exactly when no choice was given, which is what RelayClientLayerNeeds says.
    return layer as Layer.Layer<RelayClient, never, RelayClientLayerNeeds<C>>
  }

  /** A client whose identity is read from a key file (see src/adapters/identity.ts). */
  static readonly layerFromIdentityFile = (
    path: string,
    config: Omit<RelayClientConfig, "identity"> = {}
  ): Layer.Layer<RelayClient, IdentityFileError, Crypto | FileSystem.FileSystem> =>
    Layer.effect(
      RelayClient,
      Effect.gen(function*() {
        const identity: Identity = yield* readIdentityFile(path)
        const crypto = config.crypto === undefined ? yield* Crypto : cryptoServiceFor(config.crypto)
        return makeRelayClient({ ...config, identity, crypto })
      })
    )
}

/** The service for the given settings (no layer needed: e.g. for tests). */
export const makeRelayClient = (settings: ClientSettings): RelayClientService => ({
  publicKey: settings.identity.publicKey,
  listen: (options) => makeListener(settings, options),
  connect: (peer, relays, options) => connectToPeer(settings, peer, relays, options)
})

/** Service key of a listener that runs as long as its layer. */
export class RelayListener extends Context.Service<RelayListener, Listener>()("offset-relay/RelayListener") {
  /** Listens with the `RelayClient`'s identity for as long as the layer is in use. */
  static readonly layer = (options: ListenerOptions): Layer.Layer<RelayListener, never, RelayClient> =>
    Layer.effect(RelayListener, Effect.flatMap(RelayClient, (client) => client.listen(options)))
}
