/**
 * What the CLI costs a user before any traffic: the time `offset-relay
 * --help` takes, and the resident memory of an idle `listen` (its listen
 * channel open on the relay) and an idle `connect --local-port` (its local
 * port open). Baselines from the same run: a bare `node -e 0` for the help
 * time, and a bare Node process holding one listening TCP socket for the
 * memory: what any Node command costs, whatever it does.
 *
 * Measured as users get the command: the npm package's bin running its
 * bundle (scripts/bundle-cli.ts, built here into a temporary package
 * layout from the sources under test), plus the idle memory of the same
 * commands run from a checkout (bin running the TypeScript sources).
 */
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import { IDLE_COMPACT_DELAY_MS } from "../src/adapters/cli/idle-memory.ts"
import { bundleCli } from "../scripts/bundle-cli.ts"
import { CLI_BIN, runCli, startCli, stopCli } from "./cli-throughput.ts"
import { freePort, repoRoot, type RelayProcess } from "./relay-process.ts"
import { row, type BenchRow } from "./report.ts"

/** Milliseconds from spawning `node args` to its exit. */
const timeRun = (args: ReadonlyArray<string>): Promise<number> =>
  new Promise((resolve, reject) => {
    const start = performance.now()
    ChildProcess.execFile(process.execPath, args, (error) => (error ? reject(error) : resolve(performance.now() - start)))
  })

// The median of `runs` timings, after one unmeasured run (disk cache, compile cache).
const medianRunMs = async (args: ReadonlyArray<string>, runs: number): Promise<number> => {
  await timeRun(args)
  const samples: Array<number> = []
  for (let i = 0; i < runs; i++) samples.push(await timeRun(args))
  samples.sort((a, b) => a - b)
  return samples[Math.floor(samples.length / 2)]!
}

/** Resident set size of a process in bytes (/proc/<pid>/status VmRSS); undefined where /proc is missing. */
export const residentBytesOf = (pid: number): number | undefined => {
  try {
    const line = Fs.readFileSync(`/proc/${pid}/status`, "utf8").split("\n").find((l) => l.startsWith("VmRSS:"))
    return line === undefined ? undefined : Number(line.replace(/\D+/g, "")) * 1024
  } catch {
    return undefined
  }
}

/**
 * How long a started command is left alone before its memory is read: a few
 * ticks pass, and the command's idle compaction (IDLE_COMPACT_DELAY_MS) has run.
 */
const SETTLE_MS = IDLE_COMPACT_DELAY_MS + 3000

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

// A bare Node process listening on one TCP port: the floor of any resident Node command.
const bareNodeRss = async (): Promise<number | undefined> => {
  const child = await startCli([], /ready/, [
    "-e",
    "require('node:net').createServer().listen(0, '127.0.0.1', () => console.error('ready'))"
  ])
  try {
    await sleep(SETTLE_MS)
    return residentBytesOf(child.pid!)
  } finally {
    await stopCli(child)
  }
}

/**
 * The command as the npm package has it, from the sources under test: the
 * package's bin and dist/cli bundle in `dir`; resolves to the bin.
 */
const packagedCli = async (dir: string): Promise<string> => {
  const sourceRoot = process.env.OFFSET_RELAY_BENCH_RELAY_ROOT ?? repoRoot
  await bundleCli(sourceRoot, Path.join(dir, "dist", "cli"))
  const bin = Path.join(dir, "bin", "offset-relay.js")
  Fs.mkdirSync(Path.dirname(bin), { recursive: true })
  Fs.copyFileSync(Path.join(repoRoot, "bin", "offset-relay.js"), bin)
  return bin
}

/** The help time and idle-memory rows, with a relay to listen on. */
export const benchCliFootprint = async (relay: RelayProcess, quick: boolean): Promise<Array<BenchRow>> => {
  const rows: Array<BenchRow> = []
  const runs = quick ? 3 : 9
  const dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "offset-relay-cli-footprint-"))
  const children: Array<ChildProcess.ChildProcess> = []
  try {
    const packaged = await packagedCli(Path.join(dir, "package"))
    const bare = await medianRunMs(["-e", "0"], runs)
    for (const args of [["--help"], ["listen", "--help"]]) {
      rows.push(
        row("cli", `offset-relay ${args.join(" ")}`, await medianRunMs([packaged, ...args], runs), "ms", [{ to: "node -e 0", baseline: bare }],
          args.length === 1 ? `median of ${runs} runs, from spawn to exit, the npm package's command` : undefined)
      )
    }

    const floor = await bareNodeRss()
    const listenerKey = (await runCli(["keygen", "--out", Path.join(dir, "listener.key")])).trim()
    const connectorKey = (await runCli(["keygen", "--out", Path.join(dir, "connector.key")])).trim()
    const baselines = floor === undefined ? [] : [{ to: "bare node", baseline: floor / 2 ** 20 }]
    for (const [how, script] of [["", packaged], [", from a checkout", CLI_BIN]] as const) {
      const listen = await startCli(
        ["listen", "--identity", Path.join(dir, "listener.key"), "--relay", relay.address, "--allow", connectorKey, "--forward", "127.0.0.1:9"],
        /: listening/,
        [script]
      )
      children.push(listen)
      const connect = await startCli(
        ["connect", "--identity", Path.join(dir, "connector.key"), "--relay", relay.address, "--to", listenerKey, "--local-port", String(await freePort())],
        /listening on/,
        [script]
      )
      children.push(connect)
      await sleep(SETTLE_MS)
      for (const [name, child] of [["listen", listen], ["connect --local-port", connect]] as const) {
        const rss = residentBytesOf(child.pid!)
        if (rss === undefined) continue
        rows.push(
          row("cli", `idle ${name} RSS${how}`, rss / 2 ** 20, "MiB", baselines,
            name === "listen" && how === ""
              ? `resident memory (/proc) after it is ready and ${SETTLE_MS / 1000} s idle, the npm package's command; bare node: one listening socket`
              : undefined)
        )
      }
      await Promise.all(children.splice(0).map(stopCli))
    }
    return rows
  } finally {
    await Promise.all(children.map(stopCli))
    Fs.rmSync(dir, { recursive: true, force: true })
  }
}
