/**
 * The relay's decisions (PROTOCOL.md "Relay messages") as a pure state
 * machine: which connection is a listen channel, which connect channel waits
 * as a half tunnel, which two connections become a tunnel, and what closes
 * when, and why. No I/O, no clock, no randomness.
 *
 * How to drive it (the adapter's loop):
 * - Feed one `RelayEvent` at a time to `RelayCore.handle`, then drain
 *   `poll()` until it returns undefined, running each command in order
 *   before feeding the next event (a command may be the reason a later
 *   event is ignored, e.g. a `Close` followed by that socket's late
 *   `Closed`). An event fed while a drain runs (a command's effect reports
 *   back) queues its commands after the ones already waiting, so they still
 *   run in the order their events were fed. The core changes in place and
 *   reuses its queue: an event costs no command array.
 * - Time enters only as `Tick` events, one per tick (Offset: 1 s); ticks never
 *   go backwards and are never skipped (feed N ticks one by one). Every
 *   timeout here is counted in ticks, so a deadline "N ticks after X" fires on
 *   the N-th Tick fed after X, which is between N-1 and N tick periods of real
 *   time, as in Offset.
 * - Connection ids are chosen by the adapter and never reused.
 * - Once the core has emitted `Close { id }`, or has been told `Ended { id }`
 *   or `Closed { id }`, it forgets `id`: every later event naming it is ignored. So late messages
 *   and the socket's own close notification after a `Close` are harmless.
 *
 * Which messages the adapter hands to the core (`Received`): every decrypted
 * application message (the keepalive layer's `message` payload) of an
 * authenticated connection, UNTIL the core names that connection in
 * `HoldConnect` (it is a connect channel) or `Splice` (it is the accept side
 * of a tunnel). From then on its messages are tunnel payload and never come
 * here: the adapter buffers a pending connect channel's messages (a small
 * bound, then it stops reading so TCP pushes back) and relays a tunnel's
 * messages itself. So the core sees each connection's first message and,
 * for listen channels, every later message (RejectConnection).
 *
 * Rules (one line each; the tests hold one case per line):
 * Admission (`Opened { prefix }`: the adapter names the client's address
 * prefix, see address-prefix.ts; checked in this order, the first that
 * fails closes the newcomer "over-limit" with that limit as its label):
 * - shutting down → "shutting-down"; `maxConnections` tracked → "max-connections";
 *   under memory pressure (below), from a prefix whose connections hold at
 *   least its share of the budget (`maxBufferedBytes` / prefixes with
 *   connections, its own counted) → "max-buffered-bytes": the prefixes that
 *   fill the budget are refused, the others still get in.
 * - Every Opened spends one of its prefix's handshake tokens (a bucket of
 *   `handshakeBurstPerPrefix`, refilled `handshakeRatePerPrefix` per tick),
 *   and `Authenticated` gives it back: only handshakes that fail or are
 *   abandoned count, so a stranger who makes the relay sign and verify
 *   without doing its own crypto is held to the rate, and honest clients
 *   (who finish) never are; none left → "handshake-rate".
 * - `maxUnidentifiedPerPrefix` unidentified from the prefix → "max-unidentified-per-prefix";
 *   `maxHandshakesPerPrefix` handshaking from it → "max-handshakes-per-prefix".
 * - `maxUnidentified` (resp. `maxHandshakes`) in all: the oldest one of the
 *   prefix holding the most is evicted ("unidentified-evicted",
 *   "handshake-evicted"; the one that has waited longest in its stage; ties
 *   between prefixes go to the smaller name) when that prefix holds more
 *   than the newcomer's would after admission; otherwise the newcomer is refused
 *   ("max-unidentified", "max-handshakes"). A few addresses thus cannot
 *   lock everyone else out: they can only evict each other.
 * Handshake and first message:
 * - No `HelloReceived` (version + ExchangeRandNonce) within `helloTimeoutTicks`
 *   of Opened, or no `Authenticated` within `handshakeTimeoutTicks` of it →
 *   "timeout-handshake"; no first message within `initTimeoutTicks` of
 *   `Authenticated` → "timeout-init".
 * - A first message that does not decode as an InitConnection →
 *   "protocol-violation"; a client key outside the allow-list (when one is
 *   set) → "not-allowed". Relay messages carry no type tag and Cap'n Proto
 *   reads absent fields as zero, so some wrong messages decode as right ones
 *   (an IncomingConnection as listen; connect(K) on a listen channel as
 *   RejectConnection(K)), as in Offset; only undecodable bytes are violations.
 * - listen and connect count toward their prefix's and their key's
 *   connections (accept channels do not: each answers a connect that was
 *   counted already, so a listener host's tunnels are bounded by its
 *   connectors, not by its own address); `maxConnectionsPerPrefix` →
 *   "max-connections-per-prefix", `maxConnectionsPerKey` → "max-connections-per-key".
 * - listen → listen channel for the authenticated key. The newest listen
 *   channel for a key wins: the older is closed "replaced", and its pending
 *   half tunnels are closed "listener-gone" (the new channel never got their
 *   IncomingConnection, so they could only time out; the connector retries).
 * - connect(K): no listen channel for K → "no-such-listener"; a half tunnel
 *   from the same connector to K already pending → the NEW one is closed
 *   "duplicate" (Offset keeps the first; the (fix) below drops a dead first
 *   one as soon as the adapter sees it close); `maxPendingHalfTunnelsPerListener`
 *   pending for K → "over-limit" ("max-pending-per-listener"). Else
 *   `HoldConnect` + `SendIncomingConnection` to K's listen channel. An
 *   existing TUNNEL between the pair does not block a new connect (Offset's
 *   does; a stale tunnel would block reconnects).
 * - accept(C) from K: a half tunnel C→K pending → `Splice`; else "no-pending".
 * - RejectConnection(C) on K's listen channel: C's pending half tunnel to K
 *   closes "rejected"; with nothing pending it is ignored (as Offset does: a
 *   reject racing a timeout or close is normal). A listen-channel message
 *   that does not decode as a RejectConnection → "protocol-violation" (its
 *   half tunnels close "listener-gone").
 * - A half tunnel not accepted within `halfTunnelTicks` → "timeout-half-tunnel".
 * - A listen channel closes → its pending half tunnels close "listener-gone";
 *   tunnels already made go on.
 * - (fix) A pending connect channel closes → its half tunnel is dropped at
 *   once; a later accept of it gets "no-pending".
 * - A tunnel side closes → the other side is closed "peer-closed" (the
 *   adapter writes what it already read from the closed side first).
 * - A listen channel with `maxPendingHalfTunnelsPerListener` IncomingConnection
 *   messages not yet written (`IncomingConnectionWritten` counts them off) is
 *   not reading: it closes "over-limit" ("listener-backlog"), and its half
 *   tunnels "listener-gone".
 * Ends the adapter sees (`Ended { reason }`: the client's FIN, a reset, a
 * bad frame or version, a failed handshake, a keepalive timeout, a broken
 * channel, a rekey flood) → `Close` with that reason (a rekey flood:
 * "over-limit", "rekey-rate"), and whatever depended on the connection
 * closes as if the core had closed it. A connection machine's own close
 * names its end by `endReasonOfChannelFailure`: a keepalive timeout and a
 * rekey flood by name, any other failure "handshake-failed" before the
 * client proved its key and "protocol-violation" after.
 * How a connection is closed (`Close.mode`):
 * - "abort" (read nothing more, cut within a tick: only what was already
 *   written still goes out) when the client never finished its handshake,
 *   or the reason says it is hostile or dead: timeouts of the handshake or
 *   init, protocol violations, adapter misuse, failed handshakes, bad frames
 *   or versions, keepalive timeouts, lost connections, internal errors, and
 *   the limits "stuck-tunnel", "rekey-rate", "unidentified-evicted",
 *   "handshake-evicted". Nothing we wrote is worth a linger to them.
 * - "graceful" otherwise, for a client we merely stop serving: FIN after
 *   what was written, then read and drop until its FIN (bounded by the
 *   adapter's linger), because a reset can make it lose what we wrote.
 * Memory budget (`Usage { heldBytes, deliveredBytes }`: what a connection
 * holds now, and the tunnel payload written to it so far):
 * - The relay is under memory pressure from the moment the bytes all
 *   connections hold reach `maxBufferedBytes` until they fall to its low
 *   water mark, three quarters of it.
 * - Under pressure a connection reporting at least its fair share
 *   (`maxBufferedBytes` / connections tracked) gets `PauseReading` (TCP
 *   pushes back on its sender); when the pressure ends every paused
 *   connection gets `ResumeReading`.
 * - Under pressure, a tunnel that holds bytes and whose sides have had
 *   nothing delivered for `stuckTunnelTicks` ticks is stuck (both ends
 *   stopped reading), not idle: both sides close "over-limit" ("stuck-tunnel").
 * Other:
 * - `AllowListChanged` applies to first messages from then on; connections
 *   already past their first message stay (a key removed from the list can
 *   no longer listen, connect or accept anew, but its open tunnels finish).
 * - `Shutdown { drainTicks }`: every connection that is not part of a
 *   tunnel is closed "shutting-down", new connections too; tunnels may drain
 *   for `drainTicks` (default `shutdownDrainTicks`), then are closed
 *   "shutting-down". This is the one drain deadline: the adapter waits for
 *   its sockets until `drainDeadlinePassed`.
 * - The adapter breaking this contract on a known connection (Authenticated
 *   twice, a message before Authenticated or on a connect/accept channel, an
 *   id reused while open) closes that connection "adapter-misuse": a bug made
 *   visible, harming no other connection.
 */
import { publicKeyHex, publicKeyLength } from "./keys.ts"
import { decodeInitConnection, decodeRejectConnection, encodeIncomingConnection } from "./messages.ts"
import { absurd } from "./absurd.ts"
import { CommandQueue } from "./command-queue.ts"
import type { ConnectionError } from "./connection.ts"

/** A connection's id, chosen by the adapter, unique for the relay's lifetime. */
export type ConnectionId = number & { readonly ConnectionId: unique symbol }

/** Brands a number as a ConnectionId (the adapter's counter). */
export const ConnectionId = (n: number): ConnectionId => n as ConnectionId

/** Something that happened, for the core to decide on. */
export type RelayEvent =
  /** A TCP connection was accepted from address prefix `prefix` (address-prefix.ts); its handshake starts. */
  | { readonly _tag: "Opened"; readonly id: ConnectionId; readonly prefix: string }
  /** The client's version frame and ExchangeRandNonce arrived: it is really starting a handshake. */
  | { readonly _tag: "HelloReceived"; readonly id: ConnectionId }
  /** The handshake finished; `publicKey` (32 bytes) is the client's proven identity. */
  | { readonly _tag: "Authenticated"; readonly id: ConnectionId; readonly publicKey: Uint8Array }
  /** One decrypted application message for the core (see "Which messages" in the module header). */
  | { readonly _tag: "Received"; readonly id: ConnectionId; readonly message: Uint8Array }
  /**
   * What connection `id` holds now (every buffer the relay keeps for it, and
   * what the OS socket has not taken yet) and the tunnel payload bytes
   * written to it so far (monotone). The adapter reports it after reads and
   * once per tick.
   */
  | { readonly _tag: "Usage"; readonly id: ConnectionId; readonly heldBytes: number; readonly deliveredBytes: number }
  /**
   * The adapter saw connection `id` end (EOF, error, keepalive timeout, ...):
   * the core answers with the `Close` that says how to close it, and closes
   * what depended on it.
   */
  | { readonly _tag: "Ended"; readonly id: ConnectionId; readonly reason: EndReason }
  /** Connection `id` is gone already (the server is stopping): forget it, no `Close` for it. */
  | { readonly _tag: "Closed"; readonly id: ConnectionId }
  /** One IncomingConnection message of listen channel `id` was written out (or failed to be). */
  | { readonly _tag: "IncomingConnectionWritten"; readonly id: ConnectionId }
  /** One tick passed. */
  | { readonly _tag: "Tick" }
  /** The allow-list now holds `keys` (lower-case hex, as `publicKeyHex` in keys.ts writes them); undefined = open relay. */
  | { readonly _tag: "AllowListChanged"; readonly keys: ReadonlySet<string> | undefined }
  /** Graceful shutdown began: stop taking new work, let tunnels drain for `drainTicks` (default: the config's). */
  | { readonly _tag: "Shutdown"; readonly drainTicks?: number }

/** Ends the adapter sees and reports as `Ended`. */
export type EndReason =
  /** The client closed its side (FIN). */
  | "client-closed"
  /** The connection failed (reset, write to a vanished peer). */
  | "connection-lost"
  /** A frame longer than the link allows. */
  | "frame-too-long"
  /** The version prefix was not ours. */
  | "version-mismatch"
  /** The secure-channel handshake failed (bad signature, wrong message). */
  | "handshake-failed"
  /** Nothing arrived for two keepalive periods. */
  | "keepalive-timeout"
  /** The authenticated channel broke its protocol (bad ciphertext, a bad message). */
  | "protocol-violation"
  /** The peer started rekeys faster than allowed. */
  | "rekey-rate"
  /** The adapter failed (a bug, made visible). */
  | "internal-error"

/** The end a connection machine's close means (module header, "Ends the adapter sees"). */
export const endReasonOfChannelFailure = (reason: ConnectionError["reason"], authenticated: boolean): EndReason =>
  reason === "KeepaliveTimeout"
    ? "keepalive-timeout"
    : reason === "RekeyFlood"
    ? "rekey-rate"
    : authenticated
    ? "protocol-violation"
    : "handshake-failed"

/** How the adapter closes a connection (module header, "How a connection is closed"). */
export type CloseMode = "graceful" | "abort"

/** Why the core closes a connection; every `Close` carries exactly one. */
export type CloseReason =
  /** The secure-channel handshake did not finish within handshakeTimeoutTicks (or its hello within helloTimeoutTicks). */
  | "timeout-handshake"
  /** No InitConnection within initTimeoutTicks after the handshake. */
  | "timeout-init"
  /** A half tunnel was not accepted within halfTunnelTicks. */
  | "timeout-half-tunnel"
  /** The listener answered RejectConnection for this connect channel. */
  | "rejected"
  /** connect(K), but nobody listens as K here. */
  | "no-such-listener"
  /** accept(C), but no half tunnel from C to this client is pending. */
  | "no-pending"
  /** connect(K) while the same client already has a half tunnel pending to K. */
  | "duplicate"
  /** A newer listen channel for the same key took this one's place. */
  | "replaced"
  /** The listen channel this half tunnel waited on closed or was replaced. */
  | "listener-gone"
  /** The other side of this tunnel closed. */
  | "peer-closed"
  /** The client sent bytes that are not the message allowed here. */
  | "protocol-violation"
  /** The client's key is not on the allow-list. */
  | "not-allowed"
  /** A limit refused or evicted the connection; the Close names it (`limit`). */
  | "over-limit"
  /** The relay is shutting down. */
  | "shutting-down"
  /** The adapter broke the driving contract for this connection (a bug, made visible). */
  | "adapter-misuse"
  /** Ends the adapter saw (`Ended`), but a rekey flood, which closes "over-limit". */
  | Exclude<EndReason, "rekey-rate" | "protocol-violation">

/** Every close reason, for metrics labels and exhaustive tests. */
export const CLOSE_REASONS: ReadonlyArray<CloseReason> = [
  "timeout-handshake",
  "timeout-init",
  "timeout-half-tunnel",
  "rejected",
  "no-such-listener",
  "no-pending",
  "duplicate",
  "replaced",
  "listener-gone",
  "peer-closed",
  "protocol-violation",
  "not-allowed",
  "over-limit",
  "shutting-down",
  "adapter-misuse",
  "client-closed",
  "connection-lost",
  "frame-too-long",
  "version-mismatch",
  "handshake-failed",
  "keepalive-timeout",
  "internal-error"
]

/** Which limit an "over-limit" close is for (the label of offset_relay_over_limit_total). */
export type RelayLimit =
  | "max-connections"
  | "max-buffered-bytes"
  | "handshake-rate"
  | "max-unidentified-per-prefix"
  | "max-handshakes-per-prefix"
  | "max-unidentified"
  | "unidentified-evicted"
  | "max-handshakes"
  | "handshake-evicted"
  | "max-connections-per-prefix"
  | "max-connections-per-key"
  | "max-pending-per-listener"
  | "listener-backlog"
  | "stuck-tunnel"
  | "rekey-rate"

/** Every limit the core enforces, for metrics labels and exhaustive tests. */
export const RELAY_LIMITS: ReadonlyArray<RelayLimit> = [
  "max-connections",
  "max-buffered-bytes",
  "handshake-rate",
  "max-unidentified-per-prefix",
  "max-handshakes-per-prefix",
  "max-unidentified",
  "unidentified-evicted",
  "max-handshakes",
  "handshake-evicted",
  "max-connections-per-prefix",
  "max-connections-per-key",
  "max-pending-per-listener",
  "listener-backlog",
  "stuck-tunnel",
  "rekey-rate"
]

// The closes whose client is hostile or dead (module header, "How a connection is closed").
const ABORTING_REASONS: ReadonlySet<CloseReason> = new Set<CloseReason>([
  "timeout-handshake",
  "timeout-init",
  "protocol-violation",
  "adapter-misuse",
  "handshake-failed",
  "frame-too-long",
  "version-mismatch",
  "keepalive-timeout",
  "connection-lost",
  "internal-error"
])
const ABORTING_LIMITS: ReadonlySet<RelayLimit> = new Set<RelayLimit>([
  "stuck-tunnel",
  "rekey-rate",
  "unidentified-evicted",
  "handshake-evicted"
])

const closeModeOf = (reason: CloseReason, limit: RelayLimit | undefined, authenticated: boolean): CloseMode =>
  !authenticated || ABORTING_REASONS.has(reason) || (limit !== undefined && ABORTING_LIMITS.has(limit))
    ? "abort"
    : "graceful"

/** Something the adapter must do, in the order given. */
export type RelayCommand =
  /**
   * Send `message` (the packed IncomingConnection { publicKey }) on listen
   * channel `id`. At most maxPendingHalfTunnelsPerListener of these are
   * unanswered per listener, which bounds the adapter's send queue.
   */
  | {
    readonly _tag: "SendIncomingConnection"
    readonly id: ConnectionId
    readonly publicKey: Uint8Array
    readonly message: Uint8Array
  }
  /**
   * `id` is now a pending connect channel waiting on listener `listener`:
   * stop forwarding its messages here; buffer them up to a small bound, then
   * stop reading (TCP pushes back on the connector).
   */
  | { readonly _tag: "HoldConnect"; readonly id: ConnectionId; readonly listener: ConnectionId }
  /**
   * Make one tunnel of the held connect channel and the accept channel: write
   * the connect side's buffered messages to the accept side, then relay
   * every message each side sends to the other, with backpressure. The
   * accept channel's messages stop coming here from now on.
   */
  | { readonly _tag: "Splice"; readonly connectId: ConnectionId; readonly acceptId: ConnectionId }
  /**
   * Close connection `id`, as `mode` says. When `reason` is "peer-closed",
   * first write to it what was already read from its peer (buffered and
   * in-flight messages), then close; otherwise close now. `limit` names the
   * limit of an "over-limit" close. Do not report `Ended` or `Closed` for it
   * (harmless if you do: the core has already forgotten `id`).
   */
  | {
    readonly _tag: "Close"
    readonly id: ConnectionId
    readonly reason: CloseReason
    readonly mode: CloseMode
    readonly limit?: RelayLimit
  }
  /** Stop reading connection `id`'s socket until `ResumeReading` (memory pressure). */
  | { readonly _tag: "PauseReading"; readonly id: ConnectionId }
  /** Read connection `id`'s socket again. */
  | { readonly _tag: "ResumeReading"; readonly id: ConnectionId }

/** Limits and timeouts; `defaultRelayConfig` holds Offset's values and documents our choices. */
export interface RelayConfig {
  /** Ticks from Opened to Authenticated. Offset has none (it caps concurrent handshakes instead). */
  readonly handshakeTimeoutTicks: number
  /** Ticks from Opened to HelloReceived (version + ExchangeRandNonce), which an honest client sends at once. */
  readonly helloTimeoutTicks: number
  /** Ticks from Authenticated to the first message (Offset: 4, counted after the handshake too). */
  readonly initTimeoutTicks: number
  /** Ticks a half tunnel waits for accept (PROTOCOL.md half_tunnel_ticks: 32). */
  readonly halfTunnelTicks: number
  /** Half tunnels pending for one listener; more connects are closed "over-limit". */
  readonly maxPendingHalfTunnelsPerListener: number
  /** Connections tracked in all. */
  readonly maxConnections: number
  /** Connections opened but without a first message yet, in all. */
  readonly maxUnidentified: number
  /** The same, from one address prefix. */
  readonly maxUnidentifiedPerPrefix: number
  /** Handshakes in progress (Opened, not yet Authenticated), in all (Offset's max_concurrent_encrypt). */
  readonly maxHandshakes: number
  /** The same, from one address prefix. */
  readonly maxHandshakesPerPrefix: number
  /** Handshakes one prefix may start per tick, on average. */
  readonly handshakeRatePerPrefix: number
  /** Handshakes one prefix may start at once before its rate applies. */
  readonly handshakeBurstPerPrefix: number
  /** Listen and connect channels (and the connect sides of tunnels) from one prefix. */
  readonly maxConnectionsPerPrefix: number
  /** The same, with one client key. */
  readonly maxConnectionsPerKey: number
  /** Bytes all connections may hold together before the relay is under memory pressure. */
  readonly maxBufferedBytes: number
  /** Ticks without delivery after which a tunnel holding bytes counts as stuck (under pressure). */
  readonly stuckTunnelTicks: number
  /** Ticks tunnels may drain after Shutdown before they are closed. */
  readonly shutdownDrainTicks: number
  /** Client keys (lower-case hex) allowed to send a first message; undefined = open relay. */
  readonly allowList: ReadonlySet<string> | undefined
}

/**
 * Offset's values where Offset has one; our choices otherwise:
 * - handshakeTimeoutTicks 8, helloTimeoutTicks 2: an honest client sends its
 *   version and ExchangeRandNonce the moment it connects, so a stranger that
 *   trickles them is gone within 1–2 s; the whole handshake gets 8 s for slow links.
 * - maxHandshakes 256 (Offset: 8, queued; we refuse or evict instead), 32 per
 *   prefix; maxUnidentified 1024, 64 per prefix: a few addresses hold a
 *   small share, and can evict only each other.
 * - handshakeRatePerPrefix 16, handshakeBurstPerPrefix 64: a failed or
 *   abandoned handshake cost the relay a key pair, a signature and a
 *   verification for nothing; honest clients finish theirs and are not counted.
 * - maxConnections 20,000: below a typical 65k file-descriptor limit.
 * - maxConnectionsPerPrefix and maxConnectionsPerKey 6,000: one listener host
 *   connecting to itself reaches 6,000 tunnels (12,000 connections), yet one
 *   address or key cannot take all 20,000.
 * - maxBufferedBytes 1 GiB (the server lowers it to a quarter of the
 *   machine's memory); stuckTunnelTicks 8.
 */
export const defaultRelayConfig: RelayConfig = {
  handshakeTimeoutTicks: 8,
  helloTimeoutTicks: 2,
  initTimeoutTicks: 4,
  halfTunnelTicks: 32,
  maxPendingHalfTunnelsPerListener: 64,
  maxConnections: 20_000,
  maxUnidentified: 1024,
  maxUnidentifiedPerPrefix: 64,
  maxHandshakes: 256,
  maxHandshakesPerPrefix: 32,
  handshakeRatePerPrefix: 16,
  handshakeBurstPerPrefix: 64,
  maxConnectionsPerPrefix: 6000,
  maxConnectionsPerKey: 6000,
  maxBufferedBytes: 1024 * 1024 * 1024,
  stuckTunnelTicks: 8,
  shutdownDrainTicks: 30,
  allowList: undefined
}

/** A config value out of range: which field, and why. */
export interface RelayConfigError {
  readonly _tag: "RelayConfigError"
  readonly field: keyof RelayConfig
  readonly message: string
}

/** Checks a config before use (user-supplied flags go through this); undefined when valid. */
export const checkRelayConfig = (config: RelayConfig): RelayConfigError | undefined => {
  const positive = [
    "handshakeTimeoutTicks",
    "helloTimeoutTicks",
    "initTimeoutTicks",
    "halfTunnelTicks",
    "maxPendingHalfTunnelsPerListener",
    "maxUnidentified",
    "maxUnidentifiedPerPrefix",
    "maxHandshakes",
    "maxHandshakesPerPrefix",
    "handshakeRatePerPrefix",
    "handshakeBurstPerPrefix",
    "maxConnectionsPerPrefix",
    "maxConnectionsPerKey",
    "maxBufferedBytes",
    "stuckTunnelTicks"
  ] as const
  for (const field of positive) {
    const value = config[field]
    if (!Number.isSafeInteger(value) || value < 1) {
      return { _tag: "RelayConfigError", field, message: `${field} must be a whole number ≥ 1, got ${value}` }
    }
  }
  // 0 is allowed: a relay that refuses every connection (maintenance), or drains at once.
  for (const field of ["maxConnections", "shutdownDrainTicks"] as const) {
    const value = config[field]
    if (!Number.isSafeInteger(value) || value < 0) {
      return { _tag: "RelayConfigError", field, message: `${field} must be a whole number ≥ 0, got ${value}` }
    }
  }
  return undefined
}

/** The low water mark of the memory budget: pressure ends at or below it. */
export const lowWaterBytes = (config: RelayConfig): number => Math.floor((config.maxBufferedBytes * 3) / 4)

/** Counts for metrics; all zero when the core holds nothing. (A type, not an interface, so it spreads into log annotations.) */
export type RelayStats = {
  /** Connections opened but without a first message yet (handshaking or awaiting InitConnection). */
  readonly unidentified: number
  /** Of those, the ones still in the handshake. */
  readonly handshaking: number
  /** Listen channels. */
  readonly listeners: number
  /** Connect channels waiting for accept. */
  readonly pendingHalfTunnels: number
  /** Tunnels (each is two connections). */
  readonly tunnels: number
  /** Every connection the core tracks. */
  readonly connections: number
  /** The bytes connections last reported holding, in all. */
  readonly heldBytes: number
  /** 1 while under memory pressure, else 0. */
  readonly memoryPressure: number
  /** Connections told to stop reading. */
  readonly pausedReading: number
}

/** The stats of a core that holds nothing. */
export const idleRelayStats: RelayStats = {
  unidentified: 0,
  handshaking: 0,
  listeners: 0,
  pendingHalfTunnels: 0,
  tunnels: 0,
  connections: 0,
  heldBytes: 0,
  memoryPressure: 0,
  pausedReading: 0
}

/** What a connection is, as the core sees it; for tests and debugging. */
export type ConnectionRole = "handshaking" | "awaiting-init" | "listen" | "pending-connect" | "tunnel"

// One state per connection, holding only what is valid in it. Every state
// keeps the prefix it came from; identified ones their key (hex).
type Connection =
  | {
    readonly _tag: "Handshaking"
    readonly prefix: string
    readonly opened: number
    readonly hello: boolean
    readonly deadline: number
  }
  | { readonly _tag: "AwaitingInit"; readonly prefix: string; readonly key: Uint8Array; readonly deadline: number }
  | {
    readonly _tag: "Listening"
    readonly prefix: string
    readonly key: string
    // Connector key (hex) → its pending connect channel.
    readonly pending: Map<string, ConnectionId>
    // IncomingConnection messages sent and not yet written out.
    unwritten: number
  }
  | {
    readonly _tag: "PendingConnect"
    readonly prefix: string
    readonly key: string
    readonly listener: ConnectionId
    readonly deadline: number
  }
  | {
    readonly _tag: "Tunnel"
    readonly prefix: string
    readonly key: string
    readonly peer: ConnectionId
    // The connect side counts toward its prefix and key; the accept side does not.
    readonly counted: boolean
  }

// What one address prefix holds, and its handshake token bucket.
interface PrefixState {
  // Insertion order is age: the first is the oldest (the eviction victim).
  readonly unidentified: Set<ConnectionId>
  readonly handshaking: Set<ConnectionId>
  // Every connection from the prefix (accept sides too); the entry stays while any is open.
  members: number
  // The bytes its connections last reported holding (Usage).
  held: number
  identified: number
  tokens: number
  refilledAt: number
}

// What a connection last reported (Usage), for the memory budget.
interface Usage {
  held: number
  delivered: number
  progressAt: number
  paused: boolean
}


const closeCommand = (id: ConnectionId, reason: CloseReason, authenticated: boolean, limit?: RelayLimit): RelayCommand => {
  const mode = closeModeOf(reason, limit, authenticated)
  return limit === undefined ? { _tag: "Close", id, reason, mode } : { _tag: "Close", id, reason, mode, limit }
}

/** The relay state machine; see the module header for how to drive it. */
export class RelayCore {
  readonly config: RelayConfig
  private now = 0
  private allowList: ReadonlySet<string> | undefined
  private shutdownDeadline: number | undefined = undefined
  private readonly connections = new Map<ConnectionId, Connection>()
  // Listener key (hex) → its listen channel; at most one per key.
  private readonly listeners = new Map<string, ConnectionId>()
  // Tick → connections whose timeout fires at that tick. Entries leave as
  // soon as their connection leaves the timed state, so a quiet relay holds
  // nothing here.
  private readonly deadlines = new Map<number, Set<ConnectionId>>()
  private readonly prefixes = new Map<string, PrefixState>()
  // Prefixes holding no connection whose bucket is still refilling: dropped once full.
  private readonly refilling = new Set<string>()
  // Identified (counted) connections per client key (hex).
  private readonly perKey = new Map<string, number>()
  private readonly usage = new Map<ConnectionId, Usage>()
  private unidentified = 0
  private handshaking = 0
  private pendingHalfTunnels = 0
  private tunnelSides = 0
  private heldBytes = 0
  // Prefixes holding at least one connection.
  private activePrefixes = 0
  private pressure = false
  private paused = 0
  private readonly commands = new CommandQueue<RelayCommand>()

  /** Throws on an invalid config: validate user input with checkRelayConfig first. */
  constructor(config: RelayConfig = defaultRelayConfig) {
    const error = checkRelayConfig(config)
    if (error !== undefined) throw new RangeError(error.message)
    this.config = config
    this.allowList = config.allowList
  }

  /** Ticks fed so far. */
  get tick(): number {
    return this.now
  }

  /** True once a shutdown's drain deadline has passed: nothing is left to wait for. */
  get drainDeadlinePassed(): boolean {
    return this.shutdownDeadline !== undefined && this.now >= this.shutdownDeadline
  }

  /** Applies one event; then drain `poll()` and run each command, in order. */
  handle(event: RelayEvent): void {
    const out = this.commands
    switch (event._tag) {
      case "Opened":
        this.onOpened(event.id, event.prefix, out)
        break
      case "HelloReceived":
        this.onHello(event.id)
        break
      case "Authenticated":
        this.onAuthenticated(event.id, event.publicKey, out)
        break
      case "Received":
        this.onReceived(event.id, event.message, out)
        break
      case "Usage":
        this.onUsage(event.id, event.heldBytes, event.deliveredBytes, out)
        break
      case "Ended":
        if (event.reason === "rekey-rate") this.close(event.id, "over-limit", out, "rekey-rate")
        else this.close(event.id, event.reason, out)
        break
      case "Closed":
        this.release(event.id, out)
        break
      case "IncomingConnectionWritten": {
        const connection = this.connections.get(event.id)
        if (connection?._tag === "Listening" && connection.unwritten > 0) connection.unwritten--
        break
      }
      case "Tick":
        this.onTick(out)
        break
      case "AllowListChanged":
        this.allowList = event.keys
        break
      case "Shutdown":
        this.onShutdown(event.drainTicks ?? this.config.shutdownDrainTicks, out)
        break
      default:
        absurd(event)
    }
    // Closes free memory: pressure may have ended.
    this.updatePressure(out)
  }

  /**
   * The next command, in the order the events caused them; undefined when
   * there is none. Drain it after each `handle`: commands that wait here
   * across the next event may act on a state that event changed.
   */
  poll(): RelayCommand | undefined {
    return this.commands.poll()
  }

  /** Current counts for metrics. */
  stats(): RelayStats {
    return {
      unidentified: this.unidentified,
      handshaking: this.handshaking,
      listeners: this.listeners.size,
      pendingHalfTunnels: this.pendingHalfTunnels,
      tunnels: this.tunnelSides / 2,
      connections: this.connections.size,
      heldBytes: this.heldBytes,
      memoryPressure: this.pressure ? 1 : 0,
      pausedReading: this.paused
    }
  }

  /** The role of connection `id`, or undefined when the core does not track it. */
  roleOf(id: ConnectionId): ConnectionRole | undefined {
    const connection = this.connections.get(id)
    if (connection === undefined) return undefined
    switch (connection._tag) {
      case "Handshaking":
        return "handshaking"
      case "AwaitingInit":
        return "awaiting-init"
      case "Listening":
        return "listen"
      case "PendingConnect":
        return "pending-connect"
      case "Tunnel":
        return "tunnel"
      default:
        return absurd(connection)
    }
  }

  /** True while connection `id` is told not to read (PauseReading without ResumeReading). */
  isPaused(id: ConnectionId): boolean {
    return this.usage.get(id)?.paused ?? false
  }

  /** Sizes of every internal table, for tests: all zero means the core holds nothing. */
  internalSizes(): {
    readonly connections: number
    readonly listeners: number
    readonly deadlines: number
    readonly prefixes: number
    readonly keys: number
    readonly usage: number
  } {
    return {
      connections: this.connections.size,
      listeners: this.listeners.size,
      deadlines: this.deadlines.size,
      prefixes: this.prefixes.size,
      keys: this.perKey.size,
      usage: this.usage.size
    }
  }

  /**
   * Cross-checks the internal tables against each other (indexes, counters,
   * deadlines, tunnel symmetry, per-prefix and per-key counts, held bytes);
   * returns what is broken, empty when sound. For tests: O(connections).
   */
  checkInvariants(): ReadonlyArray<string> {
    const problems: Array<string> = []
    let unidentified = 0
    let handshaking = 0
    let pending = 0
    let sides = 0
    let scheduled = 0
    for (const set of this.deadlines.values()) scheduled += set.size
    let timed = 0
    const prefixCounts = new Map<string, { members: number; unidentified: number; handshaking: number; identified: number }>()
    const keyCounts = new Map<string, number>()
    for (const [id, c] of this.connections) {
      const counts = prefixCounts.get(c.prefix) ?? { members: 0, unidentified: 0, handshaking: 0, identified: 0 }
      prefixCounts.set(c.prefix, counts)
      counts.members++
      const p = this.prefixes.get(c.prefix)
      switch (c._tag) {
        case "Handshaking":
          handshaking++
          counts.handshaking++
          if (!p?.handshaking.has(id)) problems.push(`${id}: handshake not in its prefix`)
        // falls through: a handshake is unidentified too
        case "AwaitingInit":
          unidentified++
          counts.unidentified++
          timed++
          if (!p?.unidentified.has(id)) problems.push(`${id}: unidentified connection not in its prefix`)
          if (!this.deadlines.get(c.deadline)?.has(id)) problems.push(`${id}: ${c._tag} deadline not scheduled`)
          break
        case "Listening":
          counts.identified++
          keyCounts.set(c.key, (keyCounts.get(c.key) ?? 0) + 1)
          if (this.listeners.get(c.key) !== id) problems.push(`${id}: listener not indexed under its key`)
          for (const [connector, pid] of c.pending) {
            const pc = this.connections.get(pid)
            if (pc?._tag !== "PendingConnect" || pc.listener !== id || pc.key !== connector) {
              problems.push(`${id}: pending entry ${connector} → ${pid} does not point back`)
            }
          }
          break
        case "PendingConnect": {
          pending++
          timed++
          counts.identified++
          keyCounts.set(c.key, (keyCounts.get(c.key) ?? 0) + 1)
          const l = this.connections.get(c.listener)
          if (l?._tag !== "Listening" || l.pending.get(c.key) !== id) problems.push(`${id}: half tunnel not in its listener`)
          if (!this.deadlines.get(c.deadline)?.has(id)) problems.push(`${id}: half tunnel deadline not scheduled`)
          break
        }
        case "Tunnel": {
          sides++
          if (c.counted) {
            counts.identified++
            keyCounts.set(c.key, (keyCounts.get(c.key) ?? 0) + 1)
          }
          const peer = this.connections.get(c.peer)
          if (peer?._tag !== "Tunnel" || peer.peer !== id || c.peer === id || peer.counted === c.counted) {
            problems.push(`${id}: tunnel peer not symmetric`)
          }
          break
        }
        default:
          absurd(c)
      }
    }
    for (const [key, id] of this.listeners) {
      const c = this.connections.get(id)
      if (c?._tag !== "Listening" || c.key !== key) problems.push(`listener index ${key} → ${id} is stale`)
    }
    for (const [prefix, p] of this.prefixes) {
      const counts = prefixCounts.get(prefix) ?? { members: 0, unidentified: 0, handshaking: 0, identified: 0 }
      if (p.members !== counts.members) problems.push(`prefix ${prefix}: members ${p.members} ≠ ${counts.members}`)
      if (p.unidentified.size !== counts.unidentified || p.handshaking.size !== counts.handshaking) {
        problems.push(`prefix ${prefix}: sets hold ${p.unidentified.size}/${p.handshaking.size}, connections ${counts.unidentified}/${counts.handshaking}`)
      }
      if (p.identified !== counts.identified) problems.push(`prefix ${prefix}: identified ${p.identified} ≠ ${counts.identified}`)
      if ((p.members === 0) !== this.refilling.has(prefix)) problems.push(`prefix ${prefix}: refilling set disagrees`)
    }
    for (const prefix of prefixCounts.keys()) if (!this.prefixes.has(prefix)) problems.push(`prefix ${prefix} not tracked`)
    for (const prefix of this.refilling) if (!this.prefixes.has(prefix)) problems.push(`refilling prefix ${prefix} not tracked`)
    if (keyCounts.size !== this.perKey.size) problems.push(`${this.perKey.size} keys counted for ${keyCounts.size}`)
    for (const [key, n] of keyCounts) if (this.perKey.get(key) !== n) problems.push(`key ${key}: ${this.perKey.get(key)} ≠ ${n}`)
    let held = 0
    let paused = 0
    const heldByPrefix = new Map<string, number>()
    for (const [id, u] of this.usage) {
      const c = this.connections.get(id)
      if (c === undefined) problems.push(`usage of forgotten ${id}`)
      else heldByPrefix.set(c.prefix, (heldByPrefix.get(c.prefix) ?? 0) + u.held)
      held += u.held
      if (u.paused) paused++
    }
    for (const [prefix, p] of this.prefixes) {
      if (p.held !== (heldByPrefix.get(prefix) ?? 0)) problems.push(`prefix ${prefix}: held ${p.held} ≠ ${heldByPrefix.get(prefix) ?? 0}`)
    }
    if (this.activePrefixes !== prefixCounts.size) problems.push(`active prefixes ${this.activePrefixes} ≠ ${prefixCounts.size}`)
    if (held !== this.heldBytes) problems.push(`held bytes ${this.heldBytes} ≠ ${held}`)
    if (paused !== this.paused) problems.push(`paused ${this.paused} ≠ ${paused}`)
    if (paused > 0 && !this.pressure) problems.push(`${paused} paused without pressure`)
    if (unidentified !== this.unidentified) problems.push(`unidentified ${this.unidentified} ≠ ${unidentified}`)
    if (handshaking !== this.handshaking) problems.push(`handshaking ${this.handshaking} ≠ ${handshaking}`)
    if (pending !== this.pendingHalfTunnels) problems.push(`pending ${this.pendingHalfTunnels} ≠ ${pending}`)
    if (sides !== this.tunnelSides) problems.push(`tunnel sides ${this.tunnelSides} ≠ ${sides}`)
    if (scheduled !== timed) problems.push(`${scheduled} deadlines for ${timed} timed connections`)
    for (const at of this.deadlines.keys()) if (at <= this.now) problems.push(`deadline ${at} is in the past`)
    return problems
  }

  private onOpened(id: ConnectionId, prefix: string, out: CommandQueue<RelayCommand>): void {
    if (this.connections.has(id)) {
      // Two sockets under one id: neither can be told apart any more.
      this.close(id, "adapter-misuse", out)
      return
    }
    // Refused before its handshake: nothing to flush to it.
    const refuse = (limit: RelayLimit) => out.push({ _tag: "Close", id, reason: "over-limit", mode: "abort", limit })
    if (this.shutdownDeadline !== undefined) {
      out.push({ _tag: "Close", id, reason: "shutting-down", mode: "abort" })
      return
    }
    if (this.connections.size >= this.config.maxConnections) return void refuse("max-connections")
    const state = this.prefixState(prefix)
    if (this.pressure) {
      const prefixes = this.activePrefixes + (state.members === 0 ? 1 : 0)
      if (state.held >= this.config.maxBufferedBytes / prefixes) return void refuse("max-buffered-bytes")
    }
    if (!this.takeHandshakeToken(state)) return void refuse("handshake-rate")
    if (state.unidentified.size >= this.config.maxUnidentifiedPerPrefix) {
      return void refuse("max-unidentified-per-prefix")
    }
    if (state.handshaking.size >= this.config.maxHandshakesPerPrefix) return void refuse("max-handshakes-per-prefix")
    if (this.unidentified >= this.config.maxUnidentified) {
      const victim = this.evictionVictim(state, (p) => p.unidentified)
      if (victim === undefined) return void refuse("max-unidentified")
      this.close(victim, "over-limit", out, "unidentified-evicted")
    }
    if (this.handshaking >= this.config.maxHandshakes) {
      const victim = this.evictionVictim(state, (p) => p.handshaking)
      if (victim === undefined) return void refuse("max-handshakes")
      this.close(victim, "over-limit", out, "handshake-evicted")
    }
    this.put(id, {
      _tag: "Handshaking",
      prefix,
      opened: this.now,
      hello: false,
      deadline: this.now + Math.min(this.config.helloTimeoutTicks, this.config.handshakeTimeoutTicks)
    })
  }

  // The oldest connection of the prefix holding the most in `table`, when it
  // holds more than the newcomer's prefix would after admission.
  private evictionVictim(
    own: PrefixState,
    table: (p: PrefixState) => ReadonlySet<ConnectionId>
  ): ConnectionId | undefined {
    // Ties go to the smaller prefix, so the choice does not depend on table order.
    let largest: PrefixState | undefined
    let largestName = ""
    for (const [name, p] of this.prefixes) {
      const size = table(p).size
      if (largest === undefined || size > table(largest).size || (size === table(largest).size && name < largestName)) {
        largest = p
        largestName = name
      }
    }
    if (largest === undefined || table(largest).size <= table(own).size + 1) return undefined
    // Sets keep insertion order and a connection is re-inserted at each stage
    // change, so the first is the one that has waited longest in its stage.
    return table(largest).values().next().value
  }

  private prefixState(prefix: string): PrefixState {
    let state = this.prefixes.get(prefix)
    if (state === undefined) {
      state = {
        unidentified: new Set(),
        handshaking: new Set(),
        members: 0,
        held: 0,
        identified: 0,
        tokens: this.config.handshakeBurstPerPrefix,
        refilledAt: this.now
      }
      this.prefixes.set(prefix, state)
      this.refilling.add(prefix)
    }
    return state
  }

  private takeHandshakeToken(state: PrefixState): boolean {
    this.refill(state)
    if (state.tokens < 1) return false
    state.tokens--
    return true
  }

  private refill(state: PrefixState): void {
    const { handshakeRatePerPrefix: rate, handshakeBurstPerPrefix: burst } = this.config
    state.tokens = Math.min(burst, state.tokens + (this.now - state.refilledAt) * rate)
    state.refilledAt = this.now
  }

  private onHello(id: ConnectionId): void {
    const connection = this.connections.get(id)
    if (connection?._tag !== "Handshaking" || connection.hello) return
    this.put(id, { ...connection, hello: true, deadline: connection.opened + this.config.handshakeTimeoutTicks })
  }

  private onAuthenticated(id: ConnectionId, publicKey: Uint8Array, out: CommandQueue<RelayCommand>): void {
    const connection = this.connections.get(id)
    if (connection === undefined) return
    if (connection._tag !== "Handshaking" || publicKey.length !== publicKeyLength) {
      this.close(id, "adapter-misuse", out)
      return
    }
    // The client proved its key, so it did its share of the crypto: its token comes back.
    const prefix = this.prefixes.get(connection.prefix)! // tracked while it holds a connection
    this.refill(prefix)
    prefix.tokens = Math.min(this.config.handshakeBurstPerPrefix, prefix.tokens + 1)
    // A copy: the adapter may reuse its buffer, and the key is sent on later.
    this.put(id, {
      _tag: "AwaitingInit",
      prefix: connection.prefix,
      key: publicKey.slice(),
      deadline: this.now + this.config.initTimeoutTicks
    })
  }

  private onReceived(id: ConnectionId, message: Uint8Array, out: CommandQueue<RelayCommand>): void {
    const connection = this.connections.get(id)
    if (connection === undefined) return
    switch (connection._tag) {
      case "AwaitingInit":
        this.onInit(id, connection, message, out)
        return
      case "Listening":
        this.onListenMessage(id, connection, message, out)
        return
      case "Handshaking": // nothing is decrypted before the handshake
      case "PendingConnect": // tunnel payload, buffered by the adapter
      case "Tunnel":
        this.close(id, "adapter-misuse", out)
        return
      default:
        absurd(connection)
    }
  }

  private onInit(
    id: ConnectionId,
    connection: Extract<Connection, { _tag: "AwaitingInit" }>,
    message: Uint8Array,
    out: CommandQueue<RelayCommand>
  ): void {
    const decoded = decodeInitConnection(message)
    if (decoded._tag === "Err") {
      this.close(id, "protocol-violation", out)
      return
    }
    const { key, prefix } = connection
    const clientKey = publicKeyHex(key)
    if (this.allowList !== undefined && !this.allowList.has(clientKey)) {
      this.close(id, "not-allowed", out)
      return
    }
    const init = decoded.value
    if (init._tag !== "Accept") {
      if ((this.prefixes.get(prefix)?.identified ?? 0) >= this.config.maxConnectionsPerPrefix) {
        this.close(id, "over-limit", out, "max-connections-per-prefix")
        return
      }
      if ((this.perKey.get(clientKey) ?? 0) >= this.config.maxConnectionsPerKey) {
        this.close(id, "over-limit", out, "max-connections-per-key")
        return
      }
    }
    switch (init._tag) {
      case "Listen": {
        const older = this.listeners.get(clientKey)
        if (older !== undefined) this.close(older, "replaced", out)
        this.put(id, { _tag: "Listening", prefix, key: clientKey, pending: new Map(), unwritten: 0 })
        this.listeners.set(clientKey, id)
        return
      }
      case "Connect": {
        const listenerId = this.listeners.get(publicKeyHex(init.publicKey))
        const listener = listenerId === undefined ? undefined : this.connections.get(listenerId)
        if (listenerId === undefined || listener?._tag !== "Listening") {
          this.close(id, "no-such-listener", out)
          return
        }
        if (listener.pending.has(clientKey)) {
          this.close(id, "duplicate", out)
          return
        }
        if (listener.pending.size >= this.config.maxPendingHalfTunnelsPerListener) {
          this.close(id, "over-limit", out, "max-pending-per-listener")
          return
        }
        listener.pending.set(clientKey, id)
        this.put(id, {
          _tag: "PendingConnect",
          prefix,
          key: clientKey,
          listener: listenerId,
          deadline: this.now + this.config.halfTunnelTicks
        })
        out.push({ _tag: "HoldConnect", id, listener: listenerId })
        if (listener.unwritten >= this.config.maxPendingHalfTunnelsPerListener) {
          // Its half tunnels, this one too, close "listener-gone".
          this.close(listenerId, "over-limit", out, "listener-backlog")
          return
        }
        listener.unwritten++
        out.push({
          _tag: "SendIncomingConnection",
          id: listenerId,
          publicKey: key,
          message: encodeIncomingConnection({ publicKey: key })
        })
        return
      }
      case "Accept": {
        // Half tunnels live in the acceptor's own listen channel, so only a
        // client listening here can accept, and only what was offered to it.
        const listenerId = this.listeners.get(clientKey)
        const listener = listenerId === undefined ? undefined : this.connections.get(listenerId)
        const connectorKey = publicKeyHex(init.publicKey)
        const connectId = listener?._tag === "Listening" ? listener.pending.get(connectorKey) : undefined
        const connect = connectId === undefined ? undefined : this.connections.get(connectId)
        if (listener?._tag !== "Listening" || connectId === undefined || connect === undefined) {
          this.close(id, "no-pending", out)
          return
        }
        listener.pending.delete(connectorKey)
        this.put(connectId, { _tag: "Tunnel", prefix: connect.prefix, key: connectorKey, peer: id, counted: true })
        this.put(id, { _tag: "Tunnel", prefix, key: clientKey, peer: connectId, counted: false })
        // A tunnel's clock for "no progress" starts now.
        this.usageOf(connectId).progressAt = this.now
        this.usageOf(id).progressAt = this.now
        out.push({ _tag: "Splice", connectId, acceptId: id })
        return
      }
      default:
        absurd(init)
    }
  }

  private onListenMessage(
    id: ConnectionId,
    listener: Extract<Connection, { _tag: "Listening" }>,
    message: Uint8Array,
    out: CommandQueue<RelayCommand>
  ): void {
    const decoded = decodeRejectConnection(message)
    if (decoded._tag === "Err") {
      this.close(id, "protocol-violation", out)
      return
    }
    const connectId = listener.pending.get(publicKeyHex(decoded.value.publicKey))
    if (connectId !== undefined) this.close(connectId, "rejected", out)
  }

  private usageOf(id: ConnectionId): Usage {
    let usage = this.usage.get(id)
    if (usage === undefined) {
      usage = { held: 0, delivered: 0, progressAt: this.now, paused: false }
      this.usage.set(id, usage)
    }
    return usage
  }

  private onUsage(id: ConnectionId, held: number, delivered: number, out: CommandQueue<RelayCommand>): void {
    const connection = this.connections.get(id)
    if (connection === undefined) return
    const usage = this.usageOf(id)
    this.heldBytes += held - usage.held
    this.prefixes.get(connection.prefix)!.held += held - usage.held // tracked while it holds a connection
    usage.held = held
    if (delivered > usage.delivered) {
      usage.delivered = delivered
      usage.progressAt = this.now
    }
    this.updatePressure(out)
    if (this.pressure && !usage.paused && held >= this.config.maxBufferedBytes / this.connections.size) {
      usage.paused = true
      this.paused++
      out.push({ _tag: "PauseReading", id })
    }
  }

  // Enters pressure at the budget, leaves it at the low water mark (resuming every paused connection).
  private updatePressure(out: CommandQueue<RelayCommand>): void {
    if (!this.pressure) {
      if (this.heldBytes >= this.config.maxBufferedBytes) this.pressure = true
      return
    }
    if (this.heldBytes > lowWaterBytes(this.config)) return
    this.pressure = false
    if (this.paused === 0) return
    for (const [id, usage] of this.usage) {
      if (!usage.paused) continue
      usage.paused = false
      out.push({ _tag: "ResumeReading", id })
    }
    this.paused = 0
  }

  private onTick(out: CommandQueue<RelayCommand>): void {
    this.now++
    if (this.shutdownDeadline === this.now) this.closeAllTunnels(out)
    for (const prefix of this.refilling) {
      const state = this.prefixes.get(prefix)
      if (state === undefined) continue
      this.refill(state)
      if (state.tokens >= this.config.handshakeBurstPerPrefix) {
        this.prefixes.delete(prefix)
        this.refilling.delete(prefix)
      }
    }
    if (this.pressure) this.closeStuckTunnels(out)
    const due = this.deadlines.get(this.now)
    if (due === undefined) return
    this.deadlines.delete(this.now)
    for (const id of due) {
      const connection = this.connections.get(id)
      if (connection === undefined) continue
      switch (connection._tag) {
        case "Handshaking":
          this.close(id, "timeout-handshake", out)
          break
        case "AwaitingInit":
          this.close(id, "timeout-init", out)
          break
        case "PendingConnect":
          this.close(id, "timeout-half-tunnel", out)
          break
        case "Listening":
        case "Tunnel":
          // Not timed: a stale entry would be a bug, and checkInvariants reports it.
          break
        default:
          absurd(connection)
      }
    }
  }

  private closeStuckTunnels(out: CommandQueue<RelayCommand>): void {
    for (const [id, connection] of [...this.connections]) {
      // Each tunnel once, from its connect side.
      if (connection._tag !== "Tunnel" || !connection.counted || !this.connections.has(id)) continue
      const mine = this.usageOf(id)
      const theirs = this.usageOf(connection.peer)
      if (mine.held + theirs.held === 0) continue
      if (this.now - Math.max(mine.progressAt, theirs.progressAt) < this.config.stuckTunnelTicks) continue
      // Both sides name the budget rather than one of them "peer-closed".
      out.push(closeCommand(id, "over-limit", true, "stuck-tunnel"))
      out.push(closeCommand(connection.peer, "over-limit", true, "stuck-tunnel"))
      this.drop(id)
      this.drop(connection.peer)
    }
  }

  private onShutdown(drainTicks: number, out: CommandQueue<RelayCommand>): void {
    if (this.shutdownDeadline !== undefined) return
    this.shutdownDeadline = this.now + drainTicks
    // Half tunnels first, so that closing their listeners does not report them "listener-gone".
    for (const [id, connection] of [...this.connections]) {
      if (connection._tag === "PendingConnect") this.close(id, "shutting-down", out)
    }
    for (const [id, connection] of [...this.connections]) {
      if (connection._tag !== "Tunnel") this.close(id, "shutting-down", out)
    }
    if (drainTicks <= 0) this.closeAllTunnels(out)
  }

  private closeAllTunnels(out: CommandQueue<RelayCommand>): void {
    for (const id of [...this.connections.keys()]) {
      const connection = this.connections.get(id)
      if (connection?._tag !== "Tunnel") continue
      // Both sides get the shutdown reason rather than one of them "peer-closed".
      out.push(closeCommand(id, "shutting-down", true))
      out.push(closeCommand(connection.peer, "shutting-down", true))
      this.drop(id)
      this.drop(connection.peer)
    }
  }

  // Emits Close for tracked `id`, then forgets it and closes what depended on it.
  private close(id: ConnectionId, reason: CloseReason, out: CommandQueue<RelayCommand>, limit?: RelayLimit): void {
    const connection = this.connections.get(id)
    if (connection === undefined) return
    out.push(closeCommand(id, reason, connection._tag !== "Handshaking", limit))
    this.release(id, out)
  }

  // Forgets `id` (already closed, or being closed by the caller) and closes
  // what depended on it: a listener's half tunnels, a tunnel's other side.
  private release(id: ConnectionId, out: CommandQueue<RelayCommand>): void {
    const connection = this.connections.get(id)
    if (connection === undefined) return
    this.drop(id)
    switch (connection._tag) {
      case "Handshaking":
      case "AwaitingInit":
        return
      case "Listening":
        if (this.listeners.get(connection.key) === id) this.listeners.delete(connection.key)
        for (const connectId of [...connection.pending.values()]) this.close(connectId, "listener-gone", out)
        return
      case "PendingConnect": {
        const listener = this.connections.get(connection.listener)
        if (listener?._tag === "Listening") listener.pending.delete(connection.key)
        return
      }
      case "Tunnel":
        // Dropped directly: releasing the peer would name `id` again.
        if (this.connections.has(connection.peer)) {
          out.push(closeCommand(connection.peer, "peer-closed", true))
          this.drop(connection.peer)
        }
        return
      default:
        absurd(connection)
    }
  }

  // The only two places connection state and its counters and deadlines change.
  private put(id: ConnectionId, connection: Connection): void {
    this.drop(id, false)
    this.connections.set(id, connection)
    const prefix = this.prefixState(connection.prefix)
    if (prefix.members++ === 0) this.activePrefixes++
    this.refilling.delete(connection.prefix)
    switch (connection._tag) {
      case "Handshaking":
        this.handshaking++
        prefix.handshaking.add(id)
      // falls through: a handshake is unidentified too
      case "AwaitingInit":
        this.unidentified++
        prefix.unidentified.add(id)
        this.schedule(id, connection.deadline)
        break
      case "PendingConnect":
        this.pendingHalfTunnels++
        this.schedule(id, connection.deadline)
        this.count(prefix, connection.key, 1)
        break
      case "Tunnel":
        this.tunnelSides++
        if (connection.counted) this.count(prefix, connection.key, 1)
        break
      case "Listening":
        this.count(prefix, connection.key, 1)
        break
      default:
        absurd(connection)
    }
  }

  // `forget`: false when `put` replaces the state (the connection's usage stays).
  private drop(id: ConnectionId, forget = true): void {
    const connection = this.connections.get(id)
    if (connection === undefined) return
    this.connections.delete(id)
    const prefix = this.prefixes.get(connection.prefix)! // tracked while it holds a connection
    switch (connection._tag) {
      case "Handshaking":
        this.handshaking--
        prefix.handshaking.delete(id)
      // falls through: a handshake is unidentified too
      case "AwaitingInit":
        this.unidentified--
        prefix.unidentified.delete(id)
        this.unschedule(id, connection.deadline)
        break
      case "PendingConnect":
        this.pendingHalfTunnels--
        this.unschedule(id, connection.deadline)
        this.count(prefix, connection.key, -1)
        break
      case "Tunnel":
        this.tunnelSides--
        if (connection.counted) this.count(prefix, connection.key, -1)
        break
      case "Listening":
        this.count(prefix, connection.key, -1)
        break
      default:
        absurd(connection)
    }
    if (--prefix.members === 0) {
      this.activePrefixes--
      this.refilling.add(connection.prefix)
    }
    if (!forget) return
    const usage = this.usage.get(id)
    if (usage === undefined) return
    this.usage.delete(id)
    this.heldBytes -= usage.held
    prefix.held -= usage.held
    if (usage.paused) this.paused--
  }

  private count(prefix: PrefixState, key: string, delta: 1 | -1): void {
    prefix.identified += delta
    const n = (this.perKey.get(key) ?? 0) + delta
    if (n === 0) this.perKey.delete(key)
    else this.perKey.set(key, n)
  }

  private schedule(id: ConnectionId, at: number): void {
    let set = this.deadlines.get(at)
    if (set === undefined) {
      set = new Set()
      this.deadlines.set(at, set)
    }
    set.add(id)
  }

  private unschedule(id: ConnectionId, at: number): void {
    const set = this.deadlines.get(at)
    if (set === undefined) return // its tick is being processed right now
    set.delete(id)
    if (set.size === 0) this.deadlines.delete(at)
  }
}
