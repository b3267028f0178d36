/**
 * How `offset-relay` fails at startup, as a user runs it: every bad flag is
 * refused before the identity is touched, a port that cannot be opened is
 * named with its cause and the flag that fixes it, and nothing reaches
 * stdout unless every port is open. Then the log: the SIGHUP reload goes
 * through the same logger as everything else (stderr, --log-format).
 * Failures run each command's `run` in this process (fast: no Node start
 * per case), one at a time with stdout and stderr captured; the log tests
 * run `serve` as a child process, since they send it signals. 127.0.0.1
 * only; exit codes from exit-codes.ts.
 */
import * as NodeFs from "node:fs"
import * as Net from "node:net"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest"
import { type Finished, runCli, watchCli } from "./support/cli-process.ts"


const commands: Record<string, () => Promise<{ run: (args: ReadonlyArray<string>) => Promise<number> }>> = {
  serve: () => import("../src/adapters/cli/serve.ts"),
  keygen: () => import("../src/adapters/cli/keygen.ts"),
  listen: () => import("../src/adapters/cli/listen.ts"),
  connect: () => import("../src/adapters/cli/connect.ts")
}

// One at a time: stdout and stderr are captured process-wide.
let queue: Promise<unknown> = Promise.resolve()

/** Runs `offset-relay <args>` in this process, for commands that fail (or finish) at startup. */
const run = (args: ReadonlyArray<string>): Promise<Finished> => {
  const next = queue.then(async () => {
    let stdout = ""
    let stderr = ""
    const capture = (append: (text: string) => void) => (chunk: unknown, ...rest: Array<unknown>) => {
      append(typeof chunk === "string" ? chunk : Buffer.from(chunk as Uint8Array).toString())
      const callback = rest.find((r) => typeof r === "function") as (() => void) | undefined
      callback?.()
      return true
    }
    const out = vi.spyOn(process.stdout, "write").mockImplementation(capture((t) => (stdout += t)) as never)
    const err = vi.spyOn(process.stderr, "write").mockImplementation(capture((t) => (stderr += t)) as never)
    try {
      const code = await (await commands[args[0]!]!()).run(args.slice(1))
      return { code, stdout, stderr }
    } finally {
      out.mockRestore()
      err.mockRestore()
    }
  })
  queue = next.catch(() => {})
  return next
}

let dir: string
let busy: Net.Server
let busyPort: number

beforeAll(async () => {
  dir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "offset-cli-startup-"))
  busy = Net.createServer()
  await new Promise<void>((resolve) => busy.listen(0, "127.0.0.1", resolve))
  busyPort = (busy.address() as Net.AddressInfo).port
})

afterAll(async () => {
  await new Promise((resolve) => busy.close(resolve))
  NodeFs.rmSync(dir, { recursive: true, force: true })
})

describe("startup failures: one line, the cause, the fix, an exit code", () => {
  it("bad flag values exit 2 before any identity is created", async () => {
    const data = NodePath.join(dir, "never")
    const cases: Array<[ReadonlyArray<string>, string]> = [
      [["--port", "99999"], "--port must be a whole number 0..65535, got 99999"],
      [["--max-connections", "-5"], "--max-connections must be a whole number at least 0, got '-5'"],
      [["--tick-ms", "0"], "--tick-ms must be a whole number at least 1, got 0"],
      [["--metrics-port", "70000"], "--metrics-port must be a whole number 0..65535, got 70000"],
      [["--log-keys", "some"], "--log-keys must be one of short, full; got 'some'"],
      [["--log-format", "xml"], "--log-format must be one of pretty, json; got 'xml'"]
    ]
    const results = await Promise.all(cases.map(([args]) => run(["serve", "--data-dir", data, ...args])))
    results.forEach((result, i) => {
      const [args, message] = cases[i]!
      expect(result.code, args.join(" ")).toBe(2)
      expect(result.stderr, args.join(" ")).toContain(`offset-relay serve: ${message}`)
      expect(result.stdout).toBe("")
    })
    const allow = NodePath.join(dir, "bad-allow")
    NodeFs.writeFileSync(allow, "not a key\n")
    const badAllow = await run(["serve", "--data-dir", data, "--port", "0", "--allow-keys", allow])
    expect(badAllow.code).toBe(2)
    expect(badAllow.stderr).toContain("line 1")
    expect(NodeFs.existsSync(data)).toBe(false)
  })

  it("a port in use names the address, the cause and the flag; exit 7, nothing on stdout", async () => {
    const data = NodePath.join(dir, "busy")
    const [relay, metrics] = await Promise.all([
      run(["serve", "--data-dir", data, "--port", String(busyPort)]),
      run(["serve", "--data-dir", data, "--port", "0", "--metrics-port", String(busyPort)])
    ])
    expect(relay.code).toBe(7)
    expect(relay.stderr).toContain(
      `offset-relay serve: 127.0.0.1:${busyPort} is already in use (EADDRINUSE); choose another --port`
    )
    expect(relay.stdout).toBe("")
    expect(metrics.code).toBe(7)
    expect(metrics.stderr).toContain(`127.0.0.1:${busyPort} is already in use (EADDRINUSE); choose another --metrics-port`)
    expect(metrics.stdout).toBe("")
    // Found before the identity was made.
    expect(NodeFs.existsSync(data)).toBe(false)
  })

  it("an address that is not this machine's, or a name that does not resolve, names --host; exit 7", async () => {
    const data = NodePath.join(dir, "host")
    const [notOurs, noName] = await Promise.all([
      run(["serve", "--data-dir", data, "--port", "0", "--host", "192.0.2.1"]),
      run(["serve", "--data-dir", data, "--port", "0", "--host", "no-such-host.invalid"])
    ])
    expect(notOurs.code).toBe(7)
    expect(notOurs.stderr).toContain("192.0.2.1 is not an address of this machine (EADDRNOTAVAIL); choose another --host")
    expect(noName.code).toBe(7)
    expect(noName.stderr).toMatch(/the host name no-such-host\.invalid does not resolve \(E[A-Z_]+\); give an IP address in --host/)
    expect(NodeFs.existsSync(data)).toBe(false)
  })

  it("connect --local-port in use: exit 7 with the cause", async () => {
    const key = NodePath.join(dir, "client.key")
    expect((await run(["keygen", "--out", key])).code).toBe(0)
    const out = await run([
      "connect",
      "--identity",
      key,
      "--relay",
      `${"ab".repeat(32)}@127.0.0.1:1`,
      "--to",
      "cd".repeat(32),
      "--local-port",
      String(busyPort)
    ])
    expect(out.code).toBe(7)
    expect(out.stderr).toContain(`127.0.0.1:${busyPort} is already in use (EADDRINUSE); choose another --local-port`)
  })

  it("identity problems exit 3 from every command, and name the command that fixes them", async () => {
    const missing = NodePath.join(dir, "missing.key")
    const relay = `${"ab".repeat(32)}@127.0.0.1:1`
    const [connect, listen] = await Promise.all([
      run(["connect", "--identity", missing, "--relay", relay, "--to", "cd".repeat(32)]),
      run(["listen", "--identity", missing, "--relay", relay, "--allow", "cd".repeat(32), "--forward", "127.0.0.1:1"])
    ])
    for (const out of [connect, listen]) {
      expect(out.code).toBe(3)
      expect(out.stderr).toContain(`create it with: offset-relay keygen --out ${missing}`)
    }
    const broken = NodePath.join(dir, "broken.key")
    NodeFs.writeFileSync(broken, "hello\n", { mode: 0o600 })
    const serve = await run(["serve", "--identity", broken, "--port", "0"])
    expect(serve.code).toBe(3)
    expect(serve.stderr).toContain(`offset-relay serve: identity file ${broken}`)

    const key = NodePath.join(dir, "twice.key")
    expect((await run(["keygen", "--out", key])).code).toBe(0)
    const again = await run(["keygen", "--out", key])
    expect(again.code).toBe(3)
    expect(again.stderr).toContain(`To replace it (its old identity is lost): offset-relay keygen --out ${key} --force`)
  })

  it("every command's --help shows the same exit code table", async () => {
    const helps = await Promise.all(["serve", "keygen", "listen", "connect"].map((command) => run([command, "--help"])))
    const tables = helps.map((help) => help.stdout.slice(help.stdout.indexOf("exit codes")))
    for (const table of tables) {
      expect(table).toContain("7   a local port could not be opened")
      expect(table).toBe(tables[0])
    }
  })
})

describe("the log", () => {
  const serveAndReload = async (format: "json" | "pretty") => {
    const allow = NodePath.join(dir, `allow-${format}`)
    NodeFs.writeFileSync(allow, `${"ab".repeat(32)}\n${"cd".repeat(32)}\n`)
    const { child, stdout, stderr, until } = watchCli(
      ["serve", "--port", "0", "--data-dir", NodePath.join(dir, `log-${format}`), "--allow-keys", allow, "--log-format", format]
    )
    await until(() => stdout().includes("\n"))
    child.kill("SIGHUP")
    await until(() => stderr().includes("allow-list reloaded"))
    const exited = new Promise<number | null>((resolve) => child.once("exit", resolve))
    child.kill("SIGTERM")
    expect(await exited).toBe(0)
    return { stdout: stdout(), lines: stderr().trim().split("\n") }
  }

  it("json: every stderr line is one JSON object, the reload among them; stdout is the address alone", async () => {
    const { lines, stdout } = await serveAndReload("json")
    expect(stdout).toMatch(/^[0-9a-f]{64}@127\.0\.0\.1:\d+\n$/)
    const records = lines.map((line) => JSON.parse(line) as { message: unknown; level: string })
    const reload = records.find((r) => JSON.stringify(r.message).includes("allow-list reloaded"))
    expect(reload).toBeDefined()
    expect(reload!.level).toBe("INFO")
  })

  it("pretty: every stderr line is logfmt, the reload among them; stdout is the address alone", async () => {
    const { lines, stdout } = await serveAndReload("pretty")
    expect(stdout).toMatch(/^[0-9a-f]{64}@127\.0\.0\.1:\d+\n$/)
    const logfmt = /^(\w+=("([^"\\]|\\.)*"|\S*))( \w+=("([^"\\]|\\.)*"|\S*))*$/
    for (const line of lines) expect(line).toMatch(logfmt)
    expect(lines.some((line) => line.includes(`message="allow-list reloaded" keys=2`))).toBe(true)
  })
  it("a client's key appears in the relay's log as its first 8 hex digits by default", async () => {
    const data = NodePath.join(dir, "keys")
    const { child, stdout, stderr, until } = watchCli(["serve", "--port", "0", "--data-dir", data, "--log-format", "json"])
    try {
      await until(() => stdout().includes("\n"))
      const key = NodePath.join(dir, "keys-client.key")
      const clientKey = (await runCli(["keygen", "--out", key])).stdout.trim()
      // Nobody listens as this key: the relay closes the connect and logs it.
      await runCli(["connect", "--identity", key, "--relay", stdout().trim(), "--to", "cd".repeat(32), "--timeout-ms", "3000"])
      await until(() => stderr().includes("connection closed"))
      const err = stderr()
      const closes = err.trim().split("\n").map((line) => JSON.parse(line) as { message: string; annotations: Record<string, unknown> })
        .filter((r) => r.message === "connection closed")
      expect(closes.length).toBeGreaterThan(0)
      expect(err).not.toContain(clientKey)
      for (const close of closes) expect(close.annotations.client).toMatch(/^([0-9a-f]{8}|-)$/)
    } finally {
      child.kill("SIGTERM")
    }
  })
})
