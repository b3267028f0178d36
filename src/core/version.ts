/**
 * The version prefix: each side's first frame is its protocol version as a
 * u32 big-endian, exactly 4 bytes (PROTOCOL.md "Version prefix").
 */

/** The protocol version offset-relay and Offset speak today. */
export const PROTOCOL_VERSION = 0

/** Why the peer's version frame was refused. */
export interface VersionError {
  readonly _tag: "VersionError"
  readonly reason: "WrongLength" | "Unsupported"
  readonly message: string
}

/** Our version frame payload. */
export const encodeVersion = (version: number = PROTOCOL_VERSION): Uint8Array => {
  const out = new Uint8Array(4)
  new DataView(out.buffer).setUint32(0, version)
  return out
}

/** Checks the peer's first frame (on either side of a hop); undefined when it announces our version. */
export const checkVersion = (frame: Uint8Array): VersionError | undefined => {
  if (frame.length !== 4) {
    return {
      _tag: "VersionError",
      reason: "WrongLength",
      message: `version frame must be 4 bytes, got ${frame.length}`
    }
  }
  const version = new DataView(frame.buffer, frame.byteOffset, 4).getUint32(0)
  if (version !== PROTOCOL_VERSION) {
    return {
      _tag: "VersionError",
      reason: "Unsupported",
      message: `peer speaks protocol version ${version}; we speak ${PROTOCOL_VERSION}`
    }
  }
  return undefined
}
