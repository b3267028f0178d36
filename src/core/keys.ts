/**
 * Hex text for keys: what people paste on command lines and in config files.
 * Pure and non-throwing: bad text gives undefined or an error value.
 */

const hexDigitCodes = Uint8Array.from("0123456789abcdef", (c) => c.charCodeAt(0))
const asciiDecoder = new TextDecoder()

// Nibble value per char code, -1 for anything that is not a hex digit.
const nibble = new Int8Array(128).fill(-1)
for (let i = 0; i < 10; i++) nibble[48 + i] = i
for (let i = 0; i < 6; i++) {
  nibble[65 + i] = 10 + i
  nibble[97 + i] = 10 + i
}

/**
 * Lowercase hex of the bytes. Built as one flat string (not by `+=`, whose
 * rope of 64 pieces would be what the relay keeps for every key it indexes).
 */
export const bytesToHex = (bytes: Uint8Array): string => {
  const codes = new Uint8Array(bytes.length * 2)
  for (let i = 0; i < bytes.length; i++) {
    const byte = bytes[i]!
    // A nibble (0..15) always indexes the 16-entry table.
    codes[2 * i] = hexDigitCodes[byte >>> 4]!
    codes[2 * i + 1] = hexDigitCodes[byte & 15]!
  }
  return asciiDecoder.decode(codes)
}

/** The bytes of an even-length hex string (either case), or undefined for anything else. */
export const hexToBytes = (text: string): Uint8Array | undefined => {
  if (text.length % 2 !== 0) return undefined
  const out = new Uint8Array(text.length / 2)
  for (let i = 0; i < out.length; i++) {
    const hiCode = text.charCodeAt(2 * i)
    const loCode = text.charCodeAt(2 * i + 1)
    // A code below 128 always indexes the 128-entry table; anything above is not hex.
    const hi = hiCode < 128 ? nibble[hiCode]! : -1
    const lo = loCode < 128 ? nibble[loCode]! : -1
    if (hi < 0 || lo < 0) return undefined
    out[i] = (hi << 4) | lo
  }
  return out
}

/** Length in bytes of an Ed25519 public key. */
export const publicKeyLength = 32

/** Why a public key's text was refused. */
export interface KeyParseError {
  readonly _tag: "KeyParseError"
  readonly reason: "WrongLength" | "NotHex"
  readonly message: string
}

/** A parsed public key, or why the text is not one. */
export type KeyParseResult =
  | { readonly _tag: "Ok"; readonly value: Uint8Array }
  | { readonly _tag: "Err"; readonly error: KeyParseError }

/** The canonical text of a 32-byte public key: 64 lowercase hex digits. */
export const publicKeyHex = (publicKey: Uint8Array): string => bytesToHex(publicKey)

/** An abbreviated key for logs ("1a2b3c4d…"); never for identification. */
export const shortKeyHex = (publicKey: Uint8Array): string => `${bytesToHex(publicKey.subarray(0, 4))}…`

/**
 * Parses a public key written as exactly 64 hex digits (either case;
 * surrounding whitespace ignored). The error message quotes what was given
 * (shortened) and says what is expected.
 */
export const parsePublicKeyHex = (text: string): KeyParseResult => {
  const trimmed = text.trim()
  const shown = trimmed.length > 80 ? `${trimmed.slice(0, 77)}...` : trimmed
  if (trimmed.length !== 2 * publicKeyLength) {
    return {
      _tag: "Err",
      error: {
        _tag: "KeyParseError",
        reason: "WrongLength",
        message: `public key "${shown}" has ${trimmed.length} characters; expected exactly ${2 * publicKeyLength} hex digits (32 bytes)`
      }
    }
  }
  const bytes = hexToBytes(trimmed)
  if (bytes === undefined) {
    const bad = trimmed.search(/[^0-9a-fA-F]/)
    return {
      _tag: "Err",
      error: {
        _tag: "KeyParseError",
        reason: "NotHex",
        message: `public key "${shown}" has a non-hex character ${JSON.stringify(trimmed[bad] ?? "")} at position ${bad + 1}; expected only 0-9 and a-f`
      }
    }
  }
  return { _tag: "Ok", value: bytes }
}

/** An Ed25519 key pair: the seed is secret, the public key names its owner. */
export interface Identity {
  /** 32-byte secret seed (RFC 8032 private key). Never log it. */
  readonly seed: Uint8Array
  /** 32-byte Ed25519 public key of the seed. */
  readonly publicKey: Uint8Array
}
