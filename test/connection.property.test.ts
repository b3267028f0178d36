/**
 * Property: over a link that loses and reorders nothing, whatever one side
 * sends the other receives exactly, in order, for any interleaving of sends,
 * ticks (hence rekeys at random points, including crossing ones), partial
 * deliveries and the handshake itself. The model is two queues of messages.
 * A failure prints fast-check's seed and path to replay it.
 */
import fc from "fast-check"
import { describe, expect, it } from "vitest"
import { nobleCrypto } from "../src/adapters/crypto-noble.ts"
// auto: node:crypto on Node (as before), noble where node:crypto lacks a primitive (Bun), so test:runtimes can run this file.
import { autoCryptoService } from "../src/adapters/crypto.ts"
const nodeCrypto = autoCryptoService()
import { Connection, type ConnectionError } from "../src/core/connection.ts"
import type { CryptoPrimitives } from "../src/core/crypto.ts"
import { makeDeterministicRandom } from "../src/core/random.ts"
import { makeIdentity, makeLink, type Side } from "./support/sim-link.ts"

type Action =
  | { readonly kind: "send"; readonly side: "a" | "b"; readonly data: Uint8Array }
  | { readonly kind: "tick"; readonly side: "a" | "b" }
  | { readonly kind: "deliver"; readonly side: "a" | "b"; readonly count: number }

const sideArb = fc.constantFrom("a" as const, "b" as const)
const actionArb: fc.Arbitrary<Action> = fc.oneof(
  { weight: 3, arbitrary: fc.record({ kind: fc.constant("send" as const), side: sideArb, data: fc.uint8Array({ maxLength: 48 }) }) },
  { weight: 3, arbitrary: fc.record({ kind: fc.constant("tick" as const), side: sideArb }) },
  { weight: 3, arbitrary: fc.record({ kind: fc.constant("deliver" as const), side: sideArb, count: fc.integer({ min: 1, max: 4 }) }) }
)

const scenarioArb = fc.record({
  actions: fc.array(actionArb, { maxLength: 150, size: "max" }),
  rekeyA: fc.integer({ min: 1, max: 6 }),
  rekeyB: fc.integer({ min: 1, max: 6 }),
  paddingA: fc.integer({ min: 0, max: 255 }),
  paddingB: fc.integer({ min: 0, max: 40 }),
  seed: fc.integer()
})

type Scenario = typeof scenarioArb extends fc.Arbitrary<infer T> ? T : never

/** Runs one scenario; returns how many distinct keys A sent under (1 + the rekeys it saw). */
const runScenario = (cryptoA: CryptoPrimitives, cryptoB: CryptoPrimitives, scenario: Scenario): number => {
  const idA = makeIdentity(cryptoA, 1)
  const idB = makeIdentity(cryptoB, 2)
  // Keepalive and handshake limits above the longest scenario: this property
  // is about ordering, not timeouts (keepalive.test.ts covers those).
  const limits = { keepaliveTicks: 1000, handshakeTimeoutTicks: 1000 }
  const link = makeLink<Connection, ConnectionError>(
    new Connection({
      crypto: cryptoA,
      identity: idA,
      expectedRemotePublicKey: idB.publicKey,
      random: makeDeterministicRandom(scenario.seed),
      rekeyIntervalTicks: scenario.rekeyA,
      maxPaddingBytes: scenario.paddingA,
      ...limits
    }),
    new Connection({
      crypto: cryptoB,
      identity: idB,
      random: makeDeterministicRandom(scenario.seed ^ 0x5555),
      rekeyIntervalTicks: scenario.rekeyB,
      maxPaddingBytes: scenario.paddingB,
      ...limits
    })
  )
  // What the application asked to send, and what the adapter has handed to
  // the machine so far (it queues sends until Authenticated, as an adapter must).
  const intended = { a: [] as Array<Uint8Array>, b: [] as Array<Uint8Array> }
  const handedOver = { a: 0, b: 0 }
  const sides: Record<"a" | "b", Side<Connection, ConnectionError>> = { a: link.a, b: link.b }
  const pump = (name: "a" | "b"): void => {
    const side = sides[name]
    if (!side.machine.isAuthenticated) return
    while (handedOver[name] < intended[name].length) side.send(intended[name][handedOver[name]++]!)
  }
  const keysOfA = new Set<string>()
  link.a.start()
  link.b.start()
  for (const action of scenario.actions) {
    const side = sides[action.side]
    switch (action.kind) {
      case "send":
        intended[action.side].push(action.data)
        break
      case "tick":
        side.tick()
        break
      case "deliver":
        for (let i = 0; i < action.count; i++) side.receiveOne()
        break
    }
    pump("a")
    pump("b")
    const phase = link.a.machine.channel.phase
    if (phase._tag === "Established") keysOfA.add(Buffer.from(phase.send.key).toString("hex"))
    // At every point, what arrived is a prefix of what was sent.
    expect(link.b.delivered).toEqual(intended.a.slice(0, link.b.delivered.length))
    expect(link.a.delivered).toEqual(intended.b.slice(0, link.a.delivered.length))
  }
  link.flush()
  pump("a")
  pump("b")
  link.flush()
  expect(link.a.closed).toBeUndefined()
  expect(link.b.closed).toBeUndefined()
  expect(link.b.delivered).toEqual(intended.a)
  expect(link.a.delivered).toEqual(intended.b)
  return keysOfA.size
}

describe("connection: what one side sends the other receives", () => {
  it("node ↔ node", () => {
    let keys = 0
    const numRuns = 500
    fc.assert(
      fc.property(scenarioArb, (scenario) => {
        keys += runScenario(nodeCrypto, nodeCrypto, scenario)
      }),
      { numRuns }
    )
    // The runs did rekey, many times (about two rekeys per run on average,
    // whatever fast-check's seed): the property covered rekey points.
    expect(keys).toBeGreaterThan(2 * numRuns)
  })

  it("node ↔ noble, across layers", () => {
    fc.assert(
      fc.property(scenarioArb, fc.boolean(), (scenario, nobleFirst) => {
        if (nobleFirst) runScenario(nobleCrypto, nodeCrypto, scenario)
        else runScenario(nodeCrypto, nobleCrypto, scenario)
      }),
      { numRuns: 100 }
    )
  })
})
