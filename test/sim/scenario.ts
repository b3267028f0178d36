/**
 * Scenarios drawn by fast-check (how many relays and peers, who listens
 * where, who connects to whom, what data, which faults when), printed for a
 * person, and the one command that replays a failure.
 */
import * as fc from "fast-check"
import type { Fault, PeerRef, Scenario, StreamPlan } from "./system.ts"

/** Bounds of drawn scenarios. */
export interface ScenarioBounds {
  readonly maxRelays: number
  readonly maxListeners: number
  readonly maxStreams: number
  readonly maxFaults: number
  /** Streams start and faults strike within this window. */
  readonly windowMs: number
}

export const defaultBounds: ScenarioBounds = { maxRelays: 3, maxListeners: 2, maxStreams: 4, maxFaults: 3, windowMs: 30_000 }

const sizes = fc.array(fc.oneof(fc.integer({ min: 1, max: 2_000 }), fc.integer({ min: 2_000, max: 100_000 })), {
  minLength: 0,
  maxLength: 3
})

/** Draws a scenario within `bounds`. */
export const scenarioArbitrary = (bounds: ScenarioBounds = defaultBounds): fc.Arbitrary<Scenario> =>
  fc.integer({ min: 1, max: bounds.maxRelays }).chain((relays) =>
    fc.array(fc.uniqueArray(fc.integer({ min: 0, max: relays - 1 }), { minLength: 1, maxLength: relays }), {
      minLength: 1,
      maxLength: bounds.maxListeners
    }).chain((listeners) => {
      const stream: fc.Arbitrary<StreamPlan> = fc.record({
        listener: fc.integer({ min: 0, max: listeners.length - 1 }),
        startMs: fc.integer({ min: 0, max: bounds.windowMs }),
        request: sizes,
        reply: sizes,
        relayRotation: fc.integer({ min: 0, max: 2 })
      })
      return fc.array(stream, { minLength: 1, maxLength: bounds.maxStreams }).chain((streams) => {
        const relay = fc.integer({ min: 0, max: relays - 1 })
        const at = fc.integer({ min: 0, max: bounds.windowMs })
        const peer: fc.Arbitrary<PeerRef> = fc.oneof(
          fc.record({ _tag: fc.constant("Listener" as const), index: fc.integer({ min: 0, max: listeners.length - 1 }) }),
          fc.record({ _tag: fc.constant("Connector" as const), index: fc.integer({ min: 0, max: streams.length - 1 }) })
        )
        const fault: fc.Arbitrary<Fault> = fc.oneof(
          fc.record({ _tag: fc.constant("KillRelay" as const), atMs: at, relay, downMs: fc.integer({ min: 0, max: 10_000 }) }),
          fc.record({ _tag: fc.constant("Partition" as const), atMs: at, peer, relay, forMs: fc.integer({ min: 100, max: 60_000 }) }),
          fc.record({ _tag: fc.constant("Reset" as const), atMs: at, peer, relay }),
          fc.record({ _tag: fc.constant("RefuseDials" as const), atMs: at, relay, count: fc.integer({ min: 1, max: 5 }) })
        )
        return fc.record({
          relays: fc.constant(relays),
          listeners: fc.constant(listeners),
          streams: fc.constant(streams),
          faults: fc.array(fault, { maxLength: bounds.maxFaults }),
          latencyMs: fc.integer({ min: 0, max: 50 })
        })
      })
    })
  )

const peerName = (peer: PeerRef) => (peer._tag === "Listener" ? `listener-${peer.index}` : `connector-${peer.index}`)

const describeSizes = (sizes: ReadonlyArray<number>) =>
  sizes.length === 0 ? "nothing" : `${sizes.reduce((a, b) => a + b, 0)} bytes in ${sizes.length} writes (${sizes.join(", ")})`

/** The scenario for a person: one line per relay, listener, stream and fault. */
export const describeScenario = (scenario: Scenario): string => {
  const lines = [`${scenario.relays} relays, ${scenario.latencyMs} ms one way between every peer and relay`]
  scenario.listeners.forEach((relays, i) => lines.push(`listener-${i} listens on relays ${relays.join(", ")}`))
  scenario.streams.forEach((s, i) =>
    lines.push(
      `at ${s.startMs} ms connector-${i} connects to listener-${s.listener} (relay rotation ${s.relayRotation}), sends ${describeSizes(s.request)} then ends; the listener answers ${describeSizes(s.reply)} then ends`
    )
  )
  for (const fault of scenario.faults) {
    switch (fault._tag) {
      case "KillRelay":
        lines.push(`at ${fault.atMs} ms relay-${fault.relay} is killed, restarted ${fault.downMs} ms later`)
        break
      case "Partition":
        lines.push(`at ${fault.atMs} ms ${peerName(fault.peer)} is cut off from relay-${fault.relay} for ${fault.forMs} ms`)
        break
      case "Reset":
        lines.push(`at ${fault.atMs} ms every connection between ${peerName(fault.peer)} and relay-${fault.relay} is reset`)
        break
      case "RefuseDials":
        lines.push(`at ${fault.atMs} ms relay-${fault.relay} refuses the next ${fault.count} dials`)
        break
    }
  }
  return lines.map((line) => `  ${line}`).join("\n")
}
