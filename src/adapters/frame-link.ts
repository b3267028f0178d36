/**
 * A frame link: whole frames in and out of a transport, the layer the secure
 * channel runs on (PROTOCOL.md). Two kinds exist:
 *
 * - over a transport's byte stream (`makeStreamFrameLink`; TCP, WebSocket,
 *   in memory): u64 length framing, with the version prefix exchanged first
 *   (`exchangeVersion`);
 * - inside a relayed tunnel, where each tunnel message is one inner frame
 *   (built from a `MessageChannel` in message-channel.ts).
 *
 * Reads pull from the stream only when asked, so a caller that stops reading
 * stops the transport: backpressure reaches the sender without buffering
 * here beyond one chunk.
 */
import * as Data from "effect/Data"
import * as Effect from "effect/Effect"
import { encodeFrameHeader, FRAME_HEADER_LENGTH, FrameDecoder, MAX_FRAME_LENGTH } from "../core/frame.ts"
import { checkVersion, encodeVersion } from "../core/version.ts"
import type { ByteStream, TransportError } from "./transport.ts"

/** Why a frame link stopped. */
export class LinkError extends Data.TaggedError("LinkError")<{
  readonly reason:
    | "Closed" // the peer ended the stream cleanly
    | "Reset" // the transport failed (reset, write after close, ...)
    | "FrameTooLong"
    | "VersionMismatch"
    | "Protocol" // the transport below refused the peer's bytes (a WebSocket text message)
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

/** A frame link over a transport's byte stream. */
export interface StreamFrameLink extends FrameLink {
  /**
   * Caps the next `count` frames at `bytes` each: a longer one, or a partial
   * one already holding more, ends the link with FrameTooLong. A relay caps
   * the handshake frames (version, ExchangeRandNonce, ExchangeDh: a few
   * hundred bytes) so strangers cannot make it buffer 1 MiB each; counting
   * frames, not waiting for a signal, lifts the cap exactly after the last
   * handshake frame, before any transport frame is decoded.
   */
  readonly limitNextFrames: (count: number, bytes: number) => void
  /**
   * Closes without losing data either way: FIN once what was written is
   * flushed, then read and drop whatever the peer still sends until its FIN,
   * then destroy; `lingerMs` bounds a peer that never closes. Destroying at
   * once would reset the connection whenever unread bytes sit in the
   * kernel, and a reset makes the peer drop data it has not read yet, both
   * ours and (when it was reading us) its own view of the stream. Pending
   * and later reads fail as the link is closed.
   */
  readonly closeGracefully: (lingerMs: number) => Effect.Effect<void>
  /** Aborts the stream at once. */
  readonly destroy: () => void
}

/**
 * Frames over a byte stream (transport.ts), which this link starts and owns.
 * Reading is pulled: after each chunk the stream is paused until a read
 * finds no decoded frame left, so a caller that stops reading stops the
 * transport (TCP's window) with at most one chunk decoded ahead.
 */
export const makeStreamFrameLink = (
  stream: ByteStream,
  options: { readonly maxFrameLength?: number } = {}
): StreamFrameLink => {
  const decoder = new FrameDecoder(options.maxFrameLength ?? MAX_FRAME_LENGTH)
  // Frames decoded and not handed out yet.
  let ready: Array<Uint8Array> = []
  let readyBytes = 0
  let readIndex = 0
  // Bytes read since the throttle last ran.
  let unthrottledBytes = 0
  let ended: LinkError | undefined
  let closed = false
  let discarding = false
  let throttle: ((bytes: number) => Effect.Effect<void>) | undefined
  let throttling = false
  // The next `limitedFrames` frames may hold at most `frameLimit` bytes.
  let limitedFrames = 0
  let frameLimit = 0
  // The one reader waiting for data, the one writer waiting for drain, and
  // whoever waits for the stream to close.
  let wakeReader: (() => void) | undefined
  let wakeWriter: (() => void) | undefined
  const closeWaiters = new Set<() => void>()

  const takeReady = (): Uint8Array | undefined => {
    if (readIndex < ready.length) {
      const frame = ready[readIndex]!
      ready[readIndex++] = EMPTY // drop the reference: frames can be 1 MiB
      readyBytes -= frame.length
      if (readIndex === ready.length) {
        ready = []
        readIndex = 0
      }
      return frame
    }
    return undefined
  }

  const endWith = (error: LinkError) => {
    ended ??= error
  }

  const decode = (chunk: Uint8Array) => {
    const result = decoder.push(chunk)
    if (result._tag === "Error") {
      return endWith(new LinkError({ reason: "FrameTooLong", message: result.error.message }))
    }
    for (const frame of result.frames) {
      if (limitedFrames > 0) {
        limitedFrames--
        if (frame.length > frameLimit) return endWith(overFrameLimit(frame.length, frameLimit))
      }
      ready.push(frame)
      readyBytes += frame.length
    }
    // The decoder only knows the full limit; a capped partial frame is
    // refused once it holds more than its cap.
    if (limitedFrames > 0 && decoder.bufferedBytes > frameLimit + FRAME_HEADER_LENGTH) {
      endWith(overFrameLimit(decoder.bufferedBytes - FRAME_HEADER_LENGTH, frameLimit))
    }
  }

  const wake = () => {
    const reader = wakeReader
    wakeReader = undefined
    reader?.()
  }

  stream.start({
    data: (chunk) => {
      if (discarding) return
      stream.pause()
      if (ended !== undefined) return
      unthrottledBytes += chunk.length
      decode(chunk)
      wake()
    },
    drain: () => {
      const writer = wakeWriter
      wakeWriter = undefined
      writer?.()
    },
    end: () => {
      endWith(new LinkError({ reason: "Closed", message: "the peer closed the connection" }))
      wake()
      // Frames have no half close: a peer's FIN ends the link, so ours
      // follows once what was written is flushed, and the stream closes.
      stream.end()
    },
    close: (error) => {
      closed = true
      endWith(error === undefined ? new LinkError({ reason: "Closed", message: "the peer closed the connection" }) : linkErrorOf(error))
      wake()
      const writer = wakeWriter
      wakeWriter = undefined
      writer?.()
      for (const waiter of closeWaiters) waiter()
      closeWaiters.clear()
    }
  })

  // Waits for the next chunk (or the end), reading again first.
  const awaitData: Effect.Effect<void> = Effect.callback<void>((resume) => {
    wakeReader = () => resume(Effect.void)
    stream.resume()
    return Effect.sync(() => {
      wakeReader = undefined
    })
  })

  const read: Effect.Effect<Uint8Array, LinkError> = Effect.suspend(() => {
    const frame = takeReady()
    if (frame !== undefined) return Effect.succeed(frame)
    if (ended !== undefined) return Effect.fail(ended)
    if (throttle !== undefined && unthrottledBytes > 0) {
      const bytes = unthrottledBytes
      unthrottledBytes = 0
      throttling = true
      return Effect.ensuring(throttle(bytes), Effect.sync(() => {
        throttling = false
      })).pipe(Effect.andThen(awaitData), Effect.andThen(read))
    }
    unthrottledBytes = 0
    return Effect.andThen(awaitData, read)
  })

  const writeClosed = () => new LinkError({ reason: "Reset", message: "cannot write: the connection is closed" })

  const awaitDrain: Effect.Effect<void, LinkError> = Effect.callback<void, LinkError>((resume) => {
    if (closed) return resume(Effect.fail(writeClosed()))
    wakeWriter = () => resume(closed ? Effect.fail(writeClosed()) : Effect.void)
    return Effect.sync(() => {
      wakeWriter = undefined
    })
  })

  const write = (frames: ReadonlyArray<Uint8Array>): Effect.Effect<void, LinkError> =>
    Effect.suspend(() => {
      if (frames.length === 0) return Effect.void
      if (closed) return Effect.fail(writeClosed())
      const pieces: Array<Uint8Array> = []
      for (const frame of frames) pieces.push(encodeFrameHeader(frame.length), frame)
      return stream.write(pieces) ? Effect.void : awaitDrain
    })

  const awaitClose: Effect.Effect<void> = Effect.callback<void>((resume) => {
    if (closed) return resume(Effect.void)
    const waiter = () => resume(Effect.void)
    closeWaiters.add(waiter)
    return Effect.sync(() => {
      closeWaiters.delete(waiter)
    })
  })

  return {
    read,
    write,
    bufferedBytes: () => decoder.bufferedBytes + readyBytes,
    setReadThrottle: (t) => {
      throttle = t
    },
    readPaused: () => throttling,
    limitNextFrames: (count, bytes) => {
      limitedFrames = count
      frameLimit = bytes
    },
    closeGracefully: (lingerMs) =>
      Effect.suspend(() => {
        if (closed) return Effect.void
        endWith(new LinkError({ reason: "Closed", message: "the connection is closing" }))
        wake()
        discarding = true
        ready = []
        readIndex = 0
        readyBytes = 0
        stream.end()
        stream.resume()
        return awaitClose.pipe(
          Effect.timeoutOrElse({ duration: lingerMs, orElse: () => Effect.void }),
          Effect.ensuring(Effect.sync(stream.destroy))
        )
      }),
    destroy: stream.destroy
  }
}

const EMPTY = new Uint8Array(0)

// A transport's failure as the link's: a WebSocket message over the cap is
// this transport's frame too long, and a text message a protocol breach, so
// the relay closes and counts them as it does the TCP equivalents.
const linkErrorOf = (error: TransportError): LinkError => {
  switch (error.reason) {
    case "MessageTooLarge":
      return new LinkError({ reason: "FrameTooLong", message: error.message })
    case "Protocol":
      return new LinkError({ reason: "Protocol", message: error.message })
    default:
      return new LinkError({ reason: "Reset", message: error.message })
  }
}

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
