/**
 * What `offset-relay listen` and `offset-relay connect` share before they
 * load the client library: exit codes, argument checks and progress lines on
 * stderr. Nothing here loads Effect, the crypto or the sockets, so `--help`
 * and usage errors answer at once; local-bridge.ts has the rest.
 *
 * Exit codes: src/adapters/cli/exit-codes.ts (one table for every command).
 */
import { parsePublicKeyHex, shortKeyHex } from "../../core/keys.ts"
import { parseRelayAddress, relayHostPort, type RelayAddress } from "../../core/relay-address.ts"
import { ExitCode, exitCodeHelp } from "./exit-codes.ts"
import type { CryptoChoice } from "../crypto-service.ts"
import { cryptoChoiceOf, unavailableCryptoError } from "./crypto-option.ts"
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
 * UsageError, which is printed with a hint. Resolves with the settings, or
 * the exit code to return at once.
 */
export const parseCommand = async <S extends object>(
  command: "listen" | "connect",
  args: ReadonlyArray<string>,
  help: { readonly usage: string; readonly description: string; readonly table: OptionTable },
  read: (options: ParsedOptions, common: CommonSettings) => S
): Promise<S | number> => {
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
    const crypto = cryptoChoiceOf((o.crypto as string | undefined) ?? "auto")
    const settings = read(o, { identityPath, tickMs, quiet: o.quiet === true, crypto })
    // Only --crypto node needs the implementations loaded to be checked.
    const unavailable = crypto === "node" ? unavailableCryptoError(crypto, (await import("../crypto.ts")).nodeCryptoProblem) : undefined
    if (unavailable !== undefined) throw unavailable
    return settings
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

/** One progress or error line on stderr. */
export const say = (command: string, line: string): void => {
  process.stderr.write(`offset-relay ${command}: ${line}\n`)
}
