/**
 * The WebSocket transport against a real relay that listens on TCP and on a
 * WebSocket port at once: tunnels between WebSocket and TCP peers in every
 * mix, a listener on a TCP relay and a WebSocket relay at once, and bad
 * input on the WebSocket side (text, oversized messages, a close mid-frame,
 * no handshake, a foreign Origin) closed and counted as the TCP equivalents.
 */
import { readFileSync } from "node:fs"
import * as Net from "node:net"
import { afterEach, describe, expect, it } from "vitest"
import { WebSocket as NodeWebSocket } from "ws"
import { connect, listen, type PeerDuplex, type RelayListener } from "../src/adapters/client/index.ts"
import { type RelayServer, testRelayOptions } from "../src/adapters/relay-server.ts"
import type { RelayConfig } from "../src/core/relay-core.ts"
import { webSocketTransport, type WebSocketListenOptions } from "../src/adapters/transport-ws.ts"
import { WS_MAX_MESSAGE_BYTES } from "../src/adapters/transport-ws-dial.ts"
import { encodeFrameHeader } from "../src/core/frame.ts"
import { encodeVersion } from "../src/core/version.ts"
import {
  newIdentity,
  randomData,
  readAll,
  sha256,
  startRelay,
  TICK_MS,
  type TestRelay,
  waitFor,
  writeAllAndEnd
} from "./support/client-harness.ts"

const cleanups: Array<() => Promise<void>> = []
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup()
})

/** A relay with TCP on one ephemeral port and WebSocket on another. */
const relayWithWebSocket = async (
  ws: WebSocketListenOptions = {},
  core: Partial<RelayConfig> = {}
): Promise<TestRelay & { readonly wsAddress: string }> => {
  const defaults = testRelayOptions(newIdentity(), TICK_MS).core
  const relay = await startRelay({
    extraListeners: [{ transport: webSocketTransport(ws), host: "127.0.0.1", port: 0 }],
    core: { ...defaults, ...core }
  })
  cleanups.push(relay.stop)
  const wsListening = relay.server().listening.find((l) => l.transport !== "tcp")
  if (wsListening === undefined) throw new Error("the relay does not report its WebSocket port")
  return { ...relay, wsAddress: wsListening.address }
}

const wsPortOf = (server: RelayServer): number => server.listening.find((l) => l.transport !== "tcp")!.port // started with one

const closes = (server: RelayServer, reason: string): number => {
  const line = server.metrics.render().split("\n").find((l) => l.startsWith(`offset_relay_closes_total{reason="${reason}"} `))
  return line === undefined ? 0 : Number(line.split(" ")[1])
}

const listening = (listener: RelayListener) =>
  waitFor(() => listener.status().every((s) => s.state === "listening"), 5000, "the listener to listen")

/** An echo listener; returns its key. */
const echoListener = async (relays: ReadonlyArray<string>, allowed: Uint8Array): Promise<RelayListener> => {
  const identity = newIdentity()
  const listener = listen({ identity, relays, allow: [allowed], tickMs: TICK_MS })
  cleanups.push(() => listener.close())
  listener.on("connection", (socket: PeerDuplex) => socket.pipe(socket))
  await listening(listener)
  return listener
}

/** Connects to `listenerKey` through `relays` and has `bytes` echoed; returns both hashes. */
const echo = async (identity: ReturnType<typeof newIdentity>, relays: ReadonlyArray<string>, listenerKey: string, bytes: number) => {
  const socket = await connect({ identity, relays, to: listenerKey, tickMs: TICK_MS })
  const data = randomData(bytes)
  const [, echoed] = await Promise.all([writeAllAndEnd(socket, data), readAll(socket)])
  return { sent: sha256(data), echoed: sha256(echoed), length: echoed.length }
}

describe("WebSocket transport: tunnels", () => {
  it("relays 2 MiB each way between a WebSocket connector and a TCP listener, and the other way round", async () => {
    const relay = await relayWithWebSocket()
    expect(relay.wsAddress).toMatch(/^[0-9a-f]{64}@ws:\/\/127\.0\.0\.1:\d+$/)
    for (const [listenOn, connectTo] of [[relay.address, relay.wsAddress], [relay.wsAddress, relay.address]] as const) {
      const connector = newIdentity()
      const listener = await echoListener([listenOn], connector.publicKey)
      const result = await echo(connector, [connectTo], listener.publicKey, 2 * 1024 * 1024)
      expect(result.length).toBe(2 * 1024 * 1024)
      expect(result.echoed).toBe(result.sent)
    }
  })

  it("keeps a listener reachable through a TCP relay and a WebSocket relay at once", async () => {
    const tcpOnly = await relayWithWebSocket()
    const wsOnly = await relayWithWebSocket()
    const connector = newIdentity()
    const listener = await echoListener([tcpOnly.address, wsOnly.wsAddress], connector.publicKey)
    expect(listener.status().map((s) => s.relay)).toEqual([tcpOnly.address, wsOnly.wsAddress])
    for (const relays of [[tcpOnly.address], [wsOnly.wsAddress]]) {
      const result = await echo(connector, relays, listener.publicKey, 64 * 1024)
      expect(result.echoed).toBe(result.sent)
    }
  })

  it("says what failed when nothing listens at a ws:// address", async () => {
    const relay = await relayWithWebSocket()
    const port = wsPortOf(relay.server())
    await relay.stop()
    const key = relay.address.split("@")[0]!
    const error = await connect({
      identity: newIdentity(),
      relays: [`${key}@ws://127.0.0.1:${port}`],
      to: newIdentity().publicKey,
      tickMs: TICK_MS,
      timeoutMs: 5000
    }).then(() => undefined, (e: Error) => e)
    expect(error?.message).toContain(`ws://127.0.0.1:${port}/`)
  })
})

describe("WebSocket transport: wss://", () => {
  // A self-signed certificate for 127.0.0.1 (100 years), made with openssl for these tests.
  const cert = readFileSync(new URL("./fixtures/tls-cert.pem", import.meta.url), "utf8")
  const key = readFileSync(new URL("./fixtures/tls-key.pem", import.meta.url), "utf8")

  it("serves wss:// with a certificate: the address says wss, and the relay speaks first over TLS", async () => {
    const relay = await relayWithWebSocket({ tls: { cert, key } })
    const wss = relay.server().listening.find((l) => l.transport === "wss")
    expect(wss?.address).toMatch(/^[0-9a-f]{64}@wss:\/\/127\.0\.0\.1:\d+$/)
    const socket = new NodeWebSocket(`wss://127.0.0.1:${wss!.port}/`, { ca: cert })
    cleanups.push(async () => void socket.terminate())
    // The relay's version frame: an 8-byte length of 4, then version 0.
    const first = await new Promise<Buffer>((resolve, reject) => {
      socket.once("message", (data: Buffer) => resolve(data))
      socket.once("error", reject)
    })
    expect([...first]).toEqual([0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0])
    // Plain ws:// to the TLS port is not a WebSocket at all.
    const plain = await rawWebSocket(wss!.port)
    expect(plain.opened).toBe(false)
  })
})

/** A TCP connection to the relay that sends nothing unless told. */
const tcpClient = (port: number): Promise<Net.Socket> =>
  new Promise((resolve, reject) => {
    const socket = Net.createConnection({ host: "127.0.0.1", port })
    socket.on("data", () => {}) // the relay's version frame
    socket.once("connect", () => resolve(socket))
    socket.once("error", reject)
  })

/** A raw WebSocket client that speaks no protocol unless told. */
const rawWebSocket = async (port: number, headers: Record<string, string> = {}) => {
  const socket = new NodeWebSocket(`ws://127.0.0.1:${port}/`, { headers })
  const closed = new Promise<{ code: number; reason: string }>((resolve) =>
    socket.on("close", (code, reason) => resolve({ code, reason: reason.toString() }))
  )
  const opened = await new Promise<boolean>((resolve) => {
    socket.once("open", () => resolve(true))
    socket.once("error", () => resolve(false))
  })
  return { socket, opened, closed }
}

describe("WebSocket transport: bad input is closed and counted as on TCP", () => {
  it("a text message closes with 1003 and counts as a failed handshake", async () => {
    const relay = await relayWithWebSocket()
    const raw = await rawWebSocket(wsPortOf(relay.server()))
    expect(raw.opened).toBe(true)
    raw.socket.send("hello")
    const { code, reason } = await raw.closed
    expect(code).toBe(1003)
    expect(reason).toContain("binary")
    await waitFor(() => closes(relay.server(), "handshake-failed") === 1, 5000, "the close to be counted")
  })

  it("a message over the cap closes with 1009 and counts as a frame too long", async () => {
    const relay = await relayWithWebSocket()
    const raw = await rawWebSocket(wsPortOf(relay.server()))
    raw.socket.send(new Uint8Array(WS_MAX_MESSAGE_BYTES + 1))
    expect((await raw.closed).code).toBe(1009)
    await waitFor(() => closes(relay.server(), "frame-too-long") === 1, 5000, "the close to be counted")
  })

  it("a frame over the handshake limit, sent in small messages, is refused as on TCP", async () => {
    const relay = await relayWithWebSocket()
    const raw = await rawWebSocket(wsPortOf(relay.server()))
    const version = encodeVersion()
    raw.socket.send(Buffer.concat([encodeFrameHeader(version.length), version]))
    raw.socket.send(encodeFrameHeader(512 * 1024))
    for (let i = 0; i < 4; i++) raw.socket.send(new Uint8Array(2048).fill(1))
    await raw.closed
    await waitFor(() => closes(relay.server(), "frame-too-long") === 1, 5000, "the close to be counted")
  })

  it("a close in the middle of a frame counts as the client's close", async () => {
    const relay = await relayWithWebSocket()
    const raw = await rawWebSocket(wsPortOf(relay.server()))
    const version = encodeVersion()
    // The version frame split over two messages, then half of the next frame's header.
    raw.socket.send(encodeFrameHeader(version.length))
    raw.socket.send(version)
    raw.socket.send(encodeFrameHeader(100).subarray(0, 4))
    raw.socket.close(1000)
    await raw.closed
    await waitFor(() => closes(relay.server(), "client-closed") === 1, 5000, "the close to be counted")
    // The same bytes and a FIN over TCP count the same.
    const tcp = await tcpClient(relay.port)
    tcp.end(Buffer.concat([encodeFrameHeader(version.length), version, encodeFrameHeader(100).subarray(0, 4)]))
    await waitFor(() => closes(relay.server(), "client-closed") === 2, 5000, "the TCP close to be counted")
  })

  it("a connection that never starts its handshake is closed at the handshake deadline", async () => {
    const relay = await relayWithWebSocket()
    const raw = await rawWebSocket(wsPortOf(relay.server()))
    expect(raw.opened).toBe(true)
    const tcp = await tcpClient(relay.port)
    const tcpClosed = new Promise((resolve) => tcp.once("close", resolve))
    await raw.closed
    await tcpClosed
    // The silent WebSocket and the silent TCP connection, alike.
    expect(closes(relay.server(), "timeout-handshake")).toBe(2)
  })

  it("WebSocket and TCP connections count against the same limits", async () => {
    const relay = await relayWithWebSocket({}, { maxConnections: 2 })
    const silentTcp = await tcpClient(relay.port)
    const silentWs = await rawWebSocket(wsPortOf(relay.server()))
    expect(silentWs.opened).toBe(true)
    // The third, over either transport, is over the relay's one cap.
    const third = await rawWebSocket(wsPortOf(relay.server()))
    await third.closed
    const line = relay.server().metrics.render().split("\n").find((l) => l.startsWith(`offset_relay_over_limit_total{limit="max-connections"} `))
    expect(line?.split(" ")[1]).toBe("1")
    silentTcp.destroy()
    silentWs.socket.terminate()
  })

  it("an Origin off the allow-list is refused before the upgrade; a listed one is served", async () => {
    const relay = await relayWithWebSocket({ allowedOrigins: ["https://app.example.org"] })
    const port = wsPortOf(relay.server())
    const foreign = await rawWebSocket(port, { origin: "https://evil.example.com" })
    expect(foreign.opened).toBe(false)
    const listed = await rawWebSocket(port, { origin: "https://app.example.org" })
    expect(listed.opened).toBe(true)
    listed.socket.close()
    await listed.closed
  })
})
