/**
 * What `offset-relay listen` and `offset-relay connect` share: exit codes,
 * argument checks, identity loading, progress lines on stderr, and piping a
 * tunnel to a local TCP connection with TCP's half close.
 *
 * Exit codes: src/adapters/cli/exit-codes.ts (one table for every command).
 */
import type * as Net from "node:net"
import { ConnectError, readIdentity } from "../client/index.ts"
import type { PeerDuplex } from "../client/peer-duplex.ts"
import { PeerStreamError, StreamAbort } from "../client/tunnel-stream.ts"
import type { Identity } from "../identity.ts"
import { parsePublicKeyHex, shortKeyHex } from "../../core/keys.ts"
import { parseRelayAddress, relayHostPort, type RelayAddress } from "../../core/relay-address.ts"
import { ExitCode, exitCodeHelp } from "./exit-codes.ts"
import type { CryptoChoice } from "../crypto.ts"
import { checkCryptoChoice } from "./runtime.ts"
import { helpText, type OptionSpec, type OptionTable, type ParsedOptions, parseOptions, UsageError } from "./options.ts"

export { ExitCode } from "./exit-codes.ts"

/** The --identity flag of both commands. */
export const identityOption: OptionSpec = {
  type: "string",
  value: "FILE",
  help: "our identity key file (offset-relay keygen --out FILE); required"
}

/** The --tick-ms flag of both commands. */
export const tickOption: OptionSpec = { type: "integer", default: 1000, min: 1, value: "MS", help: "milliseconds per keepalive tick" }

/** The --quiet flag of both commands. */
export const quietOption: OptionSpec = { type: "boolean", short: "q", help: "print only errors" }

/** What both commands read from the flags above. */
export interface CommonSettings {
  readonly identityPath: string
  readonly tickMs: number
  readonly quiet: boolean
  /** --crypto (see runtime.ts cryptoOption); the command's table must have it. */
  readonly crypto: CryptoChoice
}

/**
 * Parses a client command's arguments. Prints `--help` (with the exit
 * codes); `read` builds the settings from the parsed flags and may throw
 * UsageError, which is printed with a hint. Returns the settings, or the
 * exit code to return at once.
 */
export const parseCommand = <S extends object>(
  command: "listen" | "connect",
  args: ReadonlyArray<string>,
  help: { readonly usage: string; readonly description: string; readonly table: OptionTable },
  read: (options: ParsedOptions, common: CommonSettings) => S
): S | number => {
  try {
    const parsed = parseOptions(args, help.table)
    if (parsed.help) {
      process.stdout.write(`${helpText(help.usage, help.description, help.table)}\n\n${exitCodeHelp}\n`)
      return ExitCode.Ok
    }
    if (parsed.positionals.length > 0) throw new UsageError(`unexpected argument '${parsed.positionals[0]}'`)
    const o = parsed.options
    const identityPath = o.identity as string | undefined
    if (identityPath === undefined) throw new UsageError("--identity FILE is required (create one with: offset-relay keygen --out FILE)")
    const tickMs = o["tick-ms"] as number
    if (tickMs < 1) throw new UsageError("--tick-ms must be at least 1")
    const crypto = checkCryptoChoice((o.crypto as string | undefined) ?? "auto")
    return read(o, { identityPath, tickMs, quiet: o.quiet === true, crypto })
  } catch (error) {
    if (error instanceof UsageError) {
      say(command, `${error.message}\nRun 'offset-relay ${command} --help' for the options.`)
      return ExitCode.Usage
    }
    throw error
  }
}

/** Resolves with the name of the first SIGINT or SIGTERM: how a long-running command is stopped. */
export const untilStopSignal = (): Promise<string> =>
  new Promise((resolve) => {
    process.once("SIGINT", () => resolve("SIGINT"))
    process.once("SIGTERM", () => resolve("SIGTERM"))
  })

/** Parses every --relay value; a bad one is a usage error that quotes it. */
export const relaysOf = (values: ReadonlyArray<string>): ReadonlyArray<RelayAddress> => {
  if (values.length === 0) throw new UsageError("give at least one --relay <relay key hex>@<host>:<port>")
  return values.map((text) => {
    const parsed = parseRelayAddress(text)
    if (parsed._tag === "Err") throw new UsageError(`--relay: ${parsed.error.message}`)
    return parsed.value
  })
}

/** Parses a public key flag value. */
export const keyOf = (flag: string, text: string): Uint8Array => {
  const parsed = parsePublicKeyHex(text)
  if (parsed._tag === "Err") throw new UsageError(`--${flag}: ${parsed.error.message}`)
  return parsed.value
}

/** A short name of a relay for progress lines: key prefix and host:port. */
export const relayName = (address: string): string => {
  const parsed = parseRelayAddress(address)
  return parsed._tag === "Ok" ? `${shortKeyHex(parsed.value.publicKey)}@${relayHostPort(parsed.value)}` : address
}

/** Reads the identity file, or prints why not; undefined means exit with ExitCode.Identity. */
export const loadIdentity = async (command: string, path: string, crypto: CryptoChoice = "auto"): Promise<Identity | undefined> => {
  try {
    return await readIdentity(path, crypto)
  } catch (error) {
    say(command, error instanceof Error ? error.message : String(error))
    return undefined
  }
}

/** One progress or error line on stderr. */
export const say = (command: string, line: string): void => {
  process.stderr.write(`offset-relay ${command}: ${line}\n`)
}

/** The exit code of a tunnel that failed after it was established: the peer's error, or the relay's side. */
export const tunnelExitCode = (error: unknown): number =>
  error instanceof PeerStreamError && error.reason === "PeerError" ? ExitCode.PeerError : ExitCode.Failed

/** The exit code for a failed connect. */
export const connectExitCode = (error: unknown): number =>
  error instanceof ConnectError
    ? error.reason === "Authentication" ? ExitCode.Authentication : ExitCode.Unreachable
    : ExitCode.Failed

/** Byte counts of one piped connection. */
export interface PipeCounts {
  /** Bytes from the tunnel to the local socket. */
  fromPeer: number
  /** Bytes from the local socket to the tunnel. */
  toPeer: number
}

/**
 * Pipes a tunnel and a local TCP socket both ways with half close (each
 * side's end becomes the other's end) and resolves once both directions are
 * done, or rejects with the first error after destroying both. When the
 * local side fails, the peer is told so (a stream error: our local service
 * refused, or our local connection was reset), so it does not blame the
 * relay. The local socket must have been made with `allowHalfOpen: true`.
 */
export const pipeBothWays = (tunnel: PeerDuplex, local: Net.Socket): Promise<PipeCounts> =>
  new Promise((resolve, reject) => {
    const counts: PipeCounts = { fromPeer: 0, toPeer: 0 }
    let settled = false
    let localConnected = !local.connecting
    local.once("connect", () => (localConnected = true))
    const fail = (error: Error, tell?: StreamAbort) => {
      if (settled) return
      settled = true
      tunnel.destroy(tell)
      local.destroy()
      reject(error)
    }
    const localFailed = (error: NodeJS.ErrnoException) => {
      const code = error.code ?? "error"
      const tell = localConnected
        ? new StreamAbort("local-reset", code)
        : new StreamAbort("local-refused", code)
      fail(
        new Error(localConnected ? `the local connection failed: ${error.message}` : `the local service refused: ${error.message}`),
        tell
      )
    }
    tunnel.on("data", (chunk: Buffer) => (counts.fromPeer += chunk.length))
    local.on("data", (chunk: Buffer) => (counts.toPeer += chunk.length))
    tunnel.on("error", (error) => fail(error))
    local.on("error", localFailed)
    tunnel.pipe(local)
    local.pipe(tunnel)
    // A side that closes before its readable end was read ended early (a
    // reset, a destroy): the other side must not wait for it.
    let closed = 0
    const onClose = (stream: "tunnel" | "local", ended: boolean) => {
      if (!ended) {
        return stream === "tunnel"
          ? fail(new Error("the tunnel closed before the peer finished"))
          : fail(
            new Error("the local connection closed before it finished"),
            new StreamAbort("local-reset", "closed before it finished")
          )
      }
      if (++closed === 2 && !settled) {
        settled = true
        resolve(counts)
      }
    }
    tunnel.on("close", () => onClose("tunnel", tunnel.readableEnded))
    local.on("close", () => onClose("local", local.readableEnded))
  })
