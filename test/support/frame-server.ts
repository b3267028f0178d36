/**
 * Frame links over loopback TCP for tests that play a relay or a client by
 * hand: `serveFrames` runs a handler per accepted connection, `dialFrames`
 * opens one. Both live in the caller's scope.
 */
import * as Effect from "effect/Effect"
import * as FiberSet from "effect/FiberSet"
import type * as Scope from "effect/Scope"
import { makeStreamFrameLink, type StreamFrameLink } from "../../src/adapters/frame-link.ts"
import type { Transport, TransportAddress, TransportError } from "../../src/adapters/transport.ts"
import { tcpTransport } from "../../src/adapters/transport-tcp.ts"

/**
 * Listens on 127.0.0.1 (an ephemeral port, returned) and runs `handle` for
 * each connection in its own scope; the connection is destroyed when the
 * handler ends, and every handler is interrupted when the caller's scope closes.
 * Another transport and address (e.g. a host of the in-memory network) may be given.
 */
export const serveFrames = (
  handle: (link: StreamFrameLink) => Effect.Effect<unknown, unknown, Scope.Scope>,
  transport: Transport = tcpTransport,
  address: TransportAddress = { host: "127.0.0.1", port: 0 }
): Effect.Effect<number, TransportError, Scope.Scope> =>
  Effect.gen(function*() {
    const run = yield* FiberSet.makeRuntime<never, void, never>()
    const bound = yield* transport.listen(address, (stream) =>
      run(
        Effect.gen(function*() {
          const link = makeStreamFrameLink(stream)
          yield* Effect.addFinalizer(() => Effect.sync(link.destroy))
          yield* handle(link)
        }).pipe(Effect.scoped, Effect.ignore)
      ))
    return bound.port
  })

/** A frame link to 127.0.0.1:`port`, destroyed when the scope closes. */
export const dialFrames = (port: number, host = "127.0.0.1"): Effect.Effect<StreamFrameLink, TransportError, Scope.Scope> =>
  Effect.map(tcpTransport.dial({ host, port }), (stream) => makeStreamFrameLink(stream))
