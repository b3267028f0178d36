/**
 * The client's shared tick timer (channel-ticker.ts), on virtual time: one
 * timer ticks every channel registered with it, once per period; a channel
 * whose scope closes is no longer ticked; the timer stops with the last
 * channel (no timer left behind) and starts again with the next one; and
 * all the channels made from one client's settings share one ticker.
 */
import { describe, expect, it } from "vitest"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Scope from "effect/Scope"
import { ChannelTicker, tickerOf } from "../src/adapters/channel-ticker.ts"
import { SimRuntime } from "./sim/sim-runtime.ts"

const counter = () => {
  const channel = { ticks: 0, tick: () => void channel.ticks++ }
  return channel
}

describe("ChannelTicker", () => {
  it("ticks every registered channel once per period with one timer, and stops with the last channel", () => {
    const rt = new SimRuntime()
    const ticker = new ChannelTicker(1000)
    const a = counter()
    const b = counter()
    const scopeA = Effect.runSync(Scope.make())
    const scopeB = Effect.runSync(Scope.make())
    rt.fork(Scope.provide(ticker.register(a), scopeA))
    rt.runFor(500)
    rt.fork(Scope.provide(ticker.register(b), scopeB))
    rt.runFor(0)
    // Two channels, one timer.
    expect(rt.pendingWork().timers).toBe(1)
    rt.runFor(3500)
    expect(a.ticks).toBe(4)
    // b joined mid-period: its first tick came with the timer's next one.
    expect(b.ticks).toBe(4)

    rt.fork(Scope.close(scopeA, Exit.void))
    rt.runFor(2000)
    expect(a.ticks).toBe(4)
    expect(b.ticks).toBe(6)
    expect(ticker.size).toBe(1)

    rt.fork(Scope.close(scopeB, Exit.void))
    rt.runFor(0)
    expect(ticker.size).toBe(0)
    expect(rt.pendingWork()).toEqual({ timers: 0, tasks: 0 })
    rt.runFor(5000)
    expect(b.ticks).toBe(6)

    // The next channel starts the timer again.
    const c = counter()
    rt.fork(Scope.provide(ticker.register(c), Effect.runSync(Scope.make())))
    rt.runFor(2000)
    expect(c.ticks).toBe(2)
  })

  it("one ticker per client settings object and period", () => {
    const settings = {}
    expect(tickerOf(settings, 1000)).toBe(tickerOf(settings, 1000))
    expect(tickerOf(settings, 500)).not.toBe(tickerOf(settings, 1000))
    expect(tickerOf({}, 1000)).not.toBe(tickerOf(settings, 1000))
  })
})
