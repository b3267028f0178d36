/**
 * The WebSocket transport's portable half: a `ByteStream` (transport.ts)
 * over WebSocket messages, and dialing with the runtime's own `WebSocket`
 * (browsers, Deno, Bun, Node 22+). No `node:` import here: the browser
 * bundle carries this file. The relay's side (accepting, with the `ws`
 * package) is transport-ws.ts.
 *
 * The rule of the transport: the bytes of the binary messages, concatenated,
 * are exactly the byte stream a TCP client sends. A message may hold part
 * of a frame or several frames; a text message is a protocol breach. We send
 * messages of at most WS_MAX_MESSAGE_BYTES (a relay refuses bigger ones), so
 * a 1 MiB frame goes out as several messages.
 *
 * WebSocket has no half close: `end()` sends the close frame after what was
 * written, and the peer's close frame is reported as `end` then `close`,
 * which is all frame-link.ts needs (it ends the link on the peer's end).
 *
 * Backpressure: writing reports "full" while the socket's `bufferedAmount`
 * is past its high-water mark (the relay: its TCP socket's; a dialer:
 * WS_HIGH_WATER_BYTES); `drain` comes from the socket when it has a
 * drain event (the relay's side), else from polling `bufferedAmount` while a
 * writer waits (a runtime WebSocket has no drain event). Reading: where the
 * runtime cannot stop reading (a runtime WebSocket), messages that arrive
 * while the stream is paused are held in order and handed over on `resume`,
 * so the driver's pulled reads still see one chunk at a time.
 */
import * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"
import { relayWebSocketUrl, type RelayScheme } from "../core/relay-address.ts"
import { type ByteStream, type StreamHandlers, type Transport, type TransportAddress, TransportError } from "./transport.ts"
import { concatBytes } from "../core/bytes.ts"

/**
 * Largest WebSocket message either side sends, and the relay's default cap
 * on what it takes (`--ws-max-message-bytes`): a message is buffered whole
 * before it can be read, so the cap bounds what a stranger can make the relay
 * hold per connection before it proves a key (TCP: HANDSHAKE_FRAME_LIMIT).
 */
export const WS_MAX_MESSAGE_BYTES = 64 * 1024

/** A writer is told to wait while this many bytes are queued in the socket. */
export const WS_HIGH_WATER_BYTES = 256 * 1024

/** How often a waiting writer looks at `bufferedAmount` where no drain event exists. */
const DRAIN_POLL_MS = 5

/** The clean close codes: normal, going away, none given. Others are failures. */
const CLEAN_CLOSE_CODES: ReadonlySet<number> = new Set([1000, 1001, 1005])

/** What a message stream needs from one WebSocket, whichever library holds it. */
export interface MessageSocket {
  /** The peer's address (an IP on the relay's side, the host on the dialer's). */
  readonly remoteAddress: string
  /** Sends one binary message. */
  readonly send: (message: Uint8Array) => void
  /** Bytes queued and not yet handed to the network. */
  readonly bufferedAmount: () => number
  /** Past this many queued bytes a writer waits for drain (default WS_HIGH_WATER_BYTES). */
  readonly highWaterBytes?: number | undefined
  /** Sends a close frame (after what is queued) with this code and reason. */
  readonly close: (code: number, reason: string) => void
  /** Drops the connection at once. */
  readonly abort: () => void
  /** Stops reading from the network, where the library can (the relay's `ws`). */
  readonly pauseReading: () => void
  readonly resumeReading: () => void
  /**
   * Calls `onDrain` once the queue is below the high-water mark again; where
   * the library has no drain event, undefined (the stream polls).
   */
  readonly onceDrained: ((onDrain: () => void) => void) | undefined
}

/** What the library wiring tells the stream: a message arrived, or the socket closed. */
export interface MessageStreamInput {
  /** A message arrived: binary (bytes) or text (a breach of the transport's rule). */
  readonly received: (message: Uint8Array | string) => void
  /** The socket closed with this code and reason; `failure` overrides the code's meaning (an error seen before). */
  readonly closed: (code: number, reason: string, failure?: TransportError) => void
}

/**
 * A ByteStream over one open WebSocket. The caller wires the library's
 * message and close events to the returned `input`.
 */
export const makeMessageByteStream = (socket: MessageSocket): { readonly stream: ByteStream; readonly input: MessageStreamInput } => {
  let handlers: StreamHandlers | undefined
  // Messages not handed over yet: before `start`, and while paused.
  const held: Array<Uint8Array> = []
  let paused = false
  // How the socket ended, once it has, until `held` is handed over.
  let ending: { readonly failure: TransportError | undefined } | undefined
  let reported = false
  let ended = false
  let drainWanted = false
  const highWater = socket.highWaterBytes ?? WS_HIGH_WATER_BYTES

  // The last events: `end` when the peer closed cleanly, then `close`.
  const report = (failure: TransportError | undefined, peerEnded: boolean) => {
    if (reported) return
    reported = true
    held.length = 0
    if (handlers === undefined) return
    if (peerEnded && failure === undefined) handlers.end()
    handlers.close(failure)
  }

  // Hands over held messages while not paused, then the end once they are gone.
  const flush = () => {
    if (handlers === undefined || reported) return
    while (!paused && held.length > 0) handlers.data(held.shift()!) // length checked
    if (!paused && held.length === 0 && ending !== undefined) report(ending.failure, true)
  }

  // Refuses the peer's bytes: a close frame saying why, and the failure reported now.
  const refuse = (code: number, failure: TransportError) => {
    if (reported || ending !== undefined) return
    ending = { failure }
    socket.close(code, failure.message.slice(0, 120)) // a close reason has at most 123 bytes
    held.length = 0
    flush()
  }

  const checkDrain = () => {
    if (!drainWanted || reported) return
    if (socket.bufferedAmount() > highWater) {
      if (socket.onceDrained !== undefined) socket.onceDrained(checkDrain)
      else setTimeout(checkDrain, DRAIN_POLL_MS)
      return
    }
    drainWanted = false
    handlers?.drain()
  }

  const input: MessageStreamInput = {
    received: (message) => {
      if (reported || ending !== undefined) return
      if (typeof message === "string") {
        return refuse(
          1003,
          new TransportError({
            reason: "Protocol",
            message: "a WebSocket text message: the offset relay protocol sends binary messages only"
          })
        )
      }
      held.push(message)
      flush()
    },
    closed: (code, reason, failure) => {
      if (reported || ending !== undefined) return
      ending = {
        failure: failure ?? (CLEAN_CLOSE_CODES.has(code)
          ? undefined
          : new TransportError({
            reason: "Reset",
            message: `the WebSocket closed with code ${code}${reason === "" ? "" : ` (${reason})`}`,
            code: String(code)
          }))
      }
      flush()
    }
  }

  const stream: ByteStream = {
    remoteAddress: socket.remoteAddress,
    start: (h) => {
      handlers = h
      flush()
    },
    write: (chunks) => {
      if (ended || reported || ending !== undefined) return true
      // One message for a frame's header and body (one copy): a header alone
      // in its own message would wait for the peer's delayed ACK where the
      // runtime leaves Nagle on, as a small TCP write does.
      const bytes = chunks.length === 1 ? chunks[0]! : concatBytes(chunks)
      for (let at = 0; at < bytes.length; at += WS_MAX_MESSAGE_BYTES) {
        socket.send(bytes.length <= WS_MAX_MESSAGE_BYTES ? bytes : bytes.subarray(at, at + WS_MAX_MESSAGE_BYTES))
      }
      if (socket.bufferedAmount() <= highWater) return true
      if (!drainWanted) {
        drainWanted = true
        checkDrain()
      }
      return false
    },
    writableLength: socket.bufferedAmount,
    pause: () => {
      paused = true
      socket.pauseReading()
    },
    resume: () => {
      paused = false
      socket.resumeReading()
      flush()
    },
    end: () => {
      if (ended || reported) return
      ended = true
      socket.close(1000, "")
    },
    destroy: () => {
      if (reported) return
      socket.abort()
      report(undefined, false)
    }
  }
  return { stream, input }
}

/**
 * Dials `ws://host:port/` (or wss://) with the runtime's WebSocket. The
 * stream is destroyed when the scope closes.
 */
export const dialWebSocket = (
  scheme: RelayScheme,
  address: TransportAddress
): Effect.Effect<ByteStream, TransportError, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.callback<ByteStream, TransportError>((resume) => {
      const url = relayWebSocketUrl({ scheme, host: address.host, port: address.port })
      const failed = (detail: string) =>
        resume(Effect.fail(new TransportError({ reason: "Unreachable", message: `cannot connect to ${url}: ${detail}` })))
      const Socket = (globalThis as { WebSocket?: typeof WebSocket }).WebSocket
      if (Socket === undefined) {
        failed("this runtime has no WebSocket (Node 22 or later, Deno, Bun and browsers have one)")
        return Effect.void
      }
      let socket: WebSocket
      try {
        socket = new Socket(url)
      } catch (cause) {
        failed(cause instanceof Error ? cause.message : String(cause))
        return Effect.void
      }
      socket.binaryType = "arraybuffer"
      let opened = false
      socket.onerror = (event) => {
        if (opened) return
        const detail = (event as { message?: unknown }).message
        failed(
          `the WebSocket connection failed${typeof detail === "string" && detail !== "" ? ` (${detail})` : ""}: ` +
            "is the relay running with --ws-port there, and does its --ws-allowed-origins admit this page?"
        )
      }
      socket.onclose = (event) => {
        if (!opened) failed(`the relay closed the WebSocket before it opened (code ${event.code})`)
      }
      socket.onopen = () => {
        opened = true
        const { input, stream } = makeMessageByteStream({
          remoteAddress: address.host,
          // Our chunks are never views of a SharedArrayBuffer, which the DOM's type leaves out.
          send: (message) => socket.send(message as Uint8Array<ArrayBuffer>),
          bufferedAmount: () => socket.bufferedAmount,
          close: (code, reason) => socket.close(code, reason),
          // A runtime WebSocket has no abort: the close frame is the quickest end it offers.
          abort: () => socket.close(1000, ""),
          pauseReading: () => {},
          resumeReading: () => {},
          onceDrained: undefined
        })
        socket.onmessage = (event) => {
          const data: unknown = event.data
          input.received(typeof data === "string" ? data : new Uint8Array(data as ArrayBuffer))
        }
        socket.onclose = (event) => input.closed(event.code, event.reason)
        socket.onerror = null
        resume(Effect.succeed(stream))
      }
      // Interrupted while connecting (a deadline, the scope): give the attempt up.
      return Effect.sync(() => {
        if (!opened) socket.close()
      })
    }),
    (stream) => Effect.sync(stream.destroy)
  )

/**
 * A transport that dials relays over ws:// or wss:// with the runtime's
 * WebSocket, and cannot listen (a browser cannot accept connections; the
 * relay's side is transport-ws.ts).
 */
export const webSocketDialTransport = (scheme: RelayScheme): Transport => ({
  name: scheme,
  listen: (address) =>
    Effect.fail(
      new TransportError({
        reason: "ListenFailed",
        message: `cannot listen on ${scheme}://${address.host}:${address.port} with a runtime WebSocket: ` +
          "only the relay accepts WebSocket connections (offset-relay serve --ws-port)"
      })
    ),
  dial: (address) => dialWebSocket(scheme, address)
})
