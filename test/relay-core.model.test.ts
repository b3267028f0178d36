/**
 * Model-based test of the relay core: fast-check generates random sequences
 * of adapter events (opens from a pool of three address prefixes, hellos,
 * handshakes from a pool of three keys, first messages, rejects, garbage,
 * usage reports, ends the adapter saw, IncomingConnections written, closes,
 * ticks, allow-list changes, shutdown with its drain) under a random
 * small config (so admission caps, evictions, the handshake rate, the memory
 * budget and stuck tunnels are all hit), and after every event compares the core with
 * a deliberately naive reference model (one flat map of connections, found by
 * scanning; no indexes, counters or deadline buckets).
 *
 * Checked after every event:
 * - the commands equal the model's prediction, close modes included (as a multiset: the order
 *   within one event's batch is not part of the contract, except the checks
 *   below);
 * - no command names a connection already closed (by an earlier `Close` or
 *   `Closed`), and within one batch nothing names a connection after its
 *   `Close`; a `Splice` joins a held connect channel and a fresh accept one;
 * - every connection has the role the model gives it (or none), stats agree,
 *   and the core's own cross-check (`checkInvariants`) finds nothing.
 * At the end every open connection is closed, and then: every half tunnel
 * ended (spliced, rejected, timed out or closed), and the core holds nothing
 * (stats and internal tables all zero).
 *
 * The driver acts as a correct adapter: it never hands the core a message on
 * a connection it was told is a connect or accept channel, nor Authenticated
 * twice (those are adapter bugs, covered in relay-core.test.ts); a command
 * that would do so is a no-op. Late events for closed connections ARE fed:
 * a real adapter produces them.
 *
 * A failure shrinks to a short command list and prints it, one readable
 * command per step, e.g.
 *   Counterexample: [{...config}, Open(#1),Authenticate(#1 as K0),Init(#1 listen),...
 *   /*replayPath="..."*\/]
 * together with `seed` and `path`. To replay exactly that case, run
 *   RELAY_MODEL_SEED=<seed> RELAY_MODEL_PATH=<path> RELAY_MODEL_REPLAY=<replayPath> \
 *     npx vitest run test/relay-core.model.test.ts
 * (the test passes them to fc.assert as { seed, path, endOnFailure } and to
 * fc.commands as { replayPath }). Connection #n is the n-th one opened (by
 * Open, or by Client: Open + Authenticated + first message in one step);
 * Reject and AcceptOffered act on whichever connection listens as the named
 * key at that moment.
 */
import fc from "fast-check"
import { describe, expect, it } from "vitest"
import { publicKeyHex } from "../src/core/keys.ts"
import { encodeInitConnection, encodeRejectConnection, type InitConnection } from "../src/core/messages.ts"
import {
  type CloseReason,
  type ConnectionRole,
  ConnectionId,
  type EndReason,
  idleRelayStats,
  RelayCore,
  type RelayCommand,
  type RelayConfig,
  type RelayEvent,
  type RelayLimit
} from "../src/core/relay-core.ts"
import { ABORTED_REASONS_AND_LIMITS } from "./support/close-modes.ts"
import { handleAll } from "./support/handle-all.ts"

const KEYS: ReadonlyArray<Uint8Array> = [0xa0, 0xb0, 0xc0].map((n) => new Uint8Array(32).fill(n))
const keyOf = (k: number): Uint8Array => KEYS[k]! // k is always drawn from 0..KEYS.length-1
const keyName = (k: number): string => `K${k}`
const keyIndexOfHex = (hex: string): number => KEYS.findIndex((key) => publicKeyHex(key) === hex)
// Connections the commands can name; more opens than this just add traffic.
const MAX_TARGET = 16

// ---------------------------------------------------------------- the model

// Every connection has its prefix and `since`: when it entered its current
// stage (a global step counter), which orders eviction victims.
type ModelConnection = { readonly prefix: number; readonly since: number } & (
  | { readonly phase: "handshaking"; readonly opened: number; readonly hello: boolean; readonly deadline: number }
  | { readonly phase: "awaiting-init"; readonly key: number; readonly deadline: number }
  | { readonly phase: "listen"; readonly key: number }
  | { readonly phase: "pending-connect"; readonly key: number; readonly listener: number; readonly deadline: number }
  | { readonly phase: "tunnel"; readonly key: number; readonly peer: number; readonly counted: boolean }
)

interface ModelUsage {
  held: number
  delivered: number
  progressAt: number
  paused: boolean
}

const PREFIXES = ["p0", "p1", "p2"]

/** The reference model: what the relay should know, kept as plainly as possible. */
interface Model {
  readonly config: RelayConfig
  readonly connections: Map<number, ModelConnection>
  opened: number
  now: number
  allow: ReadonlySet<number> | undefined
  shutdownAt: number | undefined
  /** IncomingConnection messages sent to each listen channel and not yet written. */
  readonly unwritten: Map<number, number>
  /** Handshake tokens per prefix index (absent = full). */
  readonly tokens: Map<number, number>
  readonly usage: Map<number, ModelUsage>
  pressure: boolean
  /** Stage changes so far (ModelConnection.since). */
  stage: number
}

const emptyModel = (config: RelayConfig): Model => ({
  config,
  connections: new Map(),
  opened: 0,
  now: 0,
  allow: undefined,
  shutdownAt: undefined,
  unwritten: new Map(),
  tokens: new Map(),
  usage: new Map(),
  pressure: false,
  stage: 0
})

// Sets connection `id`'s state, stamping a new stage when its phase (or hello) changes.
const setM = (model: Model, id: number, c: DistributiveOmit<ModelConnection, "since">): void => {
  model.connections.set(id, { ...c, since: ++model.stage } as ModelConnection)
}
type DistributiveOmit<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never


/** The system under test plus what a correct adapter would remember. */
interface Real {
  readonly core: RelayCore
  readonly closed: Set<number> // by Close command or Closed event
  readonly authenticated: Set<number> // Authenticated was fed
  readonly routed: Set<number> // named in HoldConnect or Splice: its messages no longer go to the core
  readonly held: Set<number> // every HoldConnect
  readonly ended: Set<number> // held ones that were spliced or closed
}

const find = (model: Model, pred: (c: ModelConnection) => boolean): number | undefined => {
  for (const [id, c] of model.connections) if (pred(c)) return id
  return undefined
}

// Hostile or dead clients are aborted; so is any client that never finished its handshake.
const ABORTED = ABORTED_REASONS_AND_LIMITS

const closeLine = (id: number, reason: CloseReason, authenticated: boolean, limit?: RelayLimit): string => {
  const aborted = !authenticated || ABORTED.includes(reason) || (limit !== undefined && ABORTED.includes(limit))
  return `close ${id} ${reason}${limit === undefined ? "" : ` (${limit})`} ${aborted ? "abort" : "graceful"}`
}

const closeM = (model: Model, id: number, reason: CloseReason, out: Array<string>, limit?: RelayLimit): void => {
  const c = model.connections.get(id)
  if (c === undefined) return
  out.push(closeLine(id, reason, c.phase !== "handshaking", limit))
  releaseM(model, id, out)
}

const releaseM = (model: Model, id: number, out: Array<string>): void => {
  const c = model.connections.get(id)
  if (c === undefined) return
  model.connections.delete(id)
  if (c.phase === "listen") {
    for (const [pid, p] of [...model.connections]) {
      if (p.phase === "pending-connect" && p.listener === id) closeM(model, pid, "listener-gone", out)
    }
  }
  if (c.phase === "tunnel" && model.connections.delete(c.peer)) out.push(closeLine(c.peer, "peer-closed", true))
}

// Usage entries of connections the model no longer has are gone (the core forgets them on close).
const forgetUsageM = (model: Model): void => {
  for (const id of [...model.usage.keys()]) if (!model.connections.has(id)) model.usage.delete(id)
}

const heldM = (model: Model): number => {
  let total = 0
  for (const [id, u] of model.usage) if (model.connections.has(id)) total += u.held
  return total
}

const usageM = (model: Model, id: number): ModelUsage => {
  let u = model.usage.get(id)
  if (u === undefined) {
    u = { held: 0, delivered: 0, progressAt: model.now, paused: false }
    model.usage.set(id, u)
  }
  return u
}

const pressureM = (model: Model, out: Array<string>): void => {
  forgetUsageM(model)
  const held = heldM(model)
  if (!model.pressure) {
    if (held >= model.config.maxBufferedBytes) model.pressure = true
    return
  }
  if (held > Math.floor((model.config.maxBufferedBytes * 3) / 4)) return
  model.pressure = false
  for (const [id, u] of model.usage) {
    if (u.paused) out.push(`resume ${id}`)
    u.paused = false
  }
}

const countM = (model: Model, pred: (c: ModelConnection) => boolean): number =>
  [...model.connections.values()].filter(pred).length

const isUnidentified = (c: ModelConnection): boolean => c.phase === "handshaking" || c.phase === "awaiting-init"
const isHandshaking = (c: ModelConnection): boolean => c.phase === "handshaking"
// Listen and connect channels, and the connect sides of tunnels, count toward prefix and key caps.
const isCounted = (c: ModelConnection): boolean =>
  c.phase === "listen" || c.phase === "pending-connect" || (c.phase === "tunnel" && c.counted)

// The eviction victim for a full table: the longest-waiting connection of the
// prefix holding the most (ties: the smaller prefix name), when that prefix
// holds more than the newcomer's would after admission.
const victimM = (model: Model, prefix: number, inTable: (c: ModelConnection) => boolean): number | undefined => {
  const counts = PREFIXES.map((_, p) => countM(model, (c) => c.prefix === p && inTable(c)))
  let largest = 0
  for (let p = 1; p < PREFIXES.length; p++) if (counts[p]! > counts[largest]!) largest = p
  if (counts[largest]! <= counts[prefix]! + 1) return undefined
  let victim: number | undefined
  for (const [id, c] of model.connections) {
    if (c.prefix !== largest || !inTable(c)) continue
    if (victim === undefined || c.since < model.connections.get(victim)!.since) victim = id
  }
  return victim
}

const openM = (model: Model, id: number, prefix: number, out: Array<string>): void => {
  const config = model.config
  const refuse = (limit: RelayLimit): void => void out.push(closeLine(id, "over-limit", false, limit))
  if (model.shutdownAt !== undefined) return void out.push(closeLine(id, "shutting-down", false))
  if (model.connections.size >= config.maxConnections) return refuse("max-connections")
  if (model.pressure) {
    const prefixes = new Set([...model.connections.values()].map((c) => c.prefix).concat([prefix])).size
    let held = 0
    for (const [cid, u] of model.usage) if (model.connections.get(cid)?.prefix === prefix) held += u.held
    if (held >= config.maxBufferedBytes / prefixes) return refuse("max-buffered-bytes")
  }
  const tokens = model.tokens.get(prefix) ?? config.handshakeBurstPerPrefix
  if (tokens < 1) return refuse("handshake-rate")
  model.tokens.set(prefix, tokens - 1)
  if (countM(model, (c) => c.prefix === prefix && isUnidentified(c)) >= config.maxUnidentifiedPerPrefix) {
    return refuse("max-unidentified-per-prefix")
  }
  if (countM(model, (c) => c.prefix === prefix && isHandshaking(c)) >= config.maxHandshakesPerPrefix) {
    return refuse("max-handshakes-per-prefix")
  }
  if (countM(model, isUnidentified) >= config.maxUnidentified) {
    const victim = victimM(model, prefix, isUnidentified)
    if (victim === undefined) return refuse("max-unidentified")
    closeM(model, victim, "over-limit", out, "unidentified-evicted")
  }
  if (countM(model, isHandshaking) >= config.maxHandshakes) {
    const victim = victimM(model, prefix, isHandshaking)
    if (victim === undefined) return refuse("max-handshakes")
    closeM(model, victim, "over-limit", out, "handshake-evicted")
  }
  setM(model, id, {
    phase: "handshaking",
    prefix,
    opened: model.now,
    hello: false,
    deadline: model.now + Math.min(config.helloTimeoutTicks, config.handshakeTimeoutTicks)
  })
}

const closeTunnelsM = (model: Model, out: Array<string>): void => {
  for (const [id, c] of [...model.connections]) {
    if (c.phase === "tunnel") {
      model.connections.delete(id)
      out.push(closeLine(id, "shutting-down", true))
    }
  }
}

const unidentifiedM = (model: Model): number =>
  [...model.connections.values()].filter((c) => c.phase === "handshaking" || c.phase === "awaiting-init").length

const initM = (model: Model, id: number, prefix: number, key: number, init: ModelInit, out: Array<string>): void => {
  if (model.allow !== undefined && !model.allow.has(key)) return closeM(model, id, "not-allowed", out)
  if (init.kind !== "accept") {
    if (countM(model, (c) => c.prefix === prefix && isCounted(c)) >= model.config.maxConnectionsPerPrefix) {
      return closeM(model, id, "over-limit", out, "max-connections-per-prefix")
    }
    if (countM(model, (c) => "key" in c && c.key === key && isCounted(c)) >= model.config.maxConnectionsPerKey) {
      return closeM(model, id, "over-limit", out, "max-connections-per-key")
    }
  }
  switch (init.kind) {
    case "listen": {
      const older = find(model, (c) => c.phase === "listen" && c.key === key)
      if (older !== undefined) closeM(model, older, "replaced", out)
      setM(model, id, { phase: "listen", prefix, key })
      model.unwritten.set(id, 0)
      return
    }
    case "connect": {
      const listener = find(model, (c) => c.phase === "listen" && c.key === init.key)
      if (listener === undefined) return closeM(model, id, "no-such-listener", out)
      const pending = [...model.connections.values()].filter(
        (c) => c.phase === "pending-connect" && c.listener === listener
      )
      if (pending.some((c) => c.phase === "pending-connect" && c.key === key)) return closeM(model, id, "duplicate", out)
      if (pending.length >= model.config.maxPendingHalfTunnelsPerListener) {
        return closeM(model, id, "over-limit", out, "max-pending-per-listener")
      }
      setM(model, id, {
        phase: "pending-connect",
        prefix,
        key,
        listener,
        deadline: model.now + model.config.halfTunnelTicks
      })
      out.push(`hold ${id} on ${listener}`)
      const unwritten = model.unwritten.get(listener) ?? 0
      // A listener not reading its IncomingConnections closes; its half tunnels, this one too, follow.
      if (unwritten >= model.config.maxPendingHalfTunnelsPerListener) {
        return closeM(model, listener, "over-limit", out, "listener-backlog")
      }
      model.unwritten.set(listener, unwritten + 1)
      out.push(`incoming ${keyName(key)} on ${listener}`)
      return
    }
    case "accept": {
      const listener = find(model, (c) => c.phase === "listen" && c.key === key)
      const connect = find(
        model,
        (c) => c.phase === "pending-connect" && c.listener === listener && c.key === init.key
      )
      if (connect === undefined) return closeM(model, id, "no-pending", out)
      const c = model.connections.get(connect)!
      setM(model, connect, { phase: "tunnel", prefix: c.prefix, key: init.key, peer: id, counted: true })
      setM(model, id, { phase: "tunnel", prefix, key, peer: connect, counted: false })
      usageM(model, connect).progressAt = model.now
      usageM(model, id).progressAt = model.now
      out.push(`splice ${connect}+${id}`)
      return
    }
  }
}

const tickM = (model: Model, out: Array<string>): void => {
  model.now++
  if (model.shutdownAt === model.now) closeTunnelsM(model, out)
  const { handshakeRatePerPrefix: rate, handshakeBurstPerPrefix: burst } = model.config
  for (const [p, t] of model.tokens) model.tokens.set(p, Math.min(burst, t + rate))
  if (model.pressure) {
    for (const [id, c] of [...model.connections]) {
      if (c.phase !== "tunnel" || !c.counted || !model.connections.has(id)) continue
      const mine = usageM(model, id)
      const theirs = usageM(model, c.peer)
      if (mine.held + theirs.held === 0) continue
      if (model.now - Math.max(mine.progressAt, theirs.progressAt) < model.config.stuckTunnelTicks) continue
      model.connections.delete(id)
      model.connections.delete(c.peer)
      out.push(closeLine(id, "over-limit", true, "stuck-tunnel"), closeLine(c.peer, "over-limit", true, "stuck-tunnel"))
    }
  }
  for (const [id, c] of [...model.connections]) {
    if (!("deadline" in c) || c.deadline !== model.now) continue
    const reason: CloseReason = c.phase === "handshaking"
      ? "timeout-handshake"
      : c.phase === "awaiting-init"
      ? "timeout-init"
      : "timeout-half-tunnel"
    closeM(model, id, reason, out)
  }
}

const shutdownM = (model: Model, drainTicks: number, out: Array<string>): void => {
  if (model.shutdownAt !== undefined) return
  model.shutdownAt = model.now + drainTicks
  for (const [id, c] of [...model.connections]) if (c.phase === "pending-connect") closeM(model, id, "shutting-down", out)
  for (const [id, c] of [...model.connections]) if (c.phase !== "tunnel") closeM(model, id, "shutting-down", out)
  if (drainTicks === 0) closeTunnelsM(model, out)
}

// ------------------------------------------------------------ step checking

const describeCommand = (command: RelayCommand): string => {
  switch (command._tag) {
    case "SendIncomingConnection":
      return `incoming ${keyName(keyIndexOfHex(publicKeyHex(command.publicKey)))} on ${command.id}`
    case "HoldConnect":
      return `hold ${command.id} on ${command.listener}`
    case "Splice":
      return `splice ${command.connectId}+${command.acceptId}`
    case "Close":
      return `close ${command.id} ${command.reason}${command.limit === undefined ? "" : ` (${command.limit})`} ${command.mode}`
    case "PauseReading":
      return `pause ${command.id}`
    case "ResumeReading":
      return `resume ${command.id}`
  }
}

const namedIds = (command: RelayCommand): ReadonlyArray<number> => {
  switch (command._tag) {
    case "SendIncomingConnection":
    case "Close":
    case "PauseReading":
    case "ResumeReading":
      return [command.id]
    case "HoldConnect":
      return [command.id, command.listener]
    case "Splice":
      return [command.connectId, command.acceptId]
  }
}

/**
 * Feeds one event to the core and `predict` to the model (which mutates the
 * model and lists the expected commands), then checks every invariant of
 * the file header. `closedByEvent` is the id a Closed event closes.
 */
const step = (
  model: Model,
  real: Real,
  event: RelayEvent,
  predict: (out: Array<string>) => void,
  closedByEvent?: number
): void => {
  if (closedByEvent !== undefined) {
    if (real.held.has(closedByEvent) && real.core.roleOf(ConnectionId(closedByEvent)) === "pending-connect") {
      real.ended.add(closedByEvent)
    }
    real.closed.add(closedByEvent)
  }
  const commands = handleAll(real.core, event)
  const expected: Array<string> = []
  predict(expected)
  pressureM(model, expected)
  expect([...commands.map(describeCommand)].sort()).toEqual([...expected].sort())

  const closedInBatch = new Set<number>()
  for (const command of commands) {
    for (const n of namedIds(command)) {
      expect(real.closed.has(n), `${describeCommand(command)} names a closed connection`).toBe(false)
      expect(closedInBatch.has(n), `${describeCommand(command)} after its Close`).toBe(false)
    }
    switch (command._tag) {
      case "HoldConnect":
        expect(real.held.has(command.id)).toBe(false)
        real.held.add(command.id)
        real.routed.add(command.id)
        break
      case "Splice":
        expect(real.held.has(command.connectId) && !real.ended.has(command.connectId)).toBe(true)
        expect(real.held.has(command.acceptId) || real.routed.has(command.acceptId)).toBe(false)
        real.ended.add(command.connectId)
        real.routed.add(command.acceptId)
        break
      case "Close":
        closedInBatch.add(command.id)
        if (real.held.has(command.id)) real.ended.add(command.id)
        break
      case "SendIncomingConnection":
        break
      case "PauseReading":
      case "ResumeReading":
        expect(real.core.isPaused(command.id)).toBe(command._tag === "PauseReading")
        break
    }
  }
  for (const n of closedInBatch) real.closed.add(n)

  for (let n = 1; n <= model.opened; n++) {
    const role: ConnectionRole | undefined = model.connections.get(n)?.phase
    expect(real.core.roleOf(ConnectionId(n)), `role of #${n}`).toBe(role)
  }
  const phases = [...model.connections.values()].map((c) => c.phase)
  const count = (phase: ConnectionRole): number => phases.filter((p) => p === phase).length
  expect(real.core.stats()).toEqual({
    unidentified: count("handshaking") + count("awaiting-init"),
    handshaking: count("handshaking"),
    listeners: count("listen"),
    pendingHalfTunnels: count("pending-connect"),
    tunnels: count("tunnel") / 2,
    connections: model.connections.size,
    heldBytes: heldM(model),
    memoryPressure: model.pressure ? 1 : 0,
    pausedReading: [...model.usage.values()].filter((u) => u.paused).length
  })
  expect(real.core.drainDeadlinePassed).toBe(model.shutdownAt !== undefined && model.now >= model.shutdownAt)
  expect(real.core.checkInvariants()).toEqual([])
}

// ----------------------------------------------------------------- commands

// Whether a correct adapter could still hand the core a message on a connection the core has forgotten (a late one).
const receivable = (real: Real, id: number): boolean => real.authenticated.has(id) && !real.routed.has(id)

type RelayModelCommand = fc.Command<Model, Real>

class Open implements RelayModelCommand {
  readonly prefix: number
  constructor(prefix: number) {
    this.prefix = prefix
  }
  check = (): boolean => true
  run(model: Model, real: Real): void {
    const id = ++model.opened
    step(model, real, { _tag: "Opened", id: ConnectionId(id), prefix: PREFIXES[this.prefix]! }, (out) =>
      openM(model, id, this.prefix, out))
  }
  toString = (): string => `Open(${PREFIXES[this.prefix]})`
}

class Hello implements RelayModelCommand {
  readonly target: number
  constructor(target: number) {
    this.target = target
  }
  check = (model: Readonly<Model>): boolean => this.target <= model.opened
  run(model: Model, real: Real): void {
    step(model, real, { _tag: "HelloReceived", id: ConnectionId(this.target) }, () => {
      const c = model.connections.get(this.target)
      if (c?.phase !== "handshaking" || c.hello) return
      setM(model, this.target, { ...c, hello: true, deadline: c.opened + model.config.handshakeTimeoutTicks })
    })
  }
  toString = (): string => `Hello(#${this.target})`
}

/** A usage report: `held` bytes now, and `delivered` more bytes written to the connection. */
class Report implements RelayModelCommand {
  readonly target: number
  readonly held: number
  readonly delivered: number
  constructor(target: number, held: number, delivered: number) {
    this.target = target
    this.held = held
    this.delivered = delivered
  }
  check = (model: Readonly<Model>): boolean => this.target <= model.opened
  run(model: Model, real: Real): void {
    const c = model.connections.get(this.target)
    const before = c === undefined ? 0 : usageM(model, this.target).delivered
    if (c === undefined) model.usage.delete(this.target)
    const event: RelayEvent = {
      _tag: "Usage",
      id: ConnectionId(this.target),
      heldBytes: this.held,
      deliveredBytes: before + this.delivered
    }
    step(model, real, event, (out) => {
      if (c === undefined) return
      const u = usageM(model, this.target)
      u.held = this.held
      if (this.delivered > 0) {
        u.delivered += this.delivered
        u.progressAt = model.now
      }
      pressureM(model, out)
      if (model.pressure && !u.paused && this.held >= model.config.maxBufferedBytes / model.connections.size) {
        u.paused = true
        out.push(`pause ${this.target}`)
      }
    })
  }
  toString = (): string => `Usage(#${this.target} holds ${this.held}${this.delivered > 0 ? `, +${this.delivered} delivered` : ""})`
}

class Authenticate implements RelayModelCommand {
  readonly target: number
  readonly key: number
  constructor(target: number, key: number) {
    this.target = target
    this.key = key
  }
  check = (model: Readonly<Model>): boolean => this.target <= model.opened
  run(model: Model, real: Real): void {
    const c = model.connections.get(this.target)
    // A correct adapter authenticates each connection once; one that finishes after the core closed it is fed.
    if (real.authenticated.has(this.target)) return
    real.authenticated.add(this.target)
    step(model, real, { _tag: "Authenticated", id: ConnectionId(this.target), publicKey: keyOf(this.key) }, () => {
      if (c?.phase === "handshaking") {
        const burst = model.config.handshakeBurstPerPrefix
        model.tokens.set(c.prefix, Math.min(burst, (model.tokens.get(c.prefix) ?? burst) + 1))
      }
      if (c !== undefined) {
        setM(model, this.target, {
          phase: "awaiting-init",
          prefix: c.prefix,
          key: this.key,
          deadline: model.now + model.config.initTimeoutTicks
        })
      }
    })
  }
  toString = (): string => `Authenticate(#${this.target} as ${keyName(this.key)})`
}

type ModelInit = { readonly kind: "listen" } | { readonly kind: "connect" | "accept"; readonly key: number }
const describeInit = (init: ModelInit): string => init.kind === "listen" ? "listen" : `${init.kind} ${keyName(init.key)}`

class Init implements RelayModelCommand {
  readonly target: number
  readonly init: ModelInit
  constructor(target: number, init: ModelInit) {
    this.target = target
    this.init = init
  }
  check = (model: Readonly<Model>): boolean => this.target <= model.opened
  run(model: Model, real: Real): void {
    const c = model.connections.get(this.target)
    // Only a connection awaiting its first message gets one (or a closed one, late).
    if (c !== undefined && c.phase !== "awaiting-init") return
    if (c === undefined && !receivable(real, this.target)) return
    const init: InitConnection = this.init.kind === "listen"
      ? { _tag: "Listen" }
      : { _tag: this.init.kind === "connect" ? "Connect" : "Accept", publicKey: keyOf(this.init.key) }
    step(model, real, { _tag: "Received", id: ConnectionId(this.target), message: encodeInitConnection(init) }, (out) => {
      if (c !== undefined) initM(model, this.target, c.prefix, c.key, this.init, out)
    })
  }
  toString = (): string => `Init(#${this.target} ${describeInit(this.init)})`
}

class Reject implements RelayModelCommand {
  readonly listener: number
  readonly key: number
  constructor(listener: number, key: number) {
    this.listener = listener
    this.key = key
  }
  check = (): boolean => true
  run(model: Model, real: Real): void {
    // Sent on whichever connection listens as `listener` now; nothing to send on without one.
    const target = find(model, (c) => c.phase === "listen" && c.key === this.listener)
    if (target === undefined) return
    const message = encodeRejectConnection({ publicKey: keyOf(this.key) })
    step(model, real, { _tag: "Received", id: ConnectionId(target), message }, (out) => {
      const connect = find(
        model,
        (p) => p.phase === "pending-connect" && p.listener === target && p.key === this.key
      )
      if (connect !== undefined) closeM(model, connect, "rejected", out)
    })
  }
  toString = (): string => `Reject(by ${keyName(this.listener)}'s listener, ${keyName(this.key)})`
}

/** A whole new client connection: Open, Authenticated, first message. */
class Client implements RelayModelCommand {
  readonly key: number
  readonly init: ModelInit
  readonly prefix: number
  constructor(key: number, init: ModelInit, prefix: number) {
    this.key = key
    this.init = init
    this.prefix = prefix
  }
  check = (): boolean => true
  run(model: Model, real: Real): void {
    new Open(this.prefix).run(model, real)
    const id = model.opened
    if (!model.connections.has(id)) return // refused: over-limit or shutting down
    new Hello(id).run(model, real)
    new Authenticate(id, this.key).run(model, real)
    new Init(id, this.init).run(model, real)
  }
  toString = (): string => `Client(${keyName(this.key)} ${describeInit(this.init)} from ${PREFIXES[this.prefix]})`
}

/** A listener's owner accepts the oldest half tunnel offered to it, as a client answering IncomingConnection. */
class AcceptOffered implements RelayModelCommand {
  readonly key: number
  constructor(key: number) {
    this.key = key
  }
  check = (): boolean => true
  run(model: Model, real: Real): void {
    const listener = find(model, (c) => c.phase === "listen" && c.key === this.key)
    let connector: number | undefined = undefined
    for (const c of model.connections.values()) {
      if (c.phase === "pending-connect" && c.listener === listener) {
        connector = c.key
        break
      }
    }
    if (connector === undefined) return
    // The listener's host accepts from its own prefix (the key's index).
    new Client(this.key, { kind: "accept", key: connector }, this.key).run(model, real)
  }
  toString = (): string => `AcceptOffered(${keyName(this.key)})`
}

class Garbage implements RelayModelCommand {
  readonly target: number
  constructor(target: number) {
    this.target = target
  }
  check = (model: Readonly<Model>): boolean => this.target <= model.opened
  run(model: Model, real: Real): void {
    const c = model.connections.get(this.target)
    if (c !== undefined && c.phase !== "awaiting-init" && c.phase !== "listen") return
    if (c === undefined && !receivable(real, this.target)) return
    const message = new Uint8Array([0xff, 0x01, 0x02])
    step(model, real, { _tag: "Received", id: ConnectionId(this.target), message }, (out) => {
      if (c !== undefined) closeM(model, this.target, "protocol-violation", out)
    })
  }
  toString = (): string => `Garbage(#${this.target})`
}

class Close implements RelayModelCommand {
  readonly target: number
  constructor(target: number) {
    this.target = target
  }
  check = (model: Readonly<Model>): boolean => this.target <= model.opened
  run(model: Model, real: Real): void {
    step(model, real, { _tag: "Closed", id: ConnectionId(this.target) }, (out) => releaseM(model, this.target, out), this.target)
  }
  toString = (): string => `Close(#${this.target})`
}

class Ticks implements RelayModelCommand {
  readonly count: number
  constructor(count: number) {
    this.count = count
  }
  check = (): boolean => true
  run(model: Model, real: Real): void {
    for (let i = 0; i < this.count; i++) step(model, real, { _tag: "Tick" }, (out) => tickM(model, out))
  }
  toString = (): string => `Tick(x${this.count})`
}

/** A usage report for the `index`-th open connection (mod their count), so reports land on live ones. */
class ReportLive implements RelayModelCommand {
  readonly index: number
  readonly held: number
  readonly delivered: number
  constructor(index: number, held: number, delivered: number) {
    this.index = index
    this.held = held
    this.delivered = delivered
  }
  check = (model: Readonly<Model>): boolean => model.connections.size > 0
  run(model: Model, real: Real): void {
    const ids = [...model.connections.keys()]
    new Report(ids[this.index % ids.length]!, this.held, this.delivered).run(model, real)
  }
  toString = (): string => `UsageLive(${this.index} holds ${this.held}${this.delivered > 0 ? `, +${this.delivered} delivered` : ""})`
}

class SetAllowList implements RelayModelCommand {
  readonly keys: ReadonlyArray<number> | undefined
  constructor(keys: ReadonlyArray<number> | undefined) {
    this.keys = keys
  }
  check = (): boolean => true
  run(model: Model, real: Real): void {
    const keys = this.keys === undefined ? undefined : new Set(this.keys.map((k) => publicKeyHex(keyOf(k))))
    step(model, real, { _tag: "AllowListChanged", keys }, () => {
      model.allow = this.keys === undefined ? undefined : new Set(this.keys)
    })
  }
  toString = (): string => `AllowList(${this.keys === undefined ? "open" : this.keys.map(keyName).join(",")})`
}

class Shutdown implements RelayModelCommand {
  readonly armed: boolean
  /** The drain the adapter asks for; undefined = the config's. */
  readonly drainTicks: number | undefined
  constructor(armed: boolean, drainTicks: number | undefined) {
    this.armed = armed
    this.drainTicks = drainTicks
  }
  check = (): boolean => this.armed
  run(model: Model, real: Real): void {
    const event: RelayEvent = this.drainTicks === undefined
      ? { _tag: "Shutdown" }
      : { _tag: "Shutdown", drainTicks: this.drainTicks }
    step(model, real, event, (out) => shutdownM(model, this.drainTicks ?? model.config.shutdownDrainTicks, out))
  }
  toString = (): string => `Shutdown(${this.drainTicks === undefined ? "config drain" : `drain ${this.drainTicks}`})`
}

/** The adapter saw connection `target` end for `reason`. */
class End implements RelayModelCommand {
  readonly target: number
  readonly reason: EndReason
  constructor(target: number, reason: EndReason) {
    this.target = target
    this.reason = reason
  }
  check = (model: Readonly<Model>): boolean => this.target <= model.opened
  run(model: Model, real: Real): void {
    step(model, real, { _tag: "Ended", id: ConnectionId(this.target), reason: this.reason }, (out) => {
      if (this.reason === "rekey-rate") closeM(model, this.target, "over-limit", out, "rekey-rate")
      else closeM(model, this.target, this.reason, out)
    })
  }
  toString = (): string => `End(#${this.target} ${this.reason})`
}

/** One IncomingConnection written out on the listen channel of key `key` (or, if none, on connection #1: ignored). */
class WriteIncoming implements RelayModelCommand {
  readonly key: number
  constructor(key: number) {
    this.key = key
  }
  check = (): boolean => true
  run(model: Model, real: Real): void {
    const listener = find(model, (c) => c.phase === "listen" && c.key === this.key) ?? 1
    step(model, real, { _tag: "IncomingConnectionWritten", id: ConnectionId(listener) }, () => {
      const unwritten = model.unwritten.get(listener) ?? 0
      if (model.connections.get(listener)?.phase === "listen" && unwritten > 0) model.unwritten.set(listener, unwritten - 1)
    })
  }
  toString = (): string => `WriteIncoming(${keyName(this.key)})`
}

const END_REASONS: ReadonlyArray<EndReason> = [
  "client-closed",
  "connection-lost",
  "frame-too-long",
  "version-mismatch",
  "handshake-failed",
  "keepalive-timeout",
  "protocol-violation",
  "rekey-rate",
  "internal-error"
]

// --------------------------------------------------------------- arbitraries

const target = fc.integer({ min: 1, max: MAX_TARGET })
const keyIndex = fc.integer({ min: 0, max: KEYS.length - 1 })
const initArb: fc.Arbitrary<ModelInit> = fc.oneof(
  fc.constant({ kind: "listen" as const }),
  fc.record({ kind: fc.constant("connect" as const), key: keyIndex }),
  fc.record({ kind: fc.constant("connect" as const), key: keyIndex }),
  fc.record({ kind: fc.constant("accept" as const), key: keyIndex })
)

const prefixIndex = fc.integer({ min: 0, max: PREFIXES.length - 1 })
const clientArb = fc.tuple(keyIndex, initArb, prefixIndex).map(([k, i, p]) => new Client(k, i, p))
// Held sizes around the small budgets below, so pressure comes and goes.
const heldArb = fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 40 }), fc.integer({ min: 40, max: 120 }))

const commandArbs: Array<fc.Arbitrary<RelayModelCommand>> = [
  prefixIndex.map((p) => new Open(p)),
  clientArb,
  clientArb,
  clientArb,
  clientArb,
  keyIndex.map((k) => new AcceptOffered(k)),
  keyIndex.map((k) => new AcceptOffered(k)),
  target.map((t) => new Hello(t)),
  fc.tuple(target, keyIndex).map(([t, k]) => new Authenticate(t, k)),
  fc.tuple(target, initArb).map(([t, i]) => new Init(t, i)),
  fc.tuple(keyIndex, keyIndex).map(([l, k]) => new Reject(l, k)),
  fc.tuple(target, heldArb, fc.oneof(fc.constant(0), fc.constant(0), fc.integer({ min: 1, max: 9 }))).map(
    ([t, h, d]) => new Report(t, h, d)
  ),
  fc.tuple(target, heldArb).map(([t, h]) => new Report(t, h, 0)),
  fc.tuple(fc.nat(20), heldArb, fc.integer({ min: 0, max: 3 })).map(([i, h, d]) => new ReportLive(i, h, d)),
  fc.tuple(fc.nat(20), heldArb).map(([i, h]) => new ReportLive(i, h, 0)),
  fc.tuple(fc.nat(20), heldArb).map(([i, h]) => new ReportLive(i, h, 0)),
  target.map((t) => new Garbage(t)),
  target.map((t) => new Close(t)),
  fc.tuple(target, fc.constantFrom(...END_REASONS)).map(([t, r]) => new End(t, r)),
  // Listeners mostly read their IncomingConnections; sometimes they fall behind.
  keyIndex.map((k) => new WriteIncoming(k)),
  keyIndex.map((k) => new WriteIncoming(k)),
  fc.integer({ min: 1, max: 8 }).map((n) => new Ticks(n)),
  // Mostly the open relay: a list refuses most clients, which starves the other paths.
  fc.option(fc.subarray([0, 1, 2], { minLength: 2 }), { nil: undefined, freq: 1 }).map((keys) => new SetAllowList(keys)),
  // Rare: most runs should exercise the relay before it stops.
  fc.tuple(fc.integer({ min: 0, max: 19 }), fc.option(fc.integer({ min: 0, max: 4 }), { nil: undefined })).map(
    ([roll, drain]) => new Shutdown(roll === 0, drain)
  )
]

// Small values, so caps and timeouts are hit often.
const configArb: fc.Arbitrary<RelayConfig> = fc.record({
  handshakeTimeoutTicks: fc.integer({ min: 1, max: 4 }),
  helloTimeoutTicks: fc.integer({ min: 1, max: 3 }),
  initTimeoutTicks: fc.integer({ min: 1, max: 4 }),
  halfTunnelTicks: fc.integer({ min: 1, max: 8 }),
  maxPendingHalfTunnelsPerListener: fc.integer({ min: 1, max: 3 }),
  maxConnections: fc.integer({ min: 3, max: 12 }),
  maxUnidentified: fc.integer({ min: 2, max: 6 }),
  maxUnidentifiedPerPrefix: fc.integer({ min: 1, max: 5 }),
  maxHandshakes: fc.integer({ min: 1, max: 5 }),
  maxHandshakesPerPrefix: fc.integer({ min: 1, max: 4 }),
  handshakeRatePerPrefix: fc.integer({ min: 1, max: 3 }),
  handshakeBurstPerPrefix: fc.integer({ min: 1, max: 8 }),
  maxConnectionsPerPrefix: fc.integer({ min: 1, max: 8 }),
  maxConnectionsPerKey: fc.integer({ min: 1, max: 8 }),
  maxBufferedBytes: fc.integer({ min: 50, max: 300 }),
  stuckTunnelTicks: fc.integer({ min: 1, max: 4 }),
  shutdownDrainTicks: fc.integer({ min: 0, max: 3 }),
  allowList: fc.constant(undefined)
})

const replay = {
  seed: process.env["RELAY_MODEL_SEED"],
  path: process.env["RELAY_MODEL_PATH"],
  replayPath: process.env["RELAY_MODEL_REPLAY"]
}

describe("relay core against its reference model", () => {
  it("agrees on every command and invariant, and ends empty", () => {
    const property = fc.property(
      configArb,
      fc.commands(commandArbs, {
        maxCommands: 60,
        size: "max",
        ...(replay.replayPath === undefined ? {} : { replayPath: replay.replayPath })
      }),
      (config, commands) => {
        const model = emptyModel(config)
        const real: Real = {
          core: new RelayCore(config),
          closed: new Set(),
          authenticated: new Set(),
          routed: new Set(),
          held: new Set(),
          ended: new Set()
        }
        fc.modelRun(() => ({ model, real }), commands)
        // Every connection still open closes; afterwards the core must hold nothing.
        for (const id of [...model.connections.keys()]) {
          if (model.connections.has(id)) new Close(id).run(model, real)
        }
        expect([...real.held].filter((id) => !real.ended.has(id))).toEqual([])
        expect(real.core.stats()).toEqual(idleRelayStats)
        // Prefixes stay only while their handshake buckets refill: enough ticks empty the tables.
        new Ticks(Math.ceil(config.handshakeBurstPerPrefix / config.handshakeRatePerPrefix)).run(model, real)
        expect(real.core.internalSizes()).toEqual({ connections: 0, listeners: 0, deadlines: 0, prefixes: 0, keys: 0, usage: 0 })
      }
    )
    fc.assert(property, {
      numRuns: 500,
      ...(replay.seed === undefined ? {} : { seed: Number(replay.seed), endOnFailure: true }),
      ...(replay.path === undefined ? {} : { path: replay.path })
    })
  })
})
