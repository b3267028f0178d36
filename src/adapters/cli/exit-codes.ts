/**
 * The exit codes of every `offset-relay` command: one table, shown by each
 * command's `--help` and in the README, so a script can rely on a code
 * whichever command it ran.
 */

/** Exit codes (the table below says when each is used). */
export const ExitCode = {
  Ok: 0,
  Failed: 1,
  Usage: 2,
  Identity: 3,
  Unreachable: 4,
  Authentication: 5,
  PeerError: 6,
  LocalAddress: 7,
  Interrupted: 130
} as const

/** The table as `--help` prints it. */
export const exitCodeHelp = [
  "exit codes (the same for every command):",
  "  0   done; or a signal stopped a long-running command (serve, listen, connect --local-port)",
  "  1   a tunnel failed after it was established (the relay or the network closed it), or an unexpected error",
  "  2   usage: a bad flag or value, relay address, key or allow-list file",
  "  3   identity file: missing, unreadable, malformed, or (keygen) already there without --force",
  "  4   the peer could not be reached: not listening, it refused us, a relay refused us, no relay answered, timeout",
  "  5   authentication failed: a relay or the peer did not prove its key (possible attack)",
  "  6   the peer ended the stream with an error: its local service refused or reset the connection, or it aborted",
  "  7   a local port could not be opened: in use, not permitted, or no such address (--port, --metrics-port, --local-port)",
  "  130 interrupted by SIGINT or SIGTERM while connect carried stdin/stdout"
].join("\n")
