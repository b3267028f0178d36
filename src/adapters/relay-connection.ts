/**
 * A client's connection to one relay: a transport stream (the relay
 * address's scheme picks it: TCP, or WebSocket for ws:// and wss://, unless
 * the options name a transport), version prefix, then the secure
 * channel expecting the relay's key, then the InitConnection that says what
 * the connection is for. The stream frame link sends our version and checks
 * the relay's; the channel driver (message-channel.ts) runs on its events.
 * A relay that refuses us at once (a connection limit, shutting down)
 * closes before its version: the channel's error then carries
 * CLOSED_BEFORE_VERSION, to tell that apart from a close later on. The client library builds listen, connect and
 * accept channels from this.
 *
 * Closing the scope closes the connection gracefully: the channel stops,
 * what was sent is flushed and a FIN sent, and what the relay still sends
 * is read and dropped until it closes too (bounded by `closeLingerMs`).
 * Destroying the socket at once would reset the connection whenever the
 * relay had sent bytes we had not read, and a reset makes the relay drop
 * our own last messages that it had not read yet.
 */
import * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"
import { encodeInitConnection, type InitConnection } from "../core/messages.ts"
import type { RelayScheme } from "../core/relay-address.ts"
import type { CryptoService } from "./crypto.ts"
import { makeStreamFrameLink } from "./frame-link.ts"
import { type ChannelDriver, ChannelError, establishChannel, type ChannelOptions } from "./message-channel.ts"
import { ChannelTicker } from "./channel-ticker.ts"
import type { Transport } from "./transport.ts"
import { tcpTransport } from "./transport-tcp.ts"
import { webSocketDialTransport } from "./transport-ws-dial.ts"
import type { Identity } from "../core/keys.ts"

/** Where a relay is and who it must prove to be. */
export interface RelayEndpoint {
  readonly publicKey: Uint8Array
  readonly host: string
  readonly port: number
  /** "ws" or "wss": reach the relay's WebSocket port; absent: TCP. */
  readonly scheme?: RelayScheme | undefined
}

/** Options for one relay connection. */
export interface RelayConnectionOptions {
  readonly crypto: CryptoService
  readonly identity: Identity
  /** Bound on TCP connect + version + handshake, in milliseconds (default 10 s). */
  readonly handshakeTimeoutMs?: number
  /** Milliseconds per keepalive/rekey tick (default 1000, as Offset); ignored when `ticker` is given. */
  readonly tickMs?: number
  /** The timer shared with the client's other channels (default: one of this connection's own). */
  readonly ticker?: ChannelTicker
  /** On close, how long to wait for the relay to close its side before destroying the socket (default 2 s). */
  readonly closeLingerMs?: number
  readonly channel?: Pick<ChannelOptions, "inboxBytes" | "machine">
  /** How to reach the relay (default: by the endpoint's scheme). */
  readonly transport?: Transport
}

// The browser bundle replaces transport-tcp.ts with one that refuses (a
// page cannot open TCP connections), so a TCP address fails with a reason.
const wsTransport = webSocketDialTransport("ws")
const wssTransport = webSocketDialTransport("wss")
const transportFor = (scheme: RelayScheme | undefined): Transport =>
  scheme === "ws" ? wsTransport : scheme === "wss" ? wssTransport : tcpTransport

/** Default bound on a graceful close. */
export const DEFAULT_CLOSE_LINGER_MS = 2000

/**
 * Opens an authenticated channel to `relay` and sends `init`. The channel
 * and its socket live in the current scope.
 */
export const openRelayConnection = (
  relay: RelayEndpoint,
  init: InitConnection,
  options: RelayConnectionOptions
): Effect.Effect<ChannelDriver, ChannelError, Scope.Scope> =>
  Effect.gen(function*() {
    const timeoutMs = options.handshakeTimeoutMs ?? 10_000
    const channel = yield* Effect.gen(function*() {
      const transport = options.transport ?? transportFor(relay.scheme)
      const stream = yield* transport.dial({ host: relay.host, port: relay.port }).pipe(
        Effect.mapError((error) => new ChannelError({ reason: "Reset", message: error.message }))
      )
      const link = makeStreamFrameLink(stream)
      // Added before the channel's own finalizer, so it runs after the
      // channel has ended and flushed. A connection that never finished its
      // handshake carries nothing worth flushing: it is cut at once.
      let established = false
      yield* Effect.addFinalizer(() =>
        established
          ? link.closeGracefully(options.closeLingerMs ?? DEFAULT_CLOSE_LINGER_MS)
          : Effect.sync(link.destroy)
      )
      const channel = yield* establishChannel(link, {
        crypto: options.crypto,
        identity: options.identity,
        expectedRemotePublicKey: relay.publicKey,
        ...options.channel
      })
      established = true
      return channel
    }).pipe(
      Effect.timeoutOrElse({
        duration: timeoutMs,
        orElse: () =>
          Effect.fail(
            new ChannelError({
              reason: "HandshakeTimeout",
              message: `relay ${relay.host}:${relay.port} did not complete the handshake within ${timeoutMs} ms`
            })
          )
      })
    )
    yield* (options.ticker ?? new ChannelTicker(options.tickMs ?? 1000)).register(channel)
    yield* channel.send(encodeInitConnection(init))
    return channel
  })
