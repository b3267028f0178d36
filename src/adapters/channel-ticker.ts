/**
 * One timer for all the channels of a client: every `tickMs` it ticks each
 * registered channel (keepalive, rekey), as the relay's one server tick
 * drives all its hops. A listener with a thousand idle tunnels runs one
 * timer, not two thousand ticker fibers.
 *
 * The timer is an Effect fiber (so simulations run it on virtual time),
 * started in the context of the channel that finds it stopped, and stopped
 * as soon as the last channel leaves. A channel's first tick comes within
 * one period of joining, not exactly one period after: the keepalive then
 * judges the peer at most one tick early, as on the relay.
 */
import * as Effect from "effect/Effect"
import type * as Fiber from "effect/Fiber"
import type * as Scope from "effect/Scope"

/** Something ticked once per period. */
export interface Tickable {
  readonly tick: () => void
}

/** The shared timer; see the module header. */
export class ChannelTicker {
  readonly tickMs: number
  private readonly channels = new Set<Tickable>()
  private fiber: Fiber.Fiber<void> | undefined

  constructor(tickMs: number) {
    this.tickMs = tickMs
  }

  /** Ticks `channel` until the current scope closes. */
  register(channel: Tickable): Effect.Effect<void, never, Scope.Scope> {
    return Effect.acquireRelease(
      Effect.contextWith((context) =>
        Effect.sync(() => {
          this.channels.add(channel)
          this.fiber ??= Effect.runForkWith(context)(this.loop)
        })
      ),
      () =>
        Effect.sync(() => {
          this.channels.delete(channel)
          if (this.channels.size > 0) return
          const fiber = this.fiber
          this.fiber = undefined
          fiber?.interruptUnsafe()
        })
    )
  }

  /** Channels registered now (tests). */
  get size(): number {
    return this.channels.size
  }

  private readonly loop: Effect.Effect<void> = Effect.suspend(() =>
    Effect.forever(
      Effect.andThen(
        Effect.sleep(this.tickMs),
        Effect.sync(() => {
          // A channel's tick may end it and its scope may leave the set meanwhile: tick a snapshot.
          for (const channel of [...this.channels]) channel.tick()
        })
      )
    )
  )
}

// One ticker per client settings object and period, for as long as the settings live.
const tickers = new WeakMap<object, Map<number, ChannelTicker>>()

/** The ticker shared by every channel made from `owner` (a client's settings) with this period. */
export const tickerOf = (owner: object, tickMs: number): ChannelTicker => {
  let byPeriod = tickers.get(owner)
  if (byPeriod === undefined) {
    byPeriod = new Map()
    tickers.set(owner, byPeriod)
  }
  let ticker = byPeriod.get(tickMs)
  if (ticker === undefined) {
    ticker = new ChannelTicker(tickMs)
    byPeriod.set(tickMs, ticker)
  }
  return ticker
}
