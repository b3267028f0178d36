/**
 * The transport interface: how the relay server and the clients reach each
 * other's bytes. A transport listens (and hands over each accepted stream)
 * and dials; a `ByteStream` is one connection's bytes both ways, with
 * backpressure (`write` returns false, then `drain`), pause/resume of
 * reading, half close (`end`) and abort (`destroy`), reported through the
 * handlers installed once with `start`.
 *
 * Everything above this interface (frames, the secure channel, the relay
 * core's driver, the client machines) is the same for every transport: TCP
 * (transport-tcp.ts) today, an in-memory network for simulation and
 * WebSocket for browsers plug in here. The shape follows Node's sockets,
 * so the TCP implementation is thin, but it is a plain interface with
 * explicit handlers: a transport needs no EventEmitter, and a driver gets
 * exactly four events, in a fixed order (data* → end? → close).
 */
import * as Data from "effect/Data"
import type * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"

/** Why a stream or a listener failed. */
export class TransportError extends Data.TaggedError("TransportError")<{
  readonly reason:
    | "Refused" // nobody listens there (or the dial was refused by a limit before any byte)
    | "Unreachable" // no route, name does not resolve, dial timed out
    | "Reset" // the connection failed after it was made
    | "AddressInUse" // listen: the address is taken
    | "ListenFailed" // listen: any other reason (permissions, bad address)
    | "Protocol" // the peer broke the transport's own rules (WebSocket: a text message)
    | "MessageTooLarge" // WebSocket: a message over the transport's size cap
  readonly message: string
  /** The platform's error code (ECONNRESET, EADDRINUSE, ...), when there is one. */
  readonly code?: string | undefined
}> {}

/** What a stream reports, installed once with `ByteStream.start`. */
export interface StreamHandlers {
  /**
   * Bytes arrived, in order. The chunk is the handler's to keep: a transport
   * never reuses it.
   */
  readonly data: (chunk: Uint8Array) => void
  /** After a `write` that returned false: the stream can take more now. */
  readonly drain: () => void
  /** The peer half-closed: no more data will arrive (writing may go on). */
  readonly end: () => void
  /**
   * The stream is gone and nothing more will be reported. `error` says it
   * failed (reset, write after the peer vanished) rather than closed after
   * both ends or our own `destroy`.
   */
  readonly close: (error: TransportError | undefined) => void
}

/** One connection's bytes, both ways. */
export interface ByteStream {
  /**
   * The peer's address as this transport sees it: an IP address for TCP and
   * WebSocket (admission groups connections by its prefix), a name for the
   * in-memory network.
   */
  readonly remoteAddress: string
  /**
   * Installs the handlers; data flows from then on, until `pause`. Call it
   * once. A stream accepted or dialed and never started holds its bytes
   * (the peer's writes back up), so nothing is lost before the driver is
   * ready.
   */
  readonly start: (handlers: StreamHandlers) => void
  /**
   * Queues the chunks in order (a frame header and its body go in one call).
   * False when the stream's buffer is past its high-water mark: write no more
   * until `drain`. Writes after `end` or `destroy` are dropped.
   */
  readonly write: (chunks: ReadonlyArray<Uint8Array>) => boolean
  /** Bytes written and not yet handed to the network (memory accounting). */
  readonly writableLength: () => number
  /** Stops reading: the peer's writes back up into the transport (TCP's window). */
  readonly pause: () => void
  /** Reads again after `pause`. */
  readonly resume: () => void
  /** Half-closes once everything written is flushed; reading goes on until the peer's end. */
  readonly end: () => void
  /** Aborts at once: unsent bytes are dropped, `close` follows without an error. */
  readonly destroy: () => void
}

/** Where to listen or dial: a host and a port (0 to listen on any free port). */
export interface TransportAddress {
  readonly host: string
  readonly port: number
}

/** A transport: listen for streams, dial them. */
export interface Transport {
  /** A short name for logs and addresses ("tcp", "ws", "memory"). */
  readonly name: string
  /**
   * Listens on `address`, handing every accepted stream (not started) to
   * `onStream`, until the scope closes. Succeeds with the address actually
   * bound (the port chosen when 0 was asked).
   */
  readonly listen: (
    address: TransportAddress,
    onStream: (stream: ByteStream) => void
  ) => Effect.Effect<TransportAddress, TransportError, Scope.Scope>
  /**
   * Opens a stream to `address`. The stream is destroyed when the scope
   * closes (a graceful close, if wanted, runs before that).
   */
  readonly dial: (address: TransportAddress) => Effect.Effect<ByteStream, TransportError, Scope.Scope>
}
