/**
 * The relay server: the pure relay core (src/core/relay-core.ts) run behind
 * the connection pipeline on real TCP sockets.
 *
 * Each accepted socket gets its own fiber (`serveConnection`): limits, then
 * version prefix and secure channel, then the core decides what the
 * connection is. Every core command is run right after the event that caused
 * it (`dispatch`), synchronously, so the core and the connection table never
 * disagree. Sends that may wait on a slow socket run in fibers forked into
 * that connection's scope; the tunnel data path (`relay`) is a plain loop
 * per direction whose only buffering is the receiving channel's bounded
 * inbox, so a slow reader stops the relay reading from its peer and TCP
 * pushes back.
 *
 * Admission is the core's (relay-core.ts "Admission"): every accepted socket
 * is an `Opened` with its address prefix, in the same synchronous step as
 * the accept, and a refusal closes it before any handshake work. Before a
 * client is authenticated its frames are capped at HANDSHAKE_FRAME_LIMIT.
 * Hop channels refuse messages that unpack to more than HOP_MAX_EXPANSION
 * times their wire size, and peers that rekey more than HOP_PEER_REKEY_LIMIT.
 *
 * Every close is reported once: to the core (`Closed`, harmless when the core
 * ordered it), to `offset_relay_closes_total` under one reason, to the log.
 * A hostile or dead client is cut off (destroy); any other gets a graceful
 * close (frame-link.ts `closeGracefully`: FIN after what was written, then
 * drain until the client's FIN, bounded by closeLingerMs), because a reset
 * can make the client lose bytes we wrote to it.
 *
 * Memory: what a connection holds (`heldBytes`) is its inbox (whole unpacked
 * buffers, ≤ inboxBytes + one message), its link's partial and decoded-ahead
 * frames (≤ 1 MiB + header; ≤ 4 KiB before authentication), its outbox, and
 * what Node's socket has not handed to the kernel yet. The adapter reports
 * it to the core (`Usage`) after every read and every tick; the core's
 * memory budget answers with PauseReading / ResumeReading, which the read
 * gate carries out (the socket is not read, so TCP pushes back).
 *
 * One timer drives the whole server: each tick goes to the core and to every
 * channel (keepalive, rekey), so idle connections cost no timers.
 */
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Scope from "effect/Scope"
import * as FiberSet from "effect/FiberSet"
import * as Clock from "effect/Clock"
import { publicKeyHex as keyHex } from "../core/keys.ts"
import * as NodeOs from "node:os"
import { addressPrefix, defaultPrefixLengths, type PrefixLengths } from "../core/address-prefix.ts"
import { formatKeyForLog, type LogKeys } from "../core/log-keys.ts"
import { makeTokenBucket, takeTokens, type TokenBucket } from "../core/token-bucket.ts"
import {
  CLOSE_REASONS,
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
import { exchangeVersion, type FrameLink, LinkError, makeStreamFrameLink, type StreamFrameLink } from "./frame-link.ts"
import { ChannelError, establishChannel, type MessageChannel } from "./message-channel.ts"
import { Metrics, registerProcessMetrics } from "./metrics.ts"
import type { ByteStream, Transport } from "./transport.ts"
import { tcpTransport } from "./transport-tcp.ts"

/** An Ed25519 identity: the 32-byte secret seed and its public key. */
export interface RelayIdentity {
  readonly seed: Uint8Array
  readonly publicKey: Uint8Array
}

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
   * to `drainMs`, then close the rest ("shutting-down") and stop listening.
   * The core also ends tunnels after `core.shutdownDrainTicks`: the drain
   * ends at whichever comes first.
   */
  readonly shutdown: (drainMs: number) => Effect.Effect<void>
}

// What the adapter keeps per connection, beside the core's view.
interface Connection {
  readonly id: ConnectionId
  readonly ip: string
  /** The connection's working scope (channel fibers, sends forked for it); closes before the socket lingers. */
  scope: Scope.Scope | undefined
  channel: MessageChannel | undefined
  clientKey: string | undefined
  /** "core": messages go to the core; "held": a pending connect channel; "tunnel": relayed. */
  mode: "core" | "held" | "tunnel"
  /** The other side, once spliced. */
  peer: Connection | undefined
  /** Completed with the reason once the connection must close: the core's Close, or an adapter limit or shutdown. */
  readonly closeOrder: Deferred.Deferred<string>
  /** Completed by Splice for a held connect channel. */
  readonly spliced: Deferred.Deferred<void>
  /** IncomingConnection messages handed to the channel and not yet written to the socket. */
  unsentIncoming: number
  /** What this connection holds now (module header, "Memory"). */
  readonly held: () => number
  /** Tunnel payload bytes written to this connection so far. */
  delivered: number
  /** Told by the core not to read (PauseReading), until ResumeReading. */
  paused: boolean
  /** Wakes the read gate waiting on `paused`. */
  resume: (() => void) | undefined
  /** The limit an "over-limit" close ordered by the core names. */
  limit: RelayLimit | "listener-backlog" | "rekey-rate" | undefined
  /** The client key's rate-limit bucket, once authenticated (with --rate-limit). */
  bucket: TokenBucket | undefined
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
    // Every accepted stream is served in its own fiber, in a set that
    // shutdown interrupts once the listener is closed.
    const handlersScope = yield* Scope.fork(scope)
    const runHandler = yield* FiberSet.makeRuntime<never, void, never>().pipe(Scope.provide(handlersScope))
    const core = new RelayCore(options.core)
    const connections = new Map<ConnectionId, Connection>()
    const buckets = new Map<string, { bucket: TokenBucket; users: number }>()
    let nextId = 1
    let sockets = 0
    let bytesRelayed = 0
    let drainOver = false
    const publicKeyHexText = keyHex(options.identity.publicKey)
    // A listener with this many IncomingConnection messages stuck in its
    // outbox is not reading its listen channel; more would only pile up.
    const maxUnsentIncoming = options.core.maxPendingHalfTunnelsPerListener

    const metrics = new Metrics()
    const closes = metrics.counter("offset_relay_closes_total", "Connections closed, by reason.", "reason")
    for (const reason of [...CLOSE_REASONS, ...ADAPTER_CLOSE_REASONS]) closes.inc(0, reason)
    const accepted = metrics.counter("offset_relay_connections_accepted_total", "TCP connections accepted.")
    const overLimit = metrics.counter(
      "offset_relay_over_limit_total",
      "Connections refused, evicted or closed by a limit, by limit.",
      "limit"
    )
    for (const limit of OVER_LIMIT_LABELS) overLimit.inc(0, limit)
    const refusalLog = makeRefusalLog()
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
    const contested = makeContestedListeners()
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
      for (const c of connections.values()) total += c.held()
      return total
    }

    // What the core needs to judge memory: held bytes now, and delivery progress.
    const reportUsage = (c: Connection): void =>
      dispatch({ _tag: "Usage", id: c.id, heldBytes: c.held(), deliveredBytes: c.delivered })

    // Runs one core event and every command it gives, in order.
    const dispatch = (event: RelayEvent): void => {
      for (const command of core.handle(event)) runCommand(command)
    }

    const runCommand = (command: RelayCommand): void => {
      switch (command._tag) {
        case "SendIncomingConnection": {
          const c = connections.get(command.id)
          const channel = c?.channel
          if (c === undefined || channel === undefined || c.scope === undefined) return
          if (c.unsentIncoming >= maxUnsentIncoming) {
            // Closing the listener closes its half tunnels "listener-gone" once
            // its fiber reports the close; the core needs no new event now.
            c.limit = "listener-backlog"
            Deferred.doneUnsafe(c.closeOrder, Exit.succeed("over-limit"))
            return
          }
          c.unsentIncoming++
          // The send runs in the listener's scope, so it ends with the listener
          // (or the server); a failed send ends the channel, which the
          // listener's own fiber reports.
          Fiber.runIn(
            Effect.runFork(
              channel.send(command.message).pipe(
                Effect.ignore,
                Effect.ensuring(Effect.sync(() => c.unsentIncoming--))
              )
            ),
            c.scope
          )
          return
        }
        case "HoldConnect": {
          const c = connections.get(command.id)
          if (c !== undefined) c.mode = "held"
          return
        }
        case "Splice": {
          const connect = connections.get(command.connectId)
          const accept = connections.get(command.acceptId)
          if (connect === undefined || accept === undefined) return
          connect.peer = accept
          accept.peer = connect
          connect.mode = "tunnel"
          accept.mode = "tunnel"
          Deferred.doneUnsafe(connect.spliced, Exit.void)
          return
        }
        case "Close": {
          const c = connections.get(command.id)
          if (c === undefined) return
          if (command.limit !== undefined) c.limit = command.limit
          // Past the drain deadline every close is the shutdown's, even the
          // "peer-closed" the core gives one tunnel side when the other goes first.
          Deferred.doneUnsafe(c.closeOrder, Exit.succeed(drainOver ? "shutting-down" : command.reason))
          return
        }
        case "PauseReading": {
          const c = connections.get(command.id)
          if (c !== undefined) c.paused = true
          return
        }
        case "ResumeReading": {
          const c = connections.get(command.id)
          if (c === undefined) return
          c.paused = false
          c.resume?.()
          return
        }
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

    // Runs after every read of `bytes` from `c`'s socket, before the next:
    // reports what `c` holds (the core may pause it), waits while paused,
    // then waits out the client's rate limit. A wait here stops reading, so
    // TCP slows the sender; nothing is dropped.
    const readGate = (c: Connection) => (bytes: number): Effect.Effect<void> =>
      Effect.suspend(() => {
        reportUsage(c)
        const bucket = c.bucket
        const rateWait = bucket === undefined
          ? Effect.void
          : Effect.flatMap(Clock.currentTimeMillis, (now) => {
            const waitMs = takeTokens(bucket, bytes, now)
            return waitMs > 0 ? Effect.sleep(waitMs) : Effect.void
          })
        return c.paused ? Effect.andThen(untilResumed(c), rateWait) : rateWait
      })

    const untilResumed = (c: Connection): Effect.Effect<void> =>
      Effect.callback<void>((resume) => {
        if (!c.paused) return resume(Effect.void)
        c.resume = () => {
          c.resume = undefined
          resume(Effect.void)
        }
        return Effect.sync(() => {
          c.resume = undefined
        })
      })

    const releaseThrottle = (clientKey: string) => {
      const entry = buckets.get(clientKey)
      if (entry !== undefined && --entry.users === 0) buckets.delete(clientKey)
    }

    // Relays every message `from` receives to its peer until `from` ends.
    // Messages already received are written before the end is reported, which
    // is what "the other side is closed after what was already read" needs.
    const relay = (from: Connection): Effect.Effect<never, ChannelError> =>
      Effect.gen(function*() {
        const channel = from.channel!
        const to = from.peer!.channel! // set by Splice, before mode became "tunnel"
        while (true) {
          // Forwarded in the KaMessage it came in: one encoding less per message.
          const message = yield* channel.receiveForwardable
          // A failed send means the peer's channel ended. The peer's own fiber
          // reports that, and the core then orders this side closed; until
          // then what arrives here has nowhere to go. Waiting instead would
          // deadlock two sides that end at once, each stuck sending to the other.
          const sent = yield* Effect.exit(to.forward(message))
          if (Exit.isSuccess(sent)) {
            bytesRelayed += message.data.length
            relayedBytes.inc(message.data.length)
            from.peer!.delivered += message.data.length
          }
        }
      })

    // The life of one accepted socket, from admission to close.
    const serveConnection = (stream: ByteStream): Effect.Effect<void> =>
      Effect.gen(function*() {
        const ip = stream.remoteAddress
        const id = ConnectionId(nextId++)
        accepted.inc()
        let link: StreamFrameLink | undefined
        const connection: Connection = {
          id,
          ip,
          scope: undefined,
          channel: undefined,
          clientKey: undefined,
          mode: "core",
          peer: undefined,
          closeOrder: Deferred.makeUnsafe<string>(),
          spliced: Deferred.makeUnsafe<void>(),
          unsentIncoming: 0,
          held: () => (connection.channel?.bufferedBytes() ?? link?.bufferedBytes() ?? 0) + stream.writableLength(),
          delivered: 0,
          paused: false,
          resume: undefined,
          limit: undefined,
          bucket: undefined
        }
        let reported = false
        // Reports the close once: to the core (harmless when the core ordered
        // it: it has already forgotten the id), to metrics and to the log.
        const report = (reason: string, detail: string) =>
          Effect.suspend(() => {
            if (reported) return Effect.void
            reported = true
            connections.delete(id)
            dispatch({ _tag: "Closed", id })
            closes.inc(1, reason)
            if (reason === "timeout-handshake") handshakeFailures.inc(1, "HandshakeTimeout")
            const limit = connection.limit
            if (limit !== undefined) {
              overLimit.inc(1, limit)
              const line = refusalLog(limit)
              if (line !== undefined) {
                return Effect.logWarning(`connection closed by a limit: ${line.limit}; ${LIMIT_ADVICE[line.limit]}`).pipe(
                  Effect.annotateLogs({ connection: id, ip, limit: line.limit, alsoSuppressed: line.suppressed })
                )
              }
              return Effect.void
            }
            const client = formatKeyForLog(connection.clientKey, options.logKeys)
            const closed = Effect.logInfo("connection closed").pipe(
              Effect.annotateLogs({ connection: id, ip, client, reason, detail })
            )
            if (reason !== "replaced" || connection.clientKey === undefined) return closed
            replacements.inc()
            const recent = contested(connection.clientKey)
            return recent === undefined ? closed : Effect.andThen(
              closed,
              Effect.logWarning(
                `the listen channel of ${client} was replaced ${recent} times in a minute: ` +
                  "probably two processes listen with the same identity on this relay"
              ).pipe(Effect.annotateLogs({ client, replacements: recent }))
            )
          })
        // Admission is the core's, in this synchronous step with the accept,
        // so a burst of connections cannot all pass a check before any counts.
        sockets++
        connections.set(id, connection)
        dispatch({ _tag: "Opened", id, prefix: addressPrefix(ip, options.prefixLengths) })
        // Last to run: the socket is gone (or being destroyed) by then.
        yield* Effect.addFinalizer(() =>
          Effect.andThen(
            report("shutting-down", "the relay stopped"),
            Effect.sync(() => {
              sockets--
              if (connection.clientKey !== undefined && connection.bucket !== undefined) releaseThrottle(connection.clientKey)
              stream.destroy()
            })
          )
        )
        const refused = Deferred.isDoneUnsafe(connection.closeOrder)
        if (refused) {
          // Refused at once: no handshake, no core state, no lingering.
          const reason = yield* Deferred.await(connection.closeOrder)
          yield* report(reason, "refused on accept")
          stream.destroy()
          return
        }
        // The link outlives the channel (inner scope), so the stream stays
        // open while it lingers after the channel is gone.
        const socketLink = makeStreamFrameLink(stream)
        link = socketLink
        socketLink.setReadThrottle(readGate(connection))
        // Version, ExchangeRandNonce, ExchangeDh: the frames before the client is authenticated.
        socketLink.limitNextFrames(3, HANDSHAKE_FRAME_LIMIT)
        // The second frame is the ExchangeRandNonce: the client is really
        // starting a handshake (the core's hello deadline).
        let framesRead = 0
        const handshakeLink: FrameLink = {
          ...socketLink,
          read: Effect.map(socketLink.read, (frame) => {
            if (++framesRead === 2) dispatch({ _tag: "HelloReceived", id })
            return frame
          })
        }

        const life = Effect.gen(function*() {
          const channel = yield* Effect.gen(function*() {
            yield* exchangeVersion(handshakeLink)
            return yield* establishChannel(handshakeLink, {
              crypto,
              identity: options.identity,
              inboxBytes: options.inboxBytes,
              machine: {
                keepaliveTicks: options.keepaliveTicks,
                rekeyIntervalTicks: options.rekeyIntervalTicks,
                maxPaddingBytes: options.maxPaddingBytes,
                maxExpansion: HOP_MAX_EXPANSION,
                peerRekeyLimit: HOP_PEER_REKEY_LIMIT
              }
            })
          }).pipe(
            Effect.tapError((error) =>
              Effect.sync(() => handshakeFailures.inc(1, error instanceof LinkError ? error.reason : error.detail ?? error.reason))
            )
          )
          connection.channel = channel
          connection.clientKey = keyHex(channel.remotePublicKey)
          connection.bucket = bucketFor(connection.clientKey)
          dispatch({ _tag: "Authenticated", id, publicKey: channel.remotePublicKey })

          // Until the core makes it a connect or accept channel, every message goes to the core.
          while (connection.mode === "core") {
            const message = yield* channel.receive
            dispatch({ _tag: "Received", id, message })
          }
          if (connection.mode === "held") {
            // (fix) A connect channel that closes while held is dropped at once,
            // so watch its end while waiting for the accept.
            const ended = yield* Effect.raceFirst(
              Effect.as(Deferred.await(connection.spliced), undefined),
              channel.ended
            )
            if (ended !== undefined) return yield* Effect.fail(ended)
          }
          return yield* relay(connection)
        })

        // The connection ends when its life ends (client closed, error) or a
        // close is ordered; the loser of the race is interrupted. The close is
        // reported before the inner scope closes (which may wait to flush the
        // channel), so the core closes a tunnel's other side without delay;
        // closing the inner scope then stops the channel's fibers and the
        // sends forked for it.
        const reason = yield* Effect.scoped(
          Effect.gen(function*() {
            connection.scope = yield* Effect.scope
            const outcome = yield* Effect.raceFirst(
              Effect.map(Effect.exit(life), (exit) => ({ _tag: "Ended" as const, exit })),
              Effect.map(Deferred.await(connection.closeOrder), (reason) => ({ _tag: "Ordered" as const, reason }))
            )
            if (outcome._tag === "Ordered") {
              yield* report(outcome.reason, "")
              return outcome.reason
            }
            const error = failureOf(outcome.exit)
            if (error !== undefined) {
              const reason = adapterCloseReason(error, connection.channel !== undefined)
              if (error instanceof ChannelError && error.detail === "RekeyFlood") connection.limit = "rekey-rate"
              yield* report(reason, error.message)
              return reason
            }
            // `life` only ends by failing: anything else is a bug here, made visible.
            yield* Effect.logError("connection ended unexpectedly", outcome.exit)
            yield* report("internal-error", "")
            return "internal-error"
          })
        )
        // A client we merely stop serving gets a graceful close, so nothing
        // written to it is lost to a reset; a hostile or dead one is cut off.
        if (ABRUPT_CLOSE_REASONS.has(reason) || (reason === "over-limit" && !gracefulLimit(connection))) {
          stream.destroy()
        } else yield* socketLink.closeGracefully(options.closeLingerMs)
      }).pipe(Effect.scoped)

    const transport = options.transport ?? tcpTransport
    const bound = yield* transport.listen(
      { host: options.host, port: options.port },
      (stream) => runHandler(serveConnection(stream))
    ).pipe(
      Scope.provide(listenScope),
      Effect.mapError((error) => new ServerStartError({ message: error.message, code: error.code }))
    )
    const boundPort = bound.port
    const listening = [{ transport: transport.name, host: options.host, port: boundPort }]
    for (const extra of options.extraListeners ?? []) {
      const extraBound = yield* extra.transport.listen(
        { host: extra.host, port: extra.port },
        (stream) => runHandler(serveConnection(stream))
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
          Effect.sync(() => {
            // Fresh usage first, so the core judges stuck tunnels on this tick's figures.
            for (const c of connections.values()) reportUsage(c)
            dispatch({ _tag: "Tick" })
            for (const c of connections.values()) c.channel?.tick()
          })
        )
      ),
      scope
    )

    const shutdown = (drainMs: number): Effect.Effect<void> =>
      Effect.gen(function*() {
        // The core now refuses new connections and closes all but tunnels.
        dispatch({ _tag: "Shutdown" })
        // Tunnels may finish on their own; a closed side lingers to flush its
        // last bytes, so wait for the sockets, not only the core's tunnels.
        const deadline = (yield* Clock.currentTimeMillis) + drainMs
        while (sockets > 0 && (yield* Clock.currentTimeMillis) < deadline) {
          yield* Effect.sleep(Math.min(50, options.tickMs))
        }
        drainOver = true
        for (const c of [...connections.values()]) Deferred.doneUnsafe(c.closeOrder, Exit.succeed("shutting-down"))
        // Accept no more, then interrupt the handlers: that destroys every
        // stream still open (lingering ones too).
        yield* Scope.close(listenScope, Exit.void)
        yield* Scope.close(handlersScope, Exit.void)
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

/** Close reasons seen only by the adapter (the core's are CLOSE_REASONS). */
export const ADAPTER_CLOSE_REASONS = [
  "client-closed",
  "handshake-failed",
  "timeout-handshake",
  "frame-too-long",
  "version-mismatch",
  "keepalive-timeout",
  "connection-lost",
  "internal-error"
] as const

/**
 * Largest handshake frame the relay takes from a client. The version frame
 * is 4 bytes, ExchangeRandNonce and ExchangeDh a few hundred (fixed-size
 * fields, no padding), so 4 KiB leaves room for any honest encoding while
 * a stranger can make the relay hold no more than that before it proves a
 * key (at most maxConcurrentHandshakes of them at once).
 */
export const HANDSHAKE_FRAME_LIMIT = 4096

/** Labels of offset_relay_over_limit_total: the core's limits, the listener backlog and the rekey rate. */
export const OVER_LIMIT_LABELS = [...RELAY_LIMITS, "listener-backlog", "rekey-rate"] as const

/** What each limit is and which flag raises it, for the refusal log line. */
export const LIMIT_ADVICE: Readonly<Record<(typeof OVER_LIMIT_LABELS)[number], string>> = {
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
const makeContestedListeners = () => {
  const byKey = new Map<string, { since: number; count: number; warned: boolean }>()
  return (key: string): number | undefined => {
    const now = Date.now()
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
const makeRefusalLog = () => {
  const last = new Map<string, { at: number; suppressed: number }>()
  return (limit: (typeof OVER_LIMIT_LABELS)[number]) => {
    const now = Date.now()
    const entry = last.get(limit)
    if (entry !== undefined && now - entry.at < REFUSAL_LOG_INTERVAL_MS) {
      entry.suppressed++
      return undefined
    }
    last.set(limit, { at: now, suppressed: 0 })
    return { limit, suppressed: entry?.suppressed ?? 0 }
  }
}

// An authenticated client refused by a limit on what it asked for (a cap on
// channels, a listener's queue) is served a graceful close, like any client
// we stop serving; one that evicted, stuck, or flooded rekeys is cut off.
const gracefulLimit = (connection: Connection): boolean =>
  connection.channel !== undefined && connection.limit !== "stuck-tunnel" && connection.limit !== "rekey-rate" &&
  connection.limit !== "unidentified-evicted"

// Closes caused by a hostile or dead peer: destroyed at once, no lingering
// for a FIN (there is nothing it should still read from us).
const ABRUPT_CLOSE_REASONS: ReadonlySet<string> = new Set([
  "handshake-failed",
  "timeout-handshake",
  "timeout-init",
  "frame-too-long",
  "version-mismatch",
  "keepalive-timeout",
  "connection-lost",
  "protocol-violation",
  "adapter-misuse",
  "internal-error"
])

const failureOf = (exit: Exit.Exit<unknown, unknown>): ChannelError | LinkError | undefined => {
  if (!Exit.isFailure(exit)) return undefined
  for (const reason of exit.cause.reasons) {
    if (reason._tag === "Fail" && (reason.error instanceof ChannelError || reason.error instanceof LinkError)) {
      return reason.error
    }
  }
  return undefined
}

// Names a connection's end for logs and metrics when the core did not order it.
const adapterCloseReason = (error: ChannelError | LinkError, established: boolean): string => {
  switch (error.reason) {
    case "Closed":
    case "LocalClose":
      return "client-closed"
    case "Reset":
      return "connection-lost"
    case "FrameTooLong":
      return "frame-too-long"
    case "VersionMismatch":
      return "version-mismatch"
    case "HandshakeTimeout":
      return "timeout-handshake"
    case "Protocol":
      if (error instanceof ChannelError && error.detail === "KeepaliveTimeout") return "keepalive-timeout"
      return established ? "protocol-violation" : "handshake-failed"
    default:
      return absurd(error)
  }
}

const absurd = (value: never): never => {
  throw new Error(`unhandled case: ${JSON.stringify(value)}`)
}
