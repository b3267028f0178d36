/**
 * A frame link: whole frames in and out of a transport, the layer the secure
 * channel runs on (PROTOCOL.md). Two kinds exist:
 *
 * - over a transport's byte stream (`makeStreamFrameLink`; TCP, WebSocket,
 *   in memory): u64 length framing, with the version prefix first;
 * - inside a relayed tunnel, where each tunnel message is one inner frame
 *   (`tunnelFrameLink` in message-channel.ts, fed by the outer channel).
 *
 * A link is pushed, like the `ByteStream` below it: its owner (the channel
 * driver, message-channel.ts) installs handlers once with `start`, frames
 * arrive by callback as the bytes do, `write` takes frames at once and says
 * false past the transport's high-water mark (then `drain`), and `pause`
 * stops the transport reading, so TCP pushes back on the sender. No fiber
 * and no queue sit in between: a frame goes from the socket's data event
 * through the decoder straight into the channel's machine.
 */
import * as Data from "effect/Data"
import * as Effect from "effect/Effect"
import { encodeFrameHeader, FrameDecoder, MAX_FRAME_LENGTH } from "../core/frame.ts"
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
  /** The stream ended before the peer's version frame arrived (a relay that refused us at once). */
  readonly beforeVersion?: boolean | undefined
}> {}

/** What a link reports, installed once with `FrameLink.start`. */
export interface FrameLinkHandlers {
  /** One whole frame from the peer, in order. */
  readonly frame: (frame: Uint8Array) => void
  /**
   * After a `write` that returned false: the link takes more now. Also
   * reported once the link is gone, as nothing is left to wait for.
   */
  readonly drain: () => void
  /** No frame will arrive any more (the peer closed, the transport failed, a frame was refused); once. */
  readonly end: (error: LinkError) => void
}

/** Whole frames in and out, driven by events (see the module header). */
export interface FrameLink {
  /** Installs the handlers; frames flow from then on, until `pause`. Call it once. */
  readonly start: (handlers: FrameLinkHandlers) => void
  /**
   * Writes frames in order, at once; false when the transport is past its
   * high-water mark (a `drain` follows). Writes after the link ended are dropped.
   */
  readonly write: (frames: ReadonlyArray<Uint8Array>) => boolean
  /** Stops delivering frames: the transport stops reading, and the peer's writes back up. */
  readonly pause: () => void
  /** Delivers frames again after `pause`. */
  readonly resume: () => void
  /** Bytes the link holds: a partial frame received, and what it has written and the transport has not sent yet (memory accounting). */
  readonly bufferedBytes: () => number
}

/** A frame link over a transport's byte stream. */
export interface StreamFrameLink extends FrameLink {
  /**
   * Closes without losing data either way: FIN once what was written is
   * flushed, then read and drop whatever the peer still sends until its FIN,
   * then destroy; `lingerMs` bounds a peer that never closes. Destroying at
   * once would reset the connection whenever unread bytes sit in the
   * kernel, and a reset makes the peer drop data it has not read yet, both
   * ours and (when it was reading us) its own view of the stream. No frame
   * is delivered any more.
   */
  readonly closeGracefully: (lingerMs: number) => Effect.Effect<void>
  /** Aborts the stream at once. */
  readonly destroy: () => void
}

/**
 * Frames over a byte stream (transport.ts), which this link starts and owns.
 * Our version frame goes out before anything else written (PROTOCOL.md
 * "Version prefix"; the handshake frames may follow it at once, as TCP keeps
 * them in order), and the peer's first frame must be its version: it is
 * checked here and never delivered, and a wrong one ends the link with
 * VersionMismatch. Every frame of a chunk is delivered as it is decoded; a
 * `pause` stops the stream after that chunk, so the owner holds at most one
 * chunk beyond its own bound.
 */
export const makeStreamFrameLink = (
  stream: ByteStream,
  options: { readonly maxFrameLength?: number } = {}
): StreamFrameLink => {
  const decoder = new FrameDecoder(options.maxFrameLength ?? MAX_FRAME_LENGTH)
  let handlers: FrameLinkHandlers | undefined
  let versionSent = false
  let versionReceived = false
  // The owner heard `end`: no frame is delivered any more.
  let ended = false
  let closed = false
  let discarding = false
  const closeWaiters = new Set<() => void>()

  const finish = (reason: LinkError["reason"], message: string) => {
    if (ended) return
    ended = true
    const beforeVersion = !versionReceived && (reason === "Closed" || reason === "Reset")
    handlers?.end(new LinkError({ reason, message, ...(beforeVersion ? { beforeVersion } : {}) }))
  }

  const onData = (chunk: Uint8Array) => {
    if (ended) return // closing gracefully or ended: what still arrives is dropped
    const result = decoder.push(chunk)
    if (result._tag === "Error") return finish("FrameTooLong", result.error.message)
    for (const frame of result.frames) {
      if (ended) return
      if (!versionReceived) {
        const error = checkVersion(frame)
        if (error !== undefined) return finish("VersionMismatch", error.message)
        versionReceived = true
        continue
      }
      handlers!.frame(frame)
    }
  }

  const write = (frames: ReadonlyArray<Uint8Array>): boolean => {
    if (closed) return true
    const pieces: Array<Uint8Array> = []
    if (!versionSent) {
      versionSent = true
      const version = encodeVersion()
      pieces.push(encodeFrameHeader(version.length), version)
    }
    for (const frame of frames) pieces.push(encodeFrameHeader(frame.length), frame)
    return pieces.length === 0 ? true : stream.write(pieces)
  }

  const awaitClose: Effect.Effect<void> = Effect.callback<void>((resume) => {
    if (closed) return resume(Effect.void)
    const waiter = () => resume(Effect.void)
    closeWaiters.add(waiter)
    return Effect.sync(() => {
      closeWaiters.delete(waiter)
    })
  })

  return {
    start: (h) => {
      handlers = h
      stream.start({
        data: onData,
        drain: () => handlers!.drain(),
        end: () => {
          finish("Closed", "the peer closed the connection")
          // Frames have no half close: a peer's FIN ends the link, so ours
          // follows once what was written is flushed, and the stream closes.
          stream.end()
        },
        close: (error) => {
          closed = true
          if (error === undefined) finish("Closed", "the peer closed the connection")
          else {
            const [reason, message] = linkFailureOf(error)
            finish(reason, message)
          }
          handlers!.drain()
          for (const waiter of closeWaiters) waiter()
          closeWaiters.clear()
        }
      })
      write([])
    },
    write,
    pause: () => {
      if (!discarding) stream.pause()
    },
    resume: () => {
      if (!discarding) stream.resume()
    },
    bufferedBytes: () => decoder.bufferedBytes + stream.writableLength(),
    closeGracefully: (lingerMs) =>
      Effect.suspend(() => {
        if (closed) return Effect.void
        finish("Closed", "the connection is closing")
        discarding = true
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

// A transport's failure as the link's: a WebSocket message over the cap is
// this transport's frame too long, and a text message a protocol breach, so
// the relay closes and counts them as it does the TCP equivalents.
const linkFailureOf = (error: TransportError): readonly [LinkError["reason"], string] => {
  switch (error.reason) {
    case "MessageTooLarge":
      return ["FrameTooLong", error.message]
    case "Protocol":
      return ["Protocol", error.message]
    default:
      return ["Reset", error.message]
  }
}
