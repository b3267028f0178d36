/**
 * The TCP transport (transport.ts) on Node's `net`, which Deno and Bun also
 * provide. Sockets are half-open capable (`allowHalfOpen`), so a peer's FIN
 * is only an `end` and our own FIN waits for `end()`; and Nagle is off,
 * because the handshakes write small frames back to back and with Nagle the
 * second waits for the peer's delayed ACK (40 ms on Linux).
 */
import * as Net from "node:net"
import * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"
import { type ByteStream, type Transport, type TransportAddress, TransportError } from "./transport.ts"

/** A ByteStream over a connected Node socket. */
export const tcpByteStream = (socket: Net.Socket): ByteStream => {
  let failure: TransportError | undefined
  // Kept for the socket's life: an 'error' with no listener would be an
  // uncaught exception, even one that comes after the driver stopped caring.
  socket.on("error", (cause: NodeJS.ErrnoException) => {
    failure ??= new TransportError({ reason: "Reset", message: `connection failed: ${cause.message}`, code: cause.code })
  })
  return {
    remoteAddress: socket.remoteAddress ?? "unknown",
    start: (handlers) => {
      socket.on("data", handlers.data)
      socket.on("drain", handlers.drain)
      socket.on("end", handlers.end)
      socket.on("close", () => handlers.close(failure))
    },
    write: (chunks) => {
      if (socket.destroyed || socket.writableEnded) return true
      if (chunks.length === 1) return socket.write(chunks[0]!)
      // One cork per call: the pieces go out in one writev, one segment when small.
      socket.cork()
      for (const chunk of chunks) socket.write(chunk)
      socket.uncork()
      return !socket.writableNeedDrain
    },
    writableLength: () => socket.writableLength,
    pause: () => {
      socket.pause()
    },
    resume: () => {
      socket.resume()
    },
    end: () => {
      if (!socket.destroyed) socket.end()
    },
    destroy: () => {
      socket.destroy()
    }
  }
}

const dialError = (address: TransportAddress, cause: NodeJS.ErrnoException): TransportError =>
  new TransportError({
    reason: cause.code === "ECONNREFUSED"
      ? "Refused"
      : cause.code === "ECONNRESET" || cause.code === "EPIPE"
      ? "Reset"
      : "Unreachable",
    message: `cannot connect to ${address.host}:${address.port}: ${cause.message}`,
    code: cause.code
  })

/**
 * Listens with a Node server (net, http or https) on `address` until the
 * scope closes; succeeds with the address bound. Closing stops accepting:
 * connections already accepted belong to their drivers. `what` names what
 * is listened for in the error ("cannot listen for <what> on host:port").
 */
export const listenServer = (
  server: Net.Server,
  address: TransportAddress,
  what?: string
): Effect.Effect<TransportAddress, TransportError, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.callback<TransportAddress, TransportError>((resume) => {
      server.once("error", (cause: NodeJS.ErrnoException) =>
        resume(Effect.fail(
          new TransportError({
            reason: cause.code === "EADDRINUSE" ? "AddressInUse" : "ListenFailed",
            message: `cannot listen${what === undefined ? "" : ` for ${what}`} on ${address.host}:${address.port}: ${cause.message}`,
            code: cause.code
          })
        )))
      server.listen(address.port, address.host, () => {
        const bound = server.address()
        const port = typeof bound === "object" && bound !== null ? bound.port : address.port
        resume(Effect.succeed({ host: address.host, port }))
      })
      return Effect.sync(() => server.close())
    }),
    () => Effect.sync(() => server.close())
  )

/** TCP over Node's `net`. */
export const tcpTransport: Transport = {
  name: "tcp",
  listen: (address, onStream) => {
    const server = Net.createServer({ allowHalfOpen: true, noDelay: true, pauseOnConnect: false })
    server.on("connection", (socket) => onStream(tcpByteStream(socket)))
    return listenServer(server, address)
  },
  dial: (address) =>
    Effect.acquireRelease(
      Effect.callback<ByteStream, TransportError>((resume) => {
        const socket = Net.createConnection({ host: address.host, port: address.port, noDelay: true, allowHalfOpen: true })
        const failed = (cause: NodeJS.ErrnoException) => resume(Effect.fail(dialError(address, cause)))
        socket.once("error", failed)
        socket.once("connect", () => {
          socket.off("error", failed)
          resume(Effect.succeed(tcpByteStream(socket)))
        })
        return Effect.sync(() => socket.destroy())
      }),
      (stream) => Effect.sync(stream.destroy)
    )
}
