/**
 * `offset-relay` as child processes, for the CLI tests: a command run to its
 * end, or a long-running one (serve) whose output the test watches.
 */
import { type ChildProcess, spawn } from "node:child_process"
import * as NodePath from "node:path"

export const NODE = NodePath.resolve("node_modules/.bin/node")
export const BIN = NodePath.resolve("bin/offset-relay.js")

/** A command that ran to its end. */
export interface Finished {
  readonly code: number | null
  readonly stdout: string
  readonly stderr: string
}

/**
 * Runs `offset-relay <args>` to its end (killed, and rejected, after
 * `timeoutMs`). stdin gets `input` and is closed; with no input it stays
 * open until `closeStdin` resolves, or is not connected without either.
 */
export const runCli = (
  args: ReadonlyArray<string>,
  options: { readonly input?: string; readonly closeStdin?: Promise<unknown>; readonly timeoutMs?: number } = {}
): Promise<Finished> =>
  new Promise((resolve, reject) => {
    const withStdin = options.input !== undefined || options.closeStdin !== undefined
    const child = spawn(NODE, [BIN, ...args], { stdio: [withStdin ? "pipe" : "ignore", "pipe", "pipe"] })
    let out = ""
    let err = ""
    child.stdout!.on("data", (chunk: Buffer) => (out += chunk.toString()))
    child.stderr!.on("data", (chunk: Buffer) => (err += chunk.toString()))
    const timer = setTimeout(() => {
      child.kill("SIGKILL")
      reject(new Error(`offset-relay ${args.join(" ")} did not finish; stderr:\n${err}`))
    }, options.timeoutMs ?? 20_000)
    child.on("close", (code) => {
      clearTimeout(timer)
      resolve({ code, stdout: out, stderr: err })
    })
    if (withStdin) {
      child.stdin!.on("error", () => {})
      if (options.input !== undefined) child.stdin!.end(options.input)
      else void options.closeStdin!.then(() => child.stdin!.end())
    }
  })

/** A long-running `offset-relay` child whose stdout and stderr the test reads as they come. */
export interface WatchedCli {
  readonly child: ChildProcess
  readonly stdout: () => string
  readonly stderr: () => string
  /** Resolves once `check` holds; rejects with stderr after 15 s. */
  readonly until: (check: () => boolean) => Promise<void>
}

/** Starts `offset-relay <args>` and collects its output. */
export const watchCli = (args: ReadonlyArray<string>): WatchedCli => {
  const child = spawn(NODE, [BIN, ...args], { stdio: ["ignore", "pipe", "pipe"] })
  let out = ""
  let err = ""
  child.stdout!.on("data", (chunk: Buffer) => (out += chunk.toString()))
  child.stderr!.on("data", (chunk: Buffer) => (err += chunk.toString()))
  return {
    child,
    stdout: () => out,
    stderr: () => err,
    until: async (check) => {
      const deadline = Date.now() + 15_000
      while (!check()) {
        if (Date.now() > deadline) throw new Error(`timed out; stderr:\n${err}`)
        await new Promise((resolve) => setTimeout(resolve, 25))
      }
    }
  }
}
