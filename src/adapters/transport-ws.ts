/**
 * The WebSocket transport on Node (transport.ts): the relay accepts
 * WebSocket connections (RFC 6455, binary messages) at `ws://host:port/`
 * with the `ws` package on an HTTP server of our own (HTTPS for wss:// when
 * a certificate is given), and dials with the runtime's WebSocket
 * (transport-ws-dial.ts, which also holds the stream and its rules).
 *
 * What the relay refuses before a connection is a stream:
 * - an `Origin` not on the allow-list (403), a path other than `/` (404),
 *   a request that is not a WebSocket upgrade (426, or the handler given,
 *   e.g. the web page);
 * - an upgrade whose headers take longer than REQUEST_TIMEOUT_MS.
 * After the upgrade the stream goes through the relay's admission like a TCP
 * socket. The `ws` library caps messages at `maxMessageBytes` (a bigger one
 * closes with 1009 and ends the stream as MessageTooLarge), answers pings,
 * and runs without compression (ciphertext does not compress, and
 * permessage-deflate costs memory per connection).
 *
 * Reading stops for real: `pause` pauses the WebSocket, which stops reading
 * its socket, so TCP pushes back on the client as it does for a TCP
 * connection. Writing: the upgraded socket is ours, so its buffer and its
 * drain event give the backpressure.
 */
import * as Http from "node:http"
import * as Https from "node:https"
import type * as Net from "node:net"
import type { Duplex } from "node:stream"
import * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"
import { type RawData, WebSocket as NodeWebSocket, WebSocketServer } from "ws"
import type { RelayScheme } from "../core/relay-address.ts"
import type { ByteStream, Transport, TransportAddress } from "./transport.ts"
import { TransportError } from "./transport.ts"
import { dialWebSocket, makeMessageByteStream, WS_MAX_MESSAGE_BYTES } from "./transport-ws-dial.ts"
import { listenServer } from "./transport-tcp.ts"

/** How the relay's WebSocket port behaves. */
export interface WebSocketListenOptions {
  /** Largest message taken (default WS_MAX_MESSAGE_BYTES). */
  readonly maxMessageBytes?: number | undefined
  /** `Origin` values admitted (exact match, e.g. "https://app.example.org"); undefined admits any. */
  readonly allowedOrigins?: ReadonlyArray<string> | undefined
  /** PEM certificate and key: serve wss:// (HTTPS) instead of ws://. */
  readonly tls?: { readonly cert: string | Buffer; readonly key: string | Buffer } | undefined
  /**
   * Take the client's address from the last `X-Forwarded-For` entry (set by
   * a reverse proxy in front) instead of the socket's peer, for the relay's
   * per-address limits. Only behind a proxy that sets it: anyone else could
   * claim any address.
   */
  readonly trustForwardedFor?: boolean | undefined
  /**
   * Answers plain HTTP requests (not upgrades), e.g. the web page; without
   * it they get 426 and a line saying what this port is.
   */
  readonly onHttpRequest?: ((request: Http.IncomingMessage, response: Http.ServerResponse) => void) | undefined
}

/** Bound on an upgrade request's headers: a client that sends them slowly holds a socket outside admission until then. */
const REQUEST_TIMEOUT_MS = 10_000

/**
 * The WebSocket transport: listens with `ws` as `options` say, dials
 * ws:// (or wss:// when `options.tls` is set) with the runtime's WebSocket.
 */
export const webSocketTransport = (options: WebSocketListenOptions = {}): Transport => {
  const scheme: RelayScheme = options.tls === undefined ? "ws" : "wss"
  return {
    name: scheme,
    listen: (address, onStream) => listenWebSocket(address, options, onStream),
    dial: (address) => dialWebSocket(scheme, address)
  }
}

const listenWebSocket = (
  address: TransportAddress,
  options: WebSocketListenOptions,
  onStream: (stream: ByteStream) => void
): Effect.Effect<TransportAddress, TransportError, Scope.Scope> =>
  Effect.suspend(() => {
    const sockets = new WebSocketServer({
      noServer: true,
      maxPayload: options.maxMessageBytes ?? WS_MAX_MESSAGE_BYTES,
      perMessageDeflate: false,
      clientTracking: false
    })
    const server: Http.Server | Https.Server = options.tls === undefined
      ? Http.createServer()
      : Https.createServer({ cert: options.tls.cert, key: options.tls.key })
    server.headersTimeout = REQUEST_TIMEOUT_MS
    server.requestTimeout = REQUEST_TIMEOUT_MS
    server.on("request", (request: Http.IncomingMessage, response: Http.ServerResponse) => {
      if (options.onHttpRequest !== undefined) return options.onHttpRequest(request, response)
      response.writeHead(426, { "content-type": "text/plain; charset=utf-8", upgrade: "websocket" })
      response.end("This is an offset-relay WebSocket port: connect with a WebSocket client (a <key>@ws://host:port relay address).\n")
    })
    server.on("upgrade", (request: Http.IncomingMessage, socket: Duplex, head: Buffer) => {
      const refusal = refusalOf(request, options.allowedOrigins)
      if (refusal !== undefined) return refuseUpgrade(socket, refusal.status, refusal.text)
      const ip = clientAddress(request, options.trustForwardedFor === true)
      sockets.handleUpgrade(request, socket, head, (webSocket) => {
        onStream(relayStream(webSocket, socket as Net.Socket, ip))
      })
    })
    return listenServer(server, address, "WebSocket connections")
  })

// Why an upgrade is refused before it is one, or undefined.
const refusalOf = (
  request: Http.IncomingMessage,
  allowedOrigins: ReadonlyArray<string> | undefined
): { readonly status: number; readonly text: string } | undefined => {
  const path = (request.url ?? "/").split("?")[0]
  if (path !== "/") return { status: 404, text: `no WebSocket at ${path}: the relay serves it at /` }
  if (allowedOrigins === undefined) return undefined
  const origin = request.headers.origin
  if (origin !== undefined && allowedOrigins.includes(origin)) return undefined
  return {
    status: 403,
    text: origin === undefined
      ? "this relay admits only the origins on its --ws-allowed-origins list, and the request has no Origin"
      : `origin ${origin} is not on this relay's --ws-allowed-origins list`
  }
}

const refuseUpgrade = (socket: Duplex, status: number, text: string) => {
  socket.end(
    `HTTP/1.1 ${status} ${Http.STATUS_CODES[status] ?? ""}\r\nconnection: close\r\ncontent-type: text/plain; charset=utf-8\r\n` +
      `content-length: ${Buffer.byteLength(text) + 1}\r\n\r\n${text}\n`
  )
}

const clientAddress = (request: Http.IncomingMessage, trustForwardedFor: boolean): string => {
  if (trustForwardedFor) {
    const header = request.headers["x-forwarded-for"]
    const entries = (Array.isArray(header) ? header.join(",") : header ?? "").split(",").map((e) => e.trim()).filter((e) => e !== "")
    // The last entry is the one our proxy added: the earlier ones are the client's claims.
    const last = entries[entries.length - 1]
    if (last !== undefined) return last
  }
  return request.socket.remoteAddress ?? "unknown"
}

// A ByteStream over an upgraded connection: `socket` is the TCP (or TLS)
// socket under the WebSocket, which `ws` writes into directly.
const relayStream = (webSocket: NodeWebSocket, socket: Net.Socket, ip: string): ByteStream => {
  let failure: TransportError | undefined
  const { input, stream } = makeMessageByteStream({
    remoteAddress: ip,
    send: (message) => webSocket.send(message, { binary: true }),
    bufferedAmount: () => socket.writableLength,
    // As a TCP connection's: the relay holds no more per WebSocket than per TCP socket.
    highWaterBytes: socket.writableHighWaterMark,
    close: (code, reason) => webSocket.close(code, reason),
    abort: () => webSocket.terminate(),
    pauseReading: () => webSocket.pause(),
    resumeReading: () => webSocket.resume(),
    onceDrained: (onDrain) => socket.once("drain", onDrain)
  })
  webSocket.on("message", (data: RawData, isBinary: boolean) => {
    if (!isBinary) return input.received("text")
    // binaryType "nodebuffer" (the default) gives one Buffer per message.
    input.received(data as Buffer)
  })
  webSocket.on("error", (cause: Error & { code?: string }) => {
    failure ??= cause.code === "WS_ERR_UNSUPPORTED_MESSAGE_LENGTH"
      ? new TransportError({
        reason: "MessageTooLarge",
        message: `a WebSocket message over the relay's cap (${cause.message}); send messages of at most the cap, a frame may span several`,
        code: cause.code
      })
      : new TransportError({ reason: "Protocol", message: `the WebSocket broke its protocol: ${cause.message}`, code: cause.code })
  })
  webSocket.on("close", (code: number, reason: Buffer) => input.closed(code, reason.toString("utf8"), failure))
  return stream
}
