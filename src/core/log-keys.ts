/**
 * How client keys appear in logs. A relay's log should not become a list of
 * who talks to whom, so by default a key is written as its first 8 hex
 * digits (4 bytes: enough to tell clients apart in one log and to grep for a
 * key you already know, too few to be a usable identity); `--log-keys full`
 * writes all 64 digits for operators who need them.
 */
import { bytesToHex } from "./keys.ts"

/** The `--log-keys` choices. */
export const LOG_KEYS_MODES = ["short", "full"] as const

/** How keys are written in log lines. */
export type LogKeys = (typeof LOG_KEYS_MODES)[number]

/** Hex digits kept by "short". */
export const SHORT_KEY_HEX_DIGITS = 8

/**
 * A key for a log line: the first 8 lower-case hex digits ("short", the
 * default) or all of them ("full"). Takes the 32 raw bytes or hex text (any
 * case); `undefined` (a connection that has not authenticated yet) is "-".
 */
export const formatKeyForLog = (key: Uint8Array | string | undefined, mode: LogKeys = "short"): string => {
  if (key === undefined) return "-"
  const hex = typeof key === "string" ? key.toLowerCase() : bytesToHex(key)
  return mode === "full" ? hex : hex.slice(0, SHORT_KEY_HEX_DIGITS)
}

/** Parses a `--log-keys` value; undefined when it is not one of LOG_KEYS_MODES. */
export const parseLogKeys = (text: string): LogKeys | undefined =>
  (LOG_KEYS_MODES as ReadonlyArray<string>).includes(text) ? (text as LogKeys) : undefined
