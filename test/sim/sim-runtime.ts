/**
 * Virtual time and a deterministic scheduler for whole-system simulation.
 *
 * One queue of timers (ordered by time, then by when they were set) and one
 * FIFO of ready tasks drive everything: Effect fibers (through a `Scheduler`
 * whose dispatcher queues here and a `Clock` whose `sleep` is a timer here),
 * and the in-memory network (through `networkClock`). `runFor` runs every
 * ready task, then jumps to the next timer, and so on: nothing waits on the
 * wall clock, and with the same inputs a run is the same run, step by step.
 *
 * What it cannot see: promises and Node's own timers. Code under simulation
 * must reach time only through Effect's Clock (or the network clock) and
 * must not await promises; the run would otherwise stall on them, which
 * `pendingWork` makes visible.
 */
import * as Clock from "effect/Clock"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import type * as Fiber from "effect/Fiber"
import * as Logger from "effect/Logger"
import * as References from "effect/References"
import * as Scheduler from "effect/Scheduler"
import type { NetworkClock } from "../../src/adapters/transport-memory.ts"

interface Timer {
  readonly at: number
  readonly seq: number
  readonly task: () => void
  cancelled: boolean
}

/** Virtual epoch: Clock.currentTimeMillis reads this plus the virtual time. */
const EPOCH_MS = 1_800_000_000_000

/** Virtual time and scheduling for one simulation run. */
export class SimRuntime {
  /** Virtual milliseconds since the run began. */
  now = 0
  /** Timers fired and tasks run so far (for reports and runaway checks). */
  steps = 0
  private seq = 0
  private readonly heap: Array<Timer> = []
  private ready: Array<() => void> = []
  private readyIndex = 0

  /** The clock the in-memory network runs on. */
  readonly networkClock: NetworkClock = {
    now: () => this.now,
    schedule: (delayMs, task) => this.setTimer(delayMs, task)
  }

  /** Effect's Clock, on virtual time. */
  readonly clock: Clock.Clock = {
    currentTimeMillisUnsafe: () => EPOCH_MS + Math.floor(this.now),
    currentTimeMillis: Effect.sync(() => EPOCH_MS + Math.floor(this.now)),
    currentTimeNanosUnsafe: () => BigInt(EPOCH_MS + Math.floor(this.now)) * 1_000_000n,
    currentTimeNanos: Effect.sync(() => BigInt(EPOCH_MS + Math.floor(this.now)) * 1_000_000n),
    monotonicTimeNanosUnsafe: () => BigInt(Math.floor(this.now * 1_000_000)),
    monotonicTimeNanos: Effect.sync(() => BigInt(Math.floor(this.now * 1_000_000))),
    sleep: (duration: Duration.Duration) =>
      Effect.callback<void>((resume) => {
        const cancel = this.setTimer(Duration.toMillis(duration), () => resume(Effect.void))
        return Effect.sync(cancel)
      })
  }

  /** Effect's Scheduler: every fiber task goes to this run's ready queue. */
  readonly scheduler: Scheduler.Scheduler = (() => {
    const dispatcher: Scheduler.SchedulerDispatcher = {
      scheduleTask: (task) => {
        this.ready.push(task)
      },
      flush: () => this.runReady()
    }
    return {
      executionMode: "async",
      shouldYield: (fiber: Fiber.Fiber<unknown, unknown>) => fiber.currentOpCount >= fiber.cache.maxOpsBeforeYield,
      makeDispatcher: () => dispatcher
    }
  })()

  /** Sets a timer on virtual time; returns its cancel. */
  setTimer(delayMs: number, task: () => void): () => void {
    const timer: Timer = { at: this.now + Math.max(0, delayMs), seq: this.seq++, task, cancelled: false }
    this.push(timer)
    return () => {
      timer.cancelled = true
    }
  }

  /** Runs `effect` as a fiber on this run's clock and scheduler, logging to `log`. */
  fork<A, E>(effect: Effect.Effect<A, E>, log: (line: string) => void = () => {}): Fiber.Fiber<A, E> {
    return Effect.runFork(
      effect.pipe(
        Effect.provideService(Clock.Clock, this.clock),
        Effect.provideService(Scheduler.Scheduler, this.scheduler),
        Effect.provideService(References.CurrentLoggers, new Set([captureLogger(log, () => this.now)])),
        Effect.provideService(References.MinimumLogLevel, "Debug")
      )
    )
  }

  /** Runs ready tasks and timers until virtual time `until`, or until `stop()` holds between steps. */
  runUntil(until: number, stop: () => boolean = () => false): void {
    while (true) {
      this.runReady()
      if (stop()) return
      const next = this.peek()
      if (next === undefined || next.at > until) {
        this.now = Math.max(this.now, until)
        return
      }
      this.pop()
      this.now = next.at
      this.steps++
      next.task()
    }
  }

  /** Runs for `ms` of virtual time. */
  runFor(ms: number): void {
    this.runUntil(this.now + ms)
  }

  /** Live timers and ready tasks: zero once everything the run started has stopped. */
  pendingWork(): { readonly timers: number; readonly tasks: number } {
    let timers = 0
    for (const timer of this.heap) if (!timer.cancelled) timers++
    return { timers, tasks: this.ready.length - this.readyIndex }
  }

  private runReady(): void {
    while (this.readyIndex < this.ready.length) {
      const task = this.ready[this.readyIndex++]!
      this.steps++
      task()
      if (this.readyIndex > 4096) {
        this.ready = this.ready.slice(this.readyIndex)
        this.readyIndex = 0
      }
    }
    this.ready = []
    this.readyIndex = 0
  }

  private peek(): Timer | undefined {
    while (this.heap.length > 0 && this.heap[0]!.cancelled) this.pop()
    return this.heap[0]
  }

  private less(a: Timer, b: Timer): boolean {
    return a.at < b.at || (a.at === b.at && a.seq < b.seq)
  }

  private push(timer: Timer): void {
    const heap = this.heap
    heap.push(timer)
    let i = heap.length - 1
    while (i > 0) {
      const parent = (i - 1) >> 1
      if (!this.less(heap[i]!, heap[parent]!)) break
      ;[heap[i], heap[parent]] = [heap[parent]!, heap[i]!]
      i = parent
    }
  }

  private pop(): Timer | undefined {
    const heap = this.heap
    const top = heap[0]
    const last = heap.pop()
    if (heap.length > 0 && last !== undefined) {
      heap[0] = last
      let i = 0
      while (true) {
        const l = 2 * i + 1
        const r = l + 1
        let m = i
        if (l < heap.length && this.less(heap[l]!, heap[m]!)) m = l
        if (r < heap.length && this.less(heap[r]!, heap[m]!)) m = r
        if (m === i) break
        ;[heap[i], heap[m]] = [heap[m]!, heap[i]!]
        i = m
      }
    }
    return top
  }
}

// Log lines of the code under simulation go to the run's log, stamped with virtual time.
const captureLogger = (log: (line: string) => void, now: () => number) =>
  Logger.make(({ cause, fiber, logLevel, message }) => {
    const annotations = Object.entries(fiber.getRef(References.CurrentLogAnnotations))
      .map(([key, value]) => ` ${key}=${typeof value === "string" ? value : JSON.stringify(value)}`)
      .join("")
    const text = (Array.isArray(message) ? message.map(String).join(" ") : String(message)) + annotations
    const why = cause.reasons.length === 0 ? "" : ` (${cause.reasons.map(describeReason).join("; ")})`
    log(`${now().toFixed(0).padStart(8)} ms ${logLevel} ${text}${why}`)
  })

const describeReason = (reason: { readonly _tag: string; readonly error?: unknown; readonly defect?: unknown }): string => {
  const value = reason._tag === "Fail" ? reason.error : reason._tag === "Die" ? reason.defect : undefined
  if (value instanceof Error || (typeof value === "object" && value !== null && "message" in value)) {
    return String((value as { message: unknown }).message)
  }
  return value === undefined ? reason._tag : String(value)
}
