/**
 * `offset-relay wire encode|decode <Type>`: stdin in, one line out (see
 * wire.ts for the conversions and wire-json.ts for the JSON conventions).
 */
import { runWire } from "./wire.ts"

const readStdin = async (): Promise<string> => {
  if (process.stdin.isTTY) return ""
  const chunks: Array<Buffer> = []
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer)
  return Buffer.concat(chunks).toString("utf8")
}

/** Entry point of `offset-relay wire`. */
export const run = async (args: ReadonlyArray<string>): Promise<number> => {
  const wantsHelp = args.length === 0 || args.includes("--help") || args.includes("-h")
  const outcome = runWire(args, wantsHelp ? "" : await readStdin())
  process.stdout.write(outcome.stdout)
  process.stderr.write(outcome.stderr)
  return outcome.exitCode
}
