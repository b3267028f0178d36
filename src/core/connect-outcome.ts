/**
 * What happened when a connector tried to reach a peer through one relay, and
 * what to tell the user when every relay failed.
 *
 * A connect attempt has two phases: the hop to the relay (TCP, version,
 * secure channel expecting the relay's key, `connect(peer)`), then the
 * end-to-end handshake inside the tunnel expecting the peer's key. The same
 * low-level failure means different things in each, and names a different
 * party:
 * - the relay closes before it sent its version prefix: it refused us at
 *   accept (a connection limit, or it is shutting down);
 * - it closes during its handshake: the key in the address is not its key
 *   (it ends a handshake that names another key), or it is shutting down;
 * - it closes our connect channel before the peer's handshake: the peer is
 *   not listening there, the peer sent RejectConnection, or the relay
 *   refused the request (its allow-list, too many connects waiting for that
 *   peer, a duplicate, shutting down). The Offset protocol carries no reason,
 *   so the message lists them and points at the relay's log; it never blames
 *   the peer alone.
 * A wrong key in the hop is a relay that is not the one in the address; in
 * the tunnel it is someone other than the peer answering (a relay trying to
 * read or forge our traffic).
 */
import { absurd } from "./absurd.ts"
import type { ConnectionError } from "./connection.ts"

/** The low-level failure of one phase, as the channel adapter reports it (its reason and detail codes). */
export interface PhaseFailure {
  readonly reason: ChannelFailureReason
  readonly detail?: ChannelFailureDetail | undefined
  readonly message: string
}

/** Why a channel (a hop or the end-to-end channel) ended: the reasons of the adapters' ChannelError. */
export type ChannelFailureReason =
  | "Closed" // the peer ended the stream cleanly
  | "Reset" // the transport failed
  | "FrameTooLong"
  | "VersionMismatch"
  | "HandshakeTimeout"
  | "Protocol" // the secure channel or keepalive refused the peer: `detail` says how
  | "LocalClose" // we closed it

/**
 * The machine's own reason for a "Protocol" failure (UnexpectedRemoteKey,
 * BadSignature, KeepaliveTimeout, ...), or CLOSED_BEFORE_VERSION for a relay
 * that closed before it said anything.
 */
export type ChannelFailureDetail = ConnectionError["reason"] | typeof CLOSED_BEFORE_VERSION

/** How one attempt through one relay ended. */
export type AttemptOutcome =
  | { readonly _tag: "Connected" }
  /** TCP, version or the relay's handshake failed: the relay is down or not an offset relay. */
  | { readonly _tag: "Unreachable"; readonly message: string }
  /** The relay closed the connection before its handshake: a connection limit, or shutting down. */
  | { readonly _tag: "RelayRefused"; readonly message: string }
  /** The relay did not prove the key in its address. */
  | { readonly _tag: "RelayKeyMismatch"; readonly message: string }
  /** The relay closed our connect channel before the tunnel formed: the peer is not there or rejected us, or the relay refused the request. */
  | { readonly _tag: "Rejected"; readonly message: string }
  /** Inside the tunnel someone other than the peer answered, or the peer's handshake was broken. */
  | { readonly _tag: "PeerAuthenticationFailed"; readonly message: string }
  /** No answer in time (the relay's or the peer's handshake, or the overall deadline). */
  | { readonly _tag: "TimedOut"; readonly message: string }
  /** The connection to the relay broke during the tunnel phase. */
  | { readonly _tag: "Lost"; readonly message: string }
  /** Never started, or stopped because another relay answered first or the deadline passed. */
  | { readonly _tag: "Cancelled"; readonly message: string }

/** One relay tried, and how it went. */
export interface Attempt {
  /** The relay's address text (`<key>@<host>:<port>`). */
  readonly relay: string
  readonly outcome: AttemptOutcome
}

/** The failure of a whole connect, by what a script would act on. */
export type ConnectFailureReason =
  | "Rejected" // a relay closed our connect request: the peer is not there or refused us, or the relay refused the request
  | "RelayRefused" // every relay that answered refused the connection itself (a limit, shutting down)
  | "Authentication" // a relay or the peer failed to prove its key: possibly an attack
  | "Timeout" // nothing answered in time
  | "Unreachable" // no relay could be reached
  | "NoRelays" // the relay list was empty

/** PhaseFailure detail of a relay that closed before sending its version prefix (relay-connection.ts). */
export const CLOSED_BEFORE_VERSION = "ClosedBeforeVersion" as const

/** Names the outcome of a failed phase ("relay": the hop; "tunnel": the end-to-end handshake). */
export const classifyFailure = (phase: "relay" | "tunnel", failure: PhaseFailure): AttemptOutcome => {
  const keyProblem = failure.reason === "Protocol" &&
    (failure.detail === "UnexpectedRemoteKey" || failure.detail === "BadSignature" ||
      failure.detail === "WrongNonceEcho" || failure.detail === "UnexpectedDestination" ||
      failure.detail === "LowOrderPoint")
  if (phase === "relay") {
    if (keyProblem) {
      return {
        _tag: "RelayKeyMismatch",
        message: `the relay did not prove the key in its address (${failure.detail}): ${failure.message}`
      }
    }
    if (failure.reason === "HandshakeTimeout") return { _tag: "TimedOut", message: failure.message }
    if (failure.detail === CLOSED_BEFORE_VERSION) {
      return {
        _tag: "RelayRefused",
        message:
          "the relay refused the connection before its handshake: it is at a connection limit (in total, from our IP address, or handshakes at once) or shutting down; its log says which"
      }
    }
    if (failure.reason === "Closed") {
      // A relay that finds our expected key is not its own closes during the
      // handshake, possibly before it has shown us its key.
      return {
        _tag: "Unreachable",
        message:
          `the relay closed the connection during the handshake: the key in the address may not be the relay's, or the relay is shutting down: ${failure.message}`
      }
    }
    return { _tag: "Unreachable", message: failure.message }
  }
  if (keyProblem) {
    return {
      _tag: "PeerAuthenticationFailed",
      message:
        `the end-to-end handshake did not authenticate the peer (${failure.detail}): someone else answered inside the tunnel; ${failure.message}`
    }
  }
  switch (failure.reason) {
    case "Closed":
      return {
        _tag: "Rejected",
        message:
          "the relay closed our connect request before the peer answered: the peer is not listening on this relay or refused our key, or the relay refused the request (our key is not on its allow-list, too many connects wait for that peer, or it is shutting down); the relay's log names the reason"
      }
    case "HandshakeTimeout":
      return { _tag: "TimedOut", message: `the peer did not complete the end-to-end handshake: ${failure.message}` }
    case "Protocol":
      return {
        _tag: "PeerAuthenticationFailed",
        message: `the end-to-end handshake failed (${failure.detail ?? "protocol"}): ${failure.message}`
      }
    default:
      return { _tag: "Lost", message: `the connection to the relay broke: ${failure.message}` }
  }
}

/**
 * The reason of a failed connect: an authentication failure first (it may be
 * an attack and must not hide behind a timeout), then a rejection (the peer
 * was reached), then a timeout, else unreachable.
 */
export const connectFailureReason = (attempts: ReadonlyArray<Attempt>): ConnectFailureReason => {
  if (attempts.length === 0) return "NoRelays"
  const has = (tag: AttemptOutcome["_tag"]) => attempts.some((a) => a.outcome._tag === tag)
  if (has("RelayKeyMismatch") || has("PeerAuthenticationFailed")) return "Authentication"
  if (has("Rejected")) return "Rejected"
  if (has("TimedOut") || has("Cancelled")) return "Timeout"
  if (has("RelayRefused")) return "RelayRefused"
  return "Unreachable"
}

/** The message of a failed connect: the reason, then one line per relay tried. */
export const formatConnectFailure = (peer: string, attempts: ReadonlyArray<Attempt>): string => {
  const reason = connectFailureReason(attempts)
  const headline = {
    Rejected: `peer ${peer} was not reached: the relays closed our connect request (the peer is not listening there or refused us, or the relay refused us)`,
    RelayRefused: `could not reach peer ${peer}: the relays refused the connection (a connection limit, or shutting down)`,
    Authentication: `could not authenticate the relay or peer ${peer} (possible attack; nothing was sent to it)`,
    Timeout: `peer ${peer} did not answer in time`,
    Unreachable: `could not reach any relay of peer ${peer}`,
    NoRelays: `no relays given for peer ${peer}`
  }[reason]
  const lines = attempts.map((a) => `  ${a.relay}: ${describeOutcome(a.outcome)}`)
  return [headline, ...lines].join("\n")
}

/** One line about one attempt. */
export const describeOutcome = (outcome: AttemptOutcome): string => {
  switch (outcome._tag) {
    case "Connected":
      return "connected"
    case "Unreachable":
      return `unreachable: ${outcome.message}`
    case "RelayRefused":
      return `refused by the relay: ${outcome.message}`
    case "RelayKeyMismatch":
      return `wrong relay key: ${outcome.message}`
    case "Rejected":
      return `closed by the relay: ${outcome.message}`
    case "PeerAuthenticationFailed":
      return `peer authentication failed: ${outcome.message}`
    case "TimedOut":
      return `timed out: ${outcome.message}`
    case "Lost":
      return `lost: ${outcome.message}`
    case "Cancelled":
      return `cancelled: ${outcome.message}`
    default:
      return absurd(outcome)
  }
}
