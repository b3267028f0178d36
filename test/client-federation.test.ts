/**
 * Federation: a listener on three relays, one down at the start and another
 * killed during the test. Connectors get through the relays that are up;
 * each relay's listen channel reconnects on its own schedule, within the
 * backoff bound once its relay is back.
 */
import { afterEach, describe, expect, it } from "vitest"
import { connect, ConnectError, listen, type PeerDuplex, type RelayStatus } from "../src/adapters/client/index.ts"
import {
  newIdentity,
  randomData,
  readAll,
  sha256,
  startRelay,
  TICK_MS,
  waitFor,
  writeAllAndEnd
} from "./support/client-harness.ts"

const cleanups: Array<() => Promise<void>> = []
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup()
})

const backoff = { initialMs: 50, maxMs: 400, multiplier: 2, jitter: 0.5, resetAfterMs: 5000 }

describe("federation", () => {
  it("stays reachable through the relays that are up and comes back on a relay that returns", async () => {
    const relays = [await startRelay(), await startRelay(), await startRelay()]
    for (const relay of relays) cleanups.push(relay.stop)
    const [a, b, c] = relays as [typeof relays[0], typeof relays[0], typeof relays[0]]
    await c.stop() // down before the listener starts
    const server = newIdentity()
    const client = newIdentity()
    const listener = listen({
      identity: server,
      relays: relays.map((r) => r.address),
      allow: [client.publicKey],
      tickMs: TICK_MS,
      backoff
    })
    cleanups.push(() => listener.close())
    const log: Array<string> = []
    const started = Date.now()
    listener.on("status", (s: RelayStatus) => {
      const which = s.relay === a.address ? "A" : s.relay === b.address ? "B" : "C"
      log.push(
        `+${String(Date.now() - started).padStart(5)} ms relay ${which} ${s.state}` +
          (s.state === "backing-off" ? ` (retry in ${s.retryInMs} ms, failures ${s.failures}): ${s.lastError}` : "")
      )
    })
    listener.on("connection", (socket: PeerDuplex) => socket.pipe(socket))
    const stateOf = (relay: { address: string }) => listener.status().find((s) => s.relay === relay.address)?.state

    const echo = async (through: ReadonlyArray<string>) => {
      const socket = await connect({ identity: client, relays: through, to: server.publicKey, tickMs: TICK_MS })
      const data = randomData(100_000)
      const [, echoed] = await Promise.all([writeAllAndEnd(socket, data), readAll(socket)])
      expect(sha256(echoed)).toBe(sha256(data))
      return socket.relay
    }

    await waitFor(() => stateOf(a) === "listening" && stateOf(b) === "listening", 5000, "A and B listening")
    await waitFor(() => stateOf(c) === "backing-off", 5000, "C backing off")
    expect(listener.status().find((s) => s.relay === c.address)?.lastError).toContain("ECONNREFUSED")

    // The dead relay first in the list costs the connector nothing but a refused TCP connect.
    expect(await echo([c.address, a.address, b.address])).toBe(a.address)

    // A dies during the test: its listen channel backs off, B keeps serving.
    await a.stop()
    await waitFor(() => stateOf(a) === "backing-off", 5000, "A backing off")
    expect(log.find((line) => line.includes("relay A backing-off"))).toContain("the relay closed the listen channel")
    expect(stateOf(b)).toBe("listening")
    expect(await echo([a.address, b.address])).toBe(b.address)

    // C comes back: the listener is listening there within its backoff bound (plus the handshake).
    await c.restart()
    const back = Date.now()
    await waitFor(() => stateOf(c) === "listening", backoff.maxMs + 1500, "C listening again")
    const tookMs = Date.now() - back
    expect(tookMs).toBeLessThanOrEqual(backoff.maxMs + 1500)
    expect(await echo([c.address])).toBe(c.address)

    // A is still down and still bounded: every wait it reports is within maxMs.
    await new Promise((resolve) => setTimeout(resolve, 1500))
    const waits = log.filter((line) => line.includes("relay A backing-off")).map((line) => Number(/retry in (\d+)/.exec(line)![1]))
    expect(waits.length).toBeGreaterThanOrEqual(3)
    for (const wait of waits) expect(wait).toBeLessThanOrEqual(backoff.maxMs)
    await a.restart()
    await waitFor(() => stateOf(a) === "listening", backoff.maxMs + 1500, "A listening again")
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
