/**
 * A peer reachable by its public key through several relays at once
 * (federation): one listen channel per relay, each with its own reconnect
 * schedule (src/core/backoff.ts), so a dead relay never delays the others.
 *
 * On IncomingConnection(C) from a relay: the access policy decides. Denied:
 * RejectConnection(C) on that listen channel. Allowed: a new connection to
 * that relay saying accept(C), the end-to-end handshake expecting C's key,
 * then the authenticated stream goes to the application (`accept`). If any
 * step fails: RejectConnection(C) (harmless if the relay already dropped the
 * half tunnel). Those decisions, and the cap on accepts under way, are each
 * listen channel's ListenFlow (src/core/listen-flow.ts); this module asks
 * the policy, opens the connections and hands the streams over.
 *
 * Lifetimes: every listen channel and every tunnel lives in a child scope of
 * the listener's scope, so closing the listener closes them all; a dropped
 * listen channel does not close tunnels already made (as on the relay).
 * Streams waiting in the accept queue hold their tunnels open.
 *
 * Status: `status` gives each relay's state (connecting, listening, backing
 * off with the last error and the wait); `onEvent` hears every change and
 * every incoming connection, for logs. It is called synchronously and must
 * not throw.
 */
import * as Clock from "effect/Clock"
import * as Data from "effect/Data"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Queue from "effect/Queue"
import * as Result from "effect/Result"
import * as Scope from "effect/Scope"
import {
  type BackoffPolicy,
  checkBackoffPolicy,
  defaultBackoffPolicy,
  initialReconnect,
  jitterUnit,
  type ReconnectState,
  stepReconnect
} from "../../core/backoff.ts"
import { classifyFailure, describeOutcome } from "../../core/connect-outcome.ts"
import { bytesToHex } from "../../core/keys.ts"
import { type AcceptId, ListenFlow, type ListenFlowEvent, type Refusal } from "../../core/listen-flow.ts"
import { encodeRejectConnection } from "../../core/messages.ts"
import { formatRelayAddress, type RelayAddress } from "../../core/relay-address.ts"
import type { ChannelError, MessageChannel } from "../message-channel.ts"
import { openRelayConnection } from "../relay-connection.ts"
import { type ClientSettings, hopOptions, openTunnel } from "./tunnel.ts"
import type { PeerStream } from "./tunnel-stream.ts"
import { absurd } from "../../core/absurd.ts"

/**
 * Who may connect: a list of public keys, or a function of the peer's key
 * (32 bytes) returning a boolean or an Effect of one (an Effect that fails
 * denies).
 */
export type AccessPolicy =
  | ReadonlyArray<Uint8Array>
  | ((peer: Uint8Array) => boolean | Effect.Effect<boolean, unknown>)

/** Where one relay's listen channel is. */
export interface RelayStatus {
  /** The relay (`<key>@<host>:<port>`). */
  readonly relay: string
  readonly state: "connecting" | "listening" | "backing-off"
  /** Consecutive failures (resets after a channel stayed up long enough). */
  readonly failures: number
  /** While backing off: milliseconds from `since` until the next attempt. */
  readonly retryInMs?: number | undefined
  /** Why the last attempt or channel ended. */
  readonly lastError?: string | undefined
  /**
   * While backing off: the relay closed our listen channel soon after it
   * opened, so another process probably listens with our identity there; we
   * retry slowly (src/core/backoff.ts, "Displaced").
   */
  readonly displaced?: boolean | undefined
  /** When this state began (ms since the epoch). */
  readonly since: number
}

/** Something a listener did, for logs and tests. */
export type ListenerEvent =
  | { readonly _tag: "StatusChanged"; readonly status: RelayStatus }
  | { readonly _tag: "Incoming"; readonly relay: string; readonly peer: string }
  | { readonly _tag: "Denied"; readonly relay: string; readonly peer: string }
  /** Refused unasked: MAX_ACCEPTS_IN_PROGRESS accepts were already under way on that relay. */
  | { readonly _tag: "Busy"; readonly relay: string; readonly peer: string }
  | { readonly _tag: "Accepted"; readonly relay: string; readonly peer: string }
  | { readonly _tag: "AcceptFailed"; readonly relay: string; readonly peer: string; readonly message: string }

/** How to listen. */
export interface ListenerOptions {
  /** Relays to stay reachable through, all at once. */
  readonly relays: ReadonlyArray<RelayAddress>
  /** Who may connect. */
  readonly allow: AccessPolicy
  /** Reconnect schedule per relay (defaults: src/core/backoff.ts). */
  readonly backoff?: Partial<BackoffPolicy> | undefined
  /** Authenticated streams waiting for `accept` before new ones wait (default 64). */
  readonly acceptQueue?: number | undefined
  /** Hears status changes and incoming connections (synchronously; must not throw). */
  readonly onEvent?: ((event: ListenerEvent) => void) | undefined
}

/**
 * Accepts (policy check, accept connection, end-to-end handshake, hand-over)
 * under way at once per listen channel; IncomingConnections beyond it are
 * rejected, so a relay (or a flood through it) cannot make the listener open
 * connections without bound (src/core/listen-flow.ts).
 */
export { MAX_ACCEPTS_IN_PROGRESS } from "../../core/listen-flow.ts"

/** The listener was closed; no more streams will come. */
export class ListenerClosedError extends Data.TaggedError("ListenerClosedError")<{ readonly message: string }> {}

/** A running listener. */
export interface Listener {
  /** Our public key: what peers connect to. */
  readonly publicKey: Uint8Array
  /** The next authenticated stream (waits for one). */
  readonly accept: Effect.Effect<PeerStream, ListenerClosedError>
  /** Each relay's current state, in the order given. */
  readonly status: () => ReadonlyArray<RelayStatus>
}

/**
 * Starts listening on every relay; runs until the current scope closes,
 * which closes every channel and tunnel it opened. Fails at once (a defect)
 * on an invalid backoff policy: that is the caller's bug.
 */
export const makeListener = (
  settings: ClientSettings,
  options: ListenerOptions
): Effect.Effect<Listener, never, Scope.Scope> =>
  Effect.gen(function*() {
    const policy: BackoffPolicy = { ...defaultBackoffPolicy, ...options.backoff }
    const policyError = checkBackoffPolicy(policy)
    if (policyError !== undefined) return yield* Effect.die(new RangeError(policyError.message))
    const listenerScope = yield* Effect.scope
    const queue = yield* Queue.bounded<PeerStream>(options.acceptQueue ?? 64)
    yield* Scope.addFinalizer(listenerScope, Queue.shutdown(queue))
    const emit = options.onEvent ?? (() => {})
    const now = yield* Clock.currentTimeMillis
    const statuses: Array<RelayStatus> = options.relays.map((relay) => ({
      relay: formatRelayAddress(relay),
      state: "connecting",
      failures: 0,
      since: now
    }))
    const allowed = allowFunction(options.allow)
    const hop = hopOptions(settings)

    const serveRelay = (index: number): Effect.Effect<void> =>
      Effect.gen(function*() {
        const relay = options.relays[index]!
        const name = statuses[index]!.relay
        let state: ReconnectState = initialReconnect
        const report = (next: ReconnectState, at: number) => {
          state = next
          const status: RelayStatus = {
            relay: name,
            state: next._tag === "Connecting" ? "connecting" : next._tag === "Listening" ? "listening" : "backing-off",
            failures: next.failures,
            retryInMs: next._tag === "BackingOff" ? next.delayMs : undefined,
            lastError: next._tag === "Listening" ? undefined : next.lastError,
            displaced: next._tag === "BackingOff" ? next.displaced : undefined,
            since: at
          }
          statuses[index] = status
          emit({ _tag: "StatusChanged", status })
        }
        const listening = Effect.map(Clock.currentTimeMillis, (at) => {
          const [next] = stepReconnect(policy, state, { _tag: "Listening", now: at })
          report(next, at)
        })
        report(state, yield* Clock.currentTimeMillis)
        while (true) {
          const ended = yield* Effect.scoped(listenOnce(relay, listening))
          const at = yield* Clock.currentTimeMillis
          const [backingOff, wait] = stepReconnect(policy, state, {
            _tag: "Failed",
            now: at,
            error: ended.error,
            closedByRelay: ended.closedByRelay,
            jitter: jitterUnit(settings.crypto.randomBytes(4))
          })
          report(backingOff, at)
          if (wait._tag === "Wait") yield* Effect.sleep(wait.delayMs)
          const [connecting] = stepReconnect(policy, state, { _tag: "RetryDue" })
          report(connecting, yield* Clock.currentTimeMillis)
        }
      })

    // One listen channel's life; returns why it ended (it never ends well).
    // Its ListenFlow (src/core/listen-flow.ts) decides what each
    // IncomingConnection gets; this only carries the decisions out.
    const listenOnce = (
      relay: RelayAddress,
      onListening: Effect.Effect<void>
    ): Effect.Effect<ListenEnd, never, Scope.Scope> => {
      // Set when the flow closed the channel: that, not the close it causes, is why it ended.
      let closedBecause: string | undefined
      return Effect.gen(function*() {
        const opened = yield* Effect.result(openRelayConnection(relay, { _tag: "Listen" }, hop))
        if (Result.isFailure(opened)) {
          return { error: describeOutcome(classifyFailure("relay", opened.failure)), closedByRelay: false }
        }
        const channel = opened.success
        yield* onListening
        const run = makeFlowRunner(relay, channel, (error) => {
          closedBecause = error
        })
        // Accepts under way outlive the channel; their refusals are then only reported.
        yield* Effect.addFinalizer(() => run({ _tag: "ChannelEnded" }))
        while (true) {
          const message = yield* channel.receive
          yield* run({ _tag: "Received", message })
          if (closedBecause !== undefined) return { error: closedBecause, closedByRelay: false }
        }
      }).pipe(
        Effect.catch((error: ChannelError) =>
          Effect.succeed(
            closedBecause !== undefined
              ? { error: closedBecause, closedByRelay: false }
              : error.reason === "Closed"
              ? {
                error:
                  "the relay closed the listen channel (it is stopping, or another process with our identity took our place there)",
                closedByRelay: true
              }
              : {
                error: `the listen channel ended (${error.detail ?? error.reason}): ${error.message}`,
                closedByRelay: false
              }
          )
        )
      )
    }

    // Feeds one listen channel's flow and carries out what it decides: the
    // slow steps (the policy, the accept tunnel, the hand-over) run in fibers
    // of the listener's scope, which feed the flow again when they are done.
    const makeFlowRunner = (
      relay: RelayAddress,
      channel: MessageChannel,
      onClose: (error: string) => void
    ): (event: ListenFlowEvent) => Effect.Effect<void> => {
      const flow = new ListenFlow()
      const name = formatRelayAddress(relay)
      // Streams between AcceptOpened and their Deliver command.
      const opened = new Map<AcceptId, PeerStream>()
      const run = (event: ListenFlowEvent): Effect.Effect<void> =>
        Effect.suspend(() => {
          flow.handle(event)
          return drain
        })
      const drain: Effect.Effect<void> = Effect.gen(function*() {
        for (let command = flow.poll(); command !== undefined; command = flow.poll()) {
          switch (command._tag) {
            case "CheckAccess": {
              const { id, peerKey } = command
              emit({ _tag: "Incoming", relay: name, peer: bytesToHex(peerKey) })
              yield* Effect.forkIn(
                Effect.flatMap(allowed(peerKey), (yes) => run({ _tag: "AccessDecided", id, allowed: yes })),
                listenerScope
              )
              break
            }
            case "OpenAccept": {
              const { id, peerKey } = command
              yield* Effect.forkIn(
                Effect.flatMap(openAccept(relay, peerKey), (result) => {
                  if (Result.isFailure(result)) return run({ _tag: "AcceptFailed", id, message: result.failure })
                  opened.set(id, result.success)
                  return run({ _tag: "AcceptOpened", id })
                }),
                listenerScope
              )
              break
            }
            case "Deliver": {
              const { id, peerKey } = command
              // The flow hands out Deliver only right after AcceptOpened, which set it.
              const stream = opened.get(id)!
              opened.delete(id)
              emit({ _tag: "Accepted", relay: name, peer: bytesToHex(peerKey) })
              yield* Effect.forkIn(
                Effect.andThen(Queue.offer(queue, stream), run({ _tag: "Delivered", id })),
                listenerScope
              )
              break
            }
            case "Refuse": {
              emit(refusalEvent(name, command.peerKey, command.refusal))
              if (command.sendReject) {
                // Harmless if the relay already dropped the half tunnel.
                yield* Effect.ignore(channel.send(encodeRejectConnection({ publicKey: command.peerKey })))
              }
              break
            }
            case "CloseChannel":
              onClose(command.error)
              yield* channel.close
              break
            default:
              absurd(command)
          }
        }
      })
      return run
    }

    // The accept tunnel for `peerKey`, in its own child scope of the listener's
    // (closed here when it fails); fails with a message for the log.
    const openAccept = (relay: RelayAddress, peerKey: Uint8Array): Effect.Effect<Result.Result<PeerStream, string>> =>
      Effect.gen(function*() {
        const scope = yield* Scope.fork(listenerScope)
        const exit = yield* Effect.exit(
          openTunnel(
            settings,
            relay,
            { _tag: "Accept", publicKey: peerKey },
            scope,
            hop.handshakeTimeoutMs
          )
        )
        if (Exit.isSuccess(exit)) return Result.succeed(exit.value)
        yield* Scope.close(scope, Exit.void)
        const reason = exit.cause.reasons.find((r) => r._tag === "Fail")
        return Result.fail(reason?._tag === "Fail" ? `${reason.error.phase}: ${reason.error.message}` : "interrupted")
      })

    for (let i = 0; i < options.relays.length; i++) {
      yield* Effect.forkIn(serveRelay(i), listenerScope)
    }

    return {
      publicKey: settings.identity.publicKey,
      accept: Queue.take(queue).pipe(
        Effect.catchCause(() => Effect.fail(new ListenerClosedError({ message: "the listener was closed" })))
      ),
      status: () => [...statuses]
    } satisfies Listener
  })

/** How one listen channel ended: why, and whether the relay closed it cleanly. */
interface ListenEnd {
  readonly error: string
  readonly closedByRelay: boolean
}

const allowFunction = (policy: AccessPolicy): (peer: Uint8Array) => Effect.Effect<boolean> => {
  if (typeof policy === "function") {
    return (peer) =>
      Effect.suspend(() => {
        const answer = policy(peer)
        return typeof answer === "boolean" ? Effect.succeed(answer) : Effect.orElseSucceed(answer, () => false)
      }).pipe(Effect.catchDefect(() => Effect.succeed(false)))
  }
  const keys = new Set(policy.map(bytesToHex))
  return (peer) => Effect.succeed(keys.has(bytesToHex(peer)))
}

// The log event of a refused IncomingConnection.
const refusalEvent = (relay: string, peerKey: Uint8Array, refusal: Refusal): ListenerEvent => {
  const peer = bytesToHex(peerKey)
  switch (refusal._tag) {
    case "Busy":
      return { _tag: "Busy", relay, peer }
    case "Denied":
      return { _tag: "Denied", relay, peer }
    case "AcceptFailed":
      return { _tag: "AcceptFailed", relay, peer, message: refusal.message }
    default:
      return absurd(refusal)
  }
}
