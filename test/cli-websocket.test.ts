/**
 * `offset-relay serve` with a WebSocket port, as a user runs it: WebSocket
 * flags without `--ws-port` (or half a TLS pair, or an origin with a path)
 * are usage errors before the identity is touched; with `--ws-port` the
 * second stdout line is the ws:// address, `--web` serves the page there,
 * and a CLI `listen` on that ws:// address is reachable by a CLI `connect`
 * over TCP. 127.0.0.1 and ephemeral ports only.
 */
import * as NodeFs from "node:fs"
import * as Net from "node:net"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { runCli, watchCli, type WatchedCli } from "./support/cli-process.ts"

let dir: string
const children: Array<WatchedCli> = []

beforeAll(() => {
  dir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "offset-cli-ws-"))
})

afterAll(async () => {
  for (const { child } of children) {
    if (child.exitCode === null) {
      const exited = new Promise((resolve) => child.once("exit", resolve))
      child.kill("SIGTERM")
      await exited
    }
  }
  NodeFs.rmSync(dir, { recursive: true, force: true })
})

describe("serve --ws-port", () => {
  it("refuses WebSocket flags that cannot apply, with the flag to add; exit 2 before any identity", async () => {
    const data = NodePath.join(dir, "never")
    const cases: Array<[ReadonlyArray<string>, string]> = [
      [["--web"], "--web applies to the WebSocket port: add --ws-port PORT"],
      [["--ws-allowed-origins", "https://app.example.org"], "--ws-allowed-origins applies to the WebSocket port: add --ws-port PORT"],
      [["--ws-port", "0", "--tls-cert", "cert.pem"], "--tls-cert and --tls-key go together: give both or neither"],
      [["--ws-port", "0", "--ws-allowed-origins", "https://app.example.org/chat"], "is not an origin; write scheme://host[:port] with no path"],
      [["--ws-port", "4747"], "--ws-port 4747 is the TCP --port too: give the WebSocket its own port"]
    ]
    const results = await Promise.all(cases.map(([args]) => runCli(["serve", "--data-dir", data, ...args])))
    results.forEach((result, i) => {
      const [args, message] = cases[i]!
      expect(result.code, args.join(" ")).toBe(2)
      expect(result.stderr, args.join(" ")).toContain(message)
      expect(result.stdout).toBe("")
    })
    expect(NodeFs.existsSync(data)).toBe(false)
  })

  it("names --ws-port when that port is taken; exit 7", async () => {
    const busy = Net.createServer()
    await new Promise<void>((resolve) => busy.listen(0, "127.0.0.1", resolve))
    const port = (busy.address() as Net.AddressInfo).port
    try {
      const result = await runCli(["serve", "--data-dir", NodePath.join(dir, "busy"), "--port", "0", "--ws-port", String(port)])
      expect(result.code).toBe(7)
      expect(result.stderr).toContain(`127.0.0.1:${port} is already in use (EADDRINUSE); choose another --ws-port`)
    } finally {
      busy.close()
    }
  })

  it("prints the ws:// address second, serves the page with --web, and carries a CLI tunnel from a ws:// listener", async () => {
    const relay = watchCli(["serve", "--data-dir", NodePath.join(dir, "relay"), "--port", "0", "--ws-port", "0", "--web"])
    children.push(relay)
    await relay.until(() => relay.stdout().split("\n").length >= 3)
    const [tcpAddress, wsAddress] = relay.stdout().trim().split("\n")
    expect(tcpAddress).toMatch(/^[0-9a-f]{64}@127\.0\.0\.1:\d+$/)
    expect(wsAddress).toMatch(/^[0-9a-f]{64}@ws:\/\/127\.0\.0\.1:\d+$/)
    expect(wsAddress!.split("@")[0]).toBe(tcpAddress!.split("@")[0])

    const page = await fetch(`http://${wsAddress!.split("://")[1]}/`)
    expect(page.status).toBe(200)
    const html = await page.text()
    expect(html).toContain(`<meta name="offset-relay-key" content="${tcpAddress!.split("@")[0]}">`)

    // A service that answers one line, exposed by `listen` on the ws:// address only.
    const service = Net.createServer((socket) => socket.once("data", (line) => socket.end(`got ${line}`)))
    await new Promise<void>((resolve) => service.listen(0, "127.0.0.1", resolve))
    try {
      const serviceKey = NodePath.join(dir, "service.key")
      const clientKey = NodePath.join(dir, "client.key")
      const serviceOut = await runCli(["keygen", "--out", serviceKey])
      const clientOut = await runCli(["keygen", "--out", clientKey])
      const keyOf = (text: string) => /[0-9a-f]{64}/.exec(text)![0] // keygen prints the key
      const listener = watchCli([
        "listen", "--identity", serviceKey, "--relay", wsAddress!, "--allow", keyOf(clientOut.stdout),
        "--forward", `127.0.0.1:${(service.address() as Net.AddressInfo).port}`, "--tick-ms", "200"
      ])
      children.push(listener)
      await listener.until(() => listener.stderr().includes(": listening"))
      const answer = await runCli(
        ["connect", "--identity", clientKey, "--relay", tcpAddress!, "--to", keyOf(serviceOut.stdout), "--tick-ms", "200"],
        { input: "hello\n" }
      )
      expect(answer.stdout).toBe("got hello\n")
      expect(answer.code).toBe(0)
    } finally {
      service.close()
    }
  }, 60_000)
})
