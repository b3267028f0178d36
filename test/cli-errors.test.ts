/**
 * Errors that name the right party, as a user of the CLI sees them: the
 * peer's local service refusing or resetting, the relay refusing us (at
 * accept, or our connect request), the relay closing a tunnel; each with
 * its line on stderr and its exit code (exit-codes.ts). Child processes on
 * 127.0.0.1; local services are plain Node servers in the test.
 */
import { type ChildProcess, spawn } from "node:child_process"
import * as NodeFs from "node:fs"
import * as Net from "node:net"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { BIN, NODE, runCli } from "./support/cli-process.ts"

interface Running {
  readonly child: ChildProcess
  output: string
  readonly waitFor: (pattern: RegExp) => Promise<RegExpMatchArray>
}

const children: Array<ChildProcess> = []

/** Starts a long-running command; `output` is its stdout and stderr together. */
const start = (args: ReadonlyArray<string>): Running => {
  const child = spawn(NODE, [BIN, ...args], { stdio: ["ignore", "pipe", "pipe"] })
  children.push(child)
  const self: Running = {
    child,
    output: "",
    waitFor: (pattern) =>
      new Promise((resolve, reject) => {
        const deadline = Date.now() + 15_000
        const poll = () => {
          const match = self.output.match(pattern)
          if (match !== null) return resolve(match)
          if (Date.now() > deadline) return reject(new Error(`no ${pattern} in offset-relay ${args[0]}:\n${self.output}`))
          setTimeout(poll, 20)
        }
        poll()
      })
  }
  child.stdout!.on("data", (chunk: Buffer) => (self.output += chunk.toString()))
  child.stderr!.on("data", (chunk: Buffer) => (self.output += chunk.toString()))
  return self
}

const keygen = async (name: string): Promise<string> =>
  (await runCli(["keygen", "--out", NodePath.join(dir, `${name}.key`)], { input: "" })).stdout.trim()

let dir: string
let relay: Running
let relayAddress: string
let refusedPort: number
let resetter: Net.Server
let echo: Net.Server
const keys: Record<string, string> = {}

const listenPort = async (server: Net.Server): Promise<number> => {
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  return (server.address() as Net.AddressInfo).port
}

beforeAll(async () => {
  dir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "offset-cli-errors-"))
  const names = ["refusing", "resetting", "echoing", "client", "stranger"]
  const made = await Promise.all(names.map(keygen))
  names.forEach((name, i) => (keys[name] = made[i]!))
  // Everyone but the stranger may use the relay.
  NodeFs.writeFileSync(
    NodePath.join(dir, "allow"),
    ["refusing", "resetting", "echoing", "client"].map((name) => keys[name]).join("\n") + "\n"
  )
  relay = start(["serve", "--port", "0", "--identity", NodePath.join(dir, "relay.key"), "--allow-keys", NodePath.join(dir, "allow"), "--log-level", "warn"])
  relayAddress = (await relay.waitFor(/^[0-9a-f]{64}@127\.0\.0\.1:\d+$/m))[0]

  // A port nothing listens on: take one, then free it.
  const taken = Net.createServer()
  refusedPort = await listenPort(taken)
  await new Promise((resolve) => taken.close(resolve))
  // A service that resets the connection on the first bytes (as a crashing server does).
  resetter = Net.createServer((socket) => {
    socket.on("error", () => {})
    socket.once("data", () => socket.resetAndDestroy())
  })
  const resetPort = await listenPort(resetter)
  echo = Net.createServer({ allowHalfOpen: true }, (socket) => {
    socket.on("error", () => {})
    socket.pipe(socket)
  })
  const echoPort = await listenPort(echo)

  const listeners = [
    start(["listen", "--identity", NodePath.join(dir, "refusing.key"), "--relay", relayAddress, "--allow", keys.client!, "--forward", `127.0.0.1:${refusedPort}`]),
    start(["listen", "--identity", NodePath.join(dir, "resetting.key"), "--relay", relayAddress, "--allow", keys.client!, "--forward", `127.0.0.1:${resetPort}`]),
    start(["listen", "--identity", NodePath.join(dir, "echoing.key"), "--relay", relayAddress, "--allow", keys.client!, "--forward", `127.0.0.1:${echoPort}`])
  ]
  await Promise.all(listeners.map((l) => l.waitFor(/: listening/)))
})

afterAll(async () => {
  for (const child of children) if (child.exitCode === null) child.kill("SIGKILL")
  await new Promise((resolve) => resetter.close(resolve))
  await new Promise((resolve) => echo.close(resolve))
  NodeFs.rmSync(dir, { recursive: true, force: true })
})

const connect = (as: string, to: string, input: string | undefined, closeStdin?: Promise<unknown>, relays = [relayAddress]) =>
  runCli(
    ["connect", "--identity", NodePath.join(dir, `${as}.key`), ...relays.flatMap((r) => ["--relay", r]), "--to", to, "--timeout-ms", "5000"],
    { ...(input === undefined ? {} : { input }), ...(closeStdin === undefined ? {} : { closeStdin }) }
  )

describe("errors that name the right party", () => {
  it.concurrent("the peer's --forward target refuses: the connector says so and exits 6", async () => {
    const out = await connect("client", keys.refusing!, "hello")
    expect(out.stderr).toContain(`the tunnel failed: the peer's local service refused the connection (ECONNREFUSED)`)
    expect(out.stderr).not.toContain("relay closed")
    expect(out.code).toBe(6)
  })

  it.concurrent("the peer's local service resets midway: the connector says so and exits 6", async () => {
    const out = await connect("client", keys.resetting!, "hello")
    expect(out.stderr).toContain("the tunnel failed: the peer's local connection was reset or failed (ECONNRESET)")
    expect(out.code).toBe(6)
  })

  it.concurrent("the relay refuses our connect request (allow-list): the relay is named among the causes, exit 4", async () => {
    const out = await connect("stranger", keys.echoing!, "hello")
    expect(out.code).toBe(4)
    expect(out.stderr).toContain("closed by the relay: the relay closed our connect request before the peer answered")
    expect(out.stderr).toContain("our key is not on its allow-list")
  })

  it.concurrent("a relay at its connection limit refuses at accept: named as the relay's refusal, exit 4", async () => {
    const full = start(["serve", "--port", "0", "--identity", NodePath.join(dir, "full.key"), "--max-connections", "0", "--log-level", "warn"])
    const fullAddress = (await full.waitFor(/^[0-9a-f]{64}@127\.0\.0\.1:\d+$/m))[0]
    const out = await connect("client", keys.echoing!, "hello", undefined, [fullAddress])
    expect(out.code).toBe(4)
    expect(out.stderr).toContain("the relays refused the connection (a connection limit, or shutting down)")
    expect(out.stderr).toContain("refused by the relay: the relay refused the connection before its handshake")
    expect(out.stderr).not.toContain("check that the key")
  })

})

// Last: it kills the relay the tests above share.
describe("errors that name the right party, the relay's end", () => {
  it("the relay goes away under a live tunnel: the relay's side is named, exit 1", async () => {
    // stdin stays open, so the tunnel stays up until something breaks it.
    const child = spawn(
      NODE,
      [BIN, "connect", "--identity", NodePath.join(dir, "client.key"), "--relay", relayAddress, "--to", keys.echoing!],
      { stdio: ["pipe", "pipe", "pipe"] }
    )
    children.push(child)
    let stderr = ""
    child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()))
    const exited = new Promise<number | null>((resolve) => child.on("close", resolve))
    const deadline = Date.now() + 15_000
    while (!stderr.includes("connected to") && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20))
    relay.child.kill("SIGKILL")
    const code = await exited
    expect(stderr).toContain("the relay closed the tunnel without a word from the peer")
    expect(code).toBe(1)
  })
})
