/**
 * The whole system under simulation: real relay servers, real listeners and
 * connectors (the client library's Effect API), on the in-memory network
 * (src/adapters/transport-memory.ts) and virtual time (sim-runtime.ts). Only
 * the transport, the clock, the scheduler and the random source are
 * swapped; every byte goes through the real drivers, channels and cores.
 *
 * A `Scenario` is plain data (fast-check draws it, `describeScenario` prints
 * it); `runScenario` plays it from a seed and checks the properties:
 * - every stream either delivered exactly the bytes sent both ways, in
 *   order, with both half closes seen, or ended on both sides with a typed
 *   error (ConnectError or PeerStreamError) by the end of the run, which
 *   leaves every keepalive and timeout time to fire after the last fault;
 * - with no fault at all, every stream is delivered;
 * - a listener whose relay is up (and reachable) is listening there again
 *   by the end, within its backoff bound after the last fault;
 * - nothing leaks: once clients and relays are closed, no stream end, byte,
 *   listener, timer or fiber is left; before the relays close, their cores
 *   hold no tunnel, half tunnel or buffered byte;
 * - metrics agree with the network: each relay counted every connection
 *   the network made to it.
 */
import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Option from "effect/Option"
import * as Scope from "effect/Scope"
import { type CryptoService, Crypto, autoCryptoService } from "../../src/adapters/crypto.ts"
import { connectToPeer } from "../../src/adapters/client/connector.ts"
import { type ListenerEvent, makeListener, type RelayStatus } from "../../src/adapters/client/listener.ts"
import type { ClientSettings } from "../../src/adapters/client/tunnel.ts"
import type { PeerStream } from "../../src/adapters/client/tunnel-stream.ts"
import { makeRelayServer, type RelayServer, testRelayOptions } from "../../src/adapters/relay-server.ts"
import { makeMemoryNetwork, type MemoryNetwork } from "../../src/adapters/transport-memory.ts"
import { bytesToHex } from "../../src/core/keys.ts"
import { makeDeterministicRandom } from "../../src/core/random.ts"
import type { RelayAddress } from "../../src/core/relay-address.ts"
import { SimRuntime } from "./sim-runtime.ts"
import { concatBytes } from "../../src/core/bytes.ts"

/** A fault at a moment of the scenario. */
export type Fault =
  /** The relay's process dies (connections reset, state gone) and starts again `downMs` later. */
  | { readonly _tag: "KillRelay"; readonly atMs: number; readonly relay: number; readonly downMs: number }
  /** Nothing crosses between a peer and a relay (no close either) for `forMs`. */
  | { readonly _tag: "Partition"; readonly atMs: number; readonly peer: PeerRef; readonly relay: number; readonly forMs: number }
  /** Every connection between a peer and a relay is reset. */
  | { readonly _tag: "Reset"; readonly atMs: number; readonly peer: PeerRef; readonly relay: number }
  /** The link between a peer and a relay slows to `bytesPerMs` with `latencyMs` for `forMs`. */
  | {
    readonly _tag: "SlowLink"
    readonly atMs: number
    readonly peer: PeerRef
    readonly relay: number
    readonly bytesPerMs: number
    readonly latencyMs: number
    readonly forMs: number
  }
  /** The relay refuses the next `count` dials. */
  | { readonly _tag: "RefuseDials"; readonly atMs: number; readonly relay: number; readonly count: number }

/** A listener (by index) or the connector of a stream (by index). */
export type PeerRef = { readonly _tag: "Listener"; readonly index: number } | { readonly _tag: "Connector"; readonly index: number }

/** One stream: a connector reaches a listener and both send, then half close. */
export interface StreamPlan {
  readonly listener: number
  readonly startMs: number
  /** Bytes the connector sends, in writes of these sizes. */
  readonly request: ReadonlyArray<number>
  /** Bytes the listener answers, after reading the whole request, in writes of these sizes. */
  readonly reply: ReadonlyArray<number>
  /** How long the listener thinks between reading the request and answering (keeps the tunnel open for faults to hit). */
  readonly thinkMs: number
  /** Which of the listener's relays, in which order (indices into its relay list; rotated). */
  readonly relayRotation: number
}

/** A whole scenario. */
export interface Scenario {
  readonly relays: number
  /** Each listener's relays (indices, no repeats). */
  readonly listeners: ReadonlyArray<ReadonlyArray<number>>
  readonly streams: ReadonlyArray<StreamPlan>
  readonly faults: ReadonlyArray<Fault>
  /** One-way latency between every peer and every relay. */
  readonly latencyMs: number
}

/** What one run found. */
export interface RunReport {
  readonly violations: ReadonlyArray<string>
  readonly log: ReadonlyArray<string>
  /** Virtual time at the end, and scheduler steps taken. */
  readonly endMs: number
  readonly steps: number
  readonly outcomes: ReadonlyArray<string>
}

/** Timing of the simulated system: Offset's protocol values, 1 s ticks. */
export const SIM_TICK_MS = 1000
/** The listener's reconnect schedule in simulations (short, so runs stay short). */
export const SIM_BACKOFF = { initialMs: 200, maxMs: 4_000, resetAfterMs: 10_000 } as const
/** After the last scenario event: keepalive (2 × 32 ticks) + connect deadline + backoff, with room. */
export const SETTLE_MS = 120_000
const RELAY_PORT = 4747
/** How soon one side must hear that the other failed: two keepalive periods (2 × 32 ticks) and a margin. */
export const NOTICE_BOUND_MS = 2 * 32 * SIM_TICK_MS + 6_000
/** Streams start this long after the relays and listeners (plus their own start time). */
export const LISTEN_FIRST_MS = 1000
const CONNECT_TIMEOUT_MS = 20_000

const relayHost = (index: number) => `relay-${index}`
const listenerHost = (index: number) => `listener-${index}`
const connectorHost = (index: number) => `connector-${index}`
const peerHost = (peer: PeerRef) => (peer._tag === "Listener" ? listenerHost(peer.index) : connectorHost(peer.index))

/** The bytes a stream's side sends: deterministic per stream, direction and offset. */
export const payloadByte = (stream: number, direction: 0 | 1, offset: number): number =>
  (stream * 131 + direction * 71 + offset * 7 + (offset >>> 8) * 13) & 0xff

const payload = (stream: number, direction: 0 | 1, from: number, length: number): Uint8Array => {
  const bytes = new Uint8Array(length)
  for (let i = 0; i < length; i++) bytes[i] = payloadByte(stream, direction, from + i)
  return bytes
}

/** Checks received bytes against what the other side sent; undefined when equal. */
const compare = (stream: number, direction: 0 | 1, received: Uint8Array, sent: number): string | undefined => {
  if (received.length !== sent) return `${received.length} bytes instead of ${sent}`
  for (let i = 0; i < received.length; i++) {
    if (received[i] !== payloadByte(stream, direction, i)) return `byte ${i} differs`
  }
  return undefined
}

type SideOutcome =
  | { readonly _tag: "Pending"; readonly phase: string }
  | { readonly _tag: "Done"; readonly received: Uint8Array; readonly atMs: number }
  | { readonly _tag: "Failed"; readonly error: string; readonly typed: boolean; readonly atMs: number }

const typedError = (cause: Cause.Cause<unknown>): { error: string; typed: boolean } => {
  const failure = cause.reasons.find((reason) => reason._tag === "Fail")
  if (failure?._tag === "Fail") {
    const error = failure.error as { readonly _tag?: string; readonly message?: string }
    return { error: `${error._tag ?? "?"}: ${error.message ?? String(error)}`, typed: error._tag !== undefined }
  }
  if (Cause.hasInterruptsOnly(cause)) return { error: "interrupted", typed: false }
  return { error: `defect: ${Cause.pretty(cause).split("\n")[0]}`, typed: false }
}

// Reads to the end, then runs `after`.
const readAll = (stream: PeerStream, into: Array<Uint8Array>): Effect.Effect<void, unknown> =>
  Effect.gen(function*() {
    while (true) {
      const chunk = yield* stream.read
      if (Option.isNone(chunk)) return
      into.push(chunk.value)
    }
  })

const writeAll = (stream: PeerStream, index: number, direction: 0 | 1, sizes: ReadonlyArray<number>) =>
  Effect.gen(function*() {
    let offset = 0
    for (const size of sizes) {
      yield* stream.write(payload(index, direction, offset, size))
      offset += size
    }
  })

const total = (sizes: ReadonlyArray<number>) => sizes.reduce((a, b) => a + b, 0)

/** A seeded crypto service: real primitives, deterministic randomness (NOT SECURE: simulation only). */
const seededCrypto = (seed: number): CryptoService => ({ ...autoCryptoService(), randomBytes: makeDeterministicRandom(seed) })

interface RelayProcess {
  readonly index: number
  readonly identity: { readonly seed: Uint8Array; readonly publicKey: Uint8Array }
  fiber: Fiber.Fiber<void, unknown> | undefined
  server: RelayServer | undefined
  /** Connections the network made to this relay's current process, and what its metrics counted. */
  /** Connections the network had made to this relay's host before the current process started. */
  connectionsBefore: number
  up: boolean
}

/** Plays `scenario` from `seed` and checks every property; never throws for a violation. */
export const runScenario = (scenario: Scenario, seed: number, options: { readonly verbose?: boolean } = {}): RunReport => {
  const rt = new SimRuntime()
  const log: Array<string> = []
  const logLine = (line: string) => {
    log.push(line)
    if (options.verbose === true) console.log(line)
  }
  const note = (text: string) => logLine(`${rt.now.toFixed(0).padStart(8)} ms SIM ${text}`)
  const defaultLink = { latencyMs: scenario.latencyMs, bytesPerMs: 10_000 }
  const net: MemoryNetwork = makeMemoryNetwork({ clock: rt.networkClock, defaultLink })
  const crypto = seededCrypto(seed)
  const identity = () => {
    const secret = crypto.randomBytes(32)
    return { seed: secret, publicKey: crypto.ed25519PublicKey(secret) }
  }
  const violations: Array<string> = []
  const fail = (text: string) => {
    violations.push(text)
    note(`VIOLATION ${text}`)
  }

  // Relays.
  const relays: Array<RelayProcess> = []
  const startRelay = (relay: RelayProcess) => {
    relay.up = true
    relay.connectionsBefore = net.connectionsTo(relayHost(relay.index))
    const options = {
      ...testRelayOptions(relay.identity, SIM_TICK_MS),
      host: relayHost(relay.index),
      port: RELAY_PORT,
      closeLingerMs: 2000,
      transport: net.host(relayHost(relay.index))
    }
    relay.fiber = rt.fork(
      Effect.gen(function*() {
        relay.server = yield* makeRelayServer(options)
        yield* Effect.never
      }).pipe(Effect.scoped, Effect.provideService(Crypto, crypto), Effect.orDie),
      (line) => logLine(`${line} [${relayHost(relay.index)}]`)
    )
  }
  for (let i = 0; i < scenario.relays; i++) {
    const relay: RelayProcess = { index: i, identity: identity(), fiber: undefined, server: undefined, connectionsBefore: 0, up: false }
    relays.push(relay)
    startRelay(relay)
  }
  const addressOf = (i: number): RelayAddress => ({ publicKey: relays[i]!.identity.publicKey, host: relayHost(i), port: RELAY_PORT })
  const stopRelay = (relay: RelayProcess) => {
    relay.up = false
    if (relay.fiber !== undefined) rt.fork(Fiber.interrupt(relay.fiber))
    relay.fiber = undefined
  }

  const settingsOf = (host: string, who: { seed: Uint8Array; publicKey: Uint8Array }): ClientSettings => ({
    crypto,
    identity: who,
    tickMs: SIM_TICK_MS,
    transport: net.host(host)
  })

  // Listeners: each accepted stream reads the request to its end, answers, ends, waits for done.
  const connectorIds = scenario.streams.map(() => identity())
  const connectorKeys = new Map(connectorIds.map((id, i) => [bytesToHex(id.publicKey), i]))
  const accepted: Array<{ stream: number; outcome: SideOutcome }> = []
  const listenerStatus: Array<() => ReadonlyArray<RelayStatus>> = []
  const listenerFibers = scenario.listeners.map((relayIndices, li) => {
    const who = identity()
    return {
      who,
      fiber: rt.fork(
        Effect.gen(function*() {
          const listener = yield* makeListener(settingsOf(listenerHost(li), who), {
            relays: relayIndices.map(addressOf),
            allow: connectorIds.map((id) => id.publicKey),
            backoff: SIM_BACKOFF,
            onEvent: (event: ListenerEvent) => {
              if (event._tag === "StatusChanged") note(`listener-${li} ${event.status.relay.slice(0, 8)}… ${event.status.state}${event.status.lastError === undefined ? "" : ` (${event.status.lastError})`}`)
              else note(`listener-${li} ${event._tag} ${"message" in event ? event.message : ""}`)
            }
          })
          listenerStatus[li] = listener.status
          while (true) {
            const stream = yield* listener.accept
            const index = connectorKeys.get(bytesToHex(stream.remotePublicKey))!
            const record: { stream: number; outcome: SideOutcome } = { stream: index, outcome: { _tag: "Pending", phase: "reading" } }
            accepted.push(record)
            const plan = scenario.streams[index]!
            const received: Array<Uint8Array> = []
            yield* Effect.forkScoped(
              Effect.gen(function*() {
                yield* readAll(stream, received)
                record.outcome = { _tag: "Pending", phase: "thinking" }
                yield* Effect.sleep(plan.thinkMs)
                record.outcome = { _tag: "Pending", phase: "replying" }
                yield* writeAll(stream, index, 1, plan.reply)
                yield* stream.end
                record.outcome = { _tag: "Pending", phase: "awaiting done" }
                yield* stream.done
              }).pipe(
                Effect.exit,
                Effect.map((exit) => {
                  record.outcome = Exit.isSuccess(exit)
                    ? { _tag: "Done", received: concatBytes(received), atMs: rt.now }
                    : { _tag: "Failed", ...typedError(exit.cause), atMs: rt.now }
                  note(`listener-${li} stream ${index} ${record.outcome._tag === "Done" ? "done" : `failed: ${(record.outcome as { error: string }).error}`}`)
                }),
                // The stream's tunnel lives in the listener's scope: close it now, as an application would.
                Effect.ensuring(stream.abort("finished"))
              )
            )
          }
        }).pipe(Effect.scoped, Effect.asVoid),
        logLine
      )
    }
  })

  // Connectors: each stream is its own client, started at its time.
  const connectors: Array<SideOutcome> = scenario.streams.map(() => ({ _tag: "Pending", phase: "not started" }))
  const connectorFibers: Array<Fiber.Fiber<void, unknown> | undefined> = scenario.streams.map(() => undefined)
  const startConnector = (index: number) => {
    const plan = scenario.streams[index]!
    const target = scenario.listeners[plan.listener]!
    const order = target.map((_, k) => target[(k + plan.relayRotation) % target.length]!)
    connectors[index] = { _tag: "Pending", phase: "connecting" }
    note(`connector-${index} connects to listener-${plan.listener} via relays ${order.join(",")}`)
    connectorFibers[index] = rt.fork(
      Effect.gen(function*() {
        const stream = yield* connectToPeer(
          settingsOf(connectorHost(index), connectorIds[index]!),
          listenerFibers[plan.listener]!.who.publicKey,
          order.map(addressOf),
          { timeoutMs: CONNECT_TIMEOUT_MS }
        )
        connectors[index] = { _tag: "Pending", phase: "requesting" }
        const received: Array<Uint8Array> = []
        // Both ways at once, as applications do: the reply may start before the request ends.
        const reader = yield* Effect.forkChild(readAll(stream, received))
        yield* writeAll(stream, index, 0, plan.request)
        yield* stream.end
        connectors[index] = { _tag: "Pending", phase: "reading reply" }
        yield* Fiber.join(reader)
        connectors[index] = { _tag: "Pending", phase: "awaiting done" }
        yield* stream.done
        return concatBytes(received)
      }).pipe(
        Effect.scoped,
        Effect.exit,
        Effect.map((exit) => {
          connectors[index] = Exit.isSuccess(exit)
            ? { _tag: "Done", received: exit.value, atMs: rt.now }
            : { _tag: "Failed", ...typedError(exit.cause), atMs: rt.now }
          const outcome = connectors[index]!
          note(`connector-${index} ${outcome._tag === "Done" ? "done" : `failed: ${(outcome as { error: string }).error}`}`)
        })
      ),
      logLine
    )
  }

  // The timeline: streams and faults in time order.
  type Event = { readonly atMs: number; readonly run: () => void }
  const events: Array<Event> = []
  // Streams start after listeners had time to listen (a connect before that is refused, rightly).
  scenario.streams.forEach((plan, i) => events.push({ atMs: LISTEN_FIRST_MS + plan.startMs, run: () => startConnector(i) }))
  let lastFaultEnd = 0
  for (const fault of scenario.faults) {
    switch (fault._tag) {
      case "KillRelay": {
        lastFaultEnd = Math.max(lastFaultEnd, fault.atMs + fault.downMs)
        events.push({
          atMs: fault.atMs,
          run: () => {
            const relay = relays[fault.relay]!
            if (!relay.up) return
            note(`FAULT kill relay-${fault.relay} for ${fault.downMs} ms`)
            checkMetrics(relay)
            net.kill(relayHost(fault.relay))
            stopRelay(relay)
          }
        })
        events.push({
          atMs: fault.atMs + fault.downMs,
          run: () => {
            const relay = relays[fault.relay]!
            if (relay.up) return
            note(`FAULT restart relay-${fault.relay}`)
            startRelay(relay)
          }
        })
        break
      }
      case "Partition": {
        lastFaultEnd = Math.max(lastFaultEnd, fault.atMs + fault.forMs)
        events.push({
          atMs: fault.atMs,
          run: () => {
            note(`FAULT partition ${peerHost(fault.peer)} from relay-${fault.relay} for ${fault.forMs} ms`)
            net.partition([peerHost(fault.peer)], [relayHost(fault.relay)])
          }
        })
        events.push({
          atMs: fault.atMs + fault.forMs,
          run: () => {
            note("FAULT heal")
            net.heal()
          }
        })
        break
      }
      case "Reset":
        lastFaultEnd = Math.max(lastFaultEnd, fault.atMs)
        events.push({
          atMs: fault.atMs,
          run: () => {
            const count = net.resetBetween(peerHost(fault.peer), relayHost(fault.relay))
            note(`FAULT reset ${count} ends between ${peerHost(fault.peer)} and relay-${fault.relay}`)
          }
        })
        break
      case "SlowLink":
        lastFaultEnd = Math.max(lastFaultEnd, fault.atMs + fault.forMs)
        events.push({
          atMs: fault.atMs,
          run: () => {
            note(`FAULT ${peerHost(fault.peer)} ↔ relay-${fault.relay} slows to ${fault.bytesPerMs} bytes/ms, ${fault.latencyMs} ms for ${fault.forMs} ms`)
            net.setLink(peerHost(fault.peer), relayHost(fault.relay), { latencyMs: fault.latencyMs, bytesPerMs: fault.bytesPerMs })
          }
        })
        events.push({
          atMs: fault.atMs + fault.forMs,
          run: () => {
            note(`FAULT ${peerHost(fault.peer)} ↔ relay-${fault.relay} back to normal`)
            net.setLink(peerHost(fault.peer), relayHost(fault.relay), defaultLink)
          }
        })
        break
      case "RefuseDials":
        lastFaultEnd = Math.max(lastFaultEnd, fault.atMs)
        events.push({
          atMs: fault.atMs,
          run: () => {
            note(`FAULT relay-${fault.relay} refuses the next ${fault.count} dials`)
            net.refuseDials(relayHost(fault.relay), fault.count)
          }
        })
        break
    }
  }
  events.sort((a, b) => a.atMs - b.atMs)

  // Metrics agree with the network: every connection made to a relay's process was counted by it.
  const checkMetrics = (relay: RelayProcess) => {
    const server = relay.server
    if (server === undefined) return
    const text = server.metrics.render()
    const match = /^offset_relay_connections_accepted_total (\d+)/m.exec(text)
    const counted = match === null ? -1 : Number(match[1])
    const made = net.connectionsTo(relayHost(relay.index)) - relay.connectionsBefore
    if (counted !== made) fail(`relay-${relay.index} counted ${counted} accepted connections, the network made ${made}`)
  }

  for (const event of events) {
    rt.runUntil(event.atMs)
    event.run()
  }
  const lastEvent = Math.max(
    lastFaultEnd,
    ...events.map((e) => e.atMs),
    ...scenario.streams.map((plan) => LISTEN_FIRST_MS + plan.startMs + plan.thinkMs)
  )
  rt.runUntil(lastEvent + SETTLE_MS)

  // Streams: delivered exactly, or failed on both sides with a typed error.
  const anyFault = scenario.faults.length > 0
  scenario.streams.forEach((plan, i) => {
    const outcome = connectors[i]!
    const sides = accepted.filter((a) => a.stream === i)
    for (const side of sides) {
      if (side.outcome._tag === "Pending") fail(`stream ${i}: the listener's side is still ${side.outcome.phase}`)
      else if (side.outcome._tag === "Failed" && !side.outcome.typed) fail(`stream ${i}: the listener's side ended without a typed error: ${side.outcome.error}`)
      else if (side.outcome._tag === "Done") {
        const wrong = compare(i, 0, side.outcome.received, total(plan.request))
        if (wrong !== undefined) fail(`stream ${i}: the listener received ${wrong}`)
      }
    }
    switch (outcome._tag) {
      case "Pending":
        fail(`stream ${i}: the connector is still ${outcome.phase}`)
        break
      case "Failed":
        if (!outcome.typed) fail(`stream ${i}: the connector ended without a typed error: ${outcome.error}`)
        if (!anyFault) fail(`stream ${i}: failed with no fault in the scenario: ${outcome.error}`)
        // The listener's side may still have finished cleanly: like TCP's
        // close, `done` means both ends were sent and received from where
        // it stands, not that the peer got its end (a relay killed right
        // after the listener's end left loses it). Its bytes were checked
        // above. But not long after the connector failed: by then the
        // failure must have reached it (the relay closes the other half of
        // a tunnel at once, keepalives bound the silent cases).
        for (const side of sides) {
          if (side.outcome._tag === "Done" && side.outcome.atMs > outcome.atMs + NOTICE_BOUND_MS) {
            fail(`stream ${i}: the listener finished cleanly ${side.outcome.atMs - outcome.atMs} ms after the connector had failed (${outcome.error}): the failure never reached it`)
          }
        }
        break
      case "Done": {
        const wrong = compare(i, 1, outcome.received, total(plan.reply))
        if (wrong !== undefined) fail(`stream ${i}: the connector received ${wrong}`)
        if (!sides.some((side) => side.outcome._tag === "Done")) fail(`stream ${i}: the connector finished but no listener side did`)
        break
      }
    }
  })

  // Reachability: every listener listens again on every relay that is up.
  scenario.listeners.forEach((relayIndices, li) => {
    const status = listenerStatus[li]?.() ?? []
    relayIndices.forEach((r, k) => {
      const state = status[k]
      if (relays[r]!.up && state?.state !== "listening") {
        fail(`listener-${li} is ${state?.state ?? "not started"} on relay-${r} ${SETTLE_MS} ms after the last fault${state?.lastError === undefined ? "" : ` (${state.lastError})`}`)
      }
    })
  })

  // Leaks, inside the relays: no tunnel or half tunnel once every stream ended.
  for (const relay of relays) {
    const stats = relay.server?.stats()
    if (stats === undefined || !relay.up) continue
    if (stats.core.tunnels !== 0) fail(`relay-${relay.index} still holds ${stats.core.tunnels} tunnels`)
    if (stats.core.pendingHalfTunnels !== 0) fail(`relay-${relay.index} still holds ${stats.core.pendingHalfTunnels} half tunnels`)
    const listening = scenario.listeners.filter((l) => l.includes(relay.index)).length
    if (stats.sockets !== listening) fail(`relay-${relay.index} has ${stats.sockets} sockets open, ${listening} listen channels expected`)
    if (stats.bufferedBytes !== 0) fail(`relay-${relay.index} holds ${stats.bufferedBytes} buffered bytes`)
    const inCore = stats.core.connections
    if (inCore !== stats.sockets) fail(`relay-${relay.index}'s core knows ${inCore} connections, its driver holds ${stats.sockets} sockets`)
    checkMetrics(relay)
  }

  // Close everything: listeners, then relays; nothing may be left.
  for (const { fiber } of listenerFibers) rt.fork(Fiber.interrupt(fiber))
  for (const fiber of connectorFibers) if (fiber !== undefined) rt.fork(Fiber.interrupt(fiber))
  rt.runFor(10_000)
  for (const relay of relays) if (relay.up) stopRelay(relay)
  rt.runFor(20_000)
  const netStats = net.stats()
  if (netStats.openEnds !== 0) fail(`${netStats.openEnds} stream ends still open after everything closed`)
  if (netStats.bufferedBytes !== 0) fail(`${netStats.bufferedBytes} bytes still buffered in the network`)
  if (netStats.listeners !== 0) fail(`${netStats.listeners} listening sockets left`)
  const pending = rt.pendingWork()
  if (pending.timers !== 0 || pending.tasks !== 0) fail(`${pending.timers} timers and ${pending.tasks} tasks left after everything closed`)

  const outcomes = scenario.streams.map((_, i) => {
    const c = connectors[i]!
    return `stream ${i}: connector ${c._tag === "Failed" ? `failed (${c.error})` : c._tag === "Pending" ? `pending (${c.phase})` : "done"}`
  })
  return { violations, log, endMs: rt.now, steps: rt.steps, outcomes }
}
