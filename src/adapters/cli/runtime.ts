/**
 * Running a CLI command's Effect: the Node services (file system), the
 * crypto layer chosen by --crypto (default auto), and logs on stderr
 * (stdout is kept for the command's own output, e.g. the relay's address)
 * in the chosen level and format.
 */
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as References from "effect/References"
import type * as LogLevel from "effect/LogLevel"
import * as NodeFileSystem from "@effect/platform-node/NodeFileSystem"
import type * as FileSystem from "effect/FileSystem"
import { type Crypto, type CryptoChoice, layerFor, nodeCryptoProblem } from "../crypto.ts"
import { cryptoChoiceOf, unavailableCryptoError } from "./crypto-option.ts"
import { UsageError } from "./options.ts"

export { cryptoOption } from "./crypto-option.ts"

/** Log formats the CLI offers. */
const LOG_FORMATS = ["pretty", "json"] as const
/** Log levels the CLI offers. */
const LOG_LEVELS = ["debug", "info", "warn", "error", "none"] as const

const levels: Record<(typeof LOG_LEVELS)[number], LogLevel.LogLevel> = {
  debug: "Debug",
  info: "Info",
  warn: "Warn",
  error: "Error",
  none: "None"
}

/** Checks the --log-level / --log-format values. */
export const checkLogOptions = (level: string, format: string): void => {
  if (!(LOG_LEVELS as ReadonlyArray<string>).includes(level)) {
    throw new UsageError(`--log-level must be one of ${LOG_LEVELS.join(", ")}; got '${level}'`)
  }
  if (!(LOG_FORMATS as ReadonlyArray<string>).includes(format)) {
    throw new UsageError(`--log-format must be one of ${LOG_FORMATS.join(", ")}; got '${format}'`)
  }
}

/** A command's failure, reported as one line with its exit code (exit-codes.ts). */
export class CliError extends Error {
  readonly _tag = "CliError"
  readonly exitCode: number
  constructor(message: string, exitCode: number) {
    super(message)
    this.exitCode = exitCode
  }
}

/** Checks a --crypto value, and that this runtime can run it (refused here, with the reason, rather than a connection failing later). */
export const checkCryptoChoice = (value: string): CryptoChoice => {
  const choice = cryptoChoiceOf(value)
  const unavailable = unavailableCryptoError(choice, nodeCryptoProblem)
  if (unavailable !== undefined) throw unavailable
  return choice
}

/** Runs a command's program; resolves with its exit code (failures are printed as one line on stderr). */
export const runProgram = async <E>(
  program: Effect.Effect<number, E, Crypto | FileSystem.FileSystem>,
  options: {
    readonly logLevel: string
    readonly logFormat: string
    readonly describeError: (error: E) => string
    /** The exit code of a failure (default 1); see exit-codes.ts. */
    readonly exitCodeOf?: (error: E) => number
    /** The subcommand, named at the start of an error line. */
    readonly command?: string
    readonly crypto?: CryptoChoice
  }
): Promise<number> => {
  const logger = options.logFormat === "json"
    ? Logger.withConsoleError(Logger.formatJson)
    : Logger.withConsoleError(Logger.formatLogFmt)
  const layer = Layer.mergeAll(NodeFileSystem.layer, layerFor(options.crypto ?? "auto"), Logger.layer([logger]))
  const exit = await Effect.runPromiseExit(
    program.pipe(
      Effect.provide(layer),
      Effect.provideService(References.MinimumLogLevel, levels[options.logLevel as (typeof LOG_LEVELS)[number]])
    )
  )
  if (Exit.isSuccess(exit)) return exit.value
  for (const reason of exit.cause.reasons) {
    if (reason._tag === "Fail") {
      process.stderr.write(`offset-relay${options.command === undefined ? "" : ` ${options.command}`}: ${options.describeError(reason.error)}\n`)
      return options.exitCodeOf?.(reason.error) ?? 1
    }
  }
  process.stderr.write(`offset-relay: unexpected failure\n${String(exit.cause)}\n`)
  return 1
}
