/**
 * `offset-relay connect --local-port` as a child process, against a relay
 * that accepts TCP and never answers, so every tunnel stays in its connect
 * phase: what happens to local connections while they wait, and on SIGTERM.
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process"
import * as NodeFs from "node:fs"
import * as Net from "node:net"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"

const NODE = NodePath.resolve("node_modules/.bin/node")
const BIN = NodePath.resolve("bin/offset-relay.js")

let dir: string
let silent: Net.Server
let silentPort: number
const held = new Set<Net.Socket>()
const children: Array<ChildProcess> = []

beforeAll(async () => {
  dir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "offset-cli-connect-"))
  execFileSync(NODE, [BIN, "keygen", "--out", NodePath.join(dir, "client.key")], { stdio: "pipe" })
  // A "relay" that takes the TCP connection and never says a word.
  silent = Net.createServer((socket) => {
    held.add(socket)
    socket.on("error", () => {})
    socket.on("close", () => held.delete(socket))
  })
  await new Promise<void>((resolve) => silent.listen(0, "127.0.0.1", resolve))
  silentPort = (silent.address() as Net.AddressInfo).port
})

afterAll(async () => {
  for (const child of children) if (child.exitCode === null) child.kill("SIGKILL")
  for (const socket of held) socket.destroy()
  await new Promise((resolve) => silent.close(resolve))
  NodeFs.rmSync(dir, { recursive: true, force: true })
})

/** Starts `connect --local-port 0`; resolves with the bound port and the exit code to come. */
const startForward = () =>
  new Promise<{ port: number; child: ChildProcess; exited: Promise<number | null>; stderr: () => string }>(
    (resolve, reject) => {
      const child = spawn(NODE, [
        BIN,
        "connect",
        "--identity",
        NodePath.join(dir, "client.key"),
        "--relay",
        `${"5f".repeat(32)}@127.0.0.1:${silentPort}`,
        "--to",
        "6a".repeat(32),
        "--local-port",
        "0",
        "--timeout-ms",
        "60000"
      ], { stdio: ["ignore", "pipe", "pipe"] })
      children.push(child)
      const exited = new Promise<number | null>((done) => child.on("close", (code) => done(code)))
      let out = ""
      let err = ""
      child.stderr!.on("data", (chunk: Buffer) => (err += chunk.toString()))
      child.stdout!.on("data", (chunk: Buffer) => {
        out += chunk.toString()
        const match = /:(\d+)\n/.exec(out)
        if (match !== null) resolve({ port: Number(match[1]), child, exited, stderr: () => err })
      })
      void exited.then((code) => reject(new Error(`connect exited early with ${code}: ${err}`)))
    }
  )

const openLocal = (port: number) =>
  new Promise<Net.Socket>((resolve, reject) => {
    const socket = Net.connect(port, "127.0.0.1", () => resolve(socket))
    socket.once("error", reject)
  })

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

describe("connect --local-port", () => {
  it("outlives a local client that resets while its tunnel is being set up", async () => {
    const forward = await startForward()
    const resetting = await openLocal(forward.port)
    resetting.write("hello")
    await sleep(100)
    resetting.resetAndDestroy()
    await sleep(300)
    expect(forward.child.exitCode, forward.stderr()).toBe(null)
    // Still serving: another local connection is accepted.
    const next = await openLocal(forward.port)
    next.destroy()
    forward.child.kill("SIGKILL")
  }, 20_000)

  it("exits promptly on SIGTERM even while a tunnel is still being set up", async () => {
    const forward = await startForward()
    const waiting = await openLocal(forward.port)
    waiting.on("error", () => {})
    await sleep(200)
    const stopped = Date.now()
    forward.child.kill("SIGTERM")
    expect(await forward.exited).toBe(0)
    // The relay never answers: without cancelling the pending connect the
    // process would wait for the 10 s handshake timeout.
    expect(Date.now() - stopped).toBeLessThan(5_000)
    waiting.destroy()
  }, 30_000)
})
