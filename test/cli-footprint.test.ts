/**
 * What the client commands load and keep: `--help` and usage errors answer
 * without the client library (no Effect, no crypto, no sockets), the flags'
 * defaults written out for that purpose agree with the library's, the young
 * generation stays at its initial size under a load that grows it, and the
 * idle compactor collects once per idle period, never while a tunnel is open.
 * (How long any of it takes is bench/cli-footprint.ts's business.)
 */
import { execFileSync } from "node:child_process"
import * as NodePath from "node:path"
import { afterEach, describe, expect, it, vi } from "vitest"
import { DEFAULT_CONNECT_TIMEOUT_MS, DEFAULT_STAGGER_MS } from "../src/adapters/client/connector.ts"
import { CONNECT_DEFAULTS } from "../src/adapters/cli/connect.ts"
import { makeIdleCompactor, memoryReducingGc } from "../src/adapters/cli/idle-memory.ts"

const bin = NodePath.join(import.meta.dirname, "..", "bin", "offset-relay.js")

// Prints, on stderr at exit, every module the command loaded besides Node's own.
const traceModules = `data:text/javascript,${encodeURIComponent(`
import { registerHooks } from "node:module"
const loaded = []
registerHooks({ load(url, context, next) { if (!url.startsWith("node:")) loaded.push(url); return next(url, context) } })
process.on("exit", () => process.stderr.write("LOADED " + JSON.stringify(loaded) + "\\n"))
`)}`

const modulesLoadedBy = (args: ReadonlyArray<string>): Array<string> => {
  let stderr: string
  try {
    execFileSync(process.execPath, ["--import", traceModules, bin, ...args], { stdio: ["ignore", "ignore", "pipe"], encoding: "utf8" })
    throw new Error("expected a usage error or help with stderr")
  } catch (error) {
    const failed = error as { stderr?: string; message: string }
    if (failed.stderr === undefined) throw error
    stderr = failed.stderr
  }
  const line = stderr.split("\n").find((l) => l.startsWith("LOADED "))
  if (line === undefined) throw new Error(`no module list in:\n${stderr}`)
  return JSON.parse(line.slice("LOADED ".length)) as Array<string>
}

describe("client commands load the library only to run", () => {
  it.each([["listen"], ["connect"]])("%s --help and a usage error load no Effect, crypto or client code", (command) => {
    // --help exits 0; make it fail on stderr too, with a usage error after it, so one run shows both.
    for (const args of [[command, "--help", "--nonsense"], [command, "--identity", "x", "--relay", "bad"]]) {
      const loaded = modulesLoadedBy(args)
      expect(loaded.some((url) => url.includes("/src/adapters/cli/"))).toBe(true)
      expect(loaded.filter((url) => /node_modules|\/adapters\/client\/|\/adapters\/crypto/.test(url))).toEqual([])
    }
  })

  it("connect's defaults on --help are the library's", () => {
    expect(CONNECT_DEFAULTS).toEqual({ timeoutMs: DEFAULT_CONNECT_TIMEOUT_MS, staggerMs: DEFAULT_STAGGER_MS })
  })
})

describe("young generation", () => {
  // A child process, since the setting is process-wide: how big the young
  // generation (V8's new space) is after a load whose survivors make V8 grow it.
  const newSpaceAfterLoad = (keepSmall: boolean): number => {
    const program = `
      import v8 from "node:v8"
      import { keepYoungGenerationSmall } from ${JSON.stringify(NodePath.join(import.meta.dirname, "..", "src", "adapters", "cli", "young-generation.ts"))}
      if (${keepSmall}) keepYoungGenerationSmall()
      const recent = new Array(100_000)
      for (let i = 0; i < 400_000; i++) recent[i % recent.length] = { i, payload: [i, i + 1] }
      console.log(v8.getHeapSpaceStatistics().find((s) => s.space_name === "new_space").space_size)
    `
    return Number(execFileSync(process.execPath, ["--input-type=module", "-e", program], { encoding: "utf8" }))
  }

  it("keepYoungGenerationSmall stops V8 from growing it (it grows without)", () => {
    expect(newSpaceAfterLoad(true)).toBeLessThanOrEqual(2 * 2 ** 20)
    expect(newSpaceAfterLoad(false)).toBeGreaterThan(2 * 2 ** 20)
  })
})

describe("idle compactor", () => {
  afterEach(() => {
    vi.useRealTimers()
  })

  it("collects once after startup, again only after a tunnel came and went, never while one is open", () => {
    vi.useFakeTimers()
    const collect = vi.fn()
    const compactor = makeIdleCompactor({ delayMs: 100, collect })
    vi.advanceTimersByTime(99)
    expect(collect).not.toHaveBeenCalled()
    vi.advanceTimersByTime(1)
    expect(collect).toHaveBeenCalledTimes(1)
    vi.advanceTimersByTime(1000)
    expect(collect).toHaveBeenCalledTimes(1) // still idle: nothing more to give back

    compactor.busy()
    compactor.busy()
    compactor.idle()
    vi.advanceTimersByTime(1000)
    expect(collect).toHaveBeenCalledTimes(1) // one tunnel still open
    compactor.idle()
    vi.advanceTimersByTime(50)
    compactor.busy() // activity before the delay ran out: wait for the next idle period
    vi.advanceTimersByTime(1000)
    expect(collect).toHaveBeenCalledTimes(1)
    compactor.idle()
    vi.advanceTimersByTime(100)
    expect(collect).toHaveBeenCalledTimes(2)

    compactor.busy()
    compactor.idle()
    compactor.stop()
    vi.advanceTimersByTime(1000)
    expect(collect).toHaveBeenCalledTimes(2)
  })

  it("does nothing without a collector (a runtime without V8's gc)", () => {
    vi.useFakeTimers()
    const compactor = makeIdleCompactor({ delayMs: 10, collect: undefined })
    compactor.busy()
    compactor.idle()
    expect(vi.getTimerCount()).toBe(0)
  })

  it("on Node, the memory-reducing collection exists and runs", () => {
    const collect = memoryReducingGc()
    expect(collect).toBeTypeOf("function")
    collect!()
  })
})
