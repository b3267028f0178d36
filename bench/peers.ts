/**
 * Load-generator peers on the message API: a listener that accepts every
 * incoming connection and serves each tunnel's end-to-end channel, and a
 * connector that opens one tunnel to a listener. These are the protocol
 * steps of PROTOCOL.md done directly (openRelayConnection, then
 * establishChannel over tunnelFrameLink), with no stream layer on top, so
 * throughput and memory figures measure the relay path itself.
 */
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Scope from "effect/Scope"
import type { CryptoService } from "../src/adapters/crypto.ts"
import { type ChannelDriver, ChannelError, establishChannel, tunnelFrameLink, type MessageChannel } from "../src/adapters/message-channel.ts"
import { openRelayConnection, type RelayEndpoint } from "../src/adapters/relay-connection.ts"
import { decodeIncomingConnection } from "../src/core/messages.ts"

/** An Ed25519 identity. */
export interface PeerIdentity {
  readonly seed: Uint8Array
  readonly publicKey: Uint8Array
}

/** A fresh random identity. */
export const newIdentity = (crypto: CryptoService): PeerIdentity => {
  const seed = crypto.randomBytes(32)
  return { seed, publicKey: crypto.ed25519PublicKey(seed) }
}

/** How peers run their channels. */
export interface PeerOptions {
  readonly crypto: CryptoService
  /** Milliseconds per keepalive tick on every channel (default 1000, as Offset). */
  readonly tickMs?: number
  /** Milliseconds per tick of end-to-end channels only (default: tickMs). */
  readonly endToEndTickMs?: number
  /** Random padding per message, end to end and on hops (default 0: bulk transfer). */
  readonly maxPaddingBytes?: number
  readonly handshakeTimeoutMs?: number
}

const channelSettings = (options: PeerOptions) => ({
  machine: { maxPaddingBytes: options.maxPaddingBytes ?? 0 }
})

const hopOptions = (identity: PeerIdentity, options: PeerOptions) => ({
  crypto: options.crypto,
  identity,
  tickMs: options.tickMs,
  handshakeTimeoutMs: options.handshakeTimeoutMs,
  channel: channelSettings(options)
})

const ticker = (channel: MessageChannel, tickMs: number | undefined): Effect.Effect<void> =>
  Effect.forever(Effect.andThen(Effect.sleep(tickMs ?? 1000), Effect.sync(channel.tick)))

/**
 * Runs the end-to-end handshake over a connect or accept channel, expecting
 * `peerKey`; the channel and its ticker live in the current scope.
 */
export const endToEnd = (
  hop: ChannelDriver,
  identity: PeerIdentity,
  peerKey: Uint8Array,
  options: PeerOptions
): Effect.Effect<MessageChannel, ChannelError, Scope.Scope> =>
  Effect.gen(function*() {
    const channel = yield* establishChannel(tunnelFrameLink(hop), {
      crypto: options.crypto,
      identity,
      expectedRemotePublicKey: peerKey,
      ...channelSettings(options)
    })
    yield* Effect.forkScoped(ticker(channel, options.endToEndTickMs ?? options.tickMs))
    return channel
  })

/**
 * Connects to `listenerKey` through the relay and runs the end-to-end
 * handshake; the tunnel lives in the current scope.
 */
export const openTunnel = (
  relay: RelayEndpoint,
  identity: PeerIdentity,
  listenerKey: Uint8Array,
  options: PeerOptions
): Effect.Effect<MessageChannel, ChannelError, Scope.Scope> =>
  Effect.gen(function*() {
    const hop = yield* openRelayConnection(relay, { _tag: "Connect", publicKey: listenerKey }, hopOptions(identity, options))
    return yield* endToEnd(hop, identity, listenerKey, options)
  })

/** A running listener. */
export interface Listener {
  readonly identity: PeerIdentity
}

/**
 * Listens as `identity`: accepts every IncomingConnection and runs `serve`
 * on the tunnel's end-to-end channel, each tunnel in its own scope closed
 * when `serve` ends (so a tunnel that ends is closed at once). The listen
 * channel and every tunnel live in the current scope.
 */
export const listen = (
  relay: RelayEndpoint,
  identity: PeerIdentity,
  options: PeerOptions,
  serve: (channel: MessageChannel) => Effect.Effect<void, ChannelError>
): Effect.Effect<Listener, ChannelError, Scope.Scope> =>
  Effect.gen(function*() {
    const scope = yield* Effect.scope
    const listenChannel = yield* openRelayConnection(relay, { _tag: "Listen" }, hopOptions(identity, options))
    const acceptOne = (connector: Uint8Array) =>
      Effect.gen(function*() {
        const tunnelScope = yield* Scope.fork(scope)
        yield* Effect.gen(function*() {
          const hop = yield* openRelayConnection(relay, { _tag: "Accept", publicKey: connector }, hopOptions(identity, options))
          yield* serve(yield* endToEnd(hop, identity, connector, options))
        }).pipe(
          Scope.provide(tunnelScope),
          // A tunnel that fails to open or ends in error concerns only itself.
          Effect.ignore,
          Effect.ensuring(Scope.close(tunnelScope, Exit.void))
        )
      })
    yield* Effect.forkScoped(
      Effect.forever(
        Effect.gen(function*() {
          const message = yield* listenChannel.receive
          const incoming = decodeIncomingConnection(message)
          if (incoming._tag === "Ok") yield* Effect.forkIn(acceptOne(incoming.value.publicKey), scope)
        })
      ).pipe(Effect.ignore)
    )
    return { identity }
  })

/** Serves a tunnel by sending every message back. */
export const echo = (channel: MessageChannel): Effect.Effect<never, ChannelError> =>
  Effect.forever(Effect.flatMap(channel.receive, channel.send))
