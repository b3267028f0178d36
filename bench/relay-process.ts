/**
 * Child processes for the bench and the load/fault tests: the relay as a
 * real `offset-relay serve` process (so its memory, file descriptors and CPU
 * are its own, apart from the load generators), and a helper to start any
 * Node script that prints one line once it is ready.
 *
 * What we read from the relay, and where from:
 * - connections, listeners, half tunnels, tunnels, buffered bytes, closes by
 *   reason: its Prometheus endpoint (`--metrics-port`);
 * - resident memory and open file descriptors: /proc/<pid>/status and
 *   /proc/<pid>/fd (Linux; undefined elsewhere);
 * - V8 heap: relay-probe.ts, loaded with `--import`, over the IPC channel.
 */
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Http from "node:http"
import * as Net from "node:net"
import * as Os from "node:os"
import * as Path from "node:path"
import { fileURLToPath } from "node:url"
import { hexToBytes } from "../src/core/keys.ts"
import type { RelayEndpoint } from "../src/adapters/relay-connection.ts"
import type { ProbeMemory, ProbeRequest } from "./relay-probe.ts"

/** The repository root (bench/..). */
export const repoRoot = Path.resolve(Path.dirname(fileURLToPath(import.meta.url)), "..")

/** A running child that printed its ready line. */
export interface Child {
  readonly process: ChildProcess.ChildProcess
  readonly pid: number
  /** The first line the child printed on stdout. */
  readonly readyLine: string
  /** Resolves once the child exited. */
  readonly exited: Promise<{ readonly code: number | null; readonly signal: NodeJS.Signals | null }>
  /** The last few KiB of its stderr, for error messages. */
  readonly stderrTail: () => string
  /** Sends `signal` (default SIGTERM) and waits for the exit, killing it after `graceMs`. */
  readonly stop: (signal?: NodeJS.Signals, graceMs?: number) => Promise<void>
  /**
   * Heap and RSS from inside the child, through relay-probe.ts (started with
   * `probe: true`; rejects otherwise); `gc` runs a full collection first.
   */
  readonly memory: (gc: boolean) => Promise<ProcessMemory>
}

/** A process's heap and resident memory as it sees them (bytes). */
export type ProcessMemory = Omit<ProbeMemory, "type" | "id">

// Asks a child's relay-probe.ts for its memory over IPC.
const probeMemory = (child: ChildProcess.ChildProcess): Child["memory"] => {
  let nextRequest = 1
  const waiting = new Map<number, (memory: ProbeMemory) => void>()
  child.on("message", (message: ProbeMemory) => {
    if (message.type !== "memory") return
    waiting.get(message.id)?.(message)
    waiting.delete(message.id)
  })
  return (gc) =>
    new Promise((resolve, reject) => {
      if (child.channel === undefined || child.channel === null) return reject(new Error("the child has no heap probe"))
      const id = nextRequest++
      const timer = setTimeout(() => {
        waiting.delete(id)
        reject(new Error("the child's heap probe did not answer"))
      }, 30_000)
      waiting.set(id, ({ type: _type, id: _id, ...memory }) => {
        clearTimeout(timer)
        resolve(memory)
      })
      child.send({ type: "memory", id, gc } satisfies ProbeRequest)
    })
}

/**
 * Starts `node [execArgv] script [args]` and waits for its first stdout
 * line. With `ipc` the child gets an IPC channel (process.send); with
 * `probe` also relay-probe.ts and --expose-gc, for `memory`.
 */
export const startChild = (
  script: string,
  args: ReadonlyArray<string>,
  options: {
    readonly execArgv?: ReadonlyArray<string>
    readonly ipc?: boolean
    readonly probe?: boolean
    readonly readyTimeoutMs?: number
    /** Also append the child's stderr to this file (debugging). */
    readonly stderrFile?: string
  } = {}
): Promise<Child> =>
  new Promise((resolve, reject) => {
    const probe = options.probe === true ? ["--expose-gc", "--import", Path.join(repoRoot, "bench", "relay-probe.ts")] : []
    const child = ChildProcess.spawn(process.execPath, [...probe, ...(options.execArgv ?? []), script, ...args], {
      cwd: repoRoot,
      stdio: options.ipc || options.probe ? ["ignore", "pipe", "pipe", "ipc"] : ["ignore", "pipe", "pipe"]
    })
    let stderr = ""
    child.stderr!.setEncoding("utf8")
    const log = options.stderrFile === undefined ? undefined : Fs.createWriteStream(options.stderrFile, { flags: "a" })
    child.stderr!.on("data", (text: string) => {
      log?.write(text)
      stderr = (stderr + text).slice(-8192)
    })
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((done) =>
      child.once("exit", (code, signal) => done({ code, signal }))
    )
    const memory = probeMemory(child)
    let stdout = ""
    let ready = false
    const timer = setTimeout(() => {
      if (ready) return
      child.kill("SIGKILL")
      reject(new Error(`${Path.basename(script)} printed nothing within ${options.readyTimeoutMs ?? 15_000} ms\n${stderr}`))
    }, options.readyTimeoutMs ?? 15_000)
    child.stdout!.setEncoding("utf8")
    child.stdout!.on("data", (text: string) => {
      if (ready) return
      stdout += text
      const newline = stdout.indexOf("\n")
      if (newline < 0) return
      ready = true
      clearTimeout(timer)
      const pid = child.pid!
      resolve({
        process: child,
        pid,
        readyLine: stdout.slice(0, newline).trim(),
        exited,
        stderrTail: () => stderr,
        memory,
        stop: async (signal = "SIGTERM", graceMs = 5000) => {
          if (child.exitCode !== null || child.signalCode !== null) return
          child.kill(signal)
          const killer = setTimeout(() => child.kill("SIGKILL"), graceMs)
          await exited
          clearTimeout(killer)
        }
      })
    })
    void exited.then(({ code, signal }) => {
      if (ready) return
      clearTimeout(timer)
      reject(new Error(`${Path.basename(script)} exited (${code ?? signal}) before it was ready\n${stderr}`))
    })
  })

/** A free TCP port on 127.0.0.1 (free when asked: another process could take it before we bind it). */
/**
 * Relay flags that lift every per-prefix and per-key cap: load generators
 * and benches run all their clients from 127.0.0.1, standing in for many
 * hosts, so those caps would measure the cap instead of the relay.
 */
export const ONE_HOST_AS_MANY_ARGS: ReadonlyArray<string> = [
  "--max-connections-per-prefix",
  "1000000",
  "--max-connections-per-key",
  "1000000",
  "--max-handshakes-per-prefix",
  "1000000",
  "--max-unidentified-per-prefix",
  "1000000",
  "--handshake-rate-per-prefix",
  "1000000",
  "--handshake-burst-per-prefix",
  "1000000"
]

export const freePort = (): Promise<number> =>
  new Promise((resolve, reject) => {
    const server = Net.createServer()
    server.once("error", reject)
    server.listen(0, "127.0.0.1", () => {
      const port = (server.address() as Net.AddressInfo).port
      server.close(() => resolve(port))
    })
  })

/** What the relay's metrics endpoint says, with the samples the bench and tests read most. */
export interface RelayScrape {
  /** Every sample by its full name, e.g. `offset_relay_closes_total{reason="peer-closed"}`. */
  readonly samples: ReadonlyMap<string, number>
  /** Open TCP connections. */
  readonly connections: number
  readonly handshaking: number
  readonly listeners: number
  readonly pendingHalfTunnels: number
  readonly tunnels: number
  readonly bufferedBytes: number
  /** Closes with this reason so far. */
  readonly closes: (reason: string) => number
  /** Refusals by this limit so far. */
  readonly overLimit: (limit: string) => number
}

/** Parses Prometheus text into samples (comments skipped). */
export const parseMetrics = (text: string): RelayScrape => {
  const samples = new Map<string, number>()
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue
    const space = line.lastIndexOf(" ")
    samples.set(line.slice(0, space), Number(line.slice(space + 1)))
  }
  const get = (name: string) => samples.get(name) ?? 0
  return {
    samples,
    connections: get(`offset_relay_connections{state="open"}`),
    handshaking: get(`offset_relay_connections{state="handshaking"}`),
    listeners: get("offset_relay_listeners"),
    pendingHalfTunnels: get("offset_relay_pending_half_tunnels"),
    tunnels: get("offset_relay_tunnels"),
    bufferedBytes: get("offset_relay_buffered_bytes"),
    closes: (reason) => get(`offset_relay_closes_total{reason="${reason}"}`),
    overLimit: (limit) => get(`offset_relay_over_limit_total{limit="${limit}"}`)
  }
}

const httpGet = (port: number, path: string): Promise<string> =>
  new Promise((resolve, reject) => {
    const request = Http.get({ host: "127.0.0.1", port, path, agent: false }, (response) => {
      let body = ""
      response.setEncoding("utf8")
      response.on("data", (text: string) => (body += text))
      response.on("end", () => resolve(body))
      response.on("error", reject)
    })
    request.on("error", reject)
    request.setTimeout(10_000, () => request.destroy(new Error(`GET ${path} timed out`)))
  })

/** A relay running as a child `offset-relay serve` process. */
export interface RelayProcess extends Child {
  /** `<public key hex>@127.0.0.1:<port>`, as the relay printed it. */
  readonly address: string
  readonly endpoint: RelayEndpoint
  readonly port: number
  readonly metricsPort: number
  /** Holds the relay's identity.key, so a restart keeps its key. */
  readonly dataDir: string
  readonly scrape: () => Promise<RelayScrape>
  /** Open file descriptors (/proc/<pid>/fd); undefined where /proc is missing. */
  readonly openFds: () => number | undefined
  /** The soft limit on open files (/proc/<pid>/limits); undefined where /proc is missing. */
  readonly fdLimit: () => number | undefined
  /** Resident set size in bytes (/proc/<pid>/status VmRSS); undefined where /proc is missing. */
  readonly residentBytes: () => number | undefined
  /** CPU time (user + system) in milliseconds so far (/proc/<pid>/stat); undefined where /proc is missing. */
  readonly cpuMs: () => number | undefined
  /** Deletes the data dir (after the last restart). */
  readonly removeDataDir: () => void
}

/** How to start a relay child. */
export interface RelayProcessOptions {
  /** Listening port; 0 (default) picks one. A restart passes the old one. */
  readonly port?: number
  /** Reuse a data dir (and so the identity); default: a fresh temporary one. */
  readonly dataDir?: string
  readonly tickMs?: number
  /** More `serve` flags, e.g. ["--keepalive-ticks", "8"]. */
  readonly args?: ReadonlyArray<string>
  readonly logLevel?: string
  /**
   * More Node flags for the relay process (e.g. --cpu-prof), from
   * OFFSET_RELAY_BENCH_NODE_FLAGS by default. OFFSET_RELAY_BENCH_RELAY_LOG=<file>
   * appends the relay's logs (level info) to that file.
   */
  readonly execArgv?: ReadonlyArray<string>
}

/**
 * Starts `offset-relay serve` on 127.0.0.1 with its metrics endpoint and the
 * heap probe; resolves once it printed its address.
 */
export const startRelayProcess = async (options: RelayProcessOptions = {}): Promise<RelayProcess> => {
  const dataDir = options.dataDir ?? Fs.mkdtempSync(Path.join(Os.tmpdir(), "offset-relay-bench-"))
  const metricsPort = await freePort()
  // Another checkout's relay (before/after figures); the default is this one.
  const relayRoot = process.env.OFFSET_RELAY_BENCH_RELAY_ROOT ?? repoRoot
  const child = await startChild(
    Path.join(relayRoot, "bin", "offset-relay.js"),
    [
      "serve",
      "--host",
      "127.0.0.1",
      "--port",
      String(options.port ?? 0),
      "--data-dir",
      dataDir,
      "--tick-ms",
      String(options.tickMs ?? 1000),
      "--metrics-port",
      String(metricsPort),
      "--log-level",
      options.logLevel ?? (process.env.OFFSET_RELAY_BENCH_RELAY_LOG === undefined ? "warn" : "info"),
      ...(options.args ?? [])
    ],
    {
      execArgv: options.execArgv ?? process.env.OFFSET_RELAY_BENCH_NODE_FLAGS?.split(" ").filter((f) => f !== "") ?? [],
      probe: true,
      ...(process.env.OFFSET_RELAY_BENCH_RELAY_LOG === undefined ? {} : { stderrFile: process.env.OFFSET_RELAY_BENCH_RELAY_LOG })
    }
  )
  const address = child.readyLine
  const match = /^([0-9a-f]{64})@(.+):(\d+)$/.exec(address)
  const publicKey = match === null ? undefined : hexToBytes(match[1]!)
  if (match === null || publicKey === undefined) {
    await child.stop("SIGKILL")
    throw new Error(`the relay printed '${address}', not <key hex>@<host>:<port>`)
  }
  const port = Number(match[3])

  const proc = (file: string): string | undefined => {
    try {
      return Fs.readFileSync(`/proc/${child.pid}/${file}`, "utf8")
    } catch {
      return undefined
    }
  }
  return {
    ...child,
    address,
    endpoint: { publicKey, host: "127.0.0.1", port },
    port,
    metricsPort,
    dataDir,
    scrape: async () => parseMetrics(await httpGet(metricsPort, "/metrics")),
    openFds: () => {
      try {
        return Fs.readdirSync(`/proc/${child.pid}/fd`).length
      } catch {
        return undefined
      }
    },
    fdLimit: () => {
      const line = proc("limits")?.split("\n").find((l) => l.startsWith("Max open files"))
      const soft = line === undefined ? undefined : Number(line.split(/\s{2,}/)[1])
      return soft === undefined || Number.isNaN(soft) ? undefined : soft
    },
    residentBytes: () => {
      const line = proc("status")?.split("\n").find((l) => l.startsWith("VmRSS:"))
      return line === undefined ? undefined : Number(line.replace(/\D+/g, "")) * 1024
    },
    cpuMs: () => {
      const stat = proc("stat")
      if (stat === undefined) return undefined
      // Fields after the command name (which may hold spaces): utime and stime are fields 14 and 15.
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
      const ticksPerSecond = 100 // USER_HZ, 100 on every Linux we run on
      return ((Number(fields[11]) + Number(fields[12])) * 1000) / ticksPerSecond
    },
    removeDataDir: () => Fs.rmSync(dataDir, { recursive: true, force: true })
  }
}
