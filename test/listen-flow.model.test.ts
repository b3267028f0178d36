/**
 * Model-based test of the listen flow (src/core/listen-flow.ts): fast-check
 * generates random sequences of what a listen channel and its accepts go
 * through (IncomingConnections from a pool of three keys, malformed
 * messages, policy answers, accept tunnels that open or fail, hand-overs,
 * the channel ending) under a random small cap, and after every event
 * compares the flow with a deliberately naive model: a list of every accept
 * ever begun with the step it is at, and whether the channel is up.
 *
 * Checked after every event:
 * - the commands drained equal the model's prediction, in order;
 * - every id the flow names is one its CheckAccess handed out, and a new
 *   CheckAccess never reuses one;
 * - the accepts under way and the channel's state agree with the model.
 * At the end every accept still under way is driven to its end; then each
 * accept ever begun was resolved exactly once (refused, or delivered) and
 * the flow holds nothing.
 *
 * Events for an accept are fed at any step, early, late or repeated (the
 * flow must ignore those), as a buggy or racing adapter could. Accept #n is
 * the n-th one begun (the n-th CheckAccess). A failure shrinks to a short
 * readable list, e.g. `Incoming(K0),Allow(#0),Opened(#0),Incoming(K1)`;
 * replay it with
 *   FLOW_MODEL_SEED=<seed> FLOW_MODEL_PATH=<path> FLOW_MODEL_REPLAY=<replayPath> \
 *     npx vitest run test/listen-flow.model.test.ts
 */
import fc from "fast-check"
import { describe, expect, it } from "vitest"
import {
  type AcceptId,
  ListenFlow,
  type ListenFlowCommand,
  type ListenFlowConfig,
  type ListenFlowEvent,
  type Refusal
} from "../src/core/listen-flow.ts"
import { encodeIncomingConnection } from "../src/core/messages.ts"
import { handleAll } from "./support/handle-all.ts"

const KEYS: ReadonlyArray<Uint8Array> = [0xa0, 0xb0, 0xc0].map((n) => new Uint8Array(32).fill(n))
const keyOf = (k: number): Uint8Array => KEYS[k]! // k is always drawn from 0..KEYS.length-1
// Accepts the commands can name; more than this just add traffic.
const MAX_TARGET = 12

// ---------------------------------------------------------------- the model

type ModelStep = "access" | "tunnel" | "delivery" | "done"

/** The reference model: every accept ever begun, in order, and the channel. */
interface Model {
  readonly cap: number
  readonly accepts: Array<{ readonly key: number; step: ModelStep }>
  channelUp: boolean
}

const underWay = (model: Model): number => model.accepts.filter((a) => a.step !== "done").length

/** The flow plus what a correct adapter remembers. */
interface Real {
  readonly flow: ListenFlow
  /** The flow's id of accept #n. */
  readonly ids: Array<AcceptId>
  /** How many times accept #n was resolved (refused, or taken off the accepts under way when delivered). */
  readonly resolutions: Array<number>
}

// Feeds `event`, drains, and compares with what the model predicts (`predict` updates the model).
const step = (
  model: Model,
  real: Real,
  event: ListenFlowEvent,
  predict: () => ReadonlyArray<ListenFlowCommand>
): void => {
  const before = real.flow.acceptsInProgress
  const out = handleAll(real.flow, event)
  const expected = predict()
  expect(out).toEqual(expected)
  for (const command of out) {
    if (command._tag === "CheckAccess") {
      expect(real.ids, "a new accept has a new id").not.toContain(command.id)
      real.ids.push(command.id)
      real.resolutions.push(0)
    } else if (command._tag === "OpenAccept" || command._tag === "Deliver") {
      expect(real.ids).toContain(command.id)
    }
  }
  // An event for accept #n resolved it if the flow refused it, or took it off the accepts under way.
  if ("id" in event) {
    const n = real.ids.indexOf(event.id)
    const refused = out.some((c) => c._tag === "Refuse")
    if (refused || real.flow.acceptsInProgress < before) real.resolutions[n]!++ // events name known accepts only
  }
  expect(real.flow.acceptsInProgress).toBe(underWay(model))
  expect(real.flow.channelUp).toBe(model.channelUp)
}

// The model's refusal of accept #n (it is over), and the flow's command for it.
const refuseM = (model: Model, n: number, refusal: Refusal): ListenFlowCommand => {
  const accept = model.accepts[n]! // callers pass an accept that exists
  accept.step = "done"
  return { _tag: "Refuse", peerKey: keyOf(accept.key), refusal, sendReject: model.channelUp }
}

// ----------------------------------------------------------------- commands

type FlowModelCommand = fc.Command<Model, Real>

class Incoming implements FlowModelCommand {
  readonly key: number
  constructor(key: number) {
    this.key = key
  }
  check = (): boolean => true
  run(model: Model, real: Real): void {
    step(model, real, { _tag: "Received", message: encodeIncomingConnection({ publicKey: keyOf(this.key) }) }, () => {
      if (!model.channelUp) return []
      if (underWay(model) >= model.cap) {
        return [{ _tag: "Refuse", peerKey: keyOf(this.key), refusal: { _tag: "Busy" }, sendReject: true }]
      }
      model.accepts.push({ key: this.key, step: "access" })
      // The id is the flow's to choose: any number, checked fresh in `step`.
      return [{ _tag: "CheckAccess", id: expect.any(Number) as unknown as AcceptId, peerKey: keyOf(this.key) }]
    })
  }
  toString = (): string => `Incoming(K${this.key})`
}

class Garbage implements FlowModelCommand {
  check = (): boolean => true
  run(model: Model, real: Real): void {
    step(model, real, { _tag: "Received", message: new Uint8Array([0xff, 0x00, 0x13]) }, () => {
      if (!model.channelUp) return []
      model.channelUp = false
      return [{
        _tag: "CloseChannel",
        error: expect.stringMatching(/^the relay sent a malformed IncomingConnection: /) as unknown as string
      }]
    })
  }
  toString = (): string => "Garbage"
}

class ChannelEnded implements FlowModelCommand {
  check = (): boolean => true
  run(model: Model, real: Real): void {
    step(model, real, { _tag: "ChannelEnded" }, () => {
      model.channelUp = false
      return []
    })
  }
  toString = (): string => "ChannelEnded"
}

class Decide implements FlowModelCommand {
  readonly target: number
  readonly allowed: boolean
  constructor(target: number, allowed: boolean) {
    this.target = target
    this.allowed = allowed
  }
  check = (model: Readonly<Model>): boolean => this.target < model.accepts.length
  run(model: Model, real: Real): void {
    const n = this.target
    step(model, real, { _tag: "AccessDecided", id: real.ids[n]!, allowed: this.allowed }, () => {
      const accept = model.accepts[n]!
      if (accept.step !== "access") return []
      if (!this.allowed) return [refuseM(model, n, { _tag: "Denied" })]
      accept.step = "tunnel"
      return [{ _tag: "OpenAccept", id: real.ids[n]!, peerKey: keyOf(accept.key) }]
    })
  }
  toString = (): string => `${this.allowed ? "Allow" : "Deny"}(#${this.target})`
}

class Opened implements FlowModelCommand {
  readonly target: number
  constructor(target: number) {
    this.target = target
  }
  check = (model: Readonly<Model>): boolean => this.target < model.accepts.length
  run(model: Model, real: Real): void {
    const n = this.target
    step(model, real, { _tag: "AcceptOpened", id: real.ids[n]! }, () => {
      const accept = model.accepts[n]!
      if (accept.step !== "tunnel") return []
      accept.step = "delivery"
      return [{ _tag: "Deliver", id: real.ids[n]!, peerKey: keyOf(accept.key) }]
    })
  }
  toString = (): string => `Opened(#${this.target})`
}

class Failed implements FlowModelCommand {
  readonly target: number
  constructor(target: number) {
    this.target = target
  }
  check = (model: Readonly<Model>): boolean => this.target < model.accepts.length
  run(model: Model, real: Real): void {
    const n = this.target
    const message = `tunnel: failed #${n}`
    step(model, real, { _tag: "AcceptFailed", id: real.ids[n]!, message }, () => {
      if (model.accepts[n]!.step !== "tunnel") return []
      return [refuseM(model, n, { _tag: "AcceptFailed", message })]
    })
  }
  toString = (): string => `Failed(#${this.target})`
}

class Delivered implements FlowModelCommand {
  readonly target: number
  constructor(target: number) {
    this.target = target
  }
  check = (model: Readonly<Model>): boolean => this.target < model.accepts.length
  run(model: Model, real: Real): void {
    const n = this.target
    step(model, real, { _tag: "Delivered", id: real.ids[n]! }, () => {
      const accept = model.accepts[n]!
      if (accept.step !== "delivery") return []
      accept.step = "done"
      return []
    })
  }
  toString = (): string => `Delivered(#${this.target})`
}

const target = fc.integer({ min: 0, max: MAX_TARGET - 1 })
const commandArbs: Array<fc.Arbitrary<FlowModelCommand>> = [
  fc.integer({ min: 0, max: KEYS.length - 1 }).map((k) => new Incoming(k)),
  fc.integer({ min: 0, max: KEYS.length - 1 }).map((k) => new Incoming(k)),
  fc.constant(new Garbage()),
  fc.constant(new ChannelEnded()),
  fc.tuple(target, fc.boolean()).map(([n, yes]) => new Decide(n, yes)),
  target.map((n) => new Opened(n)),
  target.map((n) => new Failed(n)),
  target.map((n) => new Delivered(n))
]

// Small caps, so the cap is hit often.
const configArb: fc.Arbitrary<ListenFlowConfig> = fc.record({
  maxAcceptsInProgress: fc.integer({ min: 1, max: 4 })
})

const replay = {
  seed: process.env["FLOW_MODEL_SEED"],
  path: process.env["FLOW_MODEL_PATH"],
  replayPath: process.env["FLOW_MODEL_REPLAY"]
}

describe("listen flow against its reference model", () => {
  it("agrees on every command, and resolves every accept exactly once", () => {
    const property = fc.property(
      configArb,
      fc.commands(commandArbs, {
        maxCommands: 60,
        size: "max",
        ...(replay.replayPath === undefined ? {} : { replayPath: replay.replayPath })
      }),
      (config, commands) => {
        const model: Model = { cap: config.maxAcceptsInProgress, accepts: [], channelUp: true }
        const real: Real = { flow: new ListenFlow(config), ids: [], resolutions: [] }
        fc.modelRun(() => ({ model, real }), commands)
        // Drive every accept still under way to its end, by whichever path its step allows.
        model.accepts.forEach((accept, n) => {
          if (accept.step === "access") new Decide(n, n % 2 === 0).run(model, real)
          if (accept.step === "tunnel") (n % 3 === 0 ? new Failed(n) : new Opened(n)).run(model, real)
          if (accept.step === "delivery") new Delivered(n).run(model, real)
        })
        expect(real.resolutions).toEqual(model.accepts.map(() => 1))
        expect(real.flow.acceptsInProgress).toBe(0)
        expect(real.flow.poll()).toBeUndefined()
      }
    )
    fc.assert(property, {
      numRuns: 500,
      ...(replay.seed === undefined ? {} : { seed: Number(replay.seed), endOnFailure: true }),
      ...(replay.path === undefined ? {} : { path: replay.path })
    })
  })
})
