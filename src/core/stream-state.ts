/**
 * A TCP-like byte stream over an end-to-end channel (PROTOCOL.md "Byte
 * streams over a tunnel"): a non-empty message carries stream bytes, an
 * empty message is a half close ("I will send no more"). The tunnel closes
 * once both sides have sent theirs and ours was written, or at once on an
 * error. This machine decides; the adapter moves the bytes.
 *
 * Ending with an error (offset-relay's extension of the convention): a
 * message that begins with STREAM_ERROR_PREFIX (0x00, then the ASCII
 * "offset-relay error:") says "this stream failed on my side, here is why";
 * after the prefix come a code (`[a-z0-9-]{1,32}`, see StreamErrorCode), one
 * space and a UTF-8 text, at most MAX_STREAM_ERROR_BYTES in all. Its sender
 * closes the tunnel right after it, with no half close. So that no data
 * message is ever mistaken for one, a sender never sends a data message that
 * begins with the prefix: such a piece goes out as its first byte alone,
 * then the rest (which cannot begin with the prefix: its only 0x00 is its
 * first byte). A receiver that does not know the rule (an older
 * offset-relay) delivers the message as data and then sees the tunnel close
 * early: it still fails, and its user sees the reason in the output.
 *
 * How to drive it: `stream = new StreamState(config)`, then for each event
 * `stream.handle(event)` and drain `stream.poll()` until it returns
 * undefined, running each command in order before the next event. The
 * machine changes in place and reuses its queue: a write costs no state
 * copy and no command array.
 * - `Write { data }`: the application wrote bytes. Gives one `Send` per
 *   message (at most `maxMessageBytes` each; an empty write sends nothing, so
 *   it can never be mistaken for a half close).
 * - `End`: the application finished writing. Gives `SendEnd` once.
 * - `EndSent`: the adapter's `SendEnd` was taken by the channel.
 * - `Received { data }`: one message from the peer, in order.
 * - `ChannelEnded { message }`: the channel below ended (the peer or the relay
 *   closed it, or it failed).
 * - `Abort { message, tell? }`: the application gave up on the stream;
 *   `tell` (a code and a text) is sent to the peer as the stream's error.
 * Commands: `Send { data }`, `SendEnd`, `SendError { data }` (send it, then
 * close the tunnel: the `Fail` that follows must not close it first),
 * `Deliver { data }`, `DeliverEnd`,
 * `Finish` (both halves closed: close the tunnel), `Fail { error }` (close
 * the tunnel at once and report), `Refuse { error }` (the caller's misuse:
 * fail that one call, nothing else changes). After `Finish` or `Fail` the
 * stream is done and every event but a misuse gives nothing.
 */
import { absurd } from "./absurd.ts"
import { CommandQueue } from "./command-queue.ts"

/** Our half: still writing, end requested but not yet taken by the channel, end sent. */
export type SendingHalf = "open" | "ending" | "ended"

/** The peer's half: still sending, or it sent its end. */
export type ReceivingHalf = "open" | "ended"

/** Why a stream failed, or why a call was refused. */
export interface StreamError {
  readonly _tag: "StreamError"
  readonly reason:
    | "DataAfterEnd" // the peer sent bytes after its half close: a broken peer
    | "ClosedEarly" // the tunnel ended before both sides had finished
    | "Aborted" // the application destroyed the stream
    | "WriteAfterEnd" // (misuse) the application wrote after ending its half
    | "PeerError" // the peer ended the stream with an error (its code in `peerCode`)
  readonly message: string
  /** For "PeerError": the code the peer sent (StreamErrorCode, or one this version does not know). */
  readonly peerCode?: string | undefined
}

/**
 * Why a side ended its stream with an error, as sent to the other side:
 * - "local-refused": its local TCP service refused the connection (a
 *   listener's --forward target is down);
 * - "local-reset": its local TCP connection was reset or failed midway;
 * - "aborted": its application closed the stream without ending it.
 * A receiver shows codes it does not know as they are.
 */
export type StreamErrorCode = "local-refused" | "local-reset" | "aborted"

/** What a side tells its peer when it ends the stream with an error. */
export interface StreamErrorReport {
  readonly code: StreamErrorCode
  /** A short text for people, e.g. the system's error code (ECONNREFUSED); may be empty. */
  readonly text: string
}

/** The first bytes of a stream error message: 0x00, then ASCII "offset-relay error:". */
export const STREAM_ERROR_PREFIX: Uint8Array = new Uint8Array([0, ...new TextEncoder().encode("offset-relay error:")])

/** Largest stream error message; a longer text is cut. */
export const MAX_STREAM_ERROR_BYTES = 1024

/** The message that ends a stream with `report` (see the module header). */
export const encodeStreamError = (report: StreamErrorReport): Uint8Array => {
  const encoder = new TextEncoder()
  const head = encoder.encode(`${report.code} `)
  const room = MAX_STREAM_ERROR_BYTES - STREAM_ERROR_PREFIX.length - head.length
  let text = encoder.encode(report.text)
  if (text.length > room) {
    // Cut on a character boundary: drop UTF-8 continuation bytes at the cut.
    let end = room
    while (end > 0 && (text[end]! & 0xc0) === 0x80) end--
    text = text.subarray(0, end)
  }
  const out = new Uint8Array(STREAM_ERROR_PREFIX.length + head.length + text.length)
  out.set(STREAM_ERROR_PREFIX, 0)
  out.set(head, STREAM_ERROR_PREFIX.length)
  out.set(text, STREAM_ERROR_PREFIX.length + head.length)
  return out
}

/** True when a received message is a stream error message. */
export const isStreamError = (data: Uint8Array): boolean => startsWithPrefix(data)

/**
 * Reads a stream error message: its code and text. A message that has the
 * prefix but no valid code still ends the stream, with code "unknown".
 */
export const decodeStreamError = (data: Uint8Array): { readonly code: string; readonly text: string } => {
  const rest = new TextDecoder("utf-8", { fatal: false }).decode(
    data.subarray(STREAM_ERROR_PREFIX.length, MAX_STREAM_ERROR_BYTES)
  )
  const match = /^([a-z0-9-]{1,32}) ?([\s\S]*)$/.exec(rest)
  // Control characters would let a peer draw on our terminal.
  const clean = (text: string) => text.replace(/[\u0000-\u001f\u007f]/g, " ").trim()
  return match === null ? { code: "unknown", text: clean(rest) } : { code: match[1]!, text: clean(match[2]!) }
}

/** How a peer's stream error reads to our user. */
export const describeStreamError = (code: string, text: string): string => {
  const detail = text === "" ? "" : ` (${text})`
  switch (code) {
    case "local-refused":
      return `the peer's local service refused the connection${detail}`
    case "local-reset":
      return `the peer's local connection was reset or failed${detail}`
    case "aborted":
      return `the peer aborted the stream${detail}`
    default:
      return `the peer ended the stream with an error: ${code}${detail}`
  }
}

const startsWithPrefix = (data: Uint8Array): boolean => {
  if (data.length < STREAM_ERROR_PREFIX.length) return false
  for (let i = 0; i < STREAM_ERROR_PREFIX.length; i++) if (data[i] !== STREAM_ERROR_PREFIX[i]) return false
  return true
}

/** How a stream ended: undefined while it is open. */
export type StreamOutcome = { readonly _tag: "Finished" } | { readonly _tag: "Failed"; readonly error: StreamError }

/** What happened to a stream. */
export type StreamEvent =
  | { readonly _tag: "Write"; readonly data: Uint8Array }
  | { readonly _tag: "End" }
  | { readonly _tag: "EndSent" }
  | { readonly _tag: "Received"; readonly data: Uint8Array }
  | { readonly _tag: "ChannelEnded"; readonly message: string }
  | { readonly _tag: "Abort"; readonly message: string; readonly tell?: StreamErrorReport | undefined }

/** What the adapter must do, in order. */
export type StreamCommand =
  | { readonly _tag: "Send"; readonly data: Uint8Array }
  | { readonly _tag: "SendEnd" }
  | { readonly _tag: "SendError"; readonly data: Uint8Array }
  | { readonly _tag: "Deliver"; readonly data: Uint8Array }
  | { readonly _tag: "DeliverEnd" }
  | { readonly _tag: "Finish" }
  | { readonly _tag: "Fail"; readonly error: StreamError }
  | { readonly _tag: "Refuse"; readonly error: StreamError }

/** Settings of a stream. */
export interface StreamConfig {
  /** Largest message the stream sends; bigger writes are split. */
  readonly maxMessageBytes: number
}

/**
 * Default message size: big enough that per-message costs vanish in bulk
 * transfers, small enough that two layers of framing stay far below the
 * 1 MiB frame limit and a slow peer holds little per tunnel.
 */
export const DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024

/** Largest allowed `maxMessageBytes`: leaves room for padding and two layers of overhead under 1 MiB frames. */
export const MAX_MESSAGE_BYTES_LIMIT = 512 * 1024

/** One stream's halves and outcome; see the module header for how to drive it. */
export class StreamState {
  readonly config: StreamConfig
  private ours: SendingHalf = "open"
  private theirs: ReceivingHalf = "open"
  private result: StreamOutcome | undefined = undefined
  private readonly out = new CommandQueue<StreamCommand>()

  /** A stream with both halves open. */
  constructor(config: StreamConfig) {
    this.config = config
  }

  /** Our half. */
  get sending(): SendingHalf {
    return this.ours
  }

  /** The peer's half. */
  get receiving(): ReceivingHalf {
    return this.theirs
  }

  /** Set once the stream is done: undefined while open. */
  get outcome(): StreamOutcome | undefined {
    return this.result
  }

  /** The next command, in order; undefined when there is none. */
  poll(): StreamCommand | undefined {
    return this.out.poll()
  }

  /** Applies one event; see the module header. */
  handle(event: StreamEvent): void {
    const out = this.out
    if (this.outcome !== undefined) {
      // Misuse is still reported after the end, so a late write fails loudly.
      if (event._tag === "Write" && this.sending !== "open" && event.data.length > 0) out.push(refuseWrite)
      return
    }
    switch (event._tag) {
      case "Write": {
        if (this.sending !== "open") {
          if (event.data.length > 0) out.push(refuseWrite)
          return
        }
        const max = this.config.maxMessageBytes
        for (let offset = 0; offset < event.data.length; offset += max) {
          const piece = event.data.subarray(offset, Math.min(offset + max, event.data.length))
          if (startsWithPrefix(piece)) {
            // Never a data message that reads as a stream error (module header).
            out.push({ _tag: "Send", data: piece.subarray(0, 1) })
            out.push({ _tag: "Send", data: piece.subarray(1) })
          } else {
            out.push({ _tag: "Send", data: piece })
          }
        }
        return
      }
      case "End":
        if (this.sending !== "open") return
        this.ours = "ending"
        out.push(sendEnd)
        return
      case "EndSent":
        if (this.sending !== "ending") return
        this.ours = "ended"
        if (this.receiving === "ended") this.finish()
        return
      case "Received": {
        if (startsWithPrefix(event.data)) {
          const { code, text } = decodeStreamError(event.data)
          return this.fail("PeerError", describeStreamError(code, text), code)
        }
        if (this.receiving === "ended") {
          return this.fail("DataAfterEnd", `the peer sent ${event.data.length} bytes after it had ended its half of the stream`)
        }
        if (event.data.length > 0) {
          out.push({ _tag: "Deliver", data: event.data })
          return
        }
        this.theirs = "ended"
        out.push(deliverEnd)
        if (this.sending === "ended") this.finish()
        return
      }
      case "ChannelEnded": {
        const unfinished = [
          this.sending !== "ended" ? "we had not finished sending" : undefined,
          this.receiving !== "ended" ? "the peer had not finished sending" : undefined
        ].filter((part) => part !== undefined).join(" and ")
        return this.fail("ClosedEarly", `the tunnel closed before the stream ended (${unfinished}): ${event.message}`)
      }
      case "Abort":
        if (event.tell !== undefined) out.push({ _tag: "SendError", data: encodeStreamError(event.tell) })
        return this.fail("Aborted", event.message)
      default:
        return absurd(event)
    }
  }

  private finish(): void {
    this.result = finished
    this.out.push(finishCommand)
  }

  private fail(reason: StreamError["reason"], message: string, peerCode?: string): void {
    const error: StreamError = peerCode === undefined
      ? { _tag: "StreamError", reason, message }
      : { _tag: "StreamError", reason, message, peerCode }
    this.result = { _tag: "Failed", error }
    this.out.push({ _tag: "Fail", error })
  }
}

const sendEnd: StreamCommand = { _tag: "SendEnd" }
const deliverEnd: StreamCommand = { _tag: "DeliverEnd" }
const finishCommand: StreamCommand = { _tag: "Finish" }
const finished: StreamOutcome = { _tag: "Finished" }
const refuseWrite: StreamCommand = {
  _tag: "Refuse",
  error: { _tag: "StreamError", reason: "WriteAfterEnd", message: "write after the stream's end was requested" }
}
