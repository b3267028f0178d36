/**
 * A byte stream to an authenticated peer over a relayed tunnel: the
 * end-to-end channel plus PROTOCOL.md's stream convention (an empty message
 * is a half close), decided by src/core/stream-state.ts.
 *
 * `PeerStream` gives Effect operations (`read` one message at a time,
 * `write`, `end` for the half close, `abort`), for the Effect API; the Node
 * `Duplex` on top is in peer-duplex.ts, the browser's web streams in
 * browser-client.ts, so that this file imports nothing from `node:*`.
 *
 * Every stream owns a scope holding its relay connection, its end-to-end
 * channel and their tickers. The scope closes when both sides have ended and
 * our end was taken by the channel (`Finish`), at once on any error or
 * abort, or when the scope's parent closes (the listener or the caller of
 * connect).
 *
 * Backpressure: `write` completes once the channel took the message, which
 * waits while the relay hop's socket is full; `read` pulls one message from
 * the channel only when asked, so a reader that stops reading fills the
 * channel's inbox, which pauses the relay hop's socket, then the relay's
 * reading, and in the end the peer's writes.
 */
import * as Data from "effect/Data"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Option from "effect/Option"
import * as Scope from "effect/Scope"
import * as Semaphore from "effect/Semaphore"
import {
  DEFAULT_MAX_MESSAGE_BYTES,
  MAX_MESSAGE_BYTES_LIMIT,
  type StreamCommand,
  type StreamConfig,
  type StreamError,
  type StreamErrorCode,
  type StreamErrorReport,
  type StreamEvent,
  StreamState
} from "../../core/stream-state.ts"
import type { ChannelError, MessageChannel } from "../message-channel.ts"
import { absurd } from "../../core/absurd.ts"

/** Why a stream failed or a call on it was refused (reasons of src/core/stream-state.ts). */
export class PeerStreamError extends Data.TaggedError("PeerStreamError")<{
  /** "PeerError": the peer ended the stream with an error (its code in `peerCode`); the others: see stream-state.ts. */
  readonly reason: StreamError["reason"]
  readonly message: string
  /** For "PeerError": the peer's code ("local-refused", "local-reset", "aborted", or one we do not know). */
  readonly peerCode?: string | undefined
}> {}

/**
 * Pass to `PeerDuplex.destroy()` to tell the peer why this side failed (a
 * code it shows its user); any other error tells it "aborted".
 */
export class StreamAbort extends Error {
  override readonly name = "StreamAbort"
  readonly code: StreamErrorCode
  /** Sent to the peer: keep it short and free of local secrets (e.g. the system's error code). */
  readonly peerText: string
  constructor(code: StreamErrorCode, peerText: string, message?: string) {
    super(message ?? `${code}${peerText === "" ? "" : `: ${peerText}`}`)
    this.code = code
    this.peerText = peerText
  }
}

/** A byte stream to one authenticated peer. */
export interface PeerStream {
  /** The peer's Ed25519 key, proven end to end (the relay cannot forge it). */
  readonly remotePublicKey: Uint8Array
  /** The relay the tunnel runs through (`<key>@<host>:<port>`). */
  readonly relay: string
  /** The next chunk of bytes the peer sent; None once the peer ended its half. One read at a time. */
  readonly read: Effect.Effect<Option.Option<Uint8Array>, PeerStreamError>
  /** Sends bytes; completes once the channel took them (waits while the path is slow). */
  readonly write: (data: Uint8Array) => Effect.Effect<void, PeerStreamError>
  /** Half close: we send no more; reading goes on until the peer ends. Idempotent. */
  readonly end: Effect.Effect<void, PeerStreamError>
  /**
   * Closes the tunnel at once (the peer sees an error unless it had
   * finished). The peer is first sent a stream error (PROTOCOL.md's stream
   * convention; `tell`, default "aborted"), so it can say which side failed
   * and why.
   */
  readonly abort: (message?: string, tell?: StreamErrorReport) => Effect.Effect<void>
  /** Completes once both sides ended cleanly; fails with the stream's error. */
  readonly done: Effect.Effect<void, PeerStreamError>
}

/** What a stream is made of; `scope` holds its relay connection and channels. */
export interface PeerStreamParts {
  readonly channel: MessageChannel
  readonly scope: Scope.Closeable
  readonly relay: string
  readonly maxMessageBytes?: number
}

const EMPTY = new Uint8Array(0)

/**
 * Builds the stream over an authenticated end-to-end channel. The stream
 * closes `scope` when it is done; a watcher in `scope` fails it as soon as
 * the channel fails (keepalive, tampering, a lost relay), even when the
 * application is neither reading nor writing.
 */
export const makePeerStream = (parts: PeerStreamParts): Effect.Effect<PeerStream> =>
  Effect.gen(function*() {
    const { channel, scope } = parts
    const config: StreamConfig = { maxMessageBytes: parts.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES }
    const sizeProblem = checkMaxMessageBytes(config.maxMessageBytes)
    if (sizeProblem !== undefined) return yield* Effect.die(new RangeError(sizeProblem))
    const state = new StreamState(config)
    const doneDeferred = yield* Deferred.make<void, PeerStreamError>()
    const writeLock = yield* Semaphore.make(1)
    const readLock = yield* Semaphore.make(1)

    const closeScope = (): void => {
      // Detached: the caller may be a fiber inside the scope being closed.
      Effect.runFork(Scope.close(scope, Exit.void))
    }

    const failedError = (): PeerStreamError | undefined =>
      state.outcome?._tag === "Failed" ? toError(state.outcome.error) : undefined

    // Steps the machine; runs Finish/Fail at once and returns the I/O commands
    // for the caller, or the error of a refused call.
    const apply = (event: StreamEvent): { readonly io: Array<StreamCommand>; readonly refused?: PeerStreamError } => {
      state.handle(event)
      const io: Array<StreamCommand> = []
      let refused: PeerStreamError | undefined
      for (let command = state.poll(); command !== undefined; command = state.poll()) {
        switch (command._tag) {
          case "Send":
          case "SendEnd":
          case "SendError":
          case "Deliver":
          case "DeliverEnd":
            io.push(command)
            break
          case "Finish":
            Deferred.doneUnsafe(doneDeferred, Exit.void)
            closeScope()
            break
          case "Fail":
            Deferred.doneUnsafe(doneDeferred, Exit.fail(toError(command.error)))
            // A SendError before it closes the scope itself, once it is sent.
            if (!io.some((c) => c._tag === "SendError")) closeScope()
            break
          case "Refuse":
            refused = toError(command.error)
            break
          default:
            return absurd(command)
        }
      }
      return refused === undefined ? { io } : { io, refused }
    }

    const channelEnded = (error: ChannelError): PeerStreamError => {
      apply({ _tag: "ChannelEnded", message: describeChannelEnd(error) })
      return failedError() ?? new PeerStreamError({ reason: "ClosedEarly", message: describeChannelEnd(error) })
    }

    const send = (data: Uint8Array): Effect.Effect<void, PeerStreamError> =>
      Effect.suspend(() => {
        const failed = failedError()
        if (failed !== undefined) return Effect.fail(failed)
        return Effect.mapError(channel.send(data), channelEnded)
      })

    const write = (data: Uint8Array): Effect.Effect<void, PeerStreamError> =>
      writeLock.withPermits(1)(
        Effect.suspend(() => {
          const failed = failedError()
          if (failed !== undefined) return Effect.fail(failed)
          const { io, refused } = apply({ _tag: "Write", data })
          if (refused !== undefined) return Effect.fail(refused)
          return Effect.forEach(io, (command) => (command._tag === "Send" ? send(command.data) : Effect.void), {
            discard: true
          })
        })
      )

    const end: Effect.Effect<void, PeerStreamError> = writeLock.withPermits(1)(
      Effect.suspend(() => {
        const failed = failedError()
        if (failed !== undefined) return Effect.fail(failed)
        const { io } = apply({ _tag: "End" })
        if (!io.some((command) => command._tag === "SendEnd")) return Effect.void
        return Effect.andThen(send(EMPTY), Effect.sync(() => void apply({ _tag: "EndSent" })))
      })
    )

    const read: Effect.Effect<Option.Option<Uint8Array>, PeerStreamError> = readLock.withPermits(1)(
      Effect.suspend(() => {
        const failed = failedError()
        if (failed !== undefined) return Effect.fail(failed)
        if (state.receiving === "ended") return Effect.succeedNone
        return channel.receive.pipe(
          Effect.mapError(channelEnded),
          Effect.flatMap((data) => {
            const { io } = apply({ _tag: "Received", data })
            for (const command of io) {
              if (command._tag === "Deliver") return Effect.succeedSome(command.data)
              if (command._tag === "DeliverEnd") return Effect.succeedNone
            }
            return Effect.fail(
              failedError() ?? new PeerStreamError({ reason: "ClosedEarly", message: "the stream ended" })
            )
          })
        )
      })
    )

    const abort = (message?: string, tell?: StreamErrorReport): Effect.Effect<void> =>
      Effect.suspend(() => {
        const { io } = apply({
          _tag: "Abort",
          message: message ?? "the stream was aborted locally",
          tell: tell ?? { code: "aborted", text: "" }
        })
        const report = io.find((c) => c._tag === "SendError")
        // Best effort, bounded: a peer that does not read must not hold the close.
        const told = report === undefined
          ? Effect.void
          : Effect.ignore(channel.send(report.data).pipe(Effect.timeoutOrElse({ duration: TELL_TIMEOUT_MS, orElse: () => Effect.void })))
        return Effect.andThen(told, Scope.close(scope, Exit.void))
      })

    // A failed channel fails the stream at once. A clean close is left to
    // `read`: messages the peer sent before closing (its end among them) may
    // still wait in the inbox, and must be read first.
    yield* Effect.forkIn(
      Effect.flatMap(channel.ended, (error) =>
        error.reason === "Closed" || error.reason === "LocalClose"
          ? Effect.void
          : Effect.sync(() => void apply({ _tag: "ChannelEnded", message: describeChannelEnd(error) }))),
      scope
    )
    // Whatever closes the scope (the listener or caller closing theirs) ends
    // the stream, and tells the peer we aborted: the send queues its frame at
    // once (it runs synchronously up to the wait for the socket), and the
    // channel's own close, which runs after this, flushes it (bounded).
    yield* Scope.addFinalizer(
      scope,
      Effect.sync(() => {
        const { io } = apply({
          _tag: "Abort",
          message: "the stream's scope was closed",
          tell: { code: "aborted", text: "" }
        })
        for (const command of io) {
          if (command._tag === "SendError") Effect.runFork(Effect.ignore(channel.send(command.data)))
        }
      })
    )

    return {
      remotePublicKey: channel.remotePublicKey,
      relay: parts.relay,
      read,
      write,
      end,
      abort,
      done: Deferred.await(doneDeferred)
    } satisfies PeerStream
  })

/** Why a message size cannot be used, or undefined when it can (1..MAX_MESSAGE_BYTES_LIMIT). */
export const checkMaxMessageBytes = (value: number): string | undefined =>
  Number.isSafeInteger(value) && value >= 1 && value <= MAX_MESSAGE_BYTES_LIMIT
    ? undefined
    : `maxMessageBytes must be a whole number in 1..${MAX_MESSAGE_BYTES_LIMIT} (frames are at most 1 MiB), got ${value}`

/** How long an abort waits to hand its error message to the channel. */
const TELL_TIMEOUT_MS = 1000

const toError = (error: StreamError): PeerStreamError =>
  new PeerStreamError({ reason: error.reason, message: error.message, peerCode: error.peerCode })

const describeChannelEnd = (error: ChannelError): string => {
  switch (error.reason) {
    case "Closed":
      // A peer of this version says why it fails (a stream error) before it
      // closes; a close without one came from the relay's side.
      return "the relay closed the tunnel without a word from the peer (the peer's process or its connection to the relay ended, or the relay closed it)"
    case "LocalClose":
      return "the tunnel was closed locally"
    case "Protocol":
      return `the end-to-end channel refused the peer's data (${error.detail ?? "protocol"}): ${error.message}`
    default:
      return `${error.reason}: ${error.message}`
  }
}
