/**
 * The close mode rule of relay-core.ts ("How a connection is closed"),
 * written out independently for the unit and model tests: the reasons and
 * limits whose client is hostile or dead, and is aborted. (Any client still
 * in its handshake is aborted too; the tests know which ones are.)
 */
export const ABORTED_REASONS_AND_LIMITS: ReadonlyArray<string> = [
  "timeout-handshake",
  "timeout-init",
  "protocol-violation",
  "adapter-misuse",
  "handshake-failed",
  "frame-too-long",
  "version-mismatch",
  "keepalive-timeout",
  "connection-lost",
  "internal-error",
  "stuck-tunnel",
  "rekey-rate",
  "unidentified-evicted",
  "handshake-evicted"
]
