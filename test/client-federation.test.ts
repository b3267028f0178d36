/**
 * Federation: a listener on three relays, one down at the start and another
 * killed during the test. Connectors get through the relays that are up;
 * each relay's listen channel reconnects on its own schedule, within the
 * backoff bound once its relay is back.
 */
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import { afterEach, describe, expect, it } from "vitest"
import { connectToPeer } from "../src/adapters/client/connector.ts"
import { connect, ConnectError } from "../src/adapters/client/index.ts"
import { type Listener, makeListener } from "../src/adapters/client/listener.ts"
import { formatRelayAddress } from "../src/core/relay-address.ts"
import { newIdentity, startRelay, TICK_MS } from "./support/client-harness.ts"
import { echo, exchange, makeSimWorld, type SimRelay } from "./sim/world.ts"

const cleanups: Array<() => Promise<void>> = []
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup()
})

const backoff = { initialMs: 50, maxMs: 400, multiplier: 2, jitter: 0.5, resetAfterMs: 5000 }

describe("federation", () => {
  // On the in-memory network and virtual time (test/sim/world.ts): relays
  // are killed and restarted, and every wait is a jump to the next event.
  it("stays reachable through the relays that are up and comes back on a relay that returns", () => {
    const world = makeSimWorld(11)
    const [a, b, c] = [world.relay("relay-a"), world.relay("relay-b"), world.relay("relay-c")]
    c.stop() // down before the listener starts
    const server = world.identity()
    const client = world.identity()
    const log: Array<string> = []
    const name = (relay: string) => (relay === formatRelayAddress(a.address) ? "A" : relay === formatRelayAddress(b.address) ? "B" : "C")
    let listener: Listener | undefined
    world.spawn(
      Effect.gen(function*() {
        listener = yield* makeListener(world.settings("listener", server), {
          relays: [a.address, b.address, c.address],
          allow: [client.publicKey],
          backoff,
          onEvent: (event) => {
            if (event._tag !== "StatusChanged") return
            const s = event.status
            log.push(
              `${String(world.rt.now).padStart(6)} ms relay ${name(s.relay)} ${s.state}` +
                (s.state === "backing-off" ? ` (retry in ${s.retryInMs} ms, failures ${s.failures}): ${s.lastError}` : "")
            )
          }
        })
        while (true) {
          const stream = yield* listener.accept
          yield* Effect.forkScoped(Effect.ignore(echo(stream)))
        }
      })
    )
    const stateOf = (relay: SimRelay) => listener?.status().find((s) => s.relay === formatRelayAddress(relay.address))
    const roundTrip = (through: ReadonlyArray<SimRelay>) => {
      const data = world.crypto.randomBytes(100_000)
      const exit = world.await(
        Effect.gen(function*() {
          const stream = yield* connectToPeer(world.settings("client", client), server.publicKey, through.map((r) => r.address))
          const echoed = yield* exchange(stream, data)
          return { echoed, relay: stream.relay }
        }),
        30_000
      )
      if (!Exit.isSuccess(exit)) throw new Error(`connect failed: ${String(exit.cause)}`)
      expect(exit.value.echoed).toEqual(data)
      return exit.value.relay
    }

    world.runUntil(() => stateOf(a)?.state === "listening" && stateOf(b)?.state === "listening", 5000, "A and B listening")
    world.runUntil(() => stateOf(c)?.state === "backing-off", 5000, "C backing off")
    expect(stateOf(c)?.lastError).toContain("connection refused")

    // The dead relay first in the list costs the connector nothing but a refused connect.
    expect(roundTrip([c, a, b])).toBe(formatRelayAddress(a.address))

    // A dies during the test: its listen channel backs off, B keeps serving.
    a.stop()
    world.runUntil(() => stateOf(a)?.state === "backing-off", 5000, "A backing off")
    expect(log.find((line) => line.includes("relay A backing-off"))).toContain("connection reset")
    expect(stateOf(b)?.state).toBe("listening")
    expect(roundTrip([a, b])).toBe(formatRelayAddress(b.address))

    // C comes back: the listener is listening there within its backoff bound (plus the handshake).
    c.restart()
    const back = world.rt.now
    world.runUntil(() => stateOf(c)?.state === "listening", backoff.maxMs + 1500, "C listening again")
    expect(world.rt.now - back).toBeLessThanOrEqual(backoff.maxMs + 100)
    expect(roundTrip([c])).toBe(formatRelayAddress(c.address))

    // A is still down and still bounded: every wait it reports is within maxMs.
    world.rt.runFor(1500)
    const waits = log.filter((line) => line.includes("relay A backing-off")).map((line) => Number(/retry in (\d+)/.exec(line)![1]))
    expect(waits.length).toBeGreaterThanOrEqual(3)
    for (const wait of waits) expect(wait).toBeLessThanOrEqual(backoff.maxMs)
    a.restart()
    world.runUntil(() => stateOf(a)?.state === "listening", backoff.maxMs + 1500, "A listening again")
  })

  it("fails with every relay named when none can reach the peer", async () => {
    const up = await startRelay()
    cleanups.push(up.stop)
    const down = await startRelay()
    await down.stop()
    const client = newIdentity()
    const nobody = newIdentity()
    const error = await connect({
      identity: client,
      relays: [down.address, up.address],
      to: nobody.publicKey,
      tickMs: TICK_MS
    }).then(() => undefined, (e: unknown) => e)
    expect(error).toBeInstanceOf(ConnectError)
    const failure = error as ConnectError
    expect(failure.reason).toBe("Rejected")
    expect(failure.attempts.map((x) => [x.relay, x.outcome._tag])).toEqual([
      [down.address, "Unreachable"],
      [up.address, "Rejected"]
    ])
    expect(failure.message).toContain(down.address)
    expect(failure.message).toContain(up.address)
  })
})
