/**
 * The relay server: the pure relay core (src/core/relay-core.ts) behind one
 * listener of a transport (TCP unless the options name another).
 *
 * Each accepted stream gets a hop (relay-hop.ts): an object driven by the
 * stream's events and the server's one tick, with no fiber or timer of its
 * own, so an idle connection costs its socket and a few small objects.
 * Every core command is run right after the event that caused it
 * (`dispatch`), synchronously, so the core and the hops never disagree.
 *
 * Admission is the core's (relay-core.ts "Admission"): every accepted stream
 * is an `Opened` with its address prefix, in the same synchronous step as
 * the accept, and a refusal closes it before any handshake work. Before a
 * client is authenticated its frames are capped at HANDSHAKE_FRAME_LIMIT.
 * Hop channels refuse messages that unpack to more than HOP_MAX_EXPANSION
 * times their wire size, and peers that rekey more than HOP_PEER_REKEY_LIMIT.
 *
 * Every close is the core's: an end a hop sees (the client's FIN, a reset,
 * a bad frame, a keepalive timeout) goes to the core as `Ended`, and the
 * core answers with the `Close` that says its reason and its mode, which
 * the hop carries out. Each close is counted once in
 * `offset_relay_closes_total` under its reason, and logged. Which messages
 * the core reads (the first message, listen channels) and which are tunnel
 * payload is the core's role for the connection (`roleOf`); the server
 * keeps no copy of it. The shutdown drain is the core's deadline.
 *
 * Memory: what a connection holds is its partial frame (≤ 1 MiB + header;
 * ≤ 4 KiB before authentication), a waiting connect channel's messages
 * (≤ inboxBytes + one message, by the buffers they keep alive) and what its
 * stream has not sent yet (a tunnel stops reading its side once the other's
 * stream holds inboxBytes). Hops report it to the core (`Usage`) after every
 * read and every tick; the core's memory budget answers with PauseReading /
 * ResumeReading (the stream is not read, so TCP pushes back).
 */
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Scope from "effect/Scope"
import * as Clock from "effect/Clock"
import * as LogLevel from "effect/LogLevel"
import * as References from "effect/References"
import { publicKeyHex as keyHex } from "../core/keys.ts"
import * as NodeOs from "node:os"
import { addressPrefix, defaultPrefixLengths, type PrefixLengths } from "../core/address-prefix.ts"
import { formatKeyForLog, type LogKeys } from "../core/log-keys.ts"
import { makeTokenBucket, type TokenBucket } from "../core/token-bucket.ts"
import {
  CLOSE_REASONS,
  type CloseReason,
  ConnectionId,
  defaultRelayConfig,
  RELAY_LIMITS,
  RelayCore,
  type RelayCommand,
  type RelayConfig,
  type RelayEvent,
  type RelayLimit
} from "../core/relay-core.ts"
import { Crypto } from "./crypto.ts"
import { Hop, type HopServer } from "./relay-hop.ts"
import { Metrics, registerProcessMetrics } from "./metrics.ts"
import type { ByteStream, Transport } from "./transport.ts"
import { tcpTransport } from "./transport-tcp.ts"
import { absurd } from "../core/absurd.ts"
import type { Identity } from "../core/keys.ts"

/** The relay's Ed25519 identity (keys.ts `Identity`). */
export type RelayIdentity = Identity

/** Everything an operator can set; `defaultRelayServerOptions` documents each default. */
export interface RelayServerOptions {
  readonly host: string
  /** 0 picks a free port (tests). */
  readonly port: number
  readonly identity: RelayIdentity
  /** Milliseconds per tick (Offset: 1000). */
  readonly tickMs: number
  /** The relay core's timeouts (ticks), admission caps, memory budget and allow-list. */
  readonly core: RelayConfig
  /** Which address prefix a client counts under for the core's per-prefix caps. */
  readonly prefixLengths: PrefixLengths
  /** Keepalive interval in ticks (PROTOCOL.md: 32). */
  readonly keepaliveTicks: number
  /** Rekey interval in ticks (PROTOCOL.md: 3600). */
  readonly rekeyIntervalTicks: number
  /** Largest random padding we add to a message. */
  readonly maxPaddingBytes: number
  /** Per-connection receive buffer before the relay stops reading that socket. */
  readonly inboxBytes: number
  /**
   * After the relay closes a connection, how long its socket may stay open
   * to flush what was already written to a peer that reads slowly; then it
   * is destroyed, so a peer that never reads cannot hold a socket forever.
   */
  readonly closeLingerMs: number
  /** How client keys appear in log lines: the first 8 hex digits ("short") or all ("full"). */
  readonly logKeys: LogKeys
  /** Per client key: bytes per second and burst; undefined = no rate limit. */
  readonly rateLimit: { readonly bytesPerSecond: number; readonly burstBytes: number } | undefined
  /** What clients connect over (default TCP). */
  readonly transport?: Transport
  /**
   * More ports to accept clients on, beside host:port (e.g. a WebSocket
   * port next to TCP); every connection, whatever it came over, goes to the
   * same core and counts against the same limits.
   */
  readonly extraListeners?: ReadonlyArray<{ readonly transport: Transport; readonly host: string; readonly port: number }>
}

/**
 * Defaults: Offset's protocol values, and limits sized for a small public
 * relay on one machine.
 * - tickMs 1000, keepaliveTicks 32, rekeyIntervalTicks 3600, core timeouts:
 *   Offset's values (PROTOCOL.md "Constants").
 * - core: relay-core.ts's defaults (which say why), with maxBufferedBytes
 *   min(1 GiB, a quarter of the machine's memory).
 * - prefixLengths: one IPv4 address, one IPv6 /64.
 * - maxPaddingBytes 255: PROTOCOL.md (fix) (Offset pads up to 64 KiB).
 * - inboxBytes 256 KiB: keeps a fast link busy for a few milliseconds of
 *   round trip; the bound a slow reader can make the relay hold per direction.
 * - closeLingerMs 10 s: time for a slow but alive client to read the last
 *   bytes we wrote before its close; a client that never reads costs a socket
 *   for no longer.
 * - rateLimit: none; an operator sets one per deployment.
 */
export const defaultRelayServerOptions = (identity: RelayIdentity): RelayServerOptions => ({
  host: "127.0.0.1",
  port: 4747,
  identity,
  tickMs: 1000,
  core: { ...defaultRelayConfig, maxBufferedBytes: defaultMaxBufferedBytes() },
  prefixLengths: defaultPrefixLengths,
  logKeys: "short",
  keepaliveTicks: 32,
  rekeyIntervalTicks: 3600,
  maxPaddingBytes: 255,
  inboxBytes: 256 * 1024,
  closeLingerMs: 10_000,
  rateLimit: undefined
})

/**
 * The defaults with short ticks (tests, simulations): the hello deadline
 * gets the handshake's ticks, since two ticks of a few dozen milliseconds
 * would cut off an honest client on a busy machine; everything else counts
 * in ticks as it does at 1 s.
 */
export const testRelayOptions = (identity: RelayIdentity, tickMs: number): RelayServerOptions => {
  const defaults = defaultRelayServerOptions(identity)
  return {
    ...defaults,
    port: 0,
    tickMs,
    core: { ...defaults.core, helloTimeoutTicks: defaults.core.handshakeTimeoutTicks }
  }
}

/** min(1 GiB, a quarter of this machine's memory): the default memory budget. */
export const defaultMaxBufferedBytes = (): number =>
  Math.min(defaultRelayConfig.maxBufferedBytes, Math.floor(NodeOs.totalmem() / 4))

/**
 * Hop channels (client ↔ relay) carry small relay messages and ciphertext,
 * which do not compress: a message may unpack to at most this many times its
 * wire size (plus a small slack), so a few packed bytes cannot claim megabytes.
 */
export const HOP_MAX_EXPANSION = 2

/** Rekeys a client may start on its hop: 4 at once, then one a minute (honest clients: one an hour). */
export const HOP_PEER_REKEY_LIMIT = { burst: 4, refillTicks: 60 } as const

/** Counts beyond the core's, for tests and metrics. */
export interface RelayServerStats {
  readonly core: ReturnType<RelayCore["stats"]>
  /** TCP connections open, from admission until the socket is destroyed (lingering closes included). */
  readonly sockets: number
  /** Admitted connections whose version prefix and secure-channel handshake are not done. */
  readonly handshaking: number
  /**
   * Bytes the relay holds for connections now: inboxes (whole unpacked
   * buffers), partial and decoded-ahead frames, outboxes, and what Node's
   * sockets have not handed to the kernel.
   */
  readonly bufferedBytes: number
  /** Tunnel payload bytes written to the far side so far. */
  readonly bytesRelayed: number
}

/** A running relay. */
export interface RelayServer {
  readonly publicKey: Uint8Array
  readonly host: string
  readonly port: number
  /** `<public key hex>@<host>:<port>`: what clients are given. */
  readonly address: string
  /** Every port the relay accepts on, the main one first, with the address a client uses there (`<key>@ws://host:port` for WebSocket). */
  readonly listening: ReadonlyArray<{ readonly transport: string; readonly host: string; readonly port: number; readonly address: string }>
  readonly metrics: Metrics
  readonly stats: () => RelayServerStats
  /** Replaces the allow-list (undefined = open); applies to first messages from now on. */
  readonly setAllowList: (keys: ReadonlySet<string> | undefined) => Effect.Effect<void>
  /**
   * Graceful shutdown: refuse new connections, close everything but tunnels
   * ("shutting-down"), let tunnels finish and their last bytes flush for up
   * to `drainMs` (rounded up to whole ticks: the core's drain deadline),
   * then close the rest ("shutting-down") and stop listening.
   */
  readonly shutdown: (drainMs: number) => Effect.Effect<void>
}

/**
 * Starts a relay on `options.host:options.port`; it runs until the scope
 * closes (which closes every connection) or `shutdown` is called.
 */
export const makeRelayServer = (
  options: RelayServerOptions
): Effect.Effect<RelayServer, ServerStartError, Scope.Scope | Crypto> =>
  Effect.gen(function*() {
    const crypto = yield* Crypto
    const scope = yield* Effect.scope
    // The listening socket has its own scope so that shutdown can stop
    // accepting (new dials are refused by the OS) before the server's scope ends.
    const listenScope = yield* Scope.fork(scope)
    const core = new RelayCore(options.core)
    // Every open stream's hop, from accept until the stream is gone (lingering closes included).
    const hops = new Map<ConnectionId, Hop>()
    const buckets = new Map<string, { bucket: TokenBucket; users: number }>()
    let nextId = 1
    let sockets = 0
    let bytesRelayed = 0
    const publicKeyHexText = keyHex(options.identity.publicKey)

    const metrics = new Metrics()
    const closes = metrics.counter("offset_relay_closes_total", "Connections closed, by reason.", "reason")
    for (const reason of CLOSE_REASONS) closes.inc(0, reason)
    const accepted = metrics.counter("offset_relay_connections_accepted_total", "TCP connections accepted.")
    const overLimit = metrics.counter(
      "offset_relay_over_limit_total",
      "Connections refused, evicted or closed by a limit, by limit.",
      "limit"
    )
    for (const limit of RELAY_LIMITS) overLimit.inc(0, limit)
    // Effect's Clock, not Date.now: the simulation runs the relay on virtual time.
    const clock = yield* Clock.Clock
    const currentTimeMillis = () => clock.currentTimeMillisUnsafe()
    const refusalLog = makeRefusalLog(currentTimeMillis)
    const handshakeFailures = metrics.counter(
      "offset_relay_handshake_failures_total",
      "Version or secure-channel handshakes that failed, by reason.",
      "reason"
    )
    const relayedBytes = metrics.counter("offset_relay_relayed_bytes_total", "Tunnel payload bytes relayed.")
    const replacements = metrics.counter(
      "offset_relay_listener_replacements_total",
      "Listen channels replaced by a newer one for the same key."
    )
    const contested = makeContestedListeners(currentTimeMillis)
    metrics.gauge("offset_relay_listeners", "Listen channels.", () => core.stats().listeners)
    metrics.gauge("offset_relay_pending_half_tunnels", "Connect channels waiting for accept.", () => core.stats().pendingHalfTunnels)
    metrics.gauge("offset_relay_tunnels", "Relayed tunnels.", () => core.stats().tunnels)
    metrics.gauge(
      "offset_relay_connections",
      "Open TCP connections, by state.",
      () => {
        const s = core.stats()
        return new Map([
          ["handshaking", s.handshaking],
          ["unidentified", s.unidentified],
          ["listen", s.listeners],
          ["pending-connect", s.pendingHalfTunnels],
          ["tunnel", s.tunnels * 2],
          ["open", sockets]
        ])
      },
      "state"
    )
    metrics.gauge(
      "offset_relay_buffered_bytes",
      "Bytes the relay holds for connections: inboxes, frames, outboxes, unsent socket buffers.",
      () => bufferedBytes()
    )
    metrics.gauge("offset_relay_max_buffered_bytes", "The memory budget (--max-buffered-bytes).", () => options.core.maxBufferedBytes)
    metrics.gauge("offset_relay_memory_pressure", "1 while over the memory budget, until its low water mark.", () => core.stats().memoryPressure)
    metrics.gauge("offset_relay_paused_connections", "Connections not read because of memory pressure.", () => core.stats().pausedReading)
    registerProcessMetrics(metrics)

    const bufferedBytes = (): number => {
      let total = 0
      for (const hop of hops.values()) total += hop.heldBytesNow()
      return total
    }

    // Runs one core event and every command waiting, in order. A command
    // that reports back (a hop dispatching from inside `runCommand`) drains
    // the rest here too, so every command has run when a dispatch returns.
    const dispatch = (event: RelayEvent): void => {
      core.handle(event)
      for (let command = core.poll(); command !== undefined; command = core.poll()) runCommand(command)
    }

    const runCommand = (command: RelayCommand): void => {
      switch (command._tag) {
        case "SendIncomingConnection":
          hops.get(command.id)?.sendToClient(command.message)
          return
        case "HoldConnect":
          return // the hop asks the core for its role
        case "Splice": {
          const connect = hops.get(command.connectId)
          const accept = hops.get(command.acceptId)
          if (connect !== undefined && accept !== undefined) connect.splice(accept)
          return
        }
        case "Close":
          hops.get(command.id)?.close(command.reason, command.mode, command.limit)
          return
        case "PauseReading":
          hops.get(command.id)?.pauseByCore()
          return
        case "ResumeReading":
          hops.get(command.id)?.resumeByCore()
          return
        default:
          absurd(command)
      }
    }

    // The rate limit's token bucket for a client key, shared by its connections.
    const bucketFor = (clientKey: string): TokenBucket | undefined => {
      const rate = options.rateLimit
      if (rate === undefined) return undefined
      let entry = buckets.get(clientKey)
      if (entry === undefined) {
        // Starts full; the first take refills from time 0, which caps at the burst anyway.
        entry = { bucket: makeTokenBucket(rate.bytesPerSecond, rate.burstBytes, 0), users: 0 }
        buckets.set(clientKey, entry)
      }
      entry.users++
      return entry.bucket
    }

    const releaseThrottle = (clientKey: string) => {
      const entry = buckets.get(clientKey)
      if (entry !== undefined && --entry.users === 0) buckets.delete(clientKey)
    }

    // Logs run in the server's context (its logger, its annotations), from
    // stream callbacks that are not fibers.
    const context = yield* Effect.context<never>()
    const runLog = Effect.runSyncWith(context)
    // Checked once: building and running a filtered log line per close cost
    // as much as the rest of the close.
    const logsInfo = LogLevel.isGreaterThanOrEqualTo("Info", yield* References.MinimumLogLevel)
    const forkTimer = Effect.runForkWith(context)

    // Counts and logs a close once, when it is decided.
    const closing = (hop: Hop, reason: CloseReason, detail: string): void => {
      closes.inc(1, reason)
      if (reason === "timeout-handshake") handshakeFailures.inc(1, "HandshakeTimeout")
      const { id, ip, limit } = hop
      if (limit !== undefined) {
        overLimit.inc(1, limit)
        const line = refusalLog(limit)
        if (line !== undefined) {
          runLog(
            Effect.logWarning(`connection closed by a limit: ${line.limit}; ${LIMIT_ADVICE[line.limit]}`).pipe(
              Effect.annotateLogs({ connection: id, ip, limit: line.limit, alsoSuppressed: line.suppressed })
            )
          )
        }
        return
      }
      const client = formatKeyForLog(hop.clientKey, options.logKeys)
      if (logsInfo) {
        runLog(Effect.logInfo("connection closed").pipe(Effect.annotateLogs({ connection: id, ip, client, reason, detail })))
      }
      if (reason !== "replaced" || hop.clientKey === undefined) return
      replacements.inc()
      const recent = contested(hop.clientKey)
      if (recent === undefined) return
      runLog(
        Effect.logWarning(
          `the listen channel of ${client} was replaced ${recent} times in a minute: ` +
            "probably two processes listen with the same identity on this relay"
        ).pipe(Effect.annotateLogs({ client, replacements: recent }))
      )
    }

    const hopServer: HopServer = {
      crypto,
      identity: options.identity,
      machine: {
        keepaliveTicks: options.keepaliveTicks,
        rekeyIntervalTicks: options.rekeyIntervalTicks,
        maxPaddingBytes: options.maxPaddingBytes,
        maxExpansion: HOP_MAX_EXPANSION,
        peerRekeyLimit: HOP_PEER_REKEY_LIMIT
      },
      heldBytesLimit: options.inboxBytes,
      closeLingerMs: options.closeLingerMs,
      dispatch: (event) => dispatch(event),
      roleOf: (id) => core.roleOf(id),
      authenticated: (hop) => bucketFor(hop.clientKey!),
      relayed: (bytes) => {
        bytesRelayed += bytes
        relayedBytes.inc(bytes)
      },
      handshakeFailed: (reason) => handshakeFailures.inc(1, reason),
      closing,
      gone: (hop) => {
        hops.delete(hop.id)
        sockets--
        // Harmless when the core closed it: it has forgotten the id already.
        dispatch({ _tag: "Closed", id: hop.id })
        if (hop.clientKey !== undefined && hop.bucket !== undefined) releaseThrottle(hop.clientKey)
      },
      now: currentTimeMillis,
      after: (ms, wake) => {
        const timer = forkTimer(Effect.andThen(Effect.sleep(ms), Effect.sync(wake)))
        return () => forkTimer(Fiber.interrupt(timer))
      }
    }

    // An accepted stream: admission is the core's, in this synchronous step
    // with the accept, so a burst of connections cannot all pass a check
    // before any counts.
    const accept = (stream: ByteStream): void => {
      const id = ConnectionId(nextId++)
      accepted.inc()
      const hop = new Hop(hopServer, id, stream)
      sockets++
      hops.set(id, hop)
      dispatch({ _tag: "Opened", id, prefix: addressPrefix(hop.ip, options.prefixLengths) })
      // Refused at once (its Close already ran): no handshake, no core state.
      if (hop.closeReason !== undefined) hop.refuse()
      else hop.start()
    }

    // Closes every hop still open ("shutting-down", the relay stopped) and destroys its stream.
    const stopAll = (): void => {
      for (const hop of [...hops.values()]) {
        hop.close("shutting-down", "abort", undefined)
        hop.destroy()
      }
    }
    // When the server's scope closes, every stream goes with it.
    yield* Effect.addFinalizer(() => Effect.sync(stopAll))

    const transport = options.transport ?? tcpTransport
    const bound = yield* transport.listen(
      { host: options.host, port: options.port },
      accept
    ).pipe(
      Scope.provide(listenScope),
      Effect.mapError((error) => new ServerStartError({ message: error.message, code: error.code }))
    )
    const boundPort = bound.port
    const listening = [{ transport: transport.name, host: options.host, port: boundPort }]
    for (const extra of options.extraListeners ?? []) {
      const extraBound = yield* extra.transport.listen(
        { host: extra.host, port: extra.port },
        accept
      ).pipe(
        Scope.provide(listenScope),
        Effect.mapError((error) => new ServerStartError({ message: error.message, code: error.code }))
      )
      listening.push({ transport: extra.transport.name, host: extra.host, port: extraBound.port })
    }
    const listeningAddresses = listening.map((l) => ({ ...l, address: listenAddress(publicKeyHexText, l) }))

    const tickFiber = yield* Effect.forkIn(
      Effect.forever(
        Effect.andThen(
          Effect.sleep(options.tickMs),
          Effect.map(Clock.currentTimeMillis, (now) => {
            // Fresh usage first, so the core judges stuck tunnels on this tick's figures.
            for (const hop of hops.values()) {
              dispatch({ _tag: "Usage", id: hop.id, heldBytes: hop.heldBytesNow(), deliveredBytes: hop.delivered })
            }
            dispatch({ _tag: "Tick" })
            for (const hop of [...hops.values()]) hop.tick(now)
          })
        )
      ),
      scope
    )

    const shutdown = (drainMs: number): Effect.Effect<void> =>
      Effect.gen(function*() {
        // The core now refuses new connections and closes all but tunnels,
        // which may drain until its deadline (the only one), then it closes them.
        dispatch({ _tag: "Shutdown", drainTicks: Math.ceil(drainMs / options.tickMs) })
        // Tunnels may finish on their own; a closed side lingers to flush its
        // last bytes, so wait for the sockets, not only the core's tunnels.
        while (sockets > 0 && !core.drainDeadlinePassed) yield* Effect.sleep(Math.min(50, options.tickMs))
        // Accept no more, then cut every stream still open (lingering ones too).
        yield* Scope.close(listenScope, Exit.void)
        stopAll()
        yield* Fiber.interrupt(tickFiber)
      })

    for (const l of listeningAddresses) {
      yield* Effect.logInfo("relay listening").pipe(Effect.annotateLogs({ address: l.address }))
    }

    return {
      publicKey: options.identity.publicKey,
      host: options.host,
      port: boundPort,
      address: `${publicKeyHexText}@${options.host}:${boundPort}`,
      listening: listeningAddresses,
      metrics,
      stats: () => ({
        core: core.stats(),
        sockets,
        handshaking: core.stats().handshaking,
        bufferedBytes: bufferedBytes(),
        bytesRelayed
      }),
      setAllowList: (keys) => Effect.sync(() => dispatch({ _tag: "AllowListChanged", keys })),
      shutdown
    } satisfies RelayServer
  })

// `<key>@host:port` for TCP, `<key>@ws://host:port` for a transport with a scheme of its own.
const listenAddress = (keyHex: string, l: { readonly transport: string; readonly host: string; readonly port: number }) => {
  const hostPort = `${l.host.includes(":") ? `[${l.host}]` : l.host}:${l.port}`
  return l.transport === "tcp" ? `${keyHex}@${hostPort}` : `${keyHex}@${l.transport}://${hostPort}`
}

/** The relay could not start (port in use, bad address). */
export class ServerStartError extends Error {
  readonly _tag = "ServerStartError"
  /** The platform's error code (EADDRINUSE, ...), when there is one. */
  readonly code: string | undefined
  constructor(options: { readonly message: string; readonly code?: string | undefined }) {
    super(options.message)
    this.code = options.code
  }
}

/** Largest handshake frame the relay takes from a client (relay-hop.ts). */
export { HANDSHAKE_FRAME_LIMIT } from "./relay-hop.ts"

/** What each limit is and which flag raises it, for the refusal log line. */
export const LIMIT_ADVICE: Readonly<Record<RelayLimit, string>> = {
  "max-connections": "connections in all; raise with --max-connections",
  "max-buffered-bytes": "the relay holds its memory budget; raise with --max-buffered-bytes",
  "handshake-rate": "handshakes per second from one address prefix; raise with --handshake-rate-per-prefix or --handshake-burst-per-prefix",
  "max-unidentified-per-prefix": "connections from one prefix that have not said what they are for; raise with --max-unidentified-per-prefix",
  "max-handshakes-per-prefix": "handshakes in progress from one prefix; raise with --max-handshakes-per-prefix",
  "max-unidentified": "connections that have not said what they are for; raise with --max-unidentified",
  "unidentified-evicted": "the oldest unidentified connection of the busiest prefix made room; raise with --max-unidentified",
  "max-handshakes": "handshakes in progress; raise with --max-handshakes",
  "handshake-evicted": "the oldest handshake of the busiest prefix made room; raise with --max-handshakes",
  "max-connections-per-prefix": "listen and connect channels from one prefix; raise with --max-connections-per-prefix",
  "max-connections-per-key": "listen and connect channels of one client key; raise with --max-connections-per-key",
  "max-pending-per-listener": "connects waiting on one listener; raise with --max-pending-per-listener",
  "stuck-tunnel": "a tunnel whose ends both stopped reading while the relay was at its memory budget; raise --max-buffered-bytes or --stuck-tunnel-ticks",
  "listener-backlog": "a listener that does not read its IncomingConnection messages; raise with --max-pending-per-listener",
  "rekey-rate": "a client rekeying far more often than once an hour (not configurable)"
}

// Counts listen-channel replacements per key over a minute; returns the
// count when it reaches 3 (two processes taking turns), at most once a
// minute per key, so the log names a contested key without flooding.
const CONTESTED_WINDOW_MS = 60_000
const makeContestedListeners = (currentTimeMillis: () => number) => {
  const byKey = new Map<string, { since: number; count: number; warned: boolean }>()
  return (key: string): number | undefined => {
    const now = currentTimeMillis()
    for (const [k, entry] of byKey) if (now - entry.since > CONTESTED_WINDOW_MS) byKey.delete(k)
    const entry = byKey.get(key) ?? { since: now, count: 0, warned: false }
    byKey.set(key, entry)
    entry.count++
    if (entry.count < 3 || entry.warned) return undefined
    entry.warned = true
    return entry.count
  }
}

// One log line per limit per REFUSAL_LOG_INTERVAL_MS at most; the next line
// says how many were not logged in between, so a flood cannot flood the log.
const REFUSAL_LOG_INTERVAL_MS = 10_000
const makeRefusalLog = (currentTimeMillis: () => number) => {
  const last = new Map<string, { at: number; suppressed: number }>()
  return (limit: RelayLimit) => {
    const now = currentTimeMillis()
    const entry = last.get(limit)
    if (entry !== undefined && now - entry.at < REFUSAL_LOG_INTERVAL_MS) {
      entry.suppressed++
      return undefined
    }
    last.set(limit, { at: now, suppressed: 0 })
    return { limit, suppressed: entry?.suppressed ?? 0 }
  }
}
