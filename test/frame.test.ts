import { describe, expect, it } from "vitest"
import fc from "fast-check"
import { encodeFrame, encodeFrameHeader, FrameDecoder, MAX_FRAME_LENGTH } from "../src/core/frame.ts"
import { checkVersion, encodeVersion } from "../src/core/version.ts"
import { concatBytes } from "../src/core/bytes.ts"

// Cuts `bytes` at the given sorted positions.
const cut = (bytes: Uint8Array, positions: ReadonlyArray<number>): Array<Uint8Array> => {
  const chunks: Array<Uint8Array> = []
  let last = 0
  for (const p of [...positions, bytes.length]) {
    chunks.push(bytes.slice(last, p))
    last = p
  }
  return chunks
}

const decodeAll = (decoder: FrameDecoder, chunks: ReadonlyArray<Uint8Array>): Array<Uint8Array> => {
  const frames: Array<Uint8Array> = []
  for (const chunk of chunks) {
    const result = decoder.push(chunk)
    if (result._tag === "Error") throw new Error(result.error.message)
    // Copy: a frame may be a view of its chunk.
    frames.push(...result.frames.map((f) => f.slice()))
  }
  return frames
}

describe("frame codec", () => {
  it("writes a u64 big-endian length", () => {
    expect([...encodeFrameHeader(0x01020304)]).toEqual([0, 0, 0, 0, 1, 2, 3, 4])
    expect([...encodeFrame(new Uint8Array([9, 8]))]).toEqual([0, 0, 0, 0, 0, 0, 0, 2, 9, 8])
  })

  it("decodes frames fed one byte at a time", () => {
    const payloads = [new Uint8Array([]), new Uint8Array([1, 2, 3]), new Uint8Array(300).fill(7)]
    const stream = concatBytes(payloads.map(encodeFrame))
    const chunks = [...stream].map((b) => new Uint8Array([b]))
    expect(decodeAll(new FrameDecoder(), chunks)).toEqual(payloads)
  })

  it("accepts exactly the maximum length and refuses one byte more before buffering it", () => {
    const ok = new FrameDecoder()
    const max = new Uint8Array(MAX_FRAME_LENGTH)
    expect(decodeAll(ok, [encodeFrame(max)])[0]!.length).toBe(MAX_FRAME_LENGTH)

    const decoder = new FrameDecoder()
    const result = decoder.push(encodeFrameHeader(MAX_FRAME_LENGTH + 1))
    expect(result._tag).toBe("Error")
    expect(decoder.bufferedBytes).toBe(0)
    // The decoder stays failed.
    expect(decoder.push(new Uint8Array(10))._tag).toBe("Error")
  })

  it("refuses lengths with high bits set (u64 beyond 2^32)", () => {
    const decoder = new FrameDecoder()
    const header = new Uint8Array([0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1])
    const result = decoder.push(header)
    expect(result._tag === "Error" && result.error.message).toContain("over the limit")
  })

  it("refuses an oversized length split across chunks", () => {
    const decoder = new FrameDecoder()
    const header = encodeFrameHeader(MAX_FRAME_LENGTH * 4)
    expect(decoder.push(header.subarray(0, 5))._tag).toBe("Frames")
    expect(decoder.push(header.subarray(5))._tag).toBe("Error")
  })

  it("gives the same frames however the stream is cut", () => {
    fc.assert(
      fc.property(
        fc.array(fc.uint8Array({ maxLength: 2000 }), { maxLength: 12 }),
        fc.array(fc.nat(), { maxLength: 40 }),
        (payloads, rawCuts) => {
          const stream = concatBytes(payloads.map(encodeFrame))
          const positions = [...new Set(rawCuts.map((c) => (stream.length === 0 ? 0 : c % stream.length)))].sort(
            (a, b) => a - b
          )
          expect(decodeAll(new FrameDecoder(), cut(stream, positions))).toEqual(payloads)
        }
      )
    )
  })

  it("never buffers more than one frame's worth for arbitrary input", () => {
    fc.assert(
      fc.property(fc.array(fc.uint8Array({ maxLength: 64 }), { maxLength: 50 }), (chunks) => {
        const decoder = new FrameDecoder(256)
        for (const chunk of chunks) {
          const result = decoder.push(chunk)
          expect(decoder.bufferedBytes).toBeLessThanOrEqual(256 + 8)
          if (result._tag === "Error") break
        }
      })
    )
  })
})

describe("version prefix", () => {
  it("is version 0 as u32 big-endian", () => {
    expect([...encodeVersion()]).toEqual([0, 0, 0, 0])
    expect(checkVersion(encodeVersion())).toBeUndefined()
  })

  it("refuses another version or another length", () => {
    expect(checkVersion(new Uint8Array([0, 0, 0, 1]))?.reason).toBe("Unsupported")
    expect(checkVersion(new Uint8Array([0, 0, 0]))?.reason).toBe("WrongLength")
    expect(checkVersion(new Uint8Array([0, 0, 0, 0, 0]))?.reason).toBe("WrongLength")
  })

  it("names both versions without assuming which side we are (clients check the relay's too)", () => {
    const message = checkVersion(new Uint8Array([0, 0, 0, 7]))?.message
    expect(message).toBe("peer speaks protocol version 7; we speak 0")
  })
})
