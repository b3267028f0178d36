/**
 * Two listeners with one identity on one relay (two copies of a service
 * started by mistake). The relay keeps the newest listen channel and closes
 * the older one; without care the two take it from each other forever.
 * Here they settle: one stable owner, the other says why it stands back and
 * keeps trying slowly, and it takes over once the owner goes away.
 * Real sockets on 127.0.0.1, timings scaled down (src/core/backoff.ts).
 */
import { afterEach, describe, expect, it } from "vitest"
import { connect, listen, type PeerDuplex, type RelayStatus } from "../src/adapters/client/index.ts"
import { newIdentity, readAll, startRelay, TICK_MS, waitFor } from "./support/client-harness.ts"

const cleanups: Array<() => Promise<void>> = []
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup()
})

// The defaults divided by 10: displaced within 0.5 s, then 1.5 s, 3 s, 3 s...
const backoff = {
  initialMs: 50,
  maxMs: 3000,
  multiplier: 2,
  jitter: 0.5,
  resetAfterMs: 3000,
  displacedWithinMs: 500,
  displacedInitialMs: 1500,
  displacedMaxMs: 3000
}

describe("two listeners with the same identity", () => {
  it("settle with one stable owner; the other backs off, says why, and takes over when the owner leaves", async () => {
    const relay = await startRelay()
    cleanups.push(relay.stop)
    const server = newIdentity()
    const client = newIdentity()
    const started = Date.now()
    const log: Array<string> = []
    const start = (name: string) => {
      const listener = listen({ identity: server, relays: [relay.address], allow: [client.publicKey], tickMs: TICK_MS, backoff })
      const statuses: Array<RelayStatus> = []
      const changes: Array<{ readonly at: number; readonly listening: boolean }> = []
      listener.on("status", (s: RelayStatus) => {
        statuses.push(s)
        changes.push({ at: Date.now(), listening: s.state === "listening" })
        log.push(`+${Date.now() - started} ms ${name} ${s.state}${s.displaced === true ? " (displaced)" : ""} ${s.lastError ?? ""}`)
      })
      listener.on("connection", (socket: PeerDuplex) => {
        // Closing the listener ends its tunnels: not this test's subject.
        socket.on("error", () => {})
        socket.end(name)
      })
      // Milliseconds spent listening between `from` and `to`.
      const listeningMs = (from: number, to: number) => {
        let total = 0
        changes.forEach((change, i) => {
          if (!change.listening) return
          const end = Math.min(to, changes[i + 1]?.at ?? to)
          total += Math.max(0, end - Math.max(from, change.at))
        })
        return total
      }
      return { listener, statuses, listeningMs, listenings: () => statuses.filter((s) => s.state === "listening").length }
    }
    const a = start("A")
    cleanups.push(() => a.listener.close())
    await waitFor(() => a.listener.status()[0]?.state === "listening", 5000, "A to listen")
    // A has been up a while when the second copy starts, as a running service would be.
    await new Promise((resolve) => setTimeout(resolve, backoff.displacedWithinMs + 300))
    const b = start("B")
    cleanups.push(() => b.listener.close())

    // Six seconds: without settling the two would swap every 50-400 ms (dozens of times).
    const bStarted = Date.now()
    await new Promise((resolve) => setTimeout(resolve, 6000))
    const context = log.join("\n")
    // Settled: A's first listen, two quick swaps before B counts itself
    // displaced, then one swap per displaced try of B (jittered 0.75-3 s).
    expect(a.listenings() + b.listenings(), context).toBeLessThanOrEqual(14)
    // A, the owner, holds the channel but for B's short tries; B stands back and says why.
    const settled = bStarted + 2000
    expect(a.listeningMs(settled, Date.now()), context).toBeGreaterThan(0.8 * (Date.now() - settled))
    expect(b.statuses.some((s) => s.displaced === true), context).toBe(true)
    const said = b.statuses.find((s) => s.displaced === true)!.lastError!
    expect(said).toContain("another process is probably listening with the same identity on this relay")
    // The owner, whose channel B takes now and then, hears of it too.
    expect(a.statuses.find((s) => s.state === "backing-off")?.lastError).toContain(
      "another process with our identity took our place there"
    )
    // A connect lands on the owner (B holds the channel only for a blip now and then:
    // right after A took it back, B's next try is at least 0.75 s away).
    const aBack = a.listenings()
    await waitFor(() => a.listenings() > aBack, 5000, "A to take the channel back after a try of B")
    const reached = async () => {
      const socket = await connect({ identity: client, relays: [relay.address], to: server.publicKey, tickMs: TICK_MS })
      socket.end()
      return (await readAll(socket)).toString()
    }
    expect(await reached()).toBe("A")

    // The owner goes away: B takes over within its slow schedule's bound, and stays.
    await a.listener.close()
    await waitFor(() => b.listener.status()[0]?.state === "listening", 5000, "B to take over")
    await new Promise((resolve) => setTimeout(resolve, backoff.displacedWithinMs + 200))
    expect(b.listener.status()[0]?.state, log.join("\n")).toBe("listening")
    expect(await reached()).toBe("B")
  })
})
