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
import { type SinkServer, tcpThroughput } from "./baseline.ts"
import type { RelayTransfer } from "./throughput.ts"

// OFFSET_RELAY_BENCH_RELAY_ROOT (relay-process.ts) runs another checkout's CLI too.
const BIN = Path.join(process.env.OFFSET_RELAY_BENCH_RELAY_ROOT ?? repoRoot, "bin", "offset-relay.js")

// Runs `offset-relay args`, resolves with its stdout once it exits 0.
const runCli = (args: ReadonlyArray<string>): Promise<string> =>
  new Promise((resolve, reject) => {
    ChildProcess.execFile(process.execPath, [BIN, ...args], (error, stdout) => (error ? reject(error) : resolve(stdout)))
  })

// Starts a long-running CLI command; resolves once a stderr line matches `ready`.
const startCli = (args: ReadonlyArray<string>, ready: RegExp): Promise<ChildProcess.ChildProcess> =>
  new Promise((resolve, reject) => {
    const child = ChildProcess.spawn(process.execPath, [BIN, ...args], { stdio: ["ignore", "ignore", "pipe"] })
    let stderr = ""
    const timer = setTimeout(() => {
      child.kill("SIGKILL")
      reject(new Error(`offset-relay ${args[0]} was not ready in 20 s:\n${stderr}`))
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
      reject(new Error(`offset-relay ${args[0]} exited with ${code}:\n${stderr}`))
    })
  })

const stop = (child: ChildProcess.ChildProcess): Promise<void> =>
  new Promise((resolve) => {
    if (child.exitCode !== null) return resolve()
    child.once("exit", () => resolve())
    child.kill("SIGTERM")
    setTimeout(() => child.kill("SIGKILL"), 5000).unref()
  })

/**
 * MB/s of `volume` bytes written in `chunk`-sized writes by a TCP client
 * into `connect --local-port`, delivered through the relay and `listen
 * --forward` to `sink`; and the relay's CPU time meanwhile.
 */
export const cliThroughput = async (
  relay: RelayProcess,
  sink: SinkServer,
  volume: number,
  chunk: Uint8Array
): Promise<RelayTransfer> => {
  const dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "offset-relay-cli-bench-"))
  const children: Array<ChildProcess.ChildProcess> = []
  try {
    const listenerKey = (await runCli(["keygen", "--out", Path.join(dir, "listener.key")])).trim()
    const connectorKey = (await runCli(["keygen", "--out", Path.join(dir, "connector.key")])).trim()
    const quiet = ["--tick-ms", "1000"]
    children.push(
      await startCli(
        ["listen", "--identity", Path.join(dir, "listener.key"), "--relay", relay.address, "--allow", connectorKey, "--forward", `127.0.0.1:${sink.port}`, ...quiet],
        /: listening/
      )
    )
    const localPort = await freePort()
    children.push(
      await startCli(
        ["connect", "--identity", Path.join(dir, "connector.key"), "--relay", relay.address, "--to", listenerKey, "--local-port", String(localPort), ...quiet],
        /listening on/
      )
    )
    const cpuStart = relay.cpuMs()
    const mbps = await tcpThroughput(localPort, sink, volume, 1, chunk)
    const cpuEnd = relay.cpuMs()
    return {
      mbps,
      relayCpuMs: cpuStart === undefined || cpuEnd === undefined ? undefined : cpuEnd - cpuStart,
      megabytes: volume / 1e6
    }
  } finally {
    await Promise.all(children.map(stop))
    Fs.rmSync(dir, { recursive: true, force: true })
  }
}
