/**
 * The keepalive machine by events only: KaMessage wrapping, the send and
 * close countdowns at their exact ticks, paused receive accounting, and
 * malformed input.
 */
import { describe, expect, it } from "vitest"
import {
  DEFAULT_KEEPALIVE_TICKS,
  encodedKeepAlive,
  type KeepaliveCommand,
  type KeepaliveEvent,
  type KeepaliveState,
  makeKeepalive,
  stepKeepalive
} from "../src/core/keepalive.ts"
import { decodeKaMessage, encodeKaMessage } from "../src/core/messages.ts"

const tick: KeepaliveEvent = { _tag: "Tick" }
const pausedTick: KeepaliveEvent = { _tag: "Tick", receivePaused: true }
const keepAlive = encodeKaMessage({ _tag: "KeepAlive" })
const utf8 = (text: string): Uint8Array => new TextEncoder().encode(text)

/** Feeds events in order, collecting commands with the index of the event that caused them. */
const run = (
  initial: KeepaliveState,
  events: ReadonlyArray<KeepaliveEvent>
): { readonly state: KeepaliveState; readonly log: Array<readonly [number, KeepaliveCommand]> } => {
  let state = initial
  const log: Array<readonly [number, KeepaliveCommand]> = []
  events.forEach((event, index) => {
    const [next, commands] = stepKeepalive(state, event)
    state = next
    for (const command of commands) log.push([index, command])
  })
  return { state, log }
}

const ticks = (n: number, event: KeepaliveEvent = tick): Array<KeepaliveEvent> => Array.from({ length: n }, () => event)

describe("keepalive", () => {
  it("wraps sent messages in KaMessage.message and unwraps received ones; keepAlive is consumed", () => {
    const packedIn = encodeKaMessage({ _tag: "Message", data: utf8("in") })
    const packedEmpty = encodeKaMessage({ _tag: "Message", data: new Uint8Array(0) })
    const { log } = run(makeKeepalive(), [
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
    const { log } = run(makeKeepalive(), [{ _tag: "Send", data: utf8("relayed"), packed }])
    expect(log).toEqual([[0, { _tag: "Transmit", data: packed }]])
    expect(log[0]![1]._tag === "Transmit" && log[0]![1].data).toBe(packed)
  })

  it("closes an idle peer on exactly the keepaliveTicks-th tick, pinging every half", () => {
    expect(DEFAULT_KEEPALIVE_TICKS).toBe(32)
    const { state, log } = run(makeKeepalive(), ticks(40))
    expect(log).toEqual([
      [15, { _tag: "Transmit", data: encodedKeepAlive() }],
      [31, { _tag: "Close", error: expect.objectContaining({ _tag: "KeepaliveError", reason: "KeepaliveTimeout" }) }]
    ])
    expect(state.closed?.reason).toBe("KeepaliveTimeout")
  })

  it("anything received restarts the close countdown; anything sent restarts the ping countdown", () => {
    const events: Array<KeepaliveEvent> = []
    // 31 ticks, then a keepAlive arrives: 31 more ticks are fine, the 32nd closes.
    events.push(...ticks(31), { _tag: "Received", data: keepAlive }, ...ticks(31))
    const { log: quiet } = run(makeKeepalive(), events)
    expect(quiet.filter(([, c]) => c._tag === "Close")).toEqual([])
    const { log: closing } = run(makeKeepalive(), [...events, tick])
    expect(closing.at(-1)).toEqual([events.length, expect.objectContaining({ _tag: "Close" })])

    // A message sent every 10 ticks means we never need a keepAlive.
    const chatty: Array<KeepaliveEvent> = []
    for (let i = 0; i < 10; i++) chatty.push({ _tag: "Send", data: utf8("x") }, ...ticks(10), { _tag: "Received", data: keepAlive })
    const { log } = run(makeKeepalive(), chatty)
    expect(log.every(([, c]) => c._tag === "Transmit" && c.data !== encodedKeepAlive())).toBe(true)
    expect(log).toHaveLength(10)
  })

  it("a peer that only sends keepalives stays open indefinitely", () => {
    let state = makeKeepalive({ keepaliveTicks: 4 })
    let pings = 0
    for (let t = 0; t < 10_000; t++) {
      const [afterTick, commands] = stepKeepalive(state, tick)
      pings += commands.filter((c) => c._tag === "Transmit").length
      expect(commands.some((c) => c._tag === "Close")).toBe(false)
      state = afterTick
      // The peer pings every 2 ticks as well.
      if (t % 2 === 1) state = stepKeepalive(state, { _tag: "Received", data: keepAlive })[0]
    }
    expect(state.closed).toBeUndefined()
    expect(pings).toBe(5000)
  })

  it("ticks with receive paused do not count toward closing, but we keep pinging", () => {
    const { state, log } = run(makeKeepalive(), [...ticks(20), ...ticks(1000, pausedTick), ...ticks(11)])
    expect(state.closed).toBeUndefined()
    expect(log.filter(([, c]) => c._tag === "Transmit")).toHaveLength(Math.floor(1031 / 16))
    const [closed] = stepKeepalive(state, tick)
    expect(closed.closed?.reason).toBe("KeepaliveTimeout")
  })

  it("a message that is not a KaMessage closes MalformedMessage", () => {
    const { state, log } = run(makeKeepalive(), [{ _tag: "Received", data: Uint8Array.of(7, 7, 7) }, tick])
    expect(log).toHaveLength(1)
    const [, command] = log[0]!
    if (command._tag !== "Close") throw new Error("expected Close")
    expect(command.error.reason).toBe("MalformedMessage")
    expect(command.error.decodeError?._tag).toBe("DecodeError")
    expect(state.closed).toBe(command.error)
  })

  it("after Close every event does nothing", () => {
    const { state } = run(makeKeepalive({ keepaliveTicks: 2 }), ticks(2))
    expect(state.closed).toBeDefined()
    for (const event of [tick, { _tag: "Send", data: utf8("late") }, { _tag: "Received", data: keepAlive }] as const) {
      const [next, commands] = stepKeepalive(state, event)
      expect(next).toBe(state)
      expect(commands).toEqual([])
    }
  })

  it("odd keepaliveTicks ping every floor(n/2) ticks; fewer than 2 is refused", () => {
    const { log } = run(makeKeepalive({ keepaliveTicks: 5 }), ticks(5))
    expect(log.map(([i, c]) => [i, c._tag])).toEqual([
      [1, "Transmit"],
      [3, "Transmit"],
      [4, "Close"]
    ])
    expect(() => makeKeepalive({ keepaliveTicks: 1 })).toThrow(RangeError)
    expect(() => makeKeepalive({ keepaliveTicks: 2.5 })).toThrow(RangeError)
  })
})
