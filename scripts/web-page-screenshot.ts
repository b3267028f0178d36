// The web page talking to a command-line listener, photographed:
//
//   node scripts/web-page-screenshot.ts [OUT.png]      (default docs/web-page.png)
//
// Starts, as a person would on a command line, `offset-relay serve --port 0
// --ws-port 0 --web`, a small line service on 127.0.0.1 (it answers each
// line), and `offset-relay listen --forward` to it allowing the page's key;
// opens the page in headless chromium (Debian's, or CHROMIUM_PATH), pastes
// the listener's key, exchanges two messages and saves a screenshot. Every
// process it starts is stopped at the end. Needs the browser bundle:
// `npm run build` (or `node scripts/build.ts --browser-only`) first.
import { type ChildProcess, spawn } from "node:child_process"
import { mkdirSync, mkdtempSync, rmSync } from "node:fs"
import * as Net from "node:net"
import { tmpdir } from "node:os"
import { dirname, join } from "node:path"
import { createInterface } from "node:readline"
import { fileURLToPath } from "node:url"
import puppeteer from "puppeteer-core"

const root = join(dirname(fileURLToPath(import.meta.url)), "..")
const out = process.argv[2] ?? join(root, "docs/web-page.png")
const chromium = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium"
const cli = join(root, "bin/offset-relay.js")
const work = mkdtempSync(join(tmpdir(), "offset-relay-screenshot-"))
const children: Array<ChildProcess> = []

// The little of the page's DOM used inside the browser (scripts get Node's types, not the DOM's).
declare const document: {
  getElementById: (id: string) => { readonly dataset: Record<string, string | undefined> } | null
  querySelectorAll: (selector: string) => Iterable<{ readonly textContent: string | null }>
}

// Starts the CLI; resolves with its stdout lines once `ready(stdout lines, stderr text)` holds.
const start = (
  args: ReadonlyArray<string>,
  ready: (stdout: ReadonlyArray<string>, stderr: string) => boolean
): Promise<Array<string>> =>
  new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [cli, ...args], { stdio: ["ignore", "pipe", "pipe"] })
    children.push(child)
    const seen: Array<string> = []
    let stderr = ""
    const check = () => {
      if (ready(seen, stderr)) resolve(seen)
    }
    child.stderr.on("data", (chunk: Buffer) => {
      stderr += chunk.toString()
      check()
    })
    createInterface({ input: child.stdout }).on("line", (line) => {
      seen.push(line)
      check()
    })
    child.once("exit", (code) => reject(new Error(`offset-relay ${args[0]} exited with ${code}: ${stderr}`)))
  })

const run = (args: ReadonlyArray<string>): Promise<string> =>
  new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [cli, ...args], { stdio: ["ignore", "pipe", "inherit"] })
    let stdout = ""
    child.stdout.on("data", (chunk: Buffer) => void (stdout += chunk.toString()))
    child.once("exit", (code) => (code === 0 ? resolve(stdout.trim()) : reject(new Error(`offset-relay ${args[0]} exited with ${code}`))))
  })

// The local service the listener exposes: answers every line.
const service = Net.createServer((socket) => {
  createInterface({ input: socket }).on("line", (line) => {
    socket.write(`the command-line service got "${line}" (${line.length} characters)\n`)
  })
})
await new Promise<void>((resolve) => service.listen(0, "127.0.0.1", resolve))
const servicePort = (service.address() as Net.AddressInfo).port

try {
  const [tcpAddress, wsAddress] = await start(
    ["serve", "--port", "0", "--ws-port", "0", "--web", "--data-dir", join(work, "relay"), "--log-level", "warn"],
    (stdout) => stdout.length === 2
  )
  const pageUrl = `http://${wsAddress!.split("://")[1]}/`
  const browser = await puppeteer.launch({
    executablePath: chromium,
    headless: true,
    args: ["--no-sandbox", "--disable-dev-shm-usage"],
    defaultViewport: { width: 900, height: 760 }
  })
  try {
    const page = await browser.newPage()
    await page.goto(pageUrl)
    await page.waitForFunction(() => document.getElementById("state")?.dataset.state === "listening", { timeout: 20_000 })
    const pageKey = await page.$eval("#own-key", (e) => e.textContent ?? "")

    const listenerKey = await run(["keygen", "--out", join(work, "listener.key")])
    await start(
      ["listen", "--identity", join(work, "listener.key"), "--relay", tcpAddress!, "--allow", pageKey, "--forward", `127.0.0.1:${servicePort}`],
      (_, stderr) => stderr.includes(": listening")
    )
    const publicKey = /[0-9a-f]{64}/.exec(listenerKey)![0] // keygen prints the key
    await page.type("#peer-key", publicKey)
    await page.click("#connect")
    await page.waitForFunction(() => document.getElementById("state")?.dataset.state === "connected", { timeout: 20_000 })
    for (const message of ["hello from a browser tab", "the relay only sees ciphertext"]) {
      await page.type("#message", message)
      await page.click("#message-form button")
      await page.waitForFunction(
        (m) => [...document.querySelectorAll("#log .peer")].some((li) => li.textContent?.includes(m) === true),
        { timeout: 20_000 },
        message
      )
    }
    mkdirSync(dirname(out), { recursive: true })
    await page.screenshot({ path: out as `${string}.png`, fullPage: true })
    console.log(`screenshot: ${out} (page ${pageUrl}, listener ${publicKey.slice(0, 16)}… via ${tcpAddress})`)
  } finally {
    await browser.close()
  }
} finally {
  for (const child of children) child.kill("SIGTERM")
  service.close()
  rmSync(work, { recursive: true, force: true })
}
