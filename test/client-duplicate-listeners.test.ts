/**
 * Two listeners with one identity on one relay (two copies of a service
 * started by mistake). The relay keeps the newest listen channel and closes
 * the older one; without care the two take it from each other forever.
 * Here they settle: one stable owner, the other says why it stands back and
 * keeps trying slowly, and it takes over once the owner goes away.
 * On the in-memory network and virtual time, timings scaled down
 * (src/core/backoff.ts).
 */
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import { describe, expect, it } from "vitest"
import { connectToPeer } from "../src/adapters/client/connector.ts"
import { type Listener, makeListener, type RelayStatus } from "../src/adapters/client/listener.ts"
import { TICK_MS } from "./support/client-harness.ts"
import { exchange, makeSimWorld } from "./sim/world.ts"

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
  // On the in-memory network and virtual time (test/sim/world.ts): the
  // seconds of watching cost nothing, and no wait depends on the machine.
  it("settle with one stable owner; the other backs off, says why, and takes over when the owner leaves", () => {
    const world = makeSimWorld(23)
    const relay = world.relay("relay")
    const server = world.identity()
    const client = world.identity()
    const log: Array<string> = []
    const start = (name: string) => {
      const statuses: Array<RelayStatus> = []
      const changes: Array<{ readonly at: number; readonly listening: boolean }> = []
      let listener: Listener | undefined
      const fiber = world.spawn(
        Effect.gen(function*() {
          listener = yield* makeListener(world.settings(`listener-${name}`, server, TICK_MS), {
            relays: [relay.address],
            allow: [client.publicKey],
            backoff,
            onEvent: (event) => {
              if (event._tag !== "StatusChanged") return
              const s = event.status
              statuses.push(s)
              changes.push({ at: world.rt.now, listening: s.state === "listening" })
              log.push(`${world.rt.now} ms ${name} ${s.state}${s.displaced === true ? " (displaced)" : ""} ${s.lastError ?? ""}`)
            }
          })
          // Each stream is answered with the listener's name, then ended.
          while (true) {
            const stream = yield* listener.accept
            yield* Effect.forkScoped(Effect.ignore(exchange(stream, new TextEncoder().encode(name))))
          }
        })
      )
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
      return {
        status: () => listener?.status()[0],
        close: () => {
          world.rt.fork(Fiber.interrupt(fiber))
          world.rt.runFor(0)
        },
        statuses,
        listeningMs,
        listenings: () => statuses.filter((s) => s.state === "listening").length
      }
    }
    const a = start("A")
    world.runUntil(() => a.status()?.state === "listening", 5000, "A to listen")
    // A has been up a while when the second copy starts, as a running service would be.
    world.rt.runFor(backoff.displacedWithinMs + 300)
    const b = start("B")

    // Six seconds: without settling the two would swap every 50-400 ms (dozens of times).
    const bStarted = world.rt.now
    world.rt.runFor(6000)
    const context = log.join("\n")
    // Settled: A's first listen, two quick swaps before B counts itself
    // displaced, then one swap per displaced try of B (jittered 0.75-3 s).
    expect(a.listenings() + b.listenings(), context).toBeLessThanOrEqual(14)
    // A, the owner, holds the channel but for B's short tries; B stands back and says why.
    const settled = bStarted + 2000
    expect(a.listeningMs(settled, world.rt.now), context).toBeGreaterThan(0.8 * (world.rt.now - settled))
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
    world.runUntil(() => a.listenings() > aBack, 5000, "A to take the channel back after a try of B")
    const reached = () => {
      const exit = world.await(
        Effect.gen(function*() {
          const stream = yield* connectToPeer(world.settings("client", client, TICK_MS), server.publicKey, [relay.address])
          return new TextDecoder().decode(yield* exchange(stream, new Uint8Array(0)))
        }),
        10_000
      )
      if (!Exit.isSuccess(exit)) throw new Error(`connect failed: ${String(exit.cause)}`)
      return exit.value
    }
    expect(reached()).toBe("A")

    // The owner goes away: B takes over within its slow schedule's bound, and stays.
    a.close()
    world.runUntil(() => b.status()?.state === "listening", 5000, "B to take over")
    world.rt.runFor(backoff.displacedWithinMs + 200)
    expect(b.status()?.state, log.join("\n")).toBe("listening")
    expect(reached()).toBe("B")
  })
})
