/**
 * The `offset-relay` command as a user runs it: child processes of
 * bin/offset-relay.js on Node 24, loopback only.
 */
import { describe, expect, it } from "vitest"
import { execFileSync, spawn } from "node:child_process"
import { mkdtempSync, readFileSync, statSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import * as Net from "node:net"

const node = join(process.cwd(), "node_modules/.bin/node")
const bin = join(process.cwd(), "bin/offset-relay.js")

const cli = (args: ReadonlyArray<string>, input = "", env: Record<string, string> = {}) => {
  try {
    const stdout = execFileSync(node, [bin, ...args], { input, env: { ...process.env, ...env }, stdio: "pipe" })
    return { code: 0, stdout: stdout.toString(), stderr: "" }
  } catch (error) {
    const e = error as { status: number; stdout: Buffer; stderr: Buffer }
    return { code: e.status, stdout: e.stdout.toString(), stderr: e.stderr.toString() }
  }
}

const key = "5f".repeat(32)

describe("offset-relay CLI", () => {
  it("prints help for the command and every subcommand", () => {
    expect(cli(["--help"]).stdout).toContain("usage: offset-relay <command>")
    for (const command of ["serve", "keygen", "wire", "listen", "connect"]) {
      const out = cli([command, "--help"])
      expect(out.code, command).toBe(0)
      expect(out.stdout, command).toMatch(/usage: offset-relay/)
    }
    expect(cli(["frobnicate"]).code).toBe(2)
  })

  it("wire encode and decode agree with each other for every type", () => {
    const samples: Record<string, unknown> = {
      InitConnection: { accept: key },
      RejectConnection: { publicKey: key },
      IncomingConnection: { publicKey: key },
      KaMessage: { message: "00ff10" },
      ExchangeRandNonce: { randNonce: "ab".repeat(16), srcPublicKey: key, optDestPublicKey: { publicKey: key } },
      ExchangeDh: { dhPublicKey: key, randNonce: "01".repeat(16), keySalt: key, signature: "cd".repeat(64) },
      ChannelMessage: { randPadding: "0000", content: { rekey: { dhPublicKey: key, keySalt: key } } }
    }
    for (const [type, value] of Object.entries(samples)) {
      const encoded = cli(["wire", "encode", type], JSON.stringify(value))
      expect(encoded.code, type).toBe(0)
      expect(encoded.stdout).toMatch(/^[0-9a-f]+\n$/)
      const decoded = cli(["wire", "decode", type], encoded.stdout)
      expect(decoded.code, type).toBe(0)
      expect(JSON.parse(decoded.stdout), type).toEqual(value)
    }
  })

  it("wire gives a one-line error and exit 2 for bad input", () => {
    const out = cli(["wire", "decode", "KaMessage"], "0g")
    expect(out.code).toBe(2)
    expect(out.stderr.trim().split("\n")).toHaveLength(1)
    expect(cli(["wire", "encode", "InitConnection"], "{").code).toBe(2)
    expect(cli(["wire", "encode", "NoSuchType"], "{}").code).toBe(2)
  })

  it("keygen writes an owner-only key file and prints its public key; it refuses to overwrite", () => {
    const dir = mkdtempSync(join(tmpdir(), "offset-relay-cli-"))
    const out = cli(["keygen", "--out", join(dir, "id.key")])
    expect(out.code).toBe(0)
    expect(out.stdout).toMatch(/^[0-9a-f]{64}\n$/)
    expect(statSync(join(dir, "id.key")).mode & 0o777).toBe(0o600)
    const again = cli(["keygen", "--out", join(dir, "id.key")])
    expect(again.code).toBe(3)
    expect(again.stderr).toContain(`offset-relay keygen --out ${join(dir, "id.key")} --force`)
  })

  it("serve prints its address, keeps its identity across restarts, and exits 0 on SIGTERM", async () => {
    const dir = mkdtempSync(join(tmpdir(), "offset-relay-serve-"))
    const start = () =>
      new Promise<{ address: string; stop: () => Promise<number | null> }>((resolve, reject) => {
        const child = spawn(node, [bin, "serve", "--port", "0", "--log-level", "warn"], {
          env: { ...process.env, OFFSET_RELAY_DATA_DIR: dir },
          stdio: ["ignore", "pipe", "pipe"]
        })
        let out = ""
        child.stdout.on("data", (chunk: Buffer) => {
          out += chunk.toString()
          const line = out.split("\n")[0]
          if (out.includes("\n") && line !== undefined) {
            resolve({
              address: line,
              stop: () =>
                new Promise((done) => {
                  child.once("exit", (code) => done(code))
                  child.kill("SIGTERM")
                })
            })
          }
        })
        child.once("exit", (code) => reject(new Error(`serve exited early with ${code}`)))
      })
    const first = await start()
    expect(first.address).toMatch(/^[0-9a-f]{64}@127\.0\.0\.1:\d+$/)
    const port = Number(first.address.split(":")[1])
    // It accepts TCP on the printed port.
    await new Promise<void>((resolve, reject) => {
      const socket = Net.connect(port, "127.0.0.1", () => {
        socket.destroy()
        resolve()
      })
      socket.once("error", reject)
    })
    expect(await first.stop()).toBe(0)
    const second = await start()
    expect(second.address.split("@")[0]).toBe(first.address.split("@")[0])
    expect(await second.stop()).toBe(0)
  })

  it("serve refuses a bad flag value with exit 2 and a hint", () => {
    const out = cli(["serve", "--port", "abc"])
    expect(out.code).toBe(2)
    expect(out.stderr).toContain("--port must be a whole number 0..65535, got 'abc'")
  })

  it("serve reports an unreadable allow-keys file and exits 2", () => {
    const dir = mkdtempSync(join(tmpdir(), "offset-relay-allow-"))
    writeFileSync(join(dir, "allow"), "not a key\n")
    const out = cli(["serve", "--port", "0", "--allow-keys", join(dir, "allow")], "", { OFFSET_RELAY_DATA_DIR: dir })
    expect(out.code).toBe(2)
    expect(out.stderr).toContain("line 1")
  })

  it("the README's wire examples paste and run", () => {
    const readme = readFileSync("README.md", "utf8")
    const section = readme.slice(readme.indexOf("## Debugging the wire format"))
    const block = section.slice(section.indexOf("```sh") + 5, section.indexOf("```", section.indexOf("```sh") + 5))
    const lines = block.trim().split("\n")
    expect(lines).toHaveLength(2)
    for (const line of lines) {
      const out = execFileSync("sh", ["-c", line.replaceAll("npx offset-relay", `"${node}" "${bin}"`)], { stdio: "pipe" })
      expect(out.toString()).toMatch(/^(\{"connect":"(ab){32}"\}|[0-9a-f]+)\n$/)
    }
  })

  it("the README's exit code table is the one every --help prints", async () => {
    const { exitCodeHelp } = await import("../src/adapters/cli/exit-codes.ts")
    const readme = readFileSync("README.md", "utf8")
    for (const row of exitCodeHelp.split("\n").slice(1)) {
      const [, code] = /^\s+(\d+)\s/.exec(row)!
      expect(readme).toContain(`| ${code} | `)
    }
    expect(readme.match(/^\| \d+ \| /gm)).toHaveLength(exitCodeHelp.split("\n").length - 1)
  })
})
