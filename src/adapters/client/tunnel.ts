/**
 * One relayed tunnel from the client's side: a new connection to the relay
 * saying `connect(peer)` or `accept(peer)`, then the end-to-end secure
 * channel inside it expecting the peer's key (PROTOCOL.md "End to end": no
 * version prefix inside), then the byte stream on top. The connector and
 * the listener both build their tunnels here; each tunnel is its own TCP
 * connection, so a slow peer never slows another (the seed's argument).
 */
import * as Data from "effect/Data"
import * as Effect from "effect/Effect"
import * as Scope from "effect/Scope"
import type { InitConnection } from "../../core/messages.ts"
import { formatRelayAddress, type RelayAddress } from "../../core/relay-address.ts"
import type { CryptoService } from "../crypto.ts"
import type { Identity } from "../identity.ts"
import { ChannelError, establishChannel, tunnelFrameLink, type ChannelOptions } from "../message-channel.ts"
import { type ChannelTicker, tickerOf } from "../channel-ticker.ts"
import { openRelayConnection, type RelayConnectionOptions } from "../relay-connection.ts"
import type { Transport } from "../transport.ts"
import { makePeerStream, type PeerStream } from "./tunnel-stream.ts"

/** What every client connection needs: who we are, and timing. */
export interface ClientSettings {
  readonly crypto: CryptoService
  readonly identity: Identity
  /** Milliseconds per keepalive tick, on relay hops and end to end (default 1000, as Offset). */
  readonly tickMs?: number | undefined
  /** Bound on TCP + version + handshake with a relay, and on a listener's end-to-end handshake (default 10 s). */
  readonly handshakeTimeoutMs?: number | undefined
  /** Largest stream message (default 64 KiB; see src/core/stream-state.ts). */
  readonly maxMessageBytes?: number | undefined
  /** Channel settings of relay hops. */
  readonly hop?: Pick<ChannelOptions, "inboxBytes" | "machine"> | undefined
  /** Channel settings of end-to-end channels. */
  readonly endToEnd?: Pick<ChannelOptions, "inboxBytes" | "machine"> | undefined
  /** How relays are reached (default TCP; the in-memory network in tests and simulations). */
  readonly transport?: Transport | undefined
}

/** Default bound on a relay handshake and on a listener's end-to-end handshake. */
const DEFAULT_HANDSHAKE_TIMEOUT_MS = 10_000

/** Default milliseconds per keepalive tick, as Offset. */
const DEFAULT_TICK_MS = 1000

/** Options of a connection to a relay (a listen channel or a tunnel's hop), defaults filled in. */
export interface HopOptions extends RelayConnectionOptions {
  readonly handshakeTimeoutMs: number
  readonly tickMs: number
  /** Ticks every channel made from the same settings: relay hops and end-to-end channels alike. */
  readonly ticker: ChannelTicker
}

/** The hop options of `settings`: the one place the client's timing defaults are applied. */
export const hopOptions = (settings: ClientSettings): HopOptions => ({
  crypto: settings.crypto,
  identity: settings.identity,
  handshakeTimeoutMs: settings.handshakeTimeoutMs ?? DEFAULT_HANDSHAKE_TIMEOUT_MS,
  tickMs: settings.tickMs ?? DEFAULT_TICK_MS,
  ticker: tickerOf(settings, settings.tickMs ?? DEFAULT_TICK_MS),
  ...(settings.hop === undefined ? {} : { channel: settings.hop }),
  ...(settings.transport === undefined ? {} : { transport: settings.transport })
})

/** A tunnel that did not open, and in which phase (for src/core/connect-outcome.ts). */
export class TunnelOpenError extends Data.TaggedError("TunnelOpenError")<{
  /** "relay": the hop to the relay; "tunnel": the end-to-end handshake through it. */
  readonly phase: "relay" | "tunnel"
  readonly reason: ChannelError["reason"]
  readonly detail?: ChannelError["detail"] | undefined
  readonly message: string
}> {}

/**
 * Opens a tunnel through `relay` to the peer `init` names, in `scope` (which the stream
 * closes when it is done; the caller closes it when this fails).
 * `endToEndTimeoutMs` bounds the end-to-end handshake (undefined: no bound
 * here, the caller's deadline applies).
 */
export const openTunnel = (
  settings: ClientSettings,
  relay: RelayAddress,
  init: Extract<InitConnection, { readonly _tag: "Connect" | "Accept" }>,
  scope: Scope.Closeable,
  endToEndTimeoutMs: number | undefined
): Effect.Effect<PeerStream, TunnelOpenError> =>
  Effect.gen(function*() {
    const hop = hopOptions(settings)
    const relayChannel = yield* openRelayConnection(relay, init, hop).pipe(
      Scope.provide(scope),
      Effect.mapError(phaseError("relay"))
    )
    const endToEnd = yield* establishChannel(tunnelFrameLink(relayChannel), {
      crypto: settings.crypto,
      identity: settings.identity,
      expectedRemotePublicKey: init.publicKey,
      ...(endToEndTimeoutMs === undefined ? {} : { handshakeTimeoutMs: endToEndTimeoutMs }),
      ...settings.endToEnd
    }).pipe(Scope.provide(scope), Effect.mapError(phaseError("tunnel")))
    yield* hop.ticker.register(endToEnd).pipe(Scope.provide(scope))
    return yield* makePeerStream({
      channel: endToEnd,
      scope,
      relay: formatRelayAddress(relay),
      ...(settings.maxMessageBytes === undefined ? {} : { maxMessageBytes: settings.maxMessageBytes })
    })
  })

const phaseError = (phase: "relay" | "tunnel") => (error: ChannelError): TunnelOpenError =>
  new TunnelOpenError({ phase, reason: error.reason, detail: error.detail, message: error.message })
