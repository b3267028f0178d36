/**
 * Keeps `npm run bench` working: runs `bench/run.ts --quick` as a user
 * would (a child process), in two parts so each stays well inside the test
 * time limit, and checks the table and the JSON it writes. No figure is
 * judged: only that every scenario produced its rows, each with a finite
 * value and finite ratios to its baselines.
 */
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import { afterAll, describe, expect, it } from "vitest"
import type { BenchRow } from "../bench/report.ts"
import { repoRoot } from "../bench/relay-process.ts"

const resultsDir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "offset-relay-bench-results-"))
afterAll(() => Fs.rmSync(resultsDir, { recursive: true, force: true }))

/** Runs the bench; resolves with its exit code, stdout and the rows of latest.json. */
const runBench = (only: string) =>
  new Promise<{ code: number | null; stdout: string; stderr: string; rows: ReadonlyArray<BenchRow> }>((resolve) => {
    const child = ChildProcess.spawn(process.execPath, ["bench/run.ts", "--quick", "--only", only, "--results", resultsDir], { cwd: repoRoot })
    let stdout = ""
    let stderr = ""
    child.stdout.on("data", (chunk: Buffer) => (stdout += chunk.toString()))
    child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()))
    child.on("exit", (code) => {
      const latest = Path.join(resultsDir, "latest.json")
      const rows = Fs.existsSync(latest) ? (JSON.parse(Fs.readFileSync(latest, "utf8")) as { rows: Array<BenchRow> }).rows : []
      resolve({ code, stdout, stderr, rows })
    })
  })

/** Every row of `scenario` whose measure starts with `prefix`. */
const rowsOf = (rows: ReadonlyArray<BenchRow>, scenario: string, prefix: string) =>
  rows.filter((r) => r.scenario === scenario && r.measure.startsWith(prefix))

const expectMeasured = (rows: ReadonlyArray<BenchRow>) => {
  expect(rows.length).toBeGreaterThan(0)
  for (const r of rows) {
    expect(Number.isFinite(r.value), `${r.scenario}: ${r.measure}`).toBe(true)
    for (const c of r.comparisons) expect(Number.isFinite(c.ratio), `${r.measure} vs ${c.to}`).toBe(true)
  }
}

describe("npm run bench -- --quick", () => {
  it("crypto, setup latency, throughput and isolation print a table and write JSON and SVG", async () => {
    const { code, stdout, stderr, rows } = await runBench("crypto,setup,throughput,isolation")
    expect(code, stderr).toBe(0)
    expect(stdout).toContain("ratio to baseline")
    expect(Fs.existsSync(Path.join(resultsDir, "latest.svg"))).toBe(true)
    expectMeasured(rowsOf(rows, "crypto", "node seal+open"))
    expect(rowsOf(rows, "setup", "tunnel connect→echo").length).toBe(6)
    expectMeasured(rowsOf(rows, "setup", "tunnel connect→echo"))
    expect(rowsOf(rows, "throughput", "").filter((r) => r.measure.includes("clients on")).length).toBe(4)
    expectMeasured(rowsOf(rows, "throughput", ""))
    expectMeasured(rowsOf(rows, "isolation", "fast receiver"))
  }, 60_000)

  it("cli prints the help time and the idle listen and connect memory", async () => {
    const { code, stderr, rows } = await runBench("cli")
    expect(code, stderr).toBe(0)
    expect(rowsOf(rows, "cli", "offset-relay").length).toBe(2)
    expectMeasured(rowsOf(rows, "cli", ""))
  }, 60_000)

  it("scale prints memory per idle tunnel, freed descriptors and handshakes per second", async () => {
    const { code, stderr, rows } = await runBench("scale")
    expect(code, stderr).toBe(0)
    expectMeasured(rowsOf(rows, "scale", "relay heap per idle tunnel"))
    expectMeasured(rowsOf(rows, "scale", "relay handshakes per second"))
    const fds = rowsOf(rows, "scale", "relay fds still open")
    // Linux only (/proc); where it is measured, every descriptor came back.
    if (fds.length > 0) expect(fds[0]!.value).toBe(0)
  }, 60_000)
})
