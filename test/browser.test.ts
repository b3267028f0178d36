/**
 * Browsers as peers, in a real browser: Debian's chromium, headless, driven
 * by puppeteer-core. A relay listens on TCP and on a WebSocket port that
 * also serves the --web page; the page and the library bundle
 * (dist/browser/, built here first) run in chromium, Node peers use TCP.
 *
 * - a page connects through the relay to a Node listener and echoes 1 MiB,
 *   with equal hashes on both sides;
 * - a Node connector reaches the page, which listens by its own key, and the
 *   two exchange a message each way through the page's UI;
 * - a page served over https (the relay's --tls-cert) reaches it over wss://;
 * - the page reports, in words, a wrong key and a relay that is down.
 *
 * Without chromium (not installed, and .ci/run could not install it) the
 * tests are skipped, and the reason is printed.
 */
import { execFileSync } from "node:child_process"
import { existsSync, readFileSync } from "node:fs"
import { dirname, join } from "node:path"
import { fileURLToPath } from "node:url"
import puppeteer, { type Browser, type Page } from "puppeteer-core"
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest"
import { connect, listen, type PeerDuplex } from "../src/adapters/client/index.ts"
import { webSocketTransport } from "../src/adapters/transport-ws.ts"
import { webPageHandler } from "../src/adapters/web-page.ts"
import { bytesToHex } from "../src/core/keys.ts"
import { newIdentity, startRelay, TICK_MS, type TestRelay, waitFor } from "./support/client-harness.ts"

const root = join(dirname(fileURLToPath(import.meta.url)), "..")

// The little of the page's DOM these tests touch inside the browser (the
// tests' tsconfig has Node's types, not the DOM's).
interface PageElement {
  textContent: string | null
  value?: string
  readonly dataset?: Record<string, string | undefined>
}
declare const document: {
  getElementById: (id: string) => PageElement | null
  querySelectorAll: (selector: string) => Iterable<PageElement>
}

const findChromium = (): string | undefined => {
  const candidates = [process.env.CHROMIUM_PATH, "/usr/bin/chromium", "/usr/bin/chromium-browser"]
  return candidates.find((path): path is string => path !== undefined && path !== "" && existsSync(path))
}
const chromium = findChromium()
if (chromium === undefined) {
  console.log(
    "browser tests skipped: no chromium (install Debian's package: apt-get install -y chromium, or set CHROMIUM_PATH)"
  )
}

const cleanups: Array<() => Promise<void>> = []
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup()
})

/** A relay with TCP and a WebSocket port (wss:// with `tls`) that serves the web page. */
const relayWithPage = async (
  tls?: { readonly cert: string; readonly key: string }
): Promise<TestRelay & { readonly wsAddress: string; readonly pageUrl: string }> => {
  const identity = newIdentity()
  const transport = webSocketTransport({ onHttpRequest: webPageHandler(bytesToHex(identity.publicKey)), tls })
  const relay = await startRelay({ extraListeners: [{ transport, host: "127.0.0.1", port: 0 }] }, identity)
  cleanups.push(relay.stop)
  const ws = relay.server().listening.find((l) => l.transport !== "tcp")! // started with one
  return { ...relay, wsAddress: ws.address, pageUrl: `${tls === undefined ? "http" : "https"}://127.0.0.1:${ws.port}/` }
}

describe.skipIf(chromium === undefined)("browsers as peers (headless chromium)", () => {
  let browser: Browser

  beforeAll(async () => {
    // The page and the library are served from dist/browser/: build them from these sources.
    execFileSync(process.execPath, [join(root, "scripts/build.ts"), "--browser-only"], { cwd: root, stdio: "pipe" })
    browser = await puppeteer.launch({
      executablePath: chromium!, // describe.skipIf: defined here
      headless: true,
      // Root in CI has no user namespace sandbox; /dev/shm is small in containers;
      // the wss:// test's certificate is self-signed (and everything here is loopback).
      args: ["--no-sandbox", "--disable-dev-shm-usage", "--ignore-certificate-errors"]
    })
  }, 60_000)

  afterAll(async () => {
    await browser?.close()
  })

  /** A fresh page (its own storage) at `url`, failing the test on any script error. */
  const openPage = async (url: string): Promise<Page> => {
    const context = await browser.createBrowserContext()
    cleanups.push(() => context.close())
    const page = await context.newPage()
    const errors: Array<string> = []
    page.on("pageerror", (error) => errors.push(String(error)))
    cleanups.push(async () => expect(errors).toEqual([]))
    await page.goto(url)
    return page
  }

  /**
   * Loads the library bundle into the page as `globalThis.offsetRelay` (a
   * module script tag: an `import()` inside an evaluated function would be
   * rewritten by the test runner's transform).
   */
  const loadLibrary = async (page: Page) => {
    await page.addScriptTag({ type: "module", content: 'import * as lib from "/offset-relay.js"; globalThis.offsetRelay = lib' })
    await page.waitForFunction(() => "offsetRelay" in globalThis, { timeout: 15_000 })
  }

  const pageState = (page: Page) => page.$eval("#state", (e) => (e as unknown as PageElement).dataset?.state ?? "")
  const waitForState = (page: Page, state: string) =>
    page.waitForFunction((s) => document.getElementById("state")?.dataset?.state === s, { timeout: 15_000 }, state)

  it("a page connects through the relay to a Node listener and echoes 1 MiB with equal hashes (web streams)", async () => {
    const relay = await relayWithPage()
    const server = newIdentity()
    const listener = listen({ identity: server, relays: [relay.address], allow: () => true, tickMs: TICK_MS })
    cleanups.push(() => listener.close())
    listener.on("connection", (socket: PeerDuplex) => socket.pipe(socket))
    await waitFor(() => listener.status().every((s) => s.state === "listening"), 5000, "the Node listener")

    const page = await openPage(relay.pageUrl)
    await loadLibrary(page)
    const result = await page.evaluate(async (relayAddress: string, to: string) => {
      const lib = (globalThis as unknown as { offsetRelay: typeof import("../src/browser.ts") }).offsetRelay
      const peer = await lib.connect({ identity: lib.createIdentity(), relays: [relayAddress], to })
      const data = new Uint8Array(1024 * 1024)
      for (let at = 0; at < data.length; at += 65536) crypto.getRandomValues(data.subarray(at, at + 65536))
      // Web streams both ways (the page's UI uses send/receive): closing the writable is the half close.
      const received: Array<Uint8Array> = []
      const reading = peer.readable.pipeTo(new WritableStream({ write: (chunk) => void received.push(chunk) }))
      const writer = peer.writable.getWriter()
      for (let at = 0; at < data.length; at += 60_000) await writer.write(data.subarray(at, at + 60_000))
      await writer.close()
      await reading
      const echoed = new Uint8Array(received.reduce((n, c) => n + c.length, 0))
      let at = 0
      for (const chunk of received) {
        echoed.set(chunk, at)
        at += chunk.length
      }
      const hex = async (bytes: Uint8Array) =>
        Array.from(new Uint8Array(await crypto.subtle.digest("SHA-256", bytes)), (b) => b.toString(16).padStart(2, "0")).join("")
      return { sent: await hex(data), echoed: await hex(echoed), length: echoed.length, remote: peer.remotePublicKey }
    }, relay.wsAddress, listener.publicKey)
    expect(result.length).toBe(1024 * 1024)
    expect(result.echoed).toBe(result.sent)
    expect(result.remote).toBe(listener.publicKey)
  }, 60_000)

  it("a Node connector reaches a page that listens, and they exchange a message each way", async () => {
    const relay = await relayWithPage()
    const page = await openPage(relay.pageUrl)
    await waitForState(page, "listening")
    const pageKey = await page.$eval("#own-key", (e) => e.textContent ?? "")
    expect(pageKey).toMatch(/^[0-9a-f]{64}$/)
    expect(await page.$eval("#relay", (e) => e.textContent)).toBe(relay.wsAddress)

    const socket = await connect({ identity: newIdentity(), relays: [relay.address], to: pageKey, tickMs: TICK_MS })
    cleanups.push(async () => void socket.destroy())
    socket.write("hello from node\n")
    await page.waitForFunction(
      () => [...document.querySelectorAll("#log .peer")].some((li) => li.textContent === "peer: hello from node"),
      { timeout: 15_000 }
    )
    expect(await pageState(page)).toBe("connected")
    await page.type("#message", "hello from the page")
    await page.click("#message-form button")
    const answer = await new Promise<string>((resolve) => {
      let text = ""
      socket.on("data", (chunk: Buffer) => {
        text += chunk.toString()
        if (text.endsWith("\n")) resolve(text)
      })
    })
    expect(answer).toBe("hello from the page\n")
  }, 60_000)

  it("a page served over https reaches its relay over wss:// and a Node connector reaches the page", async () => {
    const cert = readFileSync(join(root, "test/fixtures/tls-cert.pem"), "utf8")
    const key = readFileSync(join(root, "test/fixtures/tls-key.pem"), "utf8")
    const relay = await relayWithPage({ cert, key })
    expect(relay.wsAddress).toMatch(/@wss:\/\//)
    const page = await openPage(relay.pageUrl)
    await waitForState(page, "listening")
    expect(await page.$eval("#relay", (e) => e.textContent)).toBe(relay.wsAddress)
    const pageKey = await page.$eval("#own-key", (e) => e.textContent ?? "")
    const socket = await connect({ identity: newIdentity(), relays: [relay.address], to: pageKey, tickMs: TICK_MS })
    cleanups.push(async () => void socket.destroy())
    socket.write("over tls\n")
    await page.waitForFunction(
      () => [...document.querySelectorAll("#log .peer")].some((li) => li.textContent === "peer: over tls"),
      { timeout: 15_000 }
    )
  }, 60_000)

  it("the page says in words that nobody listens on a wrong key", async () => {
    const relay = await relayWithPage()
    const page = await openPage(relay.pageUrl)
    await waitForState(page, "listening")
    const nobody = bytesToHex(newIdentity().publicKey)
    await page.type("#peer-key", nobody)
    await page.click("#connect")
    await waitForState(page, "connect-failed")
    const error = await page.$eval("#error", (e) => e.textContent ?? "")
    expect(error).toContain(`Could not connect to ${nobody}`)
    expect(error).toContain(relay.wsAddress.split("@")[1]!.replace(/^ws:\/\//, ""))
    // A key that is not one is refused before any connection, with the form it should have.
    await page.$eval("#peer-key", (e) => void ((e as unknown as PageElement).value = ""))
    await page.type("#peer-key", "not-a-key")
    await page.click("#connect")
    await page.waitForFunction(() => document.getElementById("error")?.textContent?.includes("64 hex digits") === true)
  }, 60_000)

  it("the page says in words that its relay is down, and a dial to a stopped relay names the address", async () => {
    const relay = await relayWithPage()
    const page = await openPage(relay.pageUrl)
    await waitForState(page, "listening")
    // The library is loaded from the relay's port: load it before the relay goes.
    await loadLibrary(page)
    await relay.stop()
    await waitForState(page, "relay-unreachable")
    const error = await page.$eval("#error", (e) => e.textContent ?? "")
    expect(error).toContain("Cannot reach the relay")

    const message = await page.evaluate(async (relayAddress: string) => {
      const lib = (globalThis as unknown as { offsetRelay: typeof import("../src/browser.ts") }).offsetRelay
      return lib.connect({ identity: lib.createIdentity(), relays: [relayAddress], to: "00".repeat(32), timeoutMs: 5000 })
        .then(() => "connected?", (e: Error) => e.message)
    }, relay.wsAddress)
    expect(message).toContain(`cannot connect to ${relay.wsAddress.split("@")[1]}/`)
  }, 60_000)
})
