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
 * half tunnel).
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
import { decodeIncomingConnection, encodeRejectConnection } from "../../core/messages.ts"
import { formatRelayAddress, type RelayAddress } from "../../core/relay-address.ts"
import type { ChannelError, MessageChannel } from "../message-channel.ts"
import { openRelayConnection } from "../relay-connection.ts"
import { type ClientSettings, hopOptions, openTunnel } from "./tunnel.ts"
import type { PeerStream } from "./tunnel-stream.ts"

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
 * Accepts (policy check, accept connection, end-to-end handshake) under way
 * at once per listen channel; IncomingConnections beyond it are rejected, so
 * a relay (or a flood through it) cannot make the listener open connections
 * without bound.
 */
export const MAX_ACCEPTS_IN_PROGRESS = 32

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
    const listenOnce = (
      relay: RelayAddress,
      onListening: Effect.Effect<void>
    ): Effect.Effect<ListenEnd, never, Scope.Scope> =>
      Effect.gen(function*() {
        const opened = yield* Effect.result(openRelayConnection(relay, { _tag: "Listen" }, hop))
        if (Result.isFailure(opened)) {
          return { error: describeOutcome(classifyFailure("relay", opened.failure)), closedByRelay: false }
        }
        const channel = opened.success
        yield* onListening
        let inProgress = 0
        while (true) {
          const message = yield* channel.receive
          const decoded = decodeIncomingConnection(message)
          if (decoded._tag === "Err") {
            // The relay broke the protocol: drop this channel and reconnect later.
            yield* channel.close
            return {
              error: `the relay sent a malformed IncomingConnection: ${decoded.error.message}`,
              closedByRelay: false
            }
          }
          const peerKey = decoded.value.publicKey
          if (inProgress >= MAX_ACCEPTS_IN_PROGRESS) {
            emit({ _tag: "Busy", relay: formatRelayAddress(relay), peer: bytesToHex(peerKey) })
            yield* Effect.ignore(channel.send(encodeRejectConnection({ publicKey: peerKey })))
            continue
          }
          inProgress++
          yield* Effect.forkIn(
            incoming(relay, channel, peerKey).pipe(Effect.ensuring(Effect.sync(() => inProgress--))),
            listenerScope
          )
        }
      }).pipe(
        Effect.catch((error: ChannelError) =>
          Effect.succeed(
            error.reason === "Closed"
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

    const incoming = (
      relay: RelayAddress,
      listenChannel: MessageChannel,
      peerKey: Uint8Array
    ): Effect.Effect<void> =>
      Effect.gen(function*() {
        const peer = bytesToHex(peerKey)
        const name = formatRelayAddress(relay)
        emit({ _tag: "Incoming", relay: name, peer })
        const reject = Effect.ignore(listenChannel.send(encodeRejectConnection({ publicKey: peerKey })))
        if (!(yield* allowed(peerKey))) {
          emit({ _tag: "Denied", relay: name, peer })
          return yield* reject
        }
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
        if (Exit.isFailure(exit)) {
          yield* Scope.close(scope, Exit.void)
          const reason = exit.cause.reasons.find((r) => r._tag === "Fail")
          emit({
            _tag: "AcceptFailed",
            relay: name,
            peer,
            message: reason?._tag === "Fail" ? `${reason.error.phase}: ${reason.error.message}` : "interrupted"
          })
          return yield* reject
        }
        emit({ _tag: "Accepted", relay: name, peer })
        yield* Queue.offer(queue, exit.value)
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
