/**
 * Throughput the way a new user gets it: a plain TCP client → `offset-relay
 * connect --local-port` → relay → `offset-relay listen --forward` → a plain
 * TCP sink, each CLI command its own process (what `npm run bench` adds as
 * the "through the CLI bridges" row).
 */
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import { freePort, repoRoot, type RelayProcess } from "./relay-process.ts"
import { type SinkServer, tcpConnect, writeVolume } from "./baseline.ts"
import type { RelayTransfer } from "./throughput.ts"

/** The `offset-relay` command; OFFSET_RELAY_BENCH_RELAY_ROOT (relay-process.ts) runs another checkout's CLI too. */
export const CLI_BIN = Path.join(process.env.OFFSET_RELAY_BENCH_RELAY_ROOT ?? repoRoot, "bin", "offset-relay.js")

// More Node flags for the listen and connect processes (e.g. --cpu-prof), as
// OFFSET_RELAY_BENCH_NODE_FLAGS gives the relay's.
const cliNodeFlags = (): Array<string> => process.env.OFFSET_RELAY_BENCH_CLI_NODE_FLAGS?.split(" ").filter((f) => f !== "") ?? []

/** Runs `offset-relay args`, resolves with its stdout once it exits 0. */
export const runCli = (args: ReadonlyArray<string>): Promise<string> =>
  new Promise((resolve, reject) => {
    ChildProcess.execFile(process.execPath, [CLI_BIN, ...args], (error, stdout) => (error ? reject(error) : resolve(stdout)))
  })

/**
 * Starts a long-running CLI command (or, with `script`, other Node code);
 * resolves once a stderr line matches `ready`.
 */
export const startCli = (
  args: ReadonlyArray<string>,
  ready: RegExp,
  script: ReadonlyArray<string> = [CLI_BIN]
): Promise<ChildProcess.ChildProcess> =>
  new Promise((resolve, reject) => {
    const child = ChildProcess.spawn(process.execPath, [...cliNodeFlags(), ...script, ...args], { stdio: ["ignore", "ignore", "pipe"] })
    let stderr = ""
    const timer = setTimeout(() => {
      child.kill("SIGKILL")
      reject(new Error(`offset-relay ${args[0] ?? script.join(" ")} was not ready in 20 s:\n${stderr}`))
    }, 20_000)
    child.stderr!.setEncoding("utf8")
    child.stderr!.on("data", (text: string) => {
      stderr = (stderr + text).slice(-4096)
      if (ready.test(stderr)) {
        clearTimeout(timer)
        resolve(child)
      }
    })
    child.once("exit", (code) => {
      clearTimeout(timer)
      reject(new Error(`offset-relay ${args[0] ?? script.join(" ")} exited with ${code}:\n${stderr}`))
    })
  })

/** Stops a CLI command with SIGTERM (SIGKILL after 5 s) and waits for its exit. */
export const stopCli = (child: ChildProcess.ChildProcess): Promise<void> =>
  new Promise((resolve) => {
    if (child.exitCode !== null) return resolve()
    child.once("exit", () => resolve())
    child.kill("SIGTERM")
    setTimeout(() => child.kill("SIGKILL"), 5000).unref()
  })

/** CPU time (user + system) of a process in milliseconds so far (/proc/<pid>/stat); undefined where /proc is missing. */
export const cpuMsOf = (pid: number): number | undefined => {
  let stat: string
  try {
    stat = Fs.readFileSync(`/proc/${pid}/stat`, "utf8")
  } catch {
    return undefined
  }
  // Fields after the command name (which may hold spaces): utime and stime are fields 14 and 15, in USER_HZ (100).
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / 100
}

/** A transfer through the CLI bridges: the relay's figures, and the CPU time each bridge process spent meanwhile. */
export interface CliTransfer extends RelayTransfer {
  readonly connectCpuMs: number | undefined
  readonly listenCpuMs: number | undefined
}

/**
 * MB/s of `volume` bytes written in `chunk`-sized writes by a TCP client
 * into `connect --local-port`, delivered through the relay and `listen
 * --forward` to `sink`; and the CPU time of the relay and of both bridges
 * meanwhile (CPU per byte holds up better than MB/s on a shared machine).
 * Timed from the first byte of the volume to its last, as the library's
 * rows are: the tunnel is set up first (one byte through it), since
 * `connect` opens it only when the local connection arrives, and its setup
 * time is the setup scenario's figure.
 */
export const cliThroughput = async (
  relay: RelayProcess,
  sink: SinkServer,
  volume: number,
  chunk: Uint8Array
): Promise<CliTransfer> => {
  const dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "offset-relay-cli-bench-"))
  const children: Array<ChildProcess.ChildProcess> = []
  try {
    const listenerKey = (await runCli(["keygen", "--out", Path.join(dir, "listener.key")])).trim()
    const connectorKey = (await runCli(["keygen", "--out", Path.join(dir, "connector.key")])).trim()
    const quiet = ["--tick-ms", "1000"]
    const listen = await startCli(
      ["listen", "--identity", Path.join(dir, "listener.key"), "--relay", relay.address, "--allow", connectorKey, "--forward", `127.0.0.1:${sink.port}`, ...quiet],
      /: listening/
    )
    children.push(listen)
    const localPort = await freePort()
    const connect = await startCli(
      ["connect", "--identity", Path.join(dir, "connector.key"), "--relay", relay.address, "--to", listenerKey, "--local-port", String(localPort), ...quiet],
      /listening on/
    )
    children.push(connect)
    const client = await tcpConnect(localPort)
    try {
      const through = sink.expect(1)
      client.write(Buffer.of(0))
      await through
      const cpu = () => [relay.cpuMs(), cpuMsOf(connect.pid!), cpuMsOf(listen.pid!)] as const
      const before = cpu()
      const arrived = sink.expect(volume)
      const start = performance.now()
      await writeVolume(client, chunk, volume)
      const end = await arrived
      const after = cpu()
      const spent = (i: 0 | 1 | 2) => (before[i] === undefined || after[i] === undefined ? undefined : after[i] - before[i])
      const megabytes = volume / 1e6
      return { mbps: megabytes / ((end - start) / 1000), relayCpuMs: spent(0), connectCpuMs: spent(1), listenCpuMs: spent(2), megabytes }
    } finally {
      client.destroy()
    }
  } finally {
    await Promise.all(children.map(stopCli))
    Fs.rmSync(dir, { recursive: true, force: true })
  }
}
