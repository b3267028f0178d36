/**
 * The keepalive machine by its calls only: KaMessage wrapping, the send and
 * close countdowns at their exact ticks, paused receive accounting, and
 * malformed input.
 */
import { describe, expect, it } from "vitest"
import { DEFAULT_KEEPALIVE_TICKS, encodedKeepAlive, Keepalive, type KeepaliveEvent } from "../src/core/keepalive.ts"
import { decodeKaMessage, encodeKaMessage } from "../src/core/messages.ts"

/** A call on the machine, as a value a test can list. */
type KeepaliveCall =
  | { readonly _tag: "Received"; readonly data: Uint8Array }
  | { readonly _tag: "Send"; readonly data: Uint8Array; readonly packed?: Uint8Array }
  | { readonly _tag: "Tick"; readonly receivePaused?: boolean }

/** What one call made the machine queue: its transmits, then its events (a delivery as plain fields). */
type KeepaliveOutput =
  | { readonly _tag: "Transmit"; readonly data: Uint8Array }
  | { readonly _tag: "Deliver"; readonly data: Uint8Array; readonly packed: Uint8Array }
  | Exclude<KeepaliveEvent, { readonly _tag: "Deliver" }>

const tick: KeepaliveCall = { _tag: "Tick" }
const pausedTick: KeepaliveCall = { _tag: "Tick", receivePaused: true }
const keepAlive = encodeKaMessage({ _tag: "KeepAlive" })
const utf8 = (text: string): Uint8Array => new TextEncoder().encode(text)

/** Makes one call and drains the machine. */
const call = (machine: Keepalive, input: KeepaliveCall): Array<KeepaliveOutput> => {
  switch (input._tag) {
    case "Received":
      machine.received(input.data)
      break
    case "Send":
      if (input.packed === undefined) machine.send(input.data)
      else machine.sendPacked(input.packed)
      break
    case "Tick":
      machine.tick(input.receivePaused)
      break
  }
  const out: Array<KeepaliveOutput> = []
  for (let data = machine.pollTransmit(); data !== undefined; data = machine.pollTransmit()) out.push({ _tag: "Transmit", data })
  for (let event = machine.pollEvent(); event !== undefined; event = machine.pollEvent()) {
    out.push(event._tag === "Deliver" ? { _tag: "Deliver", data: event.data, packed: event.packed } : event)
  }
  return out
}

/** Makes the calls in order, collecting the output with the index of the call that caused it. */
const run = (
  machine: Keepalive,
  calls: ReadonlyArray<KeepaliveCall>
): { readonly machine: Keepalive; readonly log: Array<readonly [number, KeepaliveOutput]> } => {
  const log: Array<readonly [number, KeepaliveOutput]> = []
  calls.forEach((input, index) => {
    for (const output of call(machine, input)) log.push([index, output])
  })
  return { machine, log }
}

const ticks = (n: number, input: KeepaliveCall = tick): Array<KeepaliveCall> => Array.from({ length: n }, () => input)

describe("keepalive", () => {
  it("wraps sent messages in KaMessage.message and unwraps received ones; keepAlive is consumed", () => {
    const packedIn = encodeKaMessage({ _tag: "Message", data: utf8("in") })
    const packedEmpty = encodeKaMessage({ _tag: "Message", data: new Uint8Array(0) })
    const { log } = run(new Keepalive(), [
      { _tag: "Send", data: utf8("out") },
      { _tag: "Received", data: packedIn },
      { _tag: "Received", data: keepAlive },
      { _tag: "Received", data: packedEmpty }
    ])
    expect(log).toEqual([
      [0, { _tag: "Transmit", data: encodeKaMessage({ _tag: "Message", data: utf8("out") }) }],
      // Each Deliver carries the KaMessage it came in, for a relay to forward.
      [1, { _tag: "Deliver", data: utf8("in"), packed: packedIn }],
      [3, { _tag: "Deliver", data: new Uint8Array(0), packed: packedEmpty }]
    ])
    expect(decodeKaMessage(encodedKeepAlive())).toEqual({ _tag: "Ok", value: { _tag: "KeepAlive" } })
  })

  it("a Send that brings its packed KaMessage (a forwarded Deliver) transmits exactly those bytes", () => {
    const packed = encodeKaMessage({ _tag: "Message", data: utf8("relayed") })
    const { log } = run(new Keepalive(), [{ _tag: "Send", data: utf8("relayed"), packed }])
    expect(log).toEqual([[0, { _tag: "Transmit", data: packed }]])
    expect(log[0]![1]._tag === "Transmit" && log[0]![1].data).toBe(packed)
  })

  it("closes an idle peer on exactly the keepaliveTicks-th tick, pinging every half", () => {
    expect(DEFAULT_KEEPALIVE_TICKS).toBe(32)
    const { machine: state, log } = run(new Keepalive(), ticks(40))
    expect(log).toEqual([
      [15, { _tag: "Transmit", data: encodedKeepAlive() }],
      [31, { _tag: "Closed", error: expect.objectContaining({ _tag: "KeepaliveError", reason: "KeepaliveTimeout" }) }]
    ])
    expect(state.closed?.reason).toBe("KeepaliveTimeout")
  })

  it("anything received restarts the close countdown; anything sent restarts the ping countdown", () => {
    const events: Array<KeepaliveCall> = []
    // 31 ticks, then a keepAlive arrives: 31 more ticks are fine, the 32nd closes.
    events.push(...ticks(31), { _tag: "Received", data: keepAlive }, ...ticks(31))
    const { log: quiet } = run(new Keepalive(), events)
    expect(quiet.filter(([, c]) => c._tag === "Closed")).toEqual([])
    const { log: closing } = run(new Keepalive(), [...events, tick])
    expect(closing.at(-1)).toEqual([events.length, expect.objectContaining({ _tag: "Closed" })])

    // A message sent every 10 ticks means we never need a keepAlive.
    const chatty: Array<KeepaliveCall> = []
    for (let i = 0; i < 10; i++) chatty.push({ _tag: "Send", data: utf8("x") }, ...ticks(10), { _tag: "Received", data: keepAlive })
    const { log } = run(new Keepalive(), chatty)
    expect(log.every(([, c]) => c._tag === "Transmit" && c.data !== encodedKeepAlive())).toBe(true)
    expect(log).toHaveLength(10)
  })

  it("a peer that only sends keepalives stays open indefinitely", () => {
    const state = new Keepalive({ keepaliveTicks: 4 })
    let pings = 0
    for (let t = 0; t < 10_000; t++) {
      const outputs = call(state, tick)
      pings += outputs.filter((c) => c._tag === "Transmit").length
      expect(outputs.some((c) => c._tag === "Closed")).toBe(false)
      // The peer pings every 2 ticks as well.
      if (t % 2 === 1) call(state, { _tag: "Received", data: keepAlive })
    }
    expect(state.closed).toBeUndefined()
    expect(pings).toBe(5000)
  })

  it("ticks with receive paused do not count toward closing, but we keep pinging", () => {
    const { machine: state, log } = run(new Keepalive(), [...ticks(20), ...ticks(1000, pausedTick), ...ticks(11)])
    expect(state.closed).toBeUndefined()
    expect(log.filter(([, c]) => c._tag === "Transmit")).toHaveLength(Math.floor(1031 / 16))
    call(state, tick)
    expect(state.closed?.reason).toBe("KeepaliveTimeout")
  })

  it("a message that is not a KaMessage closes MalformedMessage", () => {
    const { machine: state, log } = run(new Keepalive(), [{ _tag: "Received", data: Uint8Array.of(7, 7, 7) }, tick])
    expect(log).toHaveLength(1)
    const [, command] = log[0]!
    if (command._tag !== "Closed") throw new Error("expected Closed")
    expect(command.error.reason).toBe("MalformedMessage")
    expect(command.error.decodeError?._tag).toBe("DecodeError")
    expect(state.closed).toBe(command.error)
  })

  it("after Closed every call does nothing", () => {
    const { machine: state } = run(new Keepalive({ keepaliveTicks: 2 }), ticks(2))
    const closed = state.closed
    expect(closed).toBeDefined()
    for (const input of [tick, { _tag: "Send", data: utf8("late") }, { _tag: "Received", data: keepAlive }] as const) {
      expect(call(state, input)).toEqual([])
      expect(state.closed).toBe(closed)
      expect(state.ticksUntilClose).toBe(0)
    }
  })

  it("odd keepaliveTicks ping every floor(n/2) ticks; fewer than 2 is refused", () => {
    const { log } = run(new Keepalive({ keepaliveTicks: 5 }), ticks(5))
    expect(log.map(([i, c]) => [i, c._tag])).toEqual([
      [1, "Transmit"],
      [3, "Transmit"],
      [4, "Closed"]
    ])
    expect(() => new Keepalive({ keepaliveTicks: 1 })).toThrow(RangeError)
    expect(() => new Keepalive({ keepaliveTicks: 2.5 })).toThrow(RangeError)
  })
})
