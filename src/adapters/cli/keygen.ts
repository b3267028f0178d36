/**
 * `offset-relay keygen`: write a new identity key file (mode 0600) and print
 * its public key (64 hex digits) on stdout.
 */
import * as NodePath from "node:path"
import * as Effect from "effect/Effect"
import { bytesToHex } from "../../core/keys.ts"
import { generateIdentity, shellQuote, writeIdentityFile } from "../identity.ts"
import { helpText, parseOptions, UsageError, type OptionTable } from "./options.ts"
import { ExitCode, exitCodeHelp } from "./exit-codes.ts"
import { CliError, runProgram } from "./runtime.ts"
import { defaultDataDir } from "./data-dir.ts"

const table: OptionTable = {
  out: { type: "string", value: "FILE", help: "where to write the key file (default: DATA_DIR/identity.key)" },
  "data-dir": { type: "string", value: "DIR", help: `default directory for --out (default ${defaultDataDir()})` },
  force: { type: "boolean", help: "replace an existing file (its old identity is lost)" }
}

/** Entry point of `offset-relay keygen`. */
export const run = async (args: ReadonlyArray<string>): Promise<number> => {
  let parsed
  try {
    parsed = parseOptions(args, table)
    if (!parsed.help && parsed.positionals.length > 0) {
      throw new UsageError(`unexpected argument '${parsed.positionals[0]}'`)
    }
  } catch (error) {
    if (error instanceof UsageError) {
      process.stderr.write(`offset-relay keygen: ${error.message}\nRun 'offset-relay keygen --help' for the options.\n`)
      return ExitCode.Usage
    }
    throw error
  }
  if (parsed.help) {
    process.stdout.write(
      `${helpText("offset-relay keygen [--out FILE]", "Writes a new Ed25519 identity and prints its public key.", table)}\n\n${exitCodeHelp}\n`
    )
    return 0
  }
  const out = (parsed.options.out as string | undefined) ??
    NodePath.join((parsed.options["data-dir"] as string | undefined) ?? defaultDataDir(), "identity.key")
  const program = Effect.gen(function*() {
    const identity = yield* generateIdentity
    yield* writeIdentityFile(out, identity, { overwrite: parsed.options.force === true }).pipe(
      Effect.mapError((error) =>
        new CliError(
          error.reason === "Exists"
            ? `identity file ${out} already exists; refusing to overwrite it, since peers may know its key. To replace it (its old identity is lost): offset-relay keygen --out ${shellQuote(out)} --force`
            : error.message,
          ExitCode.Identity
        )
      )
    )
    process.stdout.write(`${bytesToHex(identity.publicKey)}\n`)
    process.stderr.write(`wrote ${out}\n`)
    return 0
  })
  return runProgram(program, {
    logLevel: "warn",
    logFormat: "pretty",
    describeError: (error) => error.message,
    exitCodeOf: (error) => error.exitCode,
    command: "keygen"
  })
}
