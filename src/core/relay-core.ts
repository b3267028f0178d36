/**
 * The relay's decisions (PROTOCOL.md "Relay messages") as a pure state
 * machine: which connection is a listen channel, which connect channel waits
 * as a half tunnel, which two connections become a tunnel, and what closes
 * when, and why. No I/O, no clock, no randomness.
 *
 * How to drive it (the adapter's loop):
 * - Feed one `RelayEvent` at a time to `RelayCore.handle`; it returns the
 *   commands that event caused. Run EVERY returned command, in order, before
 *   feeding the next event (a command may be the reason a later event is
 *   ignored, e.g. a `Close` followed by that socket's late `Closed`).
 * - Time enters only as `Tick` events, one per tick (Offset: 1 s); ticks never
 *   go backwards and are never skipped (feed N ticks one by one). Every
 *   timeout here is counted in ticks, so a deadline "N ticks after X" fires on
 *   the N-th Tick fed after X, which is between N-1 and N tick periods of real
 *   time, as in Offset.
 * - Connection ids are chosen by the adapter and never reused.
 * - Once the core has emitted `Close { id }`, or has been told `Closed { id }`,
 *   it forgets `id`: every later event naming it is ignored. So late messages
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
 * - Opened beyond `maxUnidentified` connections that have not sent their
 *   first message yet → close "over-limit".
 * - No `Authenticated` within `handshakeTimeoutTicks` of `Opened` →
 *   "timeout-handshake"; no first message within `initTimeoutTicks` of
 *   `Authenticated` → "timeout-init".
 * - A first message that does not decode as an InitConnection →
 *   "protocol-violation"; a client key outside the allow-list (when one is
 *   set) → "not-allowed". Relay messages carry no type tag and Cap'n Proto
 *   reads absent fields as zero, so some wrong messages decode as right ones
 *   (an IncomingConnection as listen; connect(K) on a listen channel as
 *   RejectConnection(K)), as in Offset; only undecodable bytes are violations.
 * - listen → listen channel for the authenticated key. The newest listen
 *   channel for a key wins: the older is closed "replaced", and its pending
 *   half tunnels are closed "listener-gone" (the new channel never got their
 *   IncomingConnection, so they could only time out; the connector retries).
 * - connect(K): no listen channel for K → "no-such-listener"; a half tunnel
 *   from the same connector to K already pending → the NEW one is closed
 *   "duplicate" (Offset keeps the first; the (fix) below drops a dead first
 *   one as soon as the adapter sees it close); `maxPendingHalfTunnelsPerListener`
 *   pending for K → "over-limit". Else `HoldConnect` + `SendIncomingConnection`
 *   to K's listen channel. An existing TUNNEL between the pair does not block
 *   a new connect (Offset's does; a stale tunnel would block reconnects).
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
 * - `AllowListChanged` applies to first messages from then on; connections
 *   already past their first message stay (a key removed from the list can
 *   no longer listen, connect or accept anew, but its open tunnels finish).
 * - `Shutdown`: every connection that is not part of a tunnel is closed
 *   "shutting-down", new connections too; tunnels may drain for
 *   `shutdownDrainTicks`, then are closed "shutting-down".
 * - The adapter breaking this contract on a known connection (Authenticated
 *   twice, a message before Authenticated or on a connect/accept channel, an
 *   id reused while open) closes that connection "adapter-misuse": a bug made
 *   visible, harming no other connection.
 */
import { publicKeyHex, publicKeyLength } from "./keys.ts"
import { decodeInitConnection, decodeRejectConnection, encodeIncomingConnection } from "./messages.ts"

/** A connection's id, chosen by the adapter, unique for the relay's lifetime. */
export type ConnectionId = number & { readonly ConnectionId: unique symbol }

/** Brands a number as a ConnectionId (the adapter's counter). */
export const ConnectionId = (n: number): ConnectionId => n as ConnectionId

/** Something that happened, for the core to decide on. */
export type RelayEvent =
  /** A TCP connection was accepted; its secure-channel handshake starts. */
  | { readonly _tag: "Opened"; readonly id: ConnectionId }
  /** The handshake finished; `publicKey` (32 bytes) is the client's proven identity. */
  | { readonly _tag: "Authenticated"; readonly id: ConnectionId; readonly publicKey: Uint8Array }
  /** One decrypted application message for the core (see "Which messages" in the module header). */
  | { readonly _tag: "Received"; readonly id: ConnectionId; readonly message: Uint8Array }
  /** The connection closed for any reason the adapter saw: EOF, error, keepalive timeout. */
  | { readonly _tag: "Closed"; readonly id: ConnectionId }
  /** One tick passed. */
  | { readonly _tag: "Tick" }
  /** The allow-list now holds `keys` (lower-case hex, as `publicKeyHex` in keys.ts writes them); undefined = open relay. */
  | { readonly _tag: "AllowListChanged"; readonly keys: ReadonlySet<string> | undefined }
  /** Graceful shutdown began: stop taking new work, let tunnels drain. */
  | { readonly _tag: "Shutdown" }

/** Why the core closes a connection; every `Close` carries exactly one. */
export type CloseReason =
  /** The secure-channel handshake did not finish within handshakeTimeoutTicks. */
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
  /** A cap was reached: unidentified connections, or half tunnels for one listener. */
  | "over-limit"
  /** The relay is shutting down. */
  | "shutting-down"
  /** The adapter broke the driving contract for this connection (a bug, made visible). */
  | "adapter-misuse"

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
  "adapter-misuse"
]

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
   * Close connection `id`. When `reason` is "peer-closed", first write to it
   * what was already read from its peer (buffered and in-flight messages),
   * then close; otherwise close now. Do not report `Closed` for it (harmless
   * if you do: the core has already forgotten `id`).
   */
  | { readonly _tag: "Close"; readonly id: ConnectionId; readonly reason: CloseReason }

/** Limits and timeouts; `defaultRelayConfig` holds Offset's values. */
export interface RelayConfig {
  /** Ticks from Opened to Authenticated. Offset has none (it caps concurrent handshakes instead); 8 is ours. */
  readonly handshakeTimeoutTicks: number
  /** Ticks from Authenticated to the first message (Offset: 4, counted after the handshake too). */
  readonly initTimeoutTicks: number
  /** Ticks a half tunnel waits for accept (PROTOCOL.md half_tunnel_ticks: 32). */
  readonly halfTunnelTicks: number
  /** Half tunnels pending for one listener; more connects are closed "over-limit". */
  readonly maxPendingHalfTunnelsPerListener: number
  /** Connections opened but without a first message yet; more are closed "over-limit". */
  readonly maxUnidentified: number
  /** Ticks tunnels may drain after Shutdown before they are closed. */
  readonly shutdownDrainTicks: number
  /** Client keys (lower-case hex) allowed to send a first message; undefined = open relay. */
  readonly allowList: ReadonlySet<string> | undefined
}

/** Offset's values where Offset has one; documented choices otherwise. */
export const defaultRelayConfig: RelayConfig = {
  handshakeTimeoutTicks: 8,
  initTimeoutTicks: 4,
  halfTunnelTicks: 32,
  maxPendingHalfTunnelsPerListener: 64,
  maxUnidentified: 1024,
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
    "initTimeoutTicks",
    "halfTunnelTicks",
    "maxPendingHalfTunnelsPerListener",
    "maxUnidentified"
  ] as const
  for (const field of positive) {
    const value = config[field]
    if (!Number.isSafeInteger(value) || value < 1) {
      return { _tag: "RelayConfigError", field, message: `${field} must be a whole number ≥ 1, got ${value}` }
    }
  }
  if (!Number.isSafeInteger(config.shutdownDrainTicks) || config.shutdownDrainTicks < 0) {
    return {
      _tag: "RelayConfigError",
      field: "shutdownDrainTicks",
      message: `shutdownDrainTicks must be a whole number ≥ 0, got ${config.shutdownDrainTicks}`
    }
  }
  return undefined
}

/** Counts for metrics; all zero when the core holds nothing. (A type, not an interface, so it spreads into log annotations.) */
export type RelayStats = {
  /** Connections opened but without a first message yet (handshaking or awaiting InitConnection). */
  readonly unidentified: number
  /** Listen channels. */
  readonly listeners: number
  /** Connect channels waiting for accept. */
  readonly pendingHalfTunnels: number
  /** Tunnels (each is two connections). */
  readonly tunnels: number
  /** Every connection the core tracks. */
  readonly connections: number
}

/** What a connection is, as the core sees it; for tests and debugging. */
export type ConnectionRole = "handshaking" | "awaiting-init" | "listen" | "pending-connect" | "tunnel"

// One state per connection, holding only what is valid in it.
type Connection =
  | { readonly _tag: "Handshaking"; readonly deadline: number }
  | { readonly _tag: "AwaitingInit"; readonly key: Uint8Array; readonly deadline: number }
  | {
    readonly _tag: "Listening"
    readonly key: string
    // Connector key (hex) → its pending connect channel.
    readonly pending: Map<string, ConnectionId>
  }
  | {
    readonly _tag: "PendingConnect"
    readonly key: string
    readonly listener: ConnectionId
    readonly deadline: number
  }
  | { readonly _tag: "Tunnel"; readonly peer: ConnectionId }

const absurd = (value: never): never => {
  throw new Error(`unreachable: ${JSON.stringify(value)}`)
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
  private unidentified = 0
  private pendingHalfTunnels = 0
  private tunnelSides = 0

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

  /** Applies one event; returns the commands to run, in order, before the next event. */
  handle(event: RelayEvent): ReadonlyArray<RelayCommand> {
    const out: Array<RelayCommand> = []
    switch (event._tag) {
      case "Opened":
        this.onOpened(event.id, out)
        break
      case "Authenticated":
        this.onAuthenticated(event.id, event.publicKey, out)
        break
      case "Received":
        this.onReceived(event.id, event.message, out)
        break
      case "Closed":
        this.release(event.id, out)
        break
      case "Tick":
        this.onTick(out)
        break
      case "AllowListChanged":
        this.allowList = event.keys
        break
      case "Shutdown":
        this.onShutdown(out)
        break
      default:
        absurd(event)
    }
    return out
  }

  /** Current counts for metrics. */
  stats(): RelayStats {
    return {
      unidentified: this.unidentified,
      listeners: this.listeners.size,
      pendingHalfTunnels: this.pendingHalfTunnels,
      tunnels: this.tunnelSides / 2,
      connections: this.connections.size
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

  /** Sizes of every internal table, for tests: all zero means the core holds nothing. */
  internalSizes(): { readonly connections: number; readonly listeners: number; readonly deadlines: number } {
    return { connections: this.connections.size, listeners: this.listeners.size, deadlines: this.deadlines.size }
  }

  /**
   * Cross-checks the internal tables against each other (indexes, counters,
   * deadlines, tunnel symmetry); returns what is broken, empty when sound.
   * For tests: O(connections).
   */
  checkInvariants(): ReadonlyArray<string> {
    const problems: Array<string> = []
    let unidentified = 0
    let pending = 0
    let sides = 0
    let scheduled = 0
    for (const set of this.deadlines.values()) scheduled += set.size
    let timed = 0
    for (const [id, c] of this.connections) {
      switch (c._tag) {
        case "Handshaking":
        case "AwaitingInit":
          unidentified++
          timed++
          if (!this.deadlines.get(c.deadline)?.has(id)) problems.push(`${id}: ${c._tag} deadline not scheduled`)
          break
        case "Listening":
          if (this.listeners.get(c.key) !== id) problems.push(`${id}: listener not indexed under its key`)
          for (const [connector, pid] of c.pending) {
            const p = this.connections.get(pid)
            if (p?._tag !== "PendingConnect" || p.listener !== id || p.key !== connector) {
              problems.push(`${id}: pending entry ${connector} → ${pid} does not point back`)
            }
          }
          break
        case "PendingConnect": {
          pending++
          timed++
          const l = this.connections.get(c.listener)
          if (l?._tag !== "Listening" || l.pending.get(c.key) !== id) problems.push(`${id}: half tunnel not in its listener`)
          if (!this.deadlines.get(c.deadline)?.has(id)) problems.push(`${id}: half tunnel deadline not scheduled`)
          break
        }
        case "Tunnel": {
          sides++
          const p = this.connections.get(c.peer)
          if (p?._tag !== "Tunnel" || p.peer !== id || c.peer === id) problems.push(`${id}: tunnel peer not symmetric`)
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
    if (unidentified !== this.unidentified) problems.push(`unidentified ${this.unidentified} ≠ ${unidentified}`)
    if (pending !== this.pendingHalfTunnels) problems.push(`pending ${this.pendingHalfTunnels} ≠ ${pending}`)
    if (sides !== this.tunnelSides) problems.push(`tunnel sides ${this.tunnelSides} ≠ ${sides}`)
    if (scheduled !== timed) problems.push(`${scheduled} deadlines for ${timed} timed connections`)
    for (const at of this.deadlines.keys()) if (at <= this.now) problems.push(`deadline ${at} is in the past`)
    return problems
  }

  private onOpened(id: ConnectionId, out: Array<RelayCommand>): void {
    if (this.connections.has(id)) {
      // Two sockets under one id: neither can be told apart any more.
      this.close(id, "adapter-misuse", out)
      return
    }
    if (this.shutdownDeadline !== undefined) {
      out.push({ _tag: "Close", id, reason: "shutting-down" })
      return
    }
    if (this.unidentified >= this.config.maxUnidentified) {
      out.push({ _tag: "Close", id, reason: "over-limit" })
      return
    }
    this.put(id, { _tag: "Handshaking", deadline: this.now + this.config.handshakeTimeoutTicks })
  }

  private onAuthenticated(id: ConnectionId, publicKey: Uint8Array, out: Array<RelayCommand>): void {
    const connection = this.connections.get(id)
    if (connection === undefined) return
    if (connection._tag !== "Handshaking" || publicKey.length !== publicKeyLength) {
      this.close(id, "adapter-misuse", out)
      return
    }
    // A copy: the adapter may reuse its buffer, and the key is sent on later.
    this.put(id, { _tag: "AwaitingInit", key: publicKey.slice(), deadline: this.now + this.config.initTimeoutTicks })
  }

  private onReceived(id: ConnectionId, message: Uint8Array, out: Array<RelayCommand>): void {
    const connection = this.connections.get(id)
    if (connection === undefined) return
    switch (connection._tag) {
      case "AwaitingInit":
        this.onInit(id, connection.key, message, out)
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

  private onInit(id: ConnectionId, key: Uint8Array, message: Uint8Array, out: Array<RelayCommand>): void {
    const decoded = decodeInitConnection(message)
    if (decoded._tag === "Err") {
      this.close(id, "protocol-violation", out)
      return
    }
    const clientKey = publicKeyHex(key)
    if (this.allowList !== undefined && !this.allowList.has(clientKey)) {
      this.close(id, "not-allowed", out)
      return
    }
    const init = decoded.value
    switch (init._tag) {
      case "Listen": {
        const older = this.listeners.get(clientKey)
        if (older !== undefined) this.close(older, "replaced", out)
        this.put(id, { _tag: "Listening", key: clientKey, pending: new Map() })
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
          this.close(id, "over-limit", out)
          return
        }
        listener.pending.set(clientKey, id)
        this.put(id, {
          _tag: "PendingConnect",
          key: clientKey,
          listener: listenerId,
          deadline: this.now + this.config.halfTunnelTicks
        })
        out.push({ _tag: "HoldConnect", id, listener: listenerId })
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
        if (listener?._tag !== "Listening" || connectId === undefined) {
          this.close(id, "no-pending", out)
          return
        }
        listener.pending.delete(connectorKey)
        this.put(connectId, { _tag: "Tunnel", peer: id })
        this.put(id, { _tag: "Tunnel", peer: connectId })
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
    out: Array<RelayCommand>
  ): void {
    const decoded = decodeRejectConnection(message)
    if (decoded._tag === "Err") {
      this.close(id, "protocol-violation", out)
      return
    }
    const connectId = listener.pending.get(publicKeyHex(decoded.value.publicKey))
    if (connectId !== undefined) this.close(connectId, "rejected", out)
  }

  private onTick(out: Array<RelayCommand>): void {
    this.now++
    if (this.shutdownDeadline === this.now) this.closeAllTunnels(out)
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

  private onShutdown(out: Array<RelayCommand>): void {
    if (this.shutdownDeadline !== undefined) return
    this.shutdownDeadline = this.now + this.config.shutdownDrainTicks
    // Half tunnels first, so that closing their listeners does not report them "listener-gone".
    for (const [id, connection] of [...this.connections]) {
      if (connection._tag === "PendingConnect") this.close(id, "shutting-down", out)
    }
    for (const [id, connection] of [...this.connections]) {
      if (connection._tag !== "Tunnel") this.close(id, "shutting-down", out)
    }
    if (this.config.shutdownDrainTicks === 0) this.closeAllTunnels(out)
  }

  private closeAllTunnels(out: Array<RelayCommand>): void {
    for (const id of [...this.connections.keys()]) {
      const connection = this.connections.get(id)
      if (connection?._tag !== "Tunnel") continue
      // Both sides get the shutdown reason rather than one of them "peer-closed".
      out.push({ _tag: "Close", id, reason: "shutting-down" })
      out.push({ _tag: "Close", id: connection.peer, reason: "shutting-down" })
      this.drop(id)
      this.drop(connection.peer)
    }
  }

  // Emits Close for tracked `id`, then forgets it and closes what depended on it.
  private close(id: ConnectionId, reason: CloseReason, out: Array<RelayCommand>): void {
    if (!this.connections.has(id)) return
    out.push({ _tag: "Close", id, reason })
    this.release(id, out)
  }

  // Forgets `id` (already closed, or being closed by the caller) and closes
  // what depended on it: a listener's half tunnels, a tunnel's other side.
  private release(id: ConnectionId, out: Array<RelayCommand>): void {
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
          out.push({ _tag: "Close", id: connection.peer, reason: "peer-closed" })
          this.drop(connection.peer)
        }
        return
      default:
        absurd(connection)
    }
  }

  // The only two places connection state and its counters and deadlines change.
  private put(id: ConnectionId, connection: Connection): void {
    this.drop(id)
    this.connections.set(id, connection)
    switch (connection._tag) {
      case "Handshaking":
      case "AwaitingInit":
        this.unidentified++
        this.schedule(id, connection.deadline)
        break
      case "PendingConnect":
        this.pendingHalfTunnels++
        this.schedule(id, connection.deadline)
        break
      case "Tunnel":
        this.tunnelSides++
        break
      case "Listening":
        break
      default:
        absurd(connection)
    }
  }

  private drop(id: ConnectionId): void {
    const connection = this.connections.get(id)
    if (connection === undefined) return
    this.connections.delete(id)
    switch (connection._tag) {
      case "Handshaking":
      case "AwaitingInit":
        this.unidentified--
        this.unschedule(id, connection.deadline)
        break
      case "PendingConnect":
        this.pendingHalfTunnels--
        this.unschedule(id, connection.deadline)
        break
      case "Tunnel":
        this.tunnelSides--
        break
      case "Listening":
        break
      default:
        absurd(connection)
    }
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
