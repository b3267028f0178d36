/**
 * A `PeerStream` (tunnel-stream.ts) as a Node `Duplex`, for code without
 * Effect. It behaves like a TCP socket with `allowHalfOpen`: `end()` sends
 * our half close and the readable side still reads the peer's answer to its
 * end. Kept apart from tunnel-stream.ts because it needs `node:stream`,
 * which the browser bundle must not import.
 */
import { Duplex } from "node:stream"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Option from "effect/Option"
import { bytesToHex } from "../../core/keys.ts"
import type { StreamErrorReport } from "../../core/stream-state.ts"
import { type PeerStream, PeerStreamError, StreamAbort } from "./tunnel-stream.ts"

/** Node stream sizes: a few messages' worth, so Node buffers little beyond the channel's own bounded inbox. */
const DUPLEX_HIGH_WATER_MARK = 64 * 1024

/**
 * A `PeerStream` as a Node `Duplex` (like a TCP socket with
 * `allowHalfOpen`): `end()` half-closes, the readable side ends when the
 * peer ends, `destroy()` closes the tunnel at once, and a tunnel error
 * destroys the Duplex with a `PeerStreamError`.
 */
export class PeerDuplex extends Duplex {
  /** The peer's public key (hex), proven end to end. */
  readonly remotePublicKey: string
  /** The relay this tunnel runs through (`<key>@<host>:<port>`). */
  readonly relay: string
  readonly #stream: PeerStream
  #reading = false

  constructor(stream: PeerStream) {
    super({
      allowHalfOpen: true,
      readableHighWaterMark: DUPLEX_HIGH_WATER_MARK,
      writableHighWaterMark: DUPLEX_HIGH_WATER_MARK
    })
    this.#stream = stream
    this.remotePublicKey = bytesToHex(stream.remotePublicKey)
    this.relay = stream.relay
    // A failure seen while nobody reads or writes (keepalive, a lost relay) still surfaces.
    run(stream.done, (exit) => {
      if (!Exit.isFailure(exit) || this.destroyed) return
      const error = errorOf(exit)
      // Aborted on our side (the listener or the caller closed the stream's
      // scope): the Duplex closes as a socket we destroy does, with no
      // 'error' event for an application that is not listening for one.
      this.destroy(error instanceof PeerStreamError && error.reason === "Aborted" ? undefined : error)
    })
  }

  override _read(): void {
    if (this.#reading) return
    this.#reading = true
    run(this.#stream.read, (exit) => {
      this.#reading = false
      if (this.destroyed) return
      if (Exit.isFailure(exit)) return void this.destroy(errorOf(exit))
      const chunk = exit.value
      if (Option.isNone(chunk)) return void this.push(null)
      const data = chunk.value
      this.push(Buffer.from(data.buffer, data.byteOffset, data.byteLength))
    })
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    run(this.#stream.write(chunk), (exit) => callback(Exit.isFailure(exit) ? errorOf(exit) : null))
  }

  // Writes that queued while one was in flight (a socket piped in, each of
  // its reads a chunk) go out together: one copy here, then messages of up
  // to maxMessageBytes, rather than one tunnel message per read.
  override _writev(chunks: Array<{ chunk: Buffer }>, callback: (error?: Error | null) => void): void {
    const data = chunks.length === 1 ? chunks[0]!.chunk : Buffer.concat(chunks.map((c) => c.chunk))
    run(this.#stream.write(data), (exit) => callback(Exit.isFailure(exit) ? errorOf(exit) : null))
  }

  override _final(callback: (error?: Error | null) => void): void {
    run(this.#stream.end, (exit) => callback(Exit.isFailure(exit) ? errorOf(exit) : null))
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    // The peer learns that we aborted (and why, for a StreamAbort); a stream
    // that already ended or failed sends nothing.
    const tell: StreamErrorReport = error instanceof StreamAbort
      ? { code: error.code, text: error.peerText }
      : { code: "aborted", text: "" }
    run(this.#stream.abort(error?.message ?? "the Duplex was destroyed", tell), () => callback(error))
  }

  /**
   * `for await (const chunk of socket)` as on Node on every runtime: the end
   * of the peer's half ends the loop and leaves our half open for the
   * answer. Deno's and Bun's stream iterators destroy the Duplex there,
   * which closed the tunnel before the answer; leaving the loop early
   * (break, throw) still destroys it, as Node does.
   */
  override [Symbol.asyncIterator](): NodeJS.AsyncIterator<any> {
    const inner = this.iterator({ destroyOnReturn: false })
    const early = async (value?: unknown): Promise<IteratorResult<any>> => {
      if (!this.readableEnded) this.destroy()
      return inner.return === undefined ? { done: true, value } : inner.return()
    }
    return {
      next: () => inner.next(),
      return: early,
      throw: async (error?: unknown) => {
        this.destroy(error instanceof Error ? error : undefined)
        return inner.throw === undefined ? { done: true, value: undefined } : inner.throw(error)
      },
      [Symbol.asyncIterator]() {
        return this
      },
      [Symbol.asyncDispose]: async () => void (await early())
    }
  }
}

const run = <A, E>(effect: Effect.Effect<A, E>, onExit: (exit: Exit.Exit<A, E>) => void): void => {
  Effect.runFork(effect).addObserver(onExit)
}

const errorOf = <A, E>(exit: Exit.Exit<A, E>): Error => {
  if (Exit.isSuccess(exit)) return new Error("no error")
  for (const reason of exit.cause.reasons) {
    if (reason._tag === "Fail") return reason.error instanceof Error ? reason.error : new Error(String(reason.error))
    if (reason._tag === "Die") return reason.defect instanceof Error ? reason.defect : new Error(String(reason.defect))
  }
  return new Error("interrupted")
}
