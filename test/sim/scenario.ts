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

export const defaultBounds: ScenarioBounds = { maxRelays: 3, maxListeners: 2, maxStreams: 4, maxFaults: 3, windowMs: 20_000 }

const sizes = fc.array(fc.oneof(fc.integer({ min: 1, max: 2_000 }), fc.integer({ min: 2_000, max: 100_000 })), {
  minLength: 0,
  maxLength: 3
})

/**
 * Draws a scenario within `bounds`. Indices are drawn within the bounds and
 * folded into what the scenario has (`normalize`) rather than drawn from
 * earlier draws (`chain`), so fast-check shrinks every part independently:
 * fewer relays, streams and faults, smaller payloads, earlier times.
 */
export const scenarioArbitrary = (bounds: ScenarioBounds = defaultBounds): fc.Arbitrary<Scenario> => {
  const relay = fc.integer({ min: 0, max: bounds.maxRelays - 1 })
  const at = fc.integer({ min: 0, max: bounds.windowMs })
  const peer: fc.Arbitrary<PeerRef> = fc.oneof(
    fc.record({ _tag: fc.constant("Listener" as const), index: fc.integer({ min: 0, max: bounds.maxListeners - 1 }) }),
    fc.record({ _tag: fc.constant("Connector" as const), index: fc.integer({ min: 0, max: bounds.maxStreams - 1 }) })
  )
  const fault: fc.Arbitrary<Fault> = fc.oneof(
    fc.record({ _tag: fc.constant("KillRelay" as const), atMs: at, relay, downMs: fc.integer({ min: 0, max: 10_000 }) }),
    fc.record({ _tag: fc.constant("Partition" as const), atMs: at, peer, relay, forMs: fc.integer({ min: 100, max: 60_000 }) }),
    fc.record({ _tag: fc.constant("Reset" as const), atMs: at, peer, relay }),
    fc.record({ _tag: fc.constant("RefuseDials" as const), atMs: at, relay, count: fc.integer({ min: 1, max: 5 }) }),
    fc.record({
      _tag: fc.constant("SlowLink" as const),
      atMs: at,
      peer,
      relay,
      bytesPerMs: fc.integer({ min: 1, max: 200 }),
      latencyMs: fc.integer({ min: 0, max: 500 }),
      forMs: fc.integer({ min: 100, max: 30_000 })
    })
  )
  const stream: fc.Arbitrary<StreamPlan> = fc.record({
    listener: fc.integer({ min: 0, max: bounds.maxListeners - 1 }),
    startMs: at,
    request: sizes,
    reply: sizes,
    thinkMs: fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 10_000 }), fc.integer({ min: 0, max: 150_000 })),
    relayRotation: fc.integer({ min: 0, max: bounds.maxRelays - 1 })
  })
  return fc.record({
    relays: fc.integer({ min: 1, max: bounds.maxRelays }),
    listeners: fc.array(fc.array(relay, { minLength: 1, maxLength: bounds.maxRelays }), {
      minLength: 1,
      maxLength: bounds.maxListeners
    }),
    streams: fc.array(stream, { minLength: 1, maxLength: bounds.maxStreams }),
    faults: fc.array(fault, { maxLength: bounds.maxFaults }),
    latencyMs: fc.integer({ min: 0, max: 50 })
  }).map(normalize)
}

/** Folds every index into range: relays modulo the relay count, listeners and streams likewise; no repeated relay per listener. */
export const normalize = (raw: Scenario): Scenario => {
  const relays = raw.relays
  const listeners = raw.listeners.map((list) => [...new Set(list.map((r) => r % relays))])
  const streams = raw.streams.map((s) => ({ ...s, listener: s.listener % listeners.length }))
  const peer = (p: PeerRef): PeerRef =>
    p._tag === "Listener" ? { ...p, index: p.index % listeners.length } : { ...p, index: p.index % streams.length }
  const faults = raw.faults.map((f): Fault => {
    switch (f._tag) {
      case "KillRelay":
      case "RefuseDials":
        return { ...f, relay: f.relay % relays }
      case "Partition":
      case "Reset":
      case "SlowLink":
        return { ...f, relay: f.relay % relays, peer: peer(f.peer) }
    }
  })
  return { relays, listeners, streams, faults, latencyMs: raw.latencyMs }
}

const peerName = (peer: PeerRef) => (peer._tag === "Listener" ? `listener-${peer.index}` : `connector-${peer.index}`)

const describeSizes = (sizes: ReadonlyArray<number>) =>
  sizes.length === 0 ? "nothing" : `${sizes.reduce((a, b) => a + b, 0)} bytes in ${sizes.length} writes (${sizes.join(", ")})`

/** The scenario for a person: one line per relay, listener, stream and fault. */
export const describeScenario = (scenario: Scenario): string => {
  const lines = [`${scenario.relays} relays, ${scenario.latencyMs} ms one way between every peer and relay`]
  scenario.listeners.forEach((relays, i) => lines.push(`listener-${i} listens on relays ${relays.join(", ")}`))
  scenario.streams.forEach((s, i) =>
    lines.push(
      `at 1000 + ${s.startMs} ms connector-${i} connects to listener-${s.listener} (relay rotation ${s.relayRotation}), sends ${describeSizes(s.request)} then ends; the listener thinks ${s.thinkMs} ms, answers ${describeSizes(s.reply)} then ends`
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
      case "SlowLink":
        lines.push(`at ${fault.atMs} ms the link between ${peerName(fault.peer)} and relay-${fault.relay} slows to ${fault.bytesPerMs} bytes/ms and ${fault.latencyMs} ms for ${fault.forMs} ms`)
        break
      case "RefuseDials":
        lines.push(`at ${fault.atMs} ms relay-${fault.relay} refuses the next ${fault.count} dials`)
        break
    }
  }
  return lines.map((line) => `  ${line}`).join("\n")
}
