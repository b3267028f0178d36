/**
 * What the client commands load and keep: `--help` and usage errors answer
 * without the client library (no Effect, no crypto, no sockets), the flags'
 * defaults written out for that purpose agree with the library's. (How long
 * any of it takes is bench/cli-footprint.ts's business.)
 */
import { execFileSync } from "node:child_process"
import * as NodePath from "node:path"
import { describe, expect, it } from "vitest"
import { DEFAULT_CONNECT_TIMEOUT_MS, DEFAULT_STAGGER_MS } from "../src/adapters/client/connector.ts"
import { CONNECT_DEFAULTS } from "../src/adapters/cli/connect.ts"

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
