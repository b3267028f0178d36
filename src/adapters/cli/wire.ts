/**
 * `offset-relay wire`: encode and decode protocol messages for debugging.
 * A pure function of the arguments (those after `wire`) and the whole of
 * stdin; the caller does the reading and printing.
 */
import { ExitCode, exitCodeHelp } from "./exit-codes.ts"
import { decodeWire, encodeWire, wireShapes, wireTypes } from "../../core/wire-json.ts"

/** What the command prints and how it exits. */
export interface WireOutcome {
  readonly stdout: string
  readonly stderr: string
  readonly exitCode: number
}

/** Help text of `offset-relay wire`. */
export const wireHelp: string = [
  "usage: offset-relay wire decode <Type>   packed hex on stdin -> JSON line on stdout",
  "       offset-relay wire encode <Type>   JSON on stdin -> packed hex line on stdout",
  "",
  "Encodes and decodes Offset relay protocol messages: packed Cap'n Proto with the",
  "standard segment table, as `capnp encode --packed` writes it.",
  "",
  "types and their JSON:",
  ...wireTypes.map((type) => `  ${type.padEnd(19)} ${wireShapes[type]}`),
  "",
  "JSON conventions:",
  "  - field names as in the schema (schema/*.capnp)",
  "  - a union (also a named group such as optDestPublicKey) is an object with",
  "    exactly one key naming its member",
  "  - Void is null",
  "  - PublicKey, DhPublicKey, Salt (32 bytes), RandValue (16 bytes), Signature",
  "    (64 bytes) and Data are lowercase hex strings of their bytes",
  "  - no key may be missing or extra",
  "  - hex on stdin may contain whitespace and use either case",
  "",
  "examples:",
  `  echo '{"message":"00ff"}' | offset-relay wire encode KaMessage`,
  "  echo 1004500101010111011202ff | offset-relay wire decode KaMessage",
  "",
  "Errors go to stderr as one line; the exit code is then 2 (bad input).",
  "",
  exitCodeHelp
].join("\n")

const failure = (message: string): WireOutcome => ({
  stdout: "",
  stderr: `offset-relay wire: ${message}\n`,
  exitCode: ExitCode.Usage
})

/** Runs `offset-relay wire <args>` on the given stdin text. */
export const runWire = (args: ReadonlyArray<string>, stdinText: string): WireOutcome => {
  if (args.includes("--help") || args.includes("-h")) return { stdout: `${wireHelp}\n`, stderr: "", exitCode: 0 }
  const [command, type, ...rest] = args
  if (command === undefined) return failure("missing command: expected `decode <Type>` or `encode <Type>` (see --help)")
  if (command !== "decode" && command !== "encode") {
    return failure(`unknown command ${JSON.stringify(command)}: expected decode or encode (see --help)`)
  }
  if (type === undefined) return failure(`missing type after ${command}: expected one of ${wireTypes.join(", ")}`)
  if (rest.length > 0) return failure(`unexpected argument ${JSON.stringify(rest[0])} (see --help)`)
  const result = command === "decode" ? decodeWire(type, stdinText) : encodeWire(type, stdinText)
  return result._tag === "Ok" ? { stdout: `${result.value}\n`, stderr: "", exitCode: 0 } : failure(result.message)
}
