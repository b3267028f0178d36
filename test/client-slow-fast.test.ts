/**
 * The seed's argument, measured: one connector sends to a slow listener and
 * a fast listener at once through the same relay. Each tunnel is its own TCP
 * connection on each side, so the slow peer's backpressure stops only the
 * connector's writes to it; the fast peer keeps getting data at full speed.
 * No wall-clock speed is asserted: the fast peer's bytes are compared with
 * the slow peer's over the same window.
 */
import { afterEach, describe, expect, it } from "vitest"
import { connect, listen, type PeerDuplex } from "../src/adapters/client/index.ts"
import { newIdentity, startRelay, TICK_MS, waitFor } from "./support/client-harness.ts"

const cleanups: Array<() => Promise<void>> = []
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup()
})

const WINDOW_MS = 2000
const SLOW_READ_BYTES = 8 * 1024
const SLOW_READ_EVERY_MS = 100

describe("slow and fast peers", () => {
  it("a slow reader does not pull a fast reader's throughput down", async () => {
    const relay = await startRelay()
    cleanups.push(relay.stop)
    const sender = newIdentity()
    const counts = { slow: 0, fast: 0, slowReads: 0 }

    const slow = listen({ identity: newIdentity(), relays: [relay.address], allow: [sender.publicKey], tickMs: TICK_MS })
    cleanups.push(() => slow.close())
    slow.on("connection", (socket: PeerDuplex) => {
      // Paused: only a small read now and then, so the slow side really is slow.
      socket.pause()
      const timer = setInterval(() => {
        const chunk = socket.read(SLOW_READ_BYTES) as Buffer | null ?? socket.read() as Buffer | null
        if (chunk !== null) {
          counts.slow += chunk.length
          counts.slowReads++
        }
      }, SLOW_READ_EVERY_MS)
      socket.on("close", () => clearInterval(timer))
      socket.on("error", () => clearInterval(timer))
    })
    const fast = listen({ identity: newIdentity(), relays: [relay.address], allow: [sender.publicKey], tickMs: TICK_MS })
    cleanups.push(() => fast.close())
    fast.on("connection", (socket: PeerDuplex) => {
      socket.on("data", (chunk: Buffer) => (counts.fast += chunk.length))
      socket.on("error", () => {})
    })
    await waitFor(
      () => [slow, fast].every((l) => l.status().every((s) => s.state === "listening")),
      5000,
      "both listeners listening"
    )

    const toSlow = await connect({ identity: sender, relays: [relay.address], to: slow.publicKey, tickMs: TICK_MS })
    const toFast = await connect({ identity: sender, relays: [relay.address], to: fast.publicKey, tickMs: TICK_MS })
    const written = { slow: 0, fast: 0 }
    let running = true
    const chunk = Buffer.alloc(64 * 1024, 7)
    // Writes as fast as the tunnel takes it, waiting on backpressure.
    const pump = async (socket: PeerDuplex, which: "slow" | "fast") => {
      socket.on("error", () => {})
      while (running && !socket.destroyed) {
        written[which] += chunk.length
        if (!socket.write(chunk)) {
          await new Promise<void>((resolve) => {
            const done = () => {
              clearInterval(check)
              resolve()
            }
            socket.once("drain", done)
            // Wakes up at the end of the window even if the slow tunnel never drains.
            const check = setInterval(() => {
              if (!running) {
                socket.off("drain", done)
                done()
              }
            }, 20)
          })
        }
      }
    }
    const pumps = [pump(toSlow, "slow"), pump(toFast, "fast")]
    await new Promise((resolve) => setTimeout(resolve, WINDOW_MS))
    running = false
    const snapshot = { ...counts }
    const relayBuffered = relay.server().stats().bufferedBytes
    await Promise.all(pumps)
    toSlow.destroy()
    toFast.destroy()

    // The slow peer did read, slowly; the fast one got at least 10× more in the same window.
    expect(snapshot.slowReads).toBeGreaterThan(5)
    expect(snapshot.slow).toBeLessThanOrEqual((WINDOW_MS / SLOW_READ_EVERY_MS + 2) * SLOW_READ_BYTES)
    expect(snapshot.fast).toBeGreaterThanOrEqual(10 * snapshot.slow)
    // Backpressure, not buffering: the relay holds at most its bounded inboxes
    // (what the sender got rid of beyond that sits in kernel socket buffers,
    // which autotune up to net.ipv4.tcp_rmem's maximum).
    expect(relayBuffered).toBeLessThan(2 * 1024 * 1024)
    console.log(
      `in ${WINDOW_MS} ms: fast peer read ${snapshot.fast} bytes, slow peer ${snapshot.slow} bytes; ` +
        `the sender handed ${written.fast} bytes to the fast tunnel and ${written.slow} to the slow one; ` +
        `the relay held ${relayBuffered} bytes`
    )
  })
})
