/**
 * A frame link: whole frames in and out of a transport, the layer the secure
 * channel runs on (PROTOCOL.md). Two kinds exist:
 *
 * - over a TCP socket (`makeSocketFrameLink`): u64 length framing, with the
 *   version prefix exchanged first (`exchangeVersion`);
 * - inside a relayed tunnel, where each tunnel message is one inner frame
 *   (built from a `MessageChannel` in message-channel.ts).
 *
 * Reads pull from the socket only when asked, so a caller that stops reading
 * stops TCP: backpressure reaches the sender without buffering here beyond
 * one partial frame.
 */
import * as Data from "effect/Data"
import * as Effect from "effect/Effect"
import type * as Net from "node:net"
import type * as Scope from "effect/Scope"
import type * as Socket from "effect/socket/Socket"
import { encodeFrameHeader, FRAME_HEADER_LENGTH, FrameDecoder, MAX_FRAME_LENGTH } from "../core/frame.ts"
import { checkVersion, encodeVersion } from "../core/version.ts"

/** Why a frame link stopped. */
export class LinkError extends Data.TaggedError("LinkError")<{
  readonly reason:
    | "Closed" // the peer ended the stream cleanly
    | "Reset" // the transport failed (reset, write after close, ...)
    | "FrameTooLong"
    | "VersionMismatch"
  readonly message: string
}> {}

/** Whole frames in and out; writes must be serialized by the caller. */
export interface FrameLink {
  /** The next frame; fails with LinkError once the link has ended. */
  readonly read: Effect.Effect<Uint8Array, LinkError>
  /** Writes frames in order; completes once the transport has taken them (waits on backpressure). */
  readonly write: (frames: ReadonlyArray<Uint8Array>) => Effect.Effect<void, LinkError>
  /** Bytes received but not yet handed out as frames: a partial frame and whole ones decoded ahead (memory accounting). */
  readonly bufferedBytes: () => number
  /**
   * Installs a read throttle: after each read of n bytes the link runs
   * `throttle(n)` before reading again, so a delay there slows the peer
   * through TCP backpressure (rate limiting) without dropping anything.
   */
  readonly setReadThrottle: (throttle: ((bytes: number) => Effect.Effect<void>) | undefined) => void
  /**
   * True while a read throttle is holding reads back. The peer's frames
   * (keepalives too) then wait in TCP because of us, so its silence must not
   * count against it; links without a throttle may leave this out.
   */
  readonly readPaused?: () => boolean
}

const fromSocketError = (error: Socket.SocketError): LinkError =>
  error.reason._tag === "SocketCloseError" && error.reason.code === 1000
    ? new LinkError({ reason: "Closed", message: "the peer closed the connection" })
    : new LinkError({ reason: "Reset", message: `connection failed: ${error.message}` })

/** A frame link over a TCP socket. */
export interface SocketFrameLink extends FrameLink {
  /**
   * Caps the next `count` frames at `bytes` each: a longer one, or a partial
   * one already holding more, ends the link with FrameTooLong. A relay caps
   * the handshake frames (version, ExchangeRandNonce, ExchangeDh: a few
   * hundred bytes) so strangers cannot make it buffer 1 MiB each; counting
   * frames, not waiting for a signal, lifts the cap exactly after the last
   * handshake frame, before any transport frame is decoded.
   */
  readonly limitNextFrames: (count: number, bytes: number) => void
}

/**
 * Frames over an Effect socket. The socket's reader and writer live in the
 * current scope: closing it ends the writer (flushing what was written) and
 * closes the connection.
 */
export const makeSocketFrameLink = (
  socket: Socket.Socket,
  options: { readonly maxFrameLength?: number } = {}
): Effect.Effect<SocketFrameLink, LinkError, Scope.Scope> =>
  Effect.gen(function*() {
    const reader = yield* Effect.mapError(socket.reader, fromSocketError)
    const writer = yield* socket.writer
    const decoder = new FrameDecoder(options.maxFrameLength ?? MAX_FRAME_LENGTH)
    // Frames decoded from the last read and not handed out yet.
    let ready: Array<Uint8Array> = []
    let readyBytes = 0
    let readIndex = 0
    let ended: LinkError | undefined
    let throttle: ((bytes: number) => Effect.Effect<void>) | undefined
    let throttling = false
    // The next `limitedFrames` frames may hold at most `frameLimit` bytes.
    let limitedFrames = 0
    let frameLimit = 0

    const takeReady = (): Uint8Array | undefined => {
      if (readIndex < ready.length) {
        const frame = ready[readIndex]!
        ready[readIndex++] = EMPTY // drop the reference: frames can be 1 MiB
        readyBytes -= frame.length
        return frame
      }
      return undefined
    }

    const pullFrames: Effect.Effect<Uint8Array, LinkError> = Effect.suspend(() => {
      const frame = takeReady()
      if (frame !== undefined) return Effect.succeed(frame)
      if (ended !== undefined) return Effect.fail(ended)
      return reader.pull.pipe(
        Effect.mapError((error) => (ended = fromSocketError(error))),
        Effect.flatMap((chunks) => {
          ready = []
          readIndex = 0
          let bytes = 0
          for (const chunk of chunks) {
            if (typeof chunk === "string") continue // net sockets without an encoding never give strings
            bytes += chunk.length
            const result = decoder.push(chunk)
            if (result._tag === "Error") {
              ended = new LinkError({ reason: "FrameTooLong", message: result.error.message })
              break
            }
            for (const f of result.frames) {
              if (limitedFrames > 0) {
                limitedFrames--
                if (f.length > frameLimit) {
                  ended = overFrameLimit(f.length, frameLimit)
                  break
                }
              }
              ready.push(f)
              readyBytes += f.length
            }
            if (ended !== undefined) break
          }
          // The decoder only knows the full limit; a capped partial frame is
          // refused once it holds more than its cap.
          if (ended === undefined && limitedFrames > 0 && decoder.bufferedBytes > frameLimit + FRAME_HEADER_LENGTH) {
            ended = overFrameLimit(decoder.bufferedBytes - FRAME_HEADER_LENGTH, frameLimit)
          }
          if (throttle === undefined) return pullFrames
          throttling = true
          return Effect.andThen(
            Effect.ensuring(throttle(bytes), Effect.sync(() => {
              throttling = false
            })),
            pullFrames
          )
        })
      )
    })

    const write = (frames: ReadonlyArray<Uint8Array>): Effect.Effect<void, LinkError> => {
      const pieces: Array<Uint8Array> = []
      for (const frame of frames) {
        pieces.push(encodeFrameHeader(frame.length), frame)
      }
      if (pieces.length === 0) return Effect.void
      return Effect.mapError(writer.writeAll(pieces as [Uint8Array, ...Array<Uint8Array>]), fromSocketError)
    }

    return {
      read: pullFrames,
      write,
      bufferedBytes: () => decoder.bufferedBytes + readyBytes,
      setReadThrottle: (t) => {
        throttle = t
      },
      readPaused: () => throttling,
      limitNextFrames: (count, bytes) => {
        limitedFrames = count
        frameLimit = bytes
      }
    }
  })

const EMPTY = new Uint8Array(0)

const overFrameLimit = (length: number, limit: number): LinkError =>
  new LinkError({ reason: "FrameTooLong", message: `frame of at least ${length} bytes is over the current limit of ${limit} bytes` })

/**
 * Sends our version frame and checks the peer's (PROTOCOL.md "Version
 * prefix"); a TCP hop does this once, before the secure channel.
 */
export const exchangeVersion = (link: FrameLink): Effect.Effect<void, LinkError> =>
  Effect.gen(function*() {
    yield* link.write([encodeVersion()])
    const frame = yield* link.read
    const error = checkVersion(frame)
    if (error !== undefined) {
      return yield* Effect.fail(new LinkError({ reason: "VersionMismatch", message: error.message }))
    }
  })

/**
 * Closes a TCP connection without losing data either way: FIN once what was
 * written is flushed, then read and drop whatever the peer still sends until
 * its FIN, then destroy; `lingerMs` bounds a peer that never closes.
 * Destroying at once would reset the connection whenever unread bytes sit in
 * the kernel, and a reset makes the peer drop data it has not read yet, both
 * ours and (when it was reading us) its own view of the stream. Run it after
 * the link's other readers have stopped.
 */
export const closeGracefully = (conn: Net.Socket, link: FrameLink, lingerMs: number): Effect.Effect<void> =>
  Effect.gen(function*() {
    if (conn.destroyed) return
    conn.end()
    yield* Effect.all([Effect.ignore(Effect.forever(link.read)), writeFinished(conn)], { concurrency: 2, discard: true })
      .pipe(Effect.timeoutOrElse({ duration: lingerMs, orElse: () => Effect.void }))
    conn.destroy()
  })

// Completes once everything written has been handed to the kernel, or the socket closed.
const writeFinished = (conn: Net.Socket): Effect.Effect<void> =>
  Effect.callback<void>((resume) => {
    if (conn.writableFinished || conn.destroyed) return resume(Effect.void)
    const done = () => resume(Effect.void)
    conn.once("finish", done)
    conn.once("close", done)
    return Effect.sync(() => {
      conn.off("finish", done)
      conn.off("close", done)
    })
  })
