/**
 * A client's connection to one relay: TCP, version prefix, then the secure
 * channel expecting the relay's key, then the InitConnection that says what
 * the connection is for. The client library builds listen, connect and
 * accept channels from this.
 */
import * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"
import * as NodeSocket from "@effect/platform-node/NodeSocket"
import { encodeInitConnection, type InitConnection } from "../core/messages.ts"
import type { CryptoService } from "./crypto.ts"
import { exchangeVersion, LinkError, makeSocketFrameLink } from "./frame-link.ts"
import { ChannelError, establishChannel, type ChannelOptions, type MessageChannel } from "./message-channel.ts"

/** Where a relay is and who it must prove to be. */
export interface RelayEndpoint {
  readonly publicKey: Uint8Array
  readonly host: string
  readonly port: number
}

/** Options for one relay connection. */
export interface RelayConnectionOptions {
  readonly crypto: CryptoService
  readonly identity: { readonly seed: Uint8Array; readonly publicKey: Uint8Array }
  /** Bound on TCP connect + version + handshake, in milliseconds (default 10 s). */
  readonly handshakeTimeoutMs?: number
  /** Milliseconds per keepalive/rekey tick (default 1000, as Offset). */
  readonly tickMs?: number
  readonly channel?: Pick<ChannelOptions, "inboxBytes" | "machine">
}

/**
 * Opens an authenticated channel to `relay` and sends `init`. The channel
 * and its socket live in the current scope.
 */
export const openRelayConnection = (
  relay: RelayEndpoint,
  init: InitConnection,
  options: RelayConnectionOptions
): Effect.Effect<MessageChannel, ChannelError, Scope.Scope> =>
  Effect.gen(function*() {
    const timeoutMs = options.handshakeTimeoutMs ?? 10_000
    const channel = yield* Effect.gen(function*() {
      const socket = yield* NodeSocket.makeNet({ host: relay.host, port: relay.port, noDelay: true })
      const link = yield* makeSocketFrameLink(socket)
      yield* exchangeVersion(link)
      return yield* establishChannel(link, {
        crypto: options.crypto,
        identity: options.identity,
        expectedRemotePublicKey: relay.publicKey,
        ...options.channel
      })
    }).pipe(
      Effect.mapError((error) =>
        error instanceof LinkError ? new ChannelError({ reason: error.reason, message: error.message }) : error
      ),
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
    yield* Effect.forkScoped(Effect.forever(Effect.andThen(Effect.sleep(options.tickMs ?? 1000), Effect.sync(channel.tick))))
    yield* channel.send(encodeInitConnection(init))
    return channel
  })
