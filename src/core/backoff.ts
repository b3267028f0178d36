/**
 * Reconnecting a dropped listen channel: exponential backoff with jitter,
 * bounded, one schedule per relay (so a dead relay never delays the others).
 *
 * `backoffDelayMs` is the schedule: attempt n waits
 * min(maxMs, initialMs × multiplier^n), shortened by up to `jitter` of itself
 * (so many listeners that lost the same relay do not all come back in the
 * same millisecond). The delay never exceeds `maxMs`: a relay that returns is
 * tried again within `maxMs` (plus the connect time).
 *
 * `ReconnectState` + `stepReconnect` is the per-relay life cycle the listener
 * reports as its status: Connecting → Listening → (drop) BackingOff →
 * Connecting… How to drive it: start with `initialReconnect`; feed
 * `Listening` when the listen channel is open, `Failed` when a connect
 * attempt or an open channel ends (with the time and a jitter unit in [0,1)
 * the adapter drew), `RetryDue` once the wait is over. Time and randomness
 * come in with the events; the step only decides.
 *
 * The failure count resets when a channel stayed up for `resetAfterMs`, or
 * was closed cleanly by the relay after `displacedWithinMs` (below): a relay
 * that drops us once a day is retried quickly, one that accepts and drops at
 * once is retried ever more slowly.
 *
 * Displaced: the relay keeps one listen channel per key, the newest, and
 * closes the older one. Two processes listening with one identity on one
 * relay would take the channel from each other forever. So when the relay
 * closes our listen channel (cleanly) within `displacedWithinMs` of opening
 * twice in a row, we were displaced, probably by another process with our
 * identity: we back off on a slower schedule of its own
 * (`displacedInitialMs`, growing by `multiplier` up to `displacedMaxMs`) and
 * say so in the status. (Once is not enough: a relay that stops just after
 * we connected closes us too, and its restart deserves a quick retry; any
 * other ending breaks the streak.) The other
 * process, whose channel had been up for longer, comes back on the normal
 * schedule, well within `displacedWithinMs`, so our next try is displaced
 * again and we wait longer: the two settle with one stable owner, and we
 * keep trying slowly so we take over when it goes away. For this to settle,
 * `displacedInitialMs × (1 - jitter)` must exceed `displacedWithinMs` (the
 * defaults: 7.5 s > 5 s).
 */
import { absurd } from "./absurd.ts"

/** How fast to retry; every field in milliseconds except the two ratios. */
export interface BackoffPolicy {
  /** Wait after the first failure. */
  readonly initialMs: number
  /** Upper bound of every wait. */
  readonly maxMs: number
  /** Growth per consecutive failure (≥ 1). */
  readonly multiplier: number
  /** Fraction (0..1) by which a wait may be shortened at random. */
  readonly jitter: number
  /** A channel that stayed up this long counts as healthy: the next failure starts the schedule over. */
  readonly resetAfterMs: number
  /** A listen channel the relay closes within this long of opening was displaced (see the module header). */
  readonly displacedWithinMs: number
  /** Wait after the first displacement. */
  readonly displacedInitialMs: number
  /** Upper bound of the wait after a displacement: how soon we take over once the other process is gone. */
  readonly displacedMaxMs: number
}

/** Defaults: retry after 0.5 s, doubling up to 30 s, each wait shortened by up to half at random. */
export const defaultBackoffPolicy: BackoffPolicy = {
  initialMs: 500,
  maxMs: 30_000,
  multiplier: 2,
  jitter: 0.5,
  resetAfterMs: 30_000,
  displacedWithinMs: 5_000,
  displacedInitialMs: 15_000,
  displacedMaxMs: 120_000
}

/** A policy value out of range. */
export interface BackoffPolicyError {
  readonly _tag: "BackoffPolicyError"
  readonly field: keyof BackoffPolicy
  readonly message: string
}

/** Checks a policy (user-supplied flags go through this); undefined when valid. */
export const checkBackoffPolicy = (policy: BackoffPolicy): BackoffPolicyError | undefined => {
  const bad = (field: keyof BackoffPolicy, message: string): BackoffPolicyError => ({
    _tag: "BackoffPolicyError",
    field,
    message
  })
  if (!Number.isFinite(policy.initialMs) || policy.initialMs < 0) {
    return bad("initialMs", `initialMs must be a finite number ≥ 0, got ${policy.initialMs}`)
  }
  if (!Number.isFinite(policy.maxMs) || policy.maxMs < policy.initialMs) {
    return bad("maxMs", `maxMs must be finite and ≥ initialMs (${policy.initialMs}), got ${policy.maxMs}`)
  }
  if (!Number.isFinite(policy.multiplier) || policy.multiplier < 1) {
    return bad("multiplier", `multiplier must be a finite number ≥ 1, got ${policy.multiplier}`)
  }
  if (!(policy.jitter >= 0 && policy.jitter <= 1)) {
    return bad("jitter", `jitter must be between 0 and 1, got ${policy.jitter}`)
  }
  if (!Number.isFinite(policy.resetAfterMs) || policy.resetAfterMs < 0) {
    return bad("resetAfterMs", `resetAfterMs must be a finite number ≥ 0, got ${policy.resetAfterMs}`)
  }
  if (!Number.isFinite(policy.displacedWithinMs) || policy.displacedWithinMs < 0) {
    return bad("displacedWithinMs", `displacedWithinMs must be a finite number ≥ 0, got ${policy.displacedWithinMs}`)
  }
  if (!Number.isFinite(policy.displacedInitialMs) || policy.displacedInitialMs < 0) {
    return bad("displacedInitialMs", `displacedInitialMs must be a finite number ≥ 0, got ${policy.displacedInitialMs}`)
  }
  if (!Number.isFinite(policy.displacedMaxMs) || policy.displacedMaxMs < policy.displacedInitialMs) {
    return bad(
      "displacedMaxMs",
      `displacedMaxMs must be finite and ≥ displacedInitialMs (${policy.displacedInitialMs}), got ${policy.displacedMaxMs}`
    )
  }
  return undefined
}

/**
 * The wait before retry number `failures` (0 = after the first failure).
 * `unit` is a random number in [0,1): 0 waits the full step, values near 1
 * shorten it by `jitter` of itself. Always within [0, maxMs].
 */
export const backoffDelayMs = (policy: BackoffPolicy, failures: number, unit: number): number =>
  growingDelayMs(policy, policy.initialMs, policy.maxMs, failures, unit)

/** The wait after displacement number `displacements` (0 = the first): the same shape on its own scale. */
export const displacedDelayMs = (policy: BackoffPolicy, displacements: number, unit: number): number =>
  growingDelayMs(policy, policy.displacedInitialMs, policy.displacedMaxMs, displacements, unit)

const growingDelayMs = (policy: BackoffPolicy, initialMs: number, maxMs: number, n: number, unit: number): number => {
  // Growth stops at maxMs; capping the exponent keeps the power finite.
  const exponent = Math.min(Math.max(0, n), 1024)
  const step = Math.min(maxMs, initialMs * Math.pow(policy.multiplier, exponent))
  const clampedUnit = unit >= 0 && unit < 1 ? unit : 0
  return Math.max(0, Math.round(step * (1 - policy.jitter * clampedUnit)))
}

/** A jitter unit in [0,1) from 4 random bytes (the adapter draws them). */
export const jitterUnit = (bytes: Uint8Array): number => {
  let value = 0
  for (let i = 0; i < 4; i++) value = value * 256 + (bytes[i] ?? 0)
  return value / 2 ** 32
}

/** Where one relay's listen channel is in its life cycle. */
export type ReconnectState =
  | {
    readonly _tag: "Connecting"
    /** Consecutive failures so far (0 on the first try). */
    readonly failures: number
    /** Consecutive quick closes by the relay so far (see "Displaced" in the module header). */
    readonly displacements: number
    readonly lastError: string | undefined
  }
  | {
    readonly _tag: "Listening"
    readonly failures: number
    readonly displacements: number
    /** When the channel opened (ms, the adapter's clock). */
    readonly since: number
  }
  | {
    readonly _tag: "BackingOff"
    /** Consecutive failures, this one included. */
    readonly failures: number
    readonly displacements: number
    /** This wait is a displacement's: another process probably listens with our identity there. */
    readonly displaced: boolean
    readonly delayMs: number
    /** When the next attempt is due (ms). */
    readonly retryAt: number
    readonly lastError: string
  }

/** What happened to one relay's listen channel. */
export type ReconnectEvent =
  | { readonly _tag: "Listening"; readonly now: number }
  | {
    readonly _tag: "Failed"
    readonly now: number
    readonly error: string
    readonly jitter: number
    /** The relay closed an open listen channel cleanly (not a reset, a timeout or a failed connect). */
    readonly closedByRelay?: boolean | undefined
  }
  | { readonly _tag: "RetryDue" }

/** What the adapter must do next. */
export type ReconnectCommand =
  | { readonly _tag: "Connect" }
  | { readonly _tag: "Wait"; readonly delayMs: number }
  | { readonly _tag: "None" }

/** The state before the first attempt. */
export const initialReconnect: ReconnectState = {
  _tag: "Connecting",
  failures: 0,
  displacements: 0,
  lastError: undefined
}

/** Advances one relay's life cycle; events that do not apply in a state change nothing. */
export const stepReconnect = (
  policy: BackoffPolicy,
  state: ReconnectState,
  event: ReconnectEvent
): readonly [ReconnectState, ReconnectCommand] => {
  switch (event._tag) {
    case "Listening":
      if (state._tag !== "Connecting") return [state, none]
      return [{ _tag: "Listening", failures: state.failures, displacements: state.displacements, since: event.now }, none]
    case "Failed": {
      if (state._tag === "BackingOff") return [state, none]
      const upMs = state._tag === "Listening" ? event.now - state.since : undefined
      // Up for resetAfterMs, or closed cleanly by the relay after the
      // displacement window: the owner of a contested channel (a newcomer
      // took it) comes back on the first step of the schedule every time,
      // so it stays well inside the newcomer's window and the two settle.
      const healthy = upMs !== undefined &&
        (upMs >= policy.resetAfterMs || (event.closedByRelay === true && upMs >= policy.displacedWithinMs))
      const failures = healthy ? 0 : state.failures
      const quickClose = upMs !== undefined && event.closedByRelay === true && upMs < policy.displacedWithinMs
      const displacements = quickClose ? state.displacements + 1 : 0
      // displacements ≥ 2 implies quickClose, so upMs is set.
      if (displacements >= 2) {
        const delayMs = displacedDelayMs(policy, displacements - 2, event.jitter)
        return [
          {
            _tag: "BackingOff",
            failures: failures + 1,
            displacements,
            displaced: true,
            delayMs,
            retryAt: event.now + delayMs,
            lastError: `the relay closed our listen channel ${((upMs ?? 0) / 1000).toFixed(1)} s after it opened: ` +
              "another process is probably listening with the same identity on this relay, " +
              "or the relay does not allow our key " +
              `(${displacements} times in a row; retrying slowly, to take over once it is gone)`
          },
          { _tag: "Wait", delayMs }
        ]
      }
      const delayMs = backoffDelayMs(policy, failures, event.jitter)
      return [
        {
          _tag: "BackingOff",
          failures: failures + 1,
          displacements,
          displaced: false,
          delayMs,
          retryAt: event.now + delayMs,
          lastError: event.error
        },
        { _tag: "Wait", delayMs }
      ]
    }
    case "RetryDue":
      if (state._tag !== "BackingOff") return [state, none]
      return [
        { _tag: "Connecting", failures: state.failures, displacements: state.displacements, lastError: state.lastError },
        connect
      ]
    default:
      return absurd(event)
  }
}

const none: ReconnectCommand = { _tag: "None" }
const connect: ReconnectCommand = { _tag: "Connect" }
