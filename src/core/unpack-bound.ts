/**
 * How much a received Cap'n Proto message may unpack to, relative to the
 * bytes it occupied on the wire. Packing turns zero words into a couple of
 * bytes, so a small message can claim megabytes; the decoder's absolute
 * bound (8 MiB) stops a single bomb, this ratio stops a stream of them from
 * costing memory and CPU out of proportion to the traffic.
 */

/** Room for a small message's fixed structure (segment table, pointers, a short key). */
export const UNPACK_SLACK_BYTES = 1024

/** Most bytes a message of `wireBytes` may unpack to: `wireBytes × maxExpansion + slack`; Infinity when unlimited. */
export const unpackBound = (maxExpansion: number, wireBytes: number): number =>
  maxExpansion === Number.POSITIVE_INFINITY ? Number.POSITIVE_INFINITY : wireBytes * maxExpansion + UNPACK_SLACK_BYTES
