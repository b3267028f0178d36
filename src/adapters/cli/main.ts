/**
 * `offset-relay` command dispatcher: picks the subcommand and hands it the
 * rest of the arguments. Each subcommand module exports `run(args)` returning
 * the process exit code, and prints its own `--help`.
 */
import process from "node:process"

const commands: Record<string, { readonly summary: string; readonly load: () => Promise<{ run: (args: ReadonlyArray<string>) => Promise<number> }> }> = {
  serve: { summary: "run a relay", load: () => import("./serve.ts") },
  keygen: { summary: "write a new identity key file and print its public key", load: () => import("./keygen.ts") },
  listen: { summary: "expose a local TCP service to peers through relays", load: () => import("./listen.ts") },
  connect: { summary: "reach a peer by public key (local port or stdin/stdout)", load: () => import("./connect.ts") },
  wire: { summary: "encode/decode protocol messages (packed Cap'n Proto hex <-> JSON)", load: () => import("./wire-command.ts") }
}

const usage = (): string =>
  [
    "usage: offset-relay <command> [options]",
    "",
    "Relay server and client for the Offset relay protocol: reach peers behind NATs",
    "by public key through federated relays.",
    "",
    "commands:",
    ...Object.entries(commands).map(([name, c]) => `  ${name.padEnd(8)} ${c.summary}`),
    "",
    "Run `offset-relay <command> --help` for a command's options."
  ].join("\n")

const main = async (argv: ReadonlyArray<string>): Promise<number> => {
  const [name, ...rest] = argv
  if (name === undefined || name === "--help" || name === "-h" || name === "help") {
    process.stdout.write(usage() + "\n")
    return name === undefined ? 2 : 0
  }
  const command = commands[name]
  if (command === undefined) {
    process.stderr.write(`offset-relay: unknown command '${name}'\n${usage()}\n`)
    return 2
  }
  const module = await command.load()
  return module.run(rest)
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code
  },
  (error: unknown) => {
    process.stderr.write(`offset-relay: ${error instanceof Error ? error.message : String(error)}\n`)
    process.exitCode = 1
  }
)
