/**
 * A TCP-like byte stream over an end-to-end channel (PROTOCOL.md "Byte
 * streams over a tunnel"): a non-empty message carries stream bytes, an
 * empty message is a half close ("I will send no more"). The tunnel closes
 * once both sides have sent theirs and ours was written, or at once on an
 * error. This machine decides; the adapter moves the bytes.
 *
 * How to drive it: `state = initialStream`, then `[state, commands] =
 * stepStream(config, state, event)`; run the commands in order before the
 * next event.
 * - `Write { data }`: the application wrote bytes. Gives one `Send` per
 *   message (at most `maxMessageBytes` each; an empty write sends nothing, so
 *   it can never be mistaken for a half close).
 * - `End`: the application finished writing. Gives `SendEnd` once.
 * - `EndSent`: the adapter's `SendEnd` was taken by the channel.
 * - `Received { data }`: one message from the peer, in order.
 * - `ChannelEnded { message }`: the channel below ended (the peer or the relay
 *   closed it, or it failed).
 * - `Abort { message }`: the application gave up on the stream.
 * Commands: `Send { data }`, `SendEnd`, `Deliver { data }`, `DeliverEnd`,
 * `Finish` (both halves closed: close the tunnel), `Fail { error }` (close
 * the tunnel at once and report), `Refuse { error }` (the caller's misuse:
 * fail that one call, nothing else changes). After `Finish` or `Fail` the
 * stream is done and every event but a misuse gives nothing.
 */

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
  readonly message: string
}

/** The whole state of one stream. */
export interface StreamState {
  readonly sending: SendingHalf
  readonly receiving: ReceivingHalf
  /** Set once the stream is done: undefined while open. */
  readonly outcome: { readonly _tag: "Finished" } | { readonly _tag: "Failed"; readonly error: StreamError } | undefined
}

/** What happened to a stream. */
export type StreamEvent =
  | { readonly _tag: "Write"; readonly data: Uint8Array }
  | { readonly _tag: "End" }
  | { readonly _tag: "EndSent" }
  | { readonly _tag: "Received"; readonly data: Uint8Array }
  | { readonly _tag: "ChannelEnded"; readonly message: string }
  | { readonly _tag: "Abort"; readonly message: string }

/** What the adapter must do, in order. */
export type StreamCommand =
  | { readonly _tag: "Send"; readonly data: Uint8Array }
  | { readonly _tag: "SendEnd" }
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

/** A stream with both halves open. */
export const initialStream: StreamState = { sending: "open", receiving: "open", outcome: undefined }

/** Advances a stream by one event; see the module header. */
export const stepStream = (
  config: StreamConfig,
  state: StreamState,
  event: StreamEvent
): readonly [StreamState, ReadonlyArray<StreamCommand>] => {
  if (state.outcome !== undefined) {
    // Misuse is still reported after the end, so a late write fails loudly.
    if (event._tag === "Write" && state.sending !== "open" && event.data.length > 0) {
      return [state, [refuseWrite]]
    }
    return [state, noCommands]
  }
  switch (event._tag) {
    case "Write": {
      if (state.sending !== "open") return [state, event.data.length > 0 ? [refuseWrite] : noCommands]
      const commands: Array<StreamCommand> = []
      const max = config.maxMessageBytes
      for (let offset = 0; offset < event.data.length; offset += max) {
        commands.push({ _tag: "Send", data: event.data.subarray(offset, Math.min(offset + max, event.data.length)) })
      }
      return [state, commands]
    }
    case "End":
      if (state.sending !== "open") return [state, noCommands]
      return [{ ...state, sending: "ending" }, [{ _tag: "SendEnd" }]]
    case "EndSent": {
      if (state.sending !== "ending") return [state, noCommands]
      const next: StreamState = { ...state, sending: "ended" }
      return next.receiving === "ended" ? finish(next, []) : [next, noCommands]
    }
    case "Received": {
      if (state.receiving === "ended") {
        return fail(state, [], "DataAfterEnd", `the peer sent ${event.data.length} bytes after it had ended its half of the stream`)
      }
      if (event.data.length > 0) return [state, [{ _tag: "Deliver", data: event.data }]]
      const next: StreamState = { ...state, receiving: "ended" }
      return next.sending === "ended" ? finish(next, [deliverEnd]) : [next, [deliverEnd]]
    }
    case "ChannelEnded": {
      const unfinished = [
        state.sending !== "ended" ? "we had not finished sending" : undefined,
        state.receiving !== "ended" ? "the peer had not finished sending" : undefined
      ].filter((part) => part !== undefined).join(" and ")
      return fail(state, [], "ClosedEarly", `the tunnel closed before the stream ended (${unfinished}): ${event.message}`)
    }
    case "Abort":
      return fail(state, [], "Aborted", event.message)
    default:
      return absurd(event)
  }
}

const noCommands: ReadonlyArray<StreamCommand> = []
const deliverEnd: StreamCommand = { _tag: "DeliverEnd" }
const refuseWrite: StreamCommand = {
  _tag: "Refuse",
  error: { _tag: "StreamError", reason: "WriteAfterEnd", message: "write after the stream's end was requested" }
}

const finish = (
  state: StreamState,
  commands: Array<StreamCommand>
): readonly [StreamState, ReadonlyArray<StreamCommand>] => {
  commands.push({ _tag: "Finish" })
  return [{ ...state, outcome: { _tag: "Finished" } }, commands]
}

const fail = (
  state: StreamState,
  commands: Array<StreamCommand>,
  reason: StreamError["reason"],
  message: string
): readonly [StreamState, ReadonlyArray<StreamCommand>] => {
  const error: StreamError = { _tag: "StreamError", reason, message }
  commands.push({ _tag: "Fail", error })
  return [{ ...state, outcome: { _tag: "Failed", error } }, commands]
}

const absurd = (value: never): never => {
  throw new Error(`unhandled case: ${JSON.stringify(value)}`)
}
