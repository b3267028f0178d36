/**
 * The connect gate's rules (src/core/connect-gate.ts), one case per line of
 * its header, driven by events only; then a model-based run against a naive
 * model (a list of who asked, per key, in order), checking that at most one
 * ticket per key holds a turn, turns go in arrival order, and the gate ends
 * empty.
 */
import fc from "fast-check"
import { describe, expect, it } from "vitest"
import { ConnectGate, type ConnectGateCommand, type ConnectGateEvent, GateTicket } from "../src/core/connect-gate.ts"
import { handleAll } from "./support/handle-all.ts"

const step = (gate: ConnectGate, event: ConnectGateEvent): Array<ConnectGateCommand> => handleAll(gate, event)
const request = (gate: ConnectGate, ticket: number, key: string) =>
  step(gate, { _tag: "Requested", ticket: GateTicket(ticket), key })
const leave = (gate: ConnectGate, ticket: number) => step(gate, { _tag: "Left", ticket: GateTicket(ticket) })
const grant = (ticket: number): ConnectGateCommand => ({ _tag: "Grant", ticket: GateTicket(ticket) })

describe("connect gate", () => {
  it("a request on a key nobody holds is granted at once", () => {
    const gate = new ConnectGate()
    expect(request(gate, 1, "a")).toEqual([grant(1)])
    expect(request(gate, 2, "b")).toEqual([grant(2)])
  })

  it("a request on a held key waits, behind earlier waiters", () => {
    const gate = new ConnectGate()
    request(gate, 1, "a")
    expect(request(gate, 2, "a")).toEqual([])
    expect(request(gate, 3, "a")).toEqual([])
    expect(leave(gate, 1)).toEqual([grant(2)])
    expect(leave(gate, 2)).toEqual([grant(3)])
  })

  it("the holder leaving grants the first waiter on its key only", () => {
    const gate = new ConnectGate()
    request(gate, 1, "a")
    request(gate, 2, "b")
    request(gate, 3, "b")
    request(gate, 4, "a")
    expect(leave(gate, 1)).toEqual([grant(4)])
  })

  it("a waiter leaving drops out of the line and grants nothing", () => {
    const gate = new ConnectGate()
    request(gate, 1, "a")
    request(gate, 2, "a")
    request(gate, 3, "a")
    expect(leave(gate, 2)).toEqual([])
    expect(leave(gate, 1)).toEqual([grant(3)])
  })

  it("a key nobody holds or waits for is forgotten", () => {
    const gate = new ConnectGate()
    request(gate, 1, "a")
    request(gate, 2, "a")
    leave(gate, 2)
    leave(gate, 1)
    expect(gate.keysHeld).toBe(0)
    expect(gate.ticketsInUse).toBe(0)
    expect(request(gate, 3, "a")).toEqual([grant(3)])
  })

  it("a ticket already in use requesting again, or an unknown one leaving, is ignored", () => {
    const gate = new ConnectGate()
    request(gate, 1, "a")
    expect(request(gate, 1, "a")).toEqual([])
    expect(request(gate, 1, "b")).toEqual([])
    expect(leave(gate, 9)).toEqual([])
    expect(leave(gate, 1)).toEqual([])
    expect(leave(gate, 1)).toEqual([])
    expect(gate.ticketsInUse).toBe(0)
  })
})

// ---------------------------------------------------------------- the model

const KEYS = ["a", "b"]

interface Model {
  /** Per key: tickets that asked and have not left, in order; the first holds the turn. */
  readonly lines: Map<string, Array<number>>
  tickets: number
}

interface Real {
  readonly gate: ConnectGate
  /** Tickets granted and not yet left. */
  readonly holding: Set<number>
}

const check = (model: Model, real: Real, out: ReadonlyArray<ConnectGateCommand>, expected: Array<number>) => {
  expect(out).toEqual(expected.map(grant))
  for (const command of out) real.holding.add(command.ticket)
  // Exactly the head of every line holds a turn.
  const heads = [...model.lines.values()].map((line) => line[0]!).sort()
  expect([...real.holding].sort()).toEqual(heads)
  expect(real.gate.keysHeld).toBe(model.lines.size)
  expect(real.gate.ticketsInUse).toBe([...model.lines.values()].reduce((n, line) => n + line.length, 0))
}

class Request implements fc.Command<Model, Real> {
  readonly key: string
  constructor(key: string) {
    this.key = key
  }
  check = (): boolean => true
  run(model: Model, real: Real): void {
    const ticket = model.tickets++
    const out = request(real.gate, ticket, this.key)
    const line = model.lines.get(this.key) ?? []
    line.push(ticket)
    model.lines.set(this.key, line)
    check(model, real, out, line.length === 1 ? [ticket] : [])
  }
  toString = (): string => `Request(${this.key})`
}

class Leave implements fc.Command<Model, Real> {
  readonly ticket: number
  constructor(ticket: number) {
    this.ticket = ticket
  }
  check = (): boolean => true
  run(model: Model, real: Real): void {
    const out = leave(real.gate, this.ticket)
    real.holding.delete(this.ticket)
    const expected: Array<number> = []
    for (const [key, line] of model.lines) {
      const at = line.indexOf(this.ticket)
      if (at < 0) continue
      line.splice(at, 1)
      if (line.length === 0) model.lines.delete(key)
      else if (at === 0) expected.push(line[0]!)
    }
    check(model, real, out, expected)
  }
  toString = (): string => `Leave(#${this.ticket})`
}

describe("connect gate against its reference model", () => {
  it("one turn per key, in arrival order, and nothing left at the end", () => {
    fc.assert(
      fc.property(
        fc.commands([
          fc.constantFrom(...KEYS).map((key) => new Request(key)),
          fc.integer({ min: 0, max: 15 }).map((ticket) => new Leave(ticket))
        ], { maxCommands: 60 }),
        (commands) => {
          const model: Model = { lines: new Map(), tickets: 0 }
          const real: Real = { gate: new ConnectGate(), holding: new Set() }
          fc.modelRun(() => ({ model, real }), commands)
          for (let ticket = 0; ticket < model.tickets; ticket++) new Leave(ticket).run(model, real)
          expect(real.gate.keysHeld).toBe(0)
          expect(real.gate.ticketsInUse).toBe(0)
        }
      ),
      { numRuns: 300 }
    )
  })
})
