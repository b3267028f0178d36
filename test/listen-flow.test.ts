/**
 * The listen flow's rules (src/core/listen-flow.ts), one case per line of
 * its header, driven by events only.
 */
import { describe, expect, it } from "vitest"
import {
  type AcceptId,
  ListenFlow,
  type ListenFlowCommand,
  type ListenFlowEvent,
  MAX_ACCEPTS_IN_PROGRESS
} from "../src/core/listen-flow.ts"
import { encodeIncomingConnection } from "../src/core/messages.ts"
import { handleAll } from "./support/handle-all.ts"

const key = (n: number): Uint8Array => new Uint8Array(32).fill(n)
const incoming = (n: number): ListenFlowEvent => ({
  _tag: "Received",
  message: encodeIncomingConnection({ publicKey: key(n) })
})

// Feeds one event and drains everything it produced.
const step = (flow: ListenFlow, event: ListenFlowEvent): Array<ListenFlowCommand> => handleAll(flow, event)

// The id the one CheckAccess of `commands` names.
const checked = (commands: ReadonlyArray<ListenFlowCommand>): AcceptId => {
  expect(commands).toHaveLength(1)
  const [command] = commands
  if (command?._tag !== "CheckAccess") throw new Error(`expected CheckAccess, got ${JSON.stringify(command)}`)
  return command.id
}

// An accept of peer `n` that reached its tunnel step.
const opening = (flow: ListenFlow, n: number): AcceptId => {
  const id = checked(step(flow, incoming(n)))
  expect(step(flow, { _tag: "AccessDecided", id, allowed: true })).toEqual([
    { _tag: "OpenAccept", id, peerKey: key(n) }
  ])
  return id
}

describe("listen flow", () => {
  it("an IncomingConnection becomes an accept: CheckAccess with a new id", () => {
    const flow = new ListenFlow()
    const first = step(flow, incoming(1))
    expect(first).toEqual([{ _tag: "CheckAccess", id: 0, peerKey: key(1) }])
    expect(step(flow, incoming(2))).toEqual([{ _tag: "CheckAccess", id: 1, peerKey: key(2) }])
    expect(flow.acceptsInProgress).toBe(2)
  })

  it("a message that is not an IncomingConnection closes the channel; later messages are ignored", () => {
    const flow = new ListenFlow()
    const commands = step(flow, { _tag: "Received", message: new Uint8Array([1, 2, 3]) })
    expect(commands).toHaveLength(1)
    expect(commands[0]?._tag).toBe("CloseChannel")
    expect(commands[0]?._tag === "CloseChannel" && commands[0].error).toMatch(/^the relay sent a malformed IncomingConnection: /)
    expect(flow.channelUp).toBe(false)
    expect(step(flow, incoming(1))).toEqual([])
    expect(flow.acceptsInProgress).toBe(0)
  })

  it("the cap: beyond maxAcceptsInProgress accepts under way, an IncomingConnection is refused Busy at once", () => {
    const flow = new ListenFlow({ maxAcceptsInProgress: 2 })
    checked(step(flow, incoming(1)))
    checked(step(flow, incoming(2)))
    expect(step(flow, incoming(3))).toEqual([
      { _tag: "Refuse", peerKey: key(3), refusal: { _tag: "Busy" }, sendReject: true }
    ])
    expect(flow.acceptsInProgress).toBe(2)
  })

  it("the default cap is MAX_ACCEPTS_IN_PROGRESS", () => {
    const flow = new ListenFlow()
    for (let i = 0; i < MAX_ACCEPTS_IN_PROGRESS; i++) checked(step(flow, incoming(i)))
    expect(step(flow, incoming(99))[0]).toMatchObject({ _tag: "Refuse", refusal: { _tag: "Busy" } })
  })

  it("a slot frees when an accept ends, and the next IncomingConnection is worked on", () => {
    const flow = new ListenFlow({ maxAcceptsInProgress: 1 })
    const id = checked(step(flow, incoming(1)))
    expect(step(flow, incoming(2))[0]?._tag).toBe("Refuse")
    step(flow, { _tag: "AccessDecided", id, allowed: false })
    checked(step(flow, incoming(3)))
  })

  it("the same peer twice is two accepts", () => {
    const flow = new ListenFlow()
    const a = checked(step(flow, incoming(5)))
    const b = checked(step(flow, incoming(5)))
    expect(a).not.toBe(b)
    expect(flow.acceptsInProgress).toBe(2)
  })

  it("denied by the policy → Refuse Denied (and the accept is over)", () => {
    const flow = new ListenFlow()
    const id = checked(step(flow, incoming(1)))
    expect(step(flow, { _tag: "AccessDecided", id, allowed: false })).toEqual([
      { _tag: "Refuse", peerKey: key(1), refusal: { _tag: "Denied" }, sendReject: true }
    ])
    expect(flow.acceptsInProgress).toBe(0)
  })

  it("allowed → OpenAccept for that peer", () => {
    const flow = new ListenFlow()
    opening(flow, 4)
    expect(flow.acceptsInProgress).toBe(1)
  })

  it("an accept that fails → Refuse AcceptFailed with the adapter's message", () => {
    const flow = new ListenFlow()
    const id = opening(flow, 1)
    expect(step(flow, { _tag: "AcceptFailed", id, message: "tunnel: closed" })).toEqual([
      { _tag: "Refuse", peerKey: key(1), refusal: { _tag: "AcceptFailed", message: "tunnel: closed" }, sendReject: true }
    ])
    expect(flow.acceptsInProgress).toBe(0)
  })

  it("an accept that opened → Deliver; it counts toward the cap until Delivered", () => {
    const flow = new ListenFlow({ maxAcceptsInProgress: 1 })
    const id = opening(flow, 1)
    expect(step(flow, { _tag: "AcceptOpened", id })).toEqual([{ _tag: "Deliver", id, peerKey: key(1) }])
    expect(step(flow, incoming(2))[0]).toMatchObject({ _tag: "Refuse", refusal: { _tag: "Busy" } })
    expect(step(flow, { _tag: "Delivered", id })).toEqual([])
    expect(flow.acceptsInProgress).toBe(0)
    checked(step(flow, incoming(3)))
  })

  it("after ChannelEnded, refusals are only reported, and accepts under way go on", () => {
    const flow = new ListenFlow()
    const denied = checked(step(flow, incoming(1)))
    const failing = opening(flow, 2)
    const delivering = opening(flow, 3)
    expect(step(flow, { _tag: "ChannelEnded" })).toEqual([])
    expect(flow.channelUp).toBe(false)
    expect(step(flow, { _tag: "AccessDecided", id: denied, allowed: false })).toEqual([
      { _tag: "Refuse", peerKey: key(1), refusal: { _tag: "Denied" }, sendReject: false }
    ])
    expect(step(flow, { _tag: "AcceptFailed", id: failing, message: "x" })).toEqual([
      { _tag: "Refuse", peerKey: key(2), refusal: { _tag: "AcceptFailed", message: "x" }, sendReject: false }
    ])
    expect(step(flow, { _tag: "AcceptOpened", id: delivering })).toEqual([
      { _tag: "Deliver", id: delivering, peerKey: key(3) }
    ])
    expect(step(flow, incoming(4))).toEqual([])
  })

  it("after CloseChannel too, refusals of accepts under way are only reported", () => {
    const flow = new ListenFlow()
    const id = checked(step(flow, incoming(1)))
    step(flow, { _tag: "Received", message: new Uint8Array([0xff]) })
    expect(step(flow, { _tag: "AccessDecided", id, allowed: false })).toEqual([
      { _tag: "Refuse", peerKey: key(1), refusal: { _tag: "Denied" }, sendReject: false }
    ])
  })

  it("events naming an unknown accept, or one at another step, are ignored", () => {
    const flow = new ListenFlow()
    const stranger = 42 as AcceptId
    for (
      const event of [
        { _tag: "AccessDecided", id: stranger, allowed: true },
        { _tag: "AcceptOpened", id: stranger },
        { _tag: "AcceptFailed", id: stranger, message: "x" },
        { _tag: "Delivered", id: stranger }
      ] satisfies Array<ListenFlowEvent>
    ) expect(step(flow, event)).toEqual([])
    const id = checked(step(flow, incoming(1)))
    // Still awaiting the policy: tunnel and delivery events are early.
    expect(step(flow, { _tag: "AcceptOpened", id })).toEqual([])
    expect(step(flow, { _tag: "AcceptFailed", id, message: "x" })).toEqual([])
    expect(step(flow, { _tag: "Delivered", id })).toEqual([])
    step(flow, { _tag: "AccessDecided", id, allowed: true })
    // A repeated answer is late.
    expect(step(flow, { _tag: "AccessDecided", id, allowed: false })).toEqual([])
    step(flow, { _tag: "AcceptOpened", id })
    expect(step(flow, { _tag: "AcceptFailed", id, message: "late" })).toEqual([])
    step(flow, { _tag: "Delivered", id })
    expect(step(flow, { _tag: "Delivered", id })).toEqual([])
    expect(flow.acceptsInProgress).toBe(0)
  })

  it("commands come out in the order they were decided, each once", () => {
    const flow = new ListenFlow({ maxAcceptsInProgress: 1 })
    flow.handle(incoming(1))
    flow.handle(incoming(2))
    expect(flow.poll()?._tag).toBe("CheckAccess")
    expect(flow.poll()?._tag).toBe("Refuse")
    expect(flow.poll()).toBeUndefined()
    expect(flow.poll()).toBeUndefined()
  })
})
