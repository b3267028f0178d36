/**
 * Reaching a peer by its public key through its relays.
 *
 * Strategy (staggered race, like "happy eyeballs"): the first relay is tried
 * at once; the next one starts when the previous attempt failed, or when it
 * has not succeeded within `staggerMs` (default 1 s), whichever comes first.
 * So a refused or dead relay costs almost nothing, a hanging one costs at
 * most `staggerMs`, and in the common case only one relay is used. The first
 * attempt that authenticates the peer end to end wins; the others are
 * cancelled and their connections closed. (A cancelled attempt that had
 * already been accepted shows up at the listener as a tunnel that closes at
 * once; staggering keeps that rare.)
 *
 * Each attempt: a new relay connection saying `connect(peer)`, then the
 * end-to-end handshake expecting the peer's key. Success means the peer
 * proved its key through the tunnel; a reject, a close, a wrong key or the
 * overall deadline (`timeoutMs`, default 20 s) give a `ConnectError` that
 * lists every relay with what happened there (src/core/connect-outcome.ts).
 *
 * The relay closes a second pending connect from the same client to the same
 * peer ("duplicate"), so connects from this process to the same peer through
 * the same relay take turns until each one's tunnel has formed
 * (src/core/connect-gate.ts).
 */
import * as Data from "effect/Data"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Scope from "effect/Scope"
import {
  type Attempt,
  type AttemptOutcome,
  classifyFailure,
  type ConnectFailureReason,
  connectFailureReason,
  formatConnectFailure
} from "../../core/connect-outcome.ts"
import { ConnectGate, type ConnectGateEvent, GateTicket } from "../../core/connect-gate.ts"
import { bytesToHex } from "../../core/keys.ts"
import { formatRelayAddress, type RelayAddress } from "../../core/relay-address.ts"
import { type ClientSettings, openTunnel, type TunnelOpenError } from "./tunnel.ts"
import type { PeerStream } from "./tunnel-stream.ts"
import { absurd } from "../../core/absurd.ts"

/** How a connect tries the relays. */
export interface ConnectOptions {
  /** Start the next relay if the current attempt has not succeeded after this long (default 1000 ms). */
  readonly staggerMs?: number | undefined
  /** Overall deadline for the whole connect (default 20 s). */
  readonly timeoutMs?: number | undefined
}

/** Default wait before racing the next relay. */
export const DEFAULT_STAGGER_MS = 1000
/** Default overall connect deadline: below the relay's half-tunnel timeout (32 s) plus margins. */
export const DEFAULT_CONNECT_TIMEOUT_MS = 20_000

/** A connect that did not reach the peer: why, and what happened at each relay. */
export class ConnectError extends Data.TaggedError("ConnectError")<{
  readonly reason: ConnectFailureReason
  /** The peer's key (hex). */
  readonly peer: string
  readonly attempts: ReadonlyArray<Attempt>
  readonly message: string
}> {}

/**
 * Connects to `peerKey` through `relays`; the stream lives in the current
 * scope (and ends earlier if both sides end it or it fails).
 */
export const connectToPeer = (
  settings: ClientSettings,
  peerKey: Uint8Array,
  relays: ReadonlyArray<RelayAddress>,
  options: ConnectOptions = {}
): Effect.Effect<PeerStream, ConnectError, Scope.Scope> =>
  Effect.gen(function*() {
    const callerScope = yield* Effect.scope
    const peer = bytesToHex(peerKey)
    const staggerMs = options.staggerMs ?? DEFAULT_STAGGER_MS
    const timeoutMs = options.timeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS
    const names = relays.map(formatRelayAddress)
    type Slot = AttemptOutcome | "waiting" | "running"
    const slots: Array<Slot> = relays.map(() => "waiting")
    const failure = (): ConnectError => {
      const attempts: Array<Attempt> = names.map((relay, i) => ({ relay, outcome: finalOutcome(slots[i]!, timeoutMs) }))
      return new ConnectError({
        reason: connectFailureReason(attempts),
        peer,
        attempts,
        message: formatConnectFailure(peer, attempts)
      })
    }
    if (relays.length === 0) return yield* Effect.fail(failure())

    const winner = yield* Deferred.make<PeerStream>()
    const starts = relays.map(() => Deferred.makeUnsafe<void>())
    let finished = 0
    const allFailed = yield* Deferred.make<void>()

    const attempt = (index: number): Effect.Effect<void> => {
      let scope: Scope.Closeable | undefined
      return Effect.gen(function*() {
        const relay = relays[index]!
        yield* Deferred.await(starts[index]!)
        slots[index] = "running"
        const startNext = (): void => {
          const next = starts[index + 1]
          if (next !== undefined) Deferred.doneUnsafe(next, Exit.void)
        }
        // Not answered soon: race the next relay too.
        yield* Effect.forkChild(Effect.andThen(Effect.sleep(staggerMs), Effect.sync(startNext)))
        const tunnelScope = yield* Scope.fork(callerScope)
        scope = tunnelScope
        const exit = yield* Effect.exit(
          oneAtATime(
            `${bytesToHex(settings.identity.publicKey)}>${peer}@${names[index]}`,
            openTunnel(settings, relay, { _tag: "Connect", publicKey: peerKey }, tunnelScope, undefined)
          )
        )
        yield* Effect.uninterruptible(Effect.gen(function*() {
          // From here on this code, not the interrupt handler, owns the scope.
          scope = undefined
          if (Exit.isSuccess(exit)) {
            slots[index] = { _tag: "Connected" }
            // Only one attempt wins; a late success closes its own tunnel.
            if (!(yield* Deferred.succeed(winner, exit.value))) {
              slots[index] = { _tag: "Cancelled", message: "another relay answered first" }
              closeInBackground(tunnelScope)
            }
            return
          }
          slots[index] = outcomeOf(exit)
          closeInBackground(tunnelScope)
          startNext()
          if (++finished === relays.length) yield* Deferred.succeed(allFailed, undefined)
        }))
      }).pipe(
        // Cancelled (another relay won, or the deadline): the slot stays
        // "running" so the report says it had not answered yet.
        Effect.onInterrupt(() => Effect.sync(() => scope !== undefined && closeInBackground(scope)))
      )
    }

    Deferred.doneUnsafe(starts[0]!, Exit.void)
    const outcome = yield* Effect.scoped(
      Effect.gen(function*() {
        for (let i = 0; i < relays.length; i++) yield* Effect.forkScoped(attempt(i))
        return yield* Effect.raceFirst(
          Effect.map(Deferred.await(winner), (stream) => ({ _tag: "Won" as const, stream })),
          Effect.as(Deferred.await(allFailed), { _tag: "AllFailed" as const })
        ).pipe(Effect.timeoutOrElse({ duration: timeoutMs, orElse: () => Effect.succeed({ _tag: "Deadline" as const }) }))
      })
    )
    // Leaving the scoped block interrupted every attempt still running.
    if (outcome._tag === "Won") return outcome.stream
    // A success racing the deadline still counts.
    if (Deferred.isDoneUnsafe(winner)) return yield* Deferred.await(winner)
    return yield* Effect.fail(failure())
  })

// A relay connection closes gracefully (it lingers until the relay closes
// too, up to a bound); nobody waits for a connection we no longer want.
const closeInBackground = (scope: Scope.Closeable): void => {
  Effect.runFork(Scope.close(scope, Exit.void))
}

const finalOutcome = (slot: AttemptOutcome | "waiting" | "running", timeoutMs: number): AttemptOutcome => {
  if (slot === "waiting") return { _tag: "Cancelled", message: `not tried: the ${timeoutMs} ms deadline passed first` }
  if (slot === "running") return { _tag: "TimedOut", message: `no answer within the ${timeoutMs} ms deadline` }
  return slot
}

const outcomeOf = (exit: Exit.Exit<PeerStream, TunnelOpenError>): AttemptOutcome => {
  for (const reason of Exit.isFailure(exit) ? exit.cause.reasons : []) {
    if (reason._tag === "Fail") {
      return classifyFailure(reason.error.phase, reason.error)
    }
  }
  return { _tag: "Cancelled", message: "interrupted" }
}

// One pending connect per (us, peer, relay) at a time: the relay would close a
// second one as "duplicate" (src/core/connect-gate.ts decides who goes). One
// gate for the whole process, not one per client: the relay tells
// duplicates apart by our key alone, and every `connect()` call or
// RelayClient with the same identity in this process shares that key, while
// `connect()` has no instance to hold a gate.
const gate = new ConnectGate()
const granted = new Map<GateTicket, Deferred.Deferred<void>>()
let nextTicket = 0

const feedGate = (event: ConnectGateEvent): void => {
  gate.handle(event)
  for (let command = gate.poll(); command !== undefined; command = gate.poll()) {
    switch (command._tag) {
      case "Grant": {
        const turn = granted.get(command.ticket)
        granted.delete(command.ticket)
        if (turn !== undefined) Deferred.doneUnsafe(turn, Exit.void)
        break
      }
      default:
        absurd(command._tag)
    }
  }
}

const oneAtATime = <A, E, R>(key: string, effect: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
  Effect.acquireUseRelease(
    Effect.sync(() => {
      const ticket = GateTicket(nextTicket++)
      const turn = Deferred.makeUnsafe<void>()
      granted.set(ticket, turn)
      feedGate({ _tag: "Requested", ticket, key })
      return { ticket, turn }
    }),
    ({ turn }) => Effect.andThen(Deferred.await(turn), effect),
    ({ ticket }) =>
      Effect.sync(() => {
        granted.delete(ticket)
        feedGate({ _tag: "Left", ticket })
      })
  )
