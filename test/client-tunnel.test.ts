/**
 * End to end through one real relay with the plain API: bytes in equal bytes
 * out, the half-close convention, many tunnels at once.
 */
import { afterEach, describe, expect, it } from "vitest"
import { connect, listen, type PeerDuplex, type RelayListener } from "../src/adapters/client/index.ts"
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

const relayFor = async (): Promise<TestRelay> => {
  const relay = await startRelay()
  cleanups.push(relay.stop)
  return relay
}

const listening = async (listener: RelayListener): Promise<void> =>
  waitFor(() => listener.status().every((s) => s.state === "listening"), 5000, "the listener to listen")

describe("client end to end through one relay", () => {
  it("echoes 8 MiB each way byte for byte, with the half close reaching the far side", async () => {
    const relay = await relayFor()
    const server = newIdentity()
    const client = newIdentity()
    const listener = listen({ identity: server, relays: [relay.address], allow: [client.publicKey], tickMs: TICK_MS })
    cleanups.push(() => listener.close())
    const received: Array<string> = []
    // Echo service: everything read goes back; the end of input ends the output.
    listener.on("connection", (socket: PeerDuplex) => {
      received.push(socket.remotePublicKey)
      socket.pipe(socket)
    })
    await listening(listener)
    const socket = await connect({ identity: client, relays: [relay.address], to: server.publicKey, tickMs: TICK_MS })
    expect(socket.remotePublicKey).toBe(listener.publicKey)
    const data = randomData(8 * 1024 * 1024)
    const [, echoed] = await Promise.all([writeAllAndEnd(socket, data), readAll(socket)])
    expect(echoed.length).toBe(data.length)
    expect(sha256(echoed)).toBe(sha256(data))
    expect(received).toEqual([Buffer.from(client.publicKey).toString("hex")])
    // Both halves ended: the tunnel closes on both sides.
    await waitFor(() => relay.server().stats().core.tunnels === 0, 5000, "the tunnel to close")
  })

  it("lets the listener answer after the connector's half close, and end its own half later", async () => {
    const relay = await relayFor()
    const server = newIdentity()
    const client = newIdentity()
    const listener = listen({ identity: server, relays: [relay.address], allow: [client.publicKey], tickMs: TICK_MS })
    cleanups.push(() => listener.close())
    // Reads the whole request first, then answers with its length and hash.
    listener.on("connection", async (socket: PeerDuplex) => {
      const request = await readAll(socket)
      socket.write(`${request.length} `)
      await new Promise((resolve) => setTimeout(resolve, 200))
      socket.end(sha256(request))
    })
    await listening(listener)
    const socket = await connect({ identity: client, relays: [relay.address], to: server.publicKey, tickMs: TICK_MS })
    const data = randomData(300_000)
    const [, answer] = await Promise.all([writeAllAndEnd(socket, data), readAll(socket)])
    expect(answer.toString()).toBe(`${data.length} ${sha256(data)}`)
  })

  it("carries many tunnels at once between the same two peers and between different peers", async () => {
    const relay = await relayFor()
    const servers = [newIdentity(), newIdentity()]
    const clients = [newIdentity(), newIdentity(), newIdentity()]
    for (const server of servers) {
      const listener = listen({
        identity: server,
        relays: [relay.address],
        allow: clients.map((c) => c.publicKey),
        tickMs: TICK_MS
      })
      cleanups.push(() => listener.close())
      listener.on("connection", (socket: PeerDuplex) => socket.pipe(socket))
      await listening(listener)
    }
    const runs: Array<Promise<void>> = []
    for (const client of clients) {
      for (const server of servers) {
        for (let n = 0; n < 4; n++) {
          runs.push((async () => {
            const socket = await connect({ identity: client, relays: [relay.address], to: server.publicKey, tickMs: TICK_MS })
            const data = randomData(200_000 + n)
            const [, echoed] = await Promise.all([writeAllAndEnd(socket, data), readAll(socket)])
            expect(sha256(echoed)).toBe(sha256(data))
          })())
        }
      }
    }
    await Promise.all(runs)
    await waitFor(() => relay.server().stats().core.tunnels === 0, 5000, "every tunnel to close")
  })
})
