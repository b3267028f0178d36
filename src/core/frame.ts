/**
 * The frame codec: every message on a TCP hop is a u64 big-endian length
 * followed by that many bytes (PROTOCOL.md "Frames").
 *
 * `FrameDecoder` is incremental: feed it chunks as they arrive, in any split,
 * and it hands back whole frames. A length over the limit is refused as soon
 * as its 8-byte header is complete, before any of the payload is buffered, so
 * a hostile length costs nothing. After an error the decoder stays failed.
 *
 * A frame that lies inside one input chunk is returned as a view of that
 * chunk (no copy); the caller must not reuse chunks it has pushed.
 */
import { concatBytes } from "./bytes.ts"

/** Offset's frame payload limit, which we enforce (PROTOCOL.md (fix)). */
export const MAX_FRAME_LENGTH = 1024 * 1024

/** Bytes in a frame header. */
export const FRAME_HEADER_LENGTH = 8

/** Why the byte stream could not be split into frames. */
export interface FrameError {
  readonly _tag: "FrameError"
  readonly reason: "TooLong"
  readonly message: string
}

/** The 8-byte header announcing a payload of `length` bytes. */
export const encodeFrameHeader = (length: number): Uint8Array => {
  const header = new Uint8Array(FRAME_HEADER_LENGTH)
  const view = new DataView(header.buffer)
  view.setUint32(0, Math.floor(length / 0x1_0000_0000))
  view.setUint32(4, length >>> 0)
  return header
}

/** Header and payload in one buffer (one copy); prefer writing both pieces when the transport can. */
export const encodeFrame = (payload: Uint8Array): Uint8Array => {
  const out = new Uint8Array(FRAME_HEADER_LENGTH + payload.length)
  out.set(encodeFrameHeader(payload.length), 0)
  out.set(payload, FRAME_HEADER_LENGTH)
  return out
}

/** Result of feeding a chunk: the frames it completed, or the error that ends the stream. */
export type FrameDecodeResult =
  | { readonly _tag: "Frames"; readonly frames: ReadonlyArray<Uint8Array> }
  | { readonly _tag: "Error"; readonly error: FrameError }

/** Incremental frame decoder; see the module header. */
export class FrameDecoder {
  readonly maxLength: number
  // Header bytes collected so far (a header may be split across chunks).
  private readonly header = new Uint8Array(FRAME_HEADER_LENGTH)
  private headerFilled = 0
  // Length of the frame whose payload spans chunks; -1 while reading a header.
  // Its parts are kept as received and joined once complete, so memory held
  // is what the peer actually sent, never what its header merely announced.
  private payloadLength = -1
  private parts: Array<Uint8Array> = []
  private payloadFilled = 0
  private failed: FrameError | undefined = undefined

  constructor(maxLength: number = MAX_FRAME_LENGTH) {
    this.maxLength = maxLength
  }

  /** Bytes held for frames not yet complete (bounded by maxLength + 8). */
  get bufferedBytes(): number {
    return this.headerFilled + this.payloadFilled
  }

  /** Feeds one chunk; returns every frame it completes, in order. */
  push(chunk: Uint8Array): FrameDecodeResult {
    if (this.failed !== undefined) return { _tag: "Error", error: this.failed }
    const frames: Array<Uint8Array> = []
    let offset = 0
    while (offset < chunk.length) {
      if (this.payloadLength < 0) {
        // Fast path: a whole header and payload inside this chunk, no copy.
        if (this.headerFilled === 0 && chunk.length - offset >= FRAME_HEADER_LENGTH) {
          const length = this.readLength(chunk, offset)
          if (length < 0) return this.fail()
          const start = offset + FRAME_HEADER_LENGTH
          if (chunk.length - start >= length) {
            frames.push(chunk.subarray(start, start + length))
            offset = start + length
            continue
          }
          this.payloadLength = length
          offset = start
          continue
        }
        const take = Math.min(FRAME_HEADER_LENGTH - this.headerFilled, chunk.length - offset)
        this.header.set(chunk.subarray(offset, offset + take), this.headerFilled)
        this.headerFilled += take
        offset += take
        if (this.headerFilled < FRAME_HEADER_LENGTH) break
        this.headerFilled = 0
        const length = this.readLength(this.header, 0)
        if (length < 0) return this.fail()
        if (length === 0) {
          frames.push(new Uint8Array(0))
          continue
        }
        this.payloadLength = length
        continue
      }
      const take = Math.min(this.payloadLength - this.payloadFilled, chunk.length - offset)
      this.parts.push(chunk.subarray(offset, offset + take))
      this.payloadFilled += take
      offset += take
      if (this.payloadFilled === this.payloadLength) {
        frames.push(joinParts(this.parts))
        this.payloadLength = -1
        this.parts = []
        this.payloadFilled = 0
      }
    }
    return { _tag: "Frames", frames }
  }

  // The announced length, or -1 when it is over the limit (also any length >= 2^32).
  private readLength(bytes: Uint8Array, offset: number): number {
    const view = new DataView(bytes.buffer, bytes.byteOffset + offset, FRAME_HEADER_LENGTH)
    const high = view.getUint32(0)
    const low = view.getUint32(4)
    if (high !== 0 || low > this.maxLength) {
      this.failed = {
        _tag: "FrameError",
        reason: "TooLong",
        message: `frame length ${high === 0 ? low : BigInt(high) * 0x1_0000_0000n + BigInt(low)} is over the limit of ${this.maxLength} bytes`
      }
      return -1
    }
    return low
  }

  private fail(): FrameDecodeResult {
    this.payloadLength = -1
    this.parts = []
    this.headerFilled = 0
    this.payloadFilled = 0
    return { _tag: "Error", error: this.failed! } // set by readLength just before
  }
}

// A view when the frame came in one part, as in the fast path (see the module header).
const joinParts = (parts: ReadonlyArray<Uint8Array>): Uint8Array => (parts.length === 1 ? parts[0]! : concatBytes(parts))
