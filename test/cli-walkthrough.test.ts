/**
 * The README's three-terminal walk-through, run as child processes: keygen,
 * a relay (`serve`), a local echo service, `listen` forwarding to it, and
 * `connect` over stdin/stdout and as a local port; then the exit codes a
 * script relies on. The README must show these same commands.
 */
import { type ChildProcess, spawn } from "node:child_process"
import { createHash, randomBytes } from "node:crypto"
import * as NodeFs from "node:fs"
import * as Net from "node:net"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"

const NODE = NodePath.resolve("node_modules/.bin/node")
const BIN = NodePath.resolve("bin/offset-relay.js")

interface Finished {
  readonly code: number | null
  readonly stdout: Buffer
  readonly stderr: string
}

/** Runs one command to its end, feeding `input` on stdin. */
const run = (args: ReadonlyArray<string>, input?: Uint8Array | string, timeoutMs = 20_000): Promise<Finished> =>
  new Promise((resolve, reject) => {
    const child = spawn(NODE, [BIN, ...args], { stdio: ["pipe", "pipe", "pipe"] })
    const out: Array<Buffer> = []
    let err = ""
    child.stdout.on("data", (chunk: Buffer) => out.push(chunk))
    child.stderr.on("data", (chunk: Buffer) => (err += chunk.toString()))
    const timer = setTimeout(() => {
      child.kill("SIGKILL")
      reject(new Error(`offset-relay ${args.join(" ")} did not finish in ${timeoutMs} ms; stderr:\n${err}`))
    }, timeoutMs)
    child.on("error", reject)
    child.on("close", (code) => {
      clearTimeout(timer)
      resolve({ code, stdout: Buffer.concat(out), stderr: err })
    })
    child.stdin.on("error", () => {})
    if (input === undefined) child.stdin.end()
    else child.stdin.end(input)
  })

/** A long-running command whose output the test watches. */
interface Running {
  readonly child: ChildProcess
  stdout: string
  stderr: string
  /** Resolves with the first match of `pattern` in stdout or stderr. */
  readonly waitFor: (stream: "stdout" | "stderr", pattern: RegExp, timeoutMs?: number) => Promise<RegExpMatchArray>
  /** Sends `signal` and resolves with the exit code. */
  readonly stop: (signal?: NodeJS.Signals) => Promise<number | null>
}

const running: Array<Running> = []

const start = (args: ReadonlyArray<string>): Running => {
  const child = spawn(NODE, [BIN, ...args], { stdio: ["ignore", "pipe", "pipe"] })
  const exited = new Promise<number | null>((resolve) => child.on("close", (code) => resolve(code)))
  const self: Running = {
    child,
    stdout: "",
    stderr: "",
    waitFor: (stream, pattern, timeoutMs = 15_000) =>
      new Promise((resolve, reject) => {
        const check = () => {
          const match = self[stream].match(pattern)
          if (match === null) return false
          clearTimeout(timer)
          child[stream]!.off("data", check)
          resolve(match)
          return true
        }
        const timer = setTimeout(
          () => reject(new Error(`no ${pattern} on ${stream} of offset-relay ${args[0]}; stderr:\n${self.stderr}`)),
          timeoutMs
        )
        if (!check()) child[stream]!.on("data", check)
      }),
    stop: (signal = "SIGTERM") => {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal)
      return exited
    }
  }
  child.stdout!.on("data", (chunk: Buffer) => (self.stdout += chunk.toString()))
  child.stderr!.on("data", (chunk: Buffer) => (self.stderr += chunk.toString()))
  running.push(self)
  return self
}

const sha256 = (data: Uint8Array) => createHash("sha256").update(data).digest("hex")

let dir: string
let echo: Net.Server
let echoPort: number
let relay: Running
let relayAddress: string
let listener: Running
let serverKey: string
let clientKey: string

beforeAll(async () => {
  dir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "offset-walkthrough-"))
  // The local echo service of terminal 2.
  echo = Net.createServer({ allowHalfOpen: true }, (socket) => socket.pipe(socket))
  await new Promise<void>((resolve) => echo.listen(0, "127.0.0.1", resolve))
  echoPort = (echo.address() as Net.AddressInfo).port
})

afterAll(async () => {
  for (const child of running) await child.stop("SIGKILL")
  await new Promise((resolve) => echo.close(resolve))
  NodeFs.rmSync(dir, { recursive: true, force: true })
})

describe("the README walk-through", () => {
  it("terminal 1: a relay prints its address", async () => {
    relay = start(["serve", "--identity", `${dir}/relay.key`, "--port", "0", "--log-level", "warn"])
    const [line] = await relay.waitFor("stdout", /^[0-9a-f]{64}@127\.0\.0\.1:\d+$/m)
    relayAddress = line
  })

  it("terminal 2: keys, then a listener forwarding to the echo service", async () => {
    const server = await run(["keygen", "--out", `${dir}/server.key`])
    const client = await run(["keygen", "--out", `${dir}/client.key`])
    expect([server.code, client.code]).toEqual([0, 0])
    serverKey = server.stdout.toString().trim()
    clientKey = client.stdout.toString().trim()
    expect(serverKey).toMatch(/^[0-9a-f]{64}$/)
    listener = start([
      "listen",
      "--identity",
      `${dir}/server.key`,
      "--relay",
      relayAddress,
      "--allow",
      clientKey,
      "--forward",
      `127.0.0.1:${echoPort}`,
      "--backoff-initial-ms",
      "100",
      "--backoff-max-ms",
      "500"
    ])
    await listener.waitFor("stderr", /: listening$/m)
    expect(listener.stderr).toContain(`listening as ${serverKey}`)
  })

  it("terminal 3: connect over stdin/stdout half-closes, gets the whole answer, exits 0", async () => {
    const hello = await run(
      ["connect", "--identity", `${dir}/client.key`, "--relay", relayAddress, "--to", serverKey],
      "hello through the relay\n"
    )
    expect(hello.stderr).toContain(`connected to ${serverKey}`)
    expect(hello.stdout.toString()).toBe("hello through the relay\n")
    expect(hello.code).toBe(0)

    const data = randomBytes(2 * 1024 * 1024)
    const bulk = await run(["connect", "-q", "--identity", `${dir}/client.key`, "--relay", relayAddress, "--to", serverKey], data)
    expect(bulk.code).toBe(0)
    expect(bulk.stderr).toBe("")
    expect(bulk.stdout.length).toBe(data.length)
    expect(sha256(bulk.stdout)).toBe(sha256(data))
    await listener.waitFor("stderr", /closed \(2097152 bytes to the peer, 2097152 from it\)/)
  })

  it("terminal 3: connect --local-port carries each local connection through its own tunnel", async () => {
    const forward = start([
      "connect",
      "--identity",
      `${dir}/client.key`,
      "--relay",
      relayAddress,
      "--to",
      serverKey,
      "--local-port",
      "0"
    ])
    const [, port] = await forward.waitFor("stdout", /^127\.0\.0\.1:(\d+)$/m)
    const exchange = (data: Uint8Array) =>
      new Promise<Buffer>((resolve, reject) => {
        const socket = Net.connect({ host: "127.0.0.1", port: Number(port), allowHalfOpen: true })
        const chunks: Array<Buffer> = []
        socket.on("data", (chunk: Buffer) => chunks.push(chunk))
        socket.on("end", () => resolve(Buffer.concat(chunks)))
        socket.on("error", reject)
        socket.end(data) // half close: the answer still comes back
      })
    const inputs = [randomBytes(300_000), randomBytes(5), randomBytes(100_000)]
    const answers = await Promise.all(inputs.map(exchange))
    answers.forEach((answer, i) => expect(sha256(answer)).toBe(sha256(inputs[i]!)))
    expect(await forward.stop("SIGTERM")).toBe(0)
  })

  it("exit codes: rejected 4, wrong relay key 5, usage 2, identity 3", async () => {
    const stranger = await run(["keygen", "--out", `${dir}/stranger.key`])
    const rejected = await run(["connect", "--identity", `${dir}/stranger.key`, "--relay", relayAddress, "--to", serverKey], "x")
    expect(rejected.code).toBe(4)
    expect(rejected.stderr).toContain("the peer is not listening on this relay or refused our key")
    expect(listener.stderr).toContain(`peer ${stranger.stdout.toString().trim()}: denied`)

    const usage = await run(["connect", "--identity", `${dir}/client.key`, "--relay", "127.0.0.1:1", "--to", serverKey])
    expect(usage.code).toBe(2)
    expect(usage.stderr).toContain("<relay public key: 64 hex digits>@<host>:<port>")

    // A relay under another key than its address says: authentication failed.
    const impostor = relayAddress.replace(/^[0-9a-f]{64}/, clientKey)
    const wrongKey = await run(["connect", "--identity", `${dir}/client.key`, "--relay", impostor, "--to", serverKey])
    expect(wrongKey.code).toBe(5)
    expect(wrongKey.stderr).toContain("wrong relay key")

    const noIdentity = await run(["connect", "--identity", `${dir}/missing.key`, "--relay", relayAddress, "--to", serverKey])
    expect(noIdentity.code).toBe(3)
    expect(noIdentity.stderr).toContain("missing.key")

    const noListen = await run(["listen", "--identity", `${dir}/server.key`, "--relay", relayAddress, "--forward", "127.0.0.1:1"])
    expect(noListen.code).toBe(2)
    expect(noListen.stderr).toContain("--allow")
  })

  it("SIGTERM stops the listener and the relay with exit 0", async () => {
    expect(await listener.stop("SIGTERM")).toBe(0)
    expect(listener.stderr).toContain("SIGTERM: closing every relay and tunnel")
    expect(await relay.stop("SIGTERM")).toBe(0)
  })

  it("the README shows these commands", () => {
    const readme = NodeFs.readFileSync("README.md", "utf8")
    const section = readme.slice(readme.indexOf("## Walk-through: three terminals"), readme.indexOf("## Library"))
    for (const command of [
      "npx offset-relay serve --identity $DEMO/relay.key | tee $DEMO/relay.addr",
      "npx offset-relay keygen --out $DEMO/server.key > $DEMO/server.pub",
      "npx offset-relay keygen --out $DEMO/client.key > $DEMO/client.pub",
      "npx offset-relay listen --identity $DEMO/server.key --relay $(cat $DEMO/relay.addr) --allow $(cat $DEMO/client.pub) --forward 127.0.0.1:7000",
      "| npx offset-relay connect --identity $DEMO/client.key --relay $(cat $DEMO/relay.addr) --to $(cat $DEMO/server.pub)",
      "npx offset-relay connect --identity $DEMO/client.key --relay $(cat $DEMO/relay.addr) --to $(cat $DEMO/server.pub) --local-port 9000"
    ]) {
      expect(section).toContain(command)
    }
  })
})
