/**
 * Hostile Cap'n Proto for tests and the attack bench: messages that decode
 * as an honest one but claim far more memory than they occupy on the wire.
 */
import { pack, unpack } from "../../src/core/capnp.ts"

/**
 * `packed` (one segment) with its segment grown to `words` words: the extra
 * words are unreferenced zeros with one non-zero byte per 4 KiB page, so the
 * message still decodes as the same value and packs to about 6 bytes a page
 * (1 MiB words, 8 MiB unpacked, pack to ~12 KiB).
 */
export const inflate = (packed: Uint8Array, words: number): Uint8Array => {
  const unpacked = unpack(packed, Infinity)
  if (unpacked._tag === "Err") throw new Error(unpacked.error.message)
  const out = new Uint8Array(8 + words * 8)
  out.set(unpacked.value)
  new DataView(out.buffer).setUint32(4, words, true)
  for (let at = unpacked.value.length; at < out.length; at += 4096) out[at] = 1
  return pack(out)
}
