/**
 * `npm run bench`: starts a relay (`offset-relay serve` as a child process)
 * and the baselines on 127.0.0.1, runs each scenario, prints one table with
 * every figure beside a baseline measured in the same run, and writes it as
 * JSON and SVG under bench/results/. bench/README.md says what each number
 * means.
 *
 *   node bench/run.ts [--quick] [--only <scenario>[,<scenario>…]]
 *
 * Scenarios: crypto, setup, throughput, websocket, isolation, scale, cli. `--quick` runs
 * each with small volumes (seconds, for CI smoke runs; its numbers are
 * noisier).
 */
import * as Path from "node:path"
import process from "node:process"
import { benchCliFootprint } from "./cli-footprint.ts"
import { benchCrypto, type CryptoBenchRow } from "./crypto.ts"
import { freePort, ONE_HOST_AS_MANY_ARGS, repoRoot, startRelayProcess, type RelayProcess } from "./relay-process.ts"
import { formatTable, row, runInfo, writeResults, type BenchRow } from "./report.ts"
import { benchIsolation } from "./isolation.ts"
import { benchScale, SCALE_RELAY_ARGS } from "./scale.ts"
import { benchSetupLatency } from "./setup-latency.ts"
import { benchThroughput } from "./throughput.ts"
import { benchWebSocket } from "./websocket.ts"

/** The scenarios, in the order they run. */
export const SCENARIOS = ["crypto", "setup", "throughput", "websocket", "isolation", "scale", "cli"] as const
/** One scenario's name. */
export type Scenario = (typeof SCENARIOS)[number]

/** Parsed command line. */
export interface BenchArgs {
  readonly quick: boolean
  readonly only: ReadonlyArray<Scenario>
  readonly resultsDir: string
}

/** Parses the command line; throws a usage message on anything unknown. */
export const parseArgs = (argv: ReadonlyArray<string>): BenchArgs => {
  let quick = false
  let only: Array<Scenario> = [...SCENARIOS]
  let resultsDir = Path.join(repoRoot, "bench", "results")
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!
    if (arg === "--quick") quick = true
    else if (arg === "--only" || arg === "--results") {
      const value = argv[++i]
      if (value === undefined) throw new Error(`${arg} needs a value`)
      if (arg === "--results") resultsDir = Path.resolve(value)
      else {
        only = value.split(",").map((name) => {
          if (!(SCENARIOS as ReadonlyArray<string>).includes(name)) {
            throw new Error(`unknown scenario '${name}'; scenarios: ${SCENARIOS.join(", ")}`)
          }
          return name as Scenario
        })
      }
    } else if (arg === "--help" || arg === "-h") {
      throw new Error("usage")
    } else throw new Error(`unknown argument '${arg}'`)
  }
  return { quick, only, resultsDir }
}

const usage = `usage: node bench/run.ts [--quick] [--only <scenario>[,<scenario>...]] [--results <dir>]
scenarios: ${SCENARIOS.join(", ")} (default: all); results go to bench/results/ by default`

const cryptoRows = (rows: ReadonlyArray<CryptoBenchRow>): Array<BenchRow> => {
  const noble = rows.find((r) => r.layer === "noble")
  return rows.flatMap((r) => [
    row("crypto", `${r.layer} seal+open 64 KiB`, r.sealOpenMBps, "MB/s", noble && r !== noble ? [{ to: "noble", baseline: noble.sealOpenMBps }] : []),
    row("crypto", `${r.layer} handshake crypto (one side)`, r.handshakeCryptoPerSec, "/s", noble && r !== noble ? [{ to: "noble", baseline: noble.handshakeCryptoPerSec }] : [])
  ])
}

/** Runs the chosen scenarios; returns every row. */
/** Relay flags for bench relays: lift the per-host caps (see withRelay). */
const MANY_HOSTS_ARGS = ONE_HOST_AS_MANY_ARGS

export const runBench = async (args: BenchArgs, log: (line: string) => void): Promise<Array<BenchRow>> => {
  const rows: Array<BenchRow> = []
  const wants = (s: Scenario) => args.only.includes(s)
  let crypto: ReadonlyArray<CryptoBenchRow> | undefined
  const cryptoCeiling = () => (crypto ??= benchCrypto({ quick: args.quick }))
  if (wants("crypto")) {
    log("crypto: seal+open and handshake crypto per layer")
    rows.push(...cryptoRows(cryptoCeiling()))
  }
  const withRelay = async (name: string, extraArgs: ReadonlyArray<string>, f: (relay: RelayProcess) => Promise<Array<BenchRow>>) => {
    log(`${name}: starting a relay`)
    // Every bench client comes from 127.0.0.1, standing in for many hosts: the per-host caps would throttle them as one.
    const relay = await startRelayProcess({ args: [...MANY_HOSTS_ARGS, ...extraArgs] })
    try {
      rows.push(...(await f(relay)))
    } finally {
      await relay.stop()
      relay.removeDataDir()
    }
  }
  if (wants("setup")) await withRelay("setup", [], (relay) => benchSetupLatency(relay, args.quick))
  if (wants("throughput")) {
    const ceiling = cryptoCeiling()
    await withRelay("throughput", [], (relay) => benchThroughput(relay, args.quick, ceiling))
  }
  if (wants("websocket")) {
    const wsPort = await freePort()
    await withRelay("websocket", ["--ws-port", String(wsPort)], (relay) => benchWebSocket(relay, wsPort, args.quick))
  }
  if (wants("isolation")) await withRelay("isolation", [], (relay) => benchIsolation(relay, args.quick))
  if (wants("scale")) {
    const ceiling = cryptoCeiling()
    await withRelay("scale", SCALE_RELAY_ARGS, (relay) => benchScale(relay, args.quick, ceiling, log))
  }
  if (wants("cli")) await withRelay("cli", [], (relay) => benchCliFootprint(relay, args.quick))
  return rows
}

if (import.meta.main) {
  let args: BenchArgs
  try {
    args = parseArgs(process.argv.slice(2))
  } catch (error) {
    const message = (error as Error).message
    process.stderr.write(message === "usage" ? `${usage}\n` : `bench: ${message}\n${usage}\n`)
    process.exit(message === "usage" ? 0 : 2)
  }
  const startedAt = new Date()
  const rows = await runBench(args, (line) => process.stderr.write(`[bench] ${line}\n`))
  const info = runInfo(args.quick, startedAt)
  process.stdout.write(formatTable(rows, info) + "\n")
  const jsonPath = writeResults(args.resultsDir, rows, info)
  process.stderr.write(`[bench] wrote ${Path.relative(process.cwd(), jsonPath)} and latest.{json,svg} beside it\n`)
}
