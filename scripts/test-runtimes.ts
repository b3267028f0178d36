// `npm run test:runtimes`: offset-relay on Deno and Bun (their binaries come
// from the npm registry as devDependencies). For each runtime:
//   1. the core and client tests (vitest) run under it;
//   2. it runs `offset-relay serve`, and a Node client tunnels 1 MiB through it;
//   3. Node runs `offset-relay serve`, and a client on it tunnels 1 MiB;
//   4. Node runs `serve --ws-port 0`, and clients on it tunnel 1 MiB over
//      ws:// (listener and connector both);
// and once: the browser bundle loads in Deno with no permissions.
// Every line names its runtime; a failure prints the log's tail. Exits 1 if
// anything failed. Loopback only, ephemeral ports.
//
//   npm run test:runtimes [-- deno|bun ...]
import { type ChildProcess, spawn } from "node:child_process"
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { dirname, join } from "node:path"
import { fileURLToPath } from "node:url"

const root = join(dirname(fileURLToPath(import.meta.url)), "..")
const node = process.execPath
const deno = join(root, "node_modules/@deno/linux-x64-glibc/deno")
const bun = join(root, "node_modules/@oven/bun-linux-x64/bin/bun")

interface Runtime {
  readonly name: "deno" | "bun"
  /** How it runs a script: command and arguments before the script. */
  readonly run: ReadonlyArray<string>
  /** Extra vitest flags (Bun's child_process cannot host vitest's forks pool). */
  readonly vitest: ReadonlyArray<string>
  /** Test files left out on this runtime, each with why. */
  readonly skipFiles: Readonly<Record<string, string>>
  /** Its node:crypto cannot serve, so `--crypto node` must be a usage error that says why. */
  readonly refusesNodeCrypto: boolean
}

const runtimes: ReadonlyArray<Runtime> = [
  {
    name: "deno",
    run: [deno, "run", "-A"],
    vitest: [],
    skipFiles: {},
    refusesNodeCrypto: false
  },
  {
    name: "bun",
    run: [bun],
    vitest: ["--pool=threads"],
    skipFiles: {
      "test/crypto.test.ts": "tests the node:crypto layer itself, and Bun's node:crypto has no ChaCha20-Poly1305 (auto picks noble there)"
    },
    refusesNodeCrypto: true
  }
]

// The core and client tests. Other files drive the relay at load, spawn the
// CLI on Node or measure, which npm test covers.
const testFiles = [
  "test/runtime.test.ts",
  "test/allow-list.test.ts", "test/capnp-hostile.test.ts", "test/capnp-scratch.test.ts", "test/frame.test.ts",
  "test/keys.test.ts", "test/messages.property.test.ts", "test/wire-json.test.ts", "test/token-bucket.test.ts",
  "test/keepalive.test.ts", "test/connection.test.ts", "test/connection.property.test.ts", "test/secure-channel.test.ts",
  "test/relay-core.test.ts", "test/relay-core.model.test.ts", "test/crypto.test.ts", "test/ed25519-rules.test.ts",
  "test/client-core.test.ts", "test/client-tunnel.test.ts", "test/client-tunnel-stream.test.ts", "test/client-access.test.ts",
  "test/client-federation.test.ts", "test/client-lifecycle.test.ts", "test/client-relay-errors.test.ts",
  "test/client-malicious-relay.test.ts"
]

// Tests that state a fact about Node itself, left out by name with why.
const knownDifferences: ReadonlyArray<readonly [string, string]> = [
  ["uses the raw key formats on this Node", "a fact about Node 24 (Deno's node:crypto has no raw key formats; auto picks noble there)"]
]
const escape = (text: string) => text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")
const excludePattern = `^(?!.*(${knownDifferences.map(([name]) => escape(name)).join("|")})).*$`

const chosen = process.argv.slice(2).filter((a) => !a.startsWith("-"))
const work = mkdtempSync(join(tmpdir(), "offset-relay-runtimes-"))
let failed = 0

interface Outcome { readonly code: number | null; readonly out: string }

/** Runs a command to its end (or `timeoutMs`), collecting stdout and stderr. */
const runCommand = (command: ReadonlyArray<string>, options: { timeoutMs: number; env?: Record<string, string> }): Promise<Outcome> =>
  new Promise((resolve) => {
    const child = spawn(command[0]!, command.slice(1), {
      cwd: root,
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, NO_COLOR: "1", FORCE_COLOR: "0", ...options.env }
    })
    let out = ""
    child.stdout.on("data", (chunk: Buffer) => (out += chunk.toString()))
    child.stderr.on("data", (chunk: Buffer) => (out += chunk.toString()))
    const timer = setTimeout(() => {
      out += `\n(timed out after ${options.timeoutMs} ms)`
      child.kill("SIGKILL")
    }, options.timeoutMs)
    child.on("close", (code) => {
      clearTimeout(timer)
      resolve({ code, out })
    })
  })

const report = (runtime: string, what: string, ok: boolean, detail: string, log = ""): void => {
  console.log(`${ok ? "ok" : "FAILED"}  ${runtime}: ${what}${detail ? ` — ${detail}` : ""}`)
  if (!ok) {
    failed++
    const logFile = join(work, `${runtime}-${what.replace(/\W+/g, "-")}.log`)
    writeFileSync(logFile, log)
    console.log(log.split("\n").slice(-40).map((line) => `    ${runtime} | ${line}`).join("\n"))
  }
}

/**
 * Starts `offset-relay serve` on port 0 under `command`; resolves with its
 * address line (with `webSocket`: `--ws-port 0` and the ws:// line) and the process.
 */
const startServe = (
  command: ReadonlyArray<string>,
  name: string,
  webSocket = false
): Promise<{ address: string; child: ChildProcess } | string> =>
  new Promise((resolve) => {
    const child = spawn(command[0]!, [
      ...command.slice(1), join(root, "bin/offset-relay.js"), "serve",
      "--port", "0", "--identity", join(work, `${name}-relay.key`), "--log-level", "warn", "--drain-ms", "200",
      ...(webSocket ? ["--ws-port", "0"] : [])
    ], { cwd: root, stdio: ["ignore", "pipe", "pipe"] })
    let out = ""
    let err = ""
    const timer = setTimeout(() => {
      child.kill("SIGKILL")
      resolve(`no address line within 30 s; stderr: ${err}`)
    }, 30_000)
    child.stderr!.on("data", (chunk: Buffer) => (err += chunk.toString()))
    child.stdout!.on("data", (chunk: Buffer) => {
      out += chunk.toString()
      const line = webSocket
        ? /^([0-9a-f]{64}@127\.0\.0\.1:\d+)\n([0-9a-f]{64}@ws:\/\/127\.0\.0\.1:\d+)\n/.exec(out)
        : /^([0-9a-f]{64}@127\.0\.0\.1:\d+)\n/.exec(out)
      if (line !== null) {
        clearTimeout(timer)
        resolve({ address: webSocket ? line[2]! : line[1]!, child })
      }
    })
    child.on("exit", (code) => {
      clearTimeout(timer)
      resolve(`serve exited (${code}) before printing its address; stderr: ${err}`)
    })
  })

/** Stops a serve process with SIGTERM; resolves with its exit code. */
const stopServe = (child: ChildProcess): Promise<number | null> =>
  new Promise((resolve) => {
    const timer = setTimeout(() => child.kill("SIGKILL"), 15_000)
    child.on("exit", (code) => {
      clearTimeout(timer)
      resolve(code)
    })
    child.kill("SIGTERM")
  })

/** A relay under `relayCommand`, and a client under `clientCommand` tunnelling 1 MiB through it. */
const tunnelThrough = async (
  label: string,
  relayCommand: ReadonlyArray<string>,
  clientCommand: ReadonlyArray<string>,
  runtime: string,
  webSocket = false
) => {
  const started = await startServe(relayCommand, label.replace(/\W+/g, "-"), webSocket)
  if (typeof started === "string") return report(runtime, label, false, "the relay did not start", started)
  const client = await runCommand([...clientCommand, join(root, "scripts/tunnel-check.ts"), started.address], { timeoutMs: 60_000 })
  const code = await stopServe(started.child)
  const said = client.out.trim().split("\n").at(-1) ?? ""
  report(runtime, label, client.code === 0 && code === 0, `${said}; relay exit ${code} after SIGTERM`, client.out)
}

try {
  for (const runtime of runtimes) {
    if (chosen.length > 0 && !chosen.includes(runtime.name)) continue
    const version = await runCommand([runtime.run[0]!, "--version"], { timeoutMs: 30_000 })
    console.log(`::: ${runtime.name} ${version.out.trim().split("\n")[0]}`)

    const files = testFiles.filter((file) => !(file in runtime.skipFiles))
    for (const [file, why] of Object.entries(runtime.skipFiles)) console.log(`skip  ${runtime.name}: ${file} (${why})`)
    for (const [name, why] of knownDifferences) console.log(`skip  ${runtime.name}: "${name}" (${why})`)
    const tests = await runCommand(
      [...runtime.run, join(root, "node_modules/vitest/vitest.mjs"), "run", ...runtime.vitest, "-t", excludePattern, ...files],
      { timeoutMs: 8 * 60_000, env: { OFFSET_RELAY_EXPECT_RUNTIME: runtime.name, CI: "" } }
    )
    const summary = /Tests\s+(.*)/.exec(tests.out)?.[1]?.trim() ?? "no summary"
    report(runtime.name, `core and client tests (${files.length} files)`, tests.code === 0, summary, tests.out)

    if (runtime.refusesNodeCrypto) {
      const refused = await runCommand(
        [...runtime.run, join(root, "bin/offset-relay.js"), "serve", "--crypto", "node", "--port", "0", "--identity", join(work, "refused.key")],
        { timeoutMs: 30_000 }
      )
      const said = refused.out.trim().split("\n")[0] ?? ""
      report(runtime.name, "serve --crypto node is refused with the reason", refused.code === 2 && said.includes("--crypto node:"), said, refused.out)
    }

    await tunnelThrough(`serve on ${runtime.name}, Node client`, runtime.run, [node], runtime.name)
    await tunnelThrough(`serve on Node, ${runtime.name} client`, [node], runtime.run, runtime.name)
    await tunnelThrough(`serve --ws-port on Node, ${runtime.name} clients over ws://`, [node], runtime.run, runtime.name, true)
  }

  if (chosen.length === 0 || chosen.includes("deno")) {
    const bundle = join(root, "dist/browser/offset-relay.js")
    if (!existsSync(bundle)) await runCommand([node, join(root, "scripts/build.ts"), "--browser-only"], { timeoutMs: 120_000 })
    const smoke = await runCommand([deno, "run", "--no-prompt", join(root, "scripts/browser-smoke.js")], { timeoutMs: 60_000 })
    report("deno", "browser bundle with no permissions", smoke.code === 0, smoke.out.trim().split("\n").at(-1) ?? "", smoke.out)
  }
} finally {
  rmSync(work, { recursive: true, force: true })
}
console.log(failed === 0 ? "runtime tests passed" : `runtime tests: ${failed} failed`)
process.exit(failed === 0 ? 0 : 1)
