/**
 * A small simulated world for directed tests: relays that can be stopped
 * (killed) and restarted, clients by host name, all on the in-memory network
 * and virtual time (sim-runtime.ts). Where system.ts plays drawn scenarios,
 * this lets a test script one story step by step and wait on conditions
 * without sleeping: `runUntil(condition)` jumps from event to event.
 */
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Option from "effect/Option"
import * as Scope from "effect/Scope"
import { autoCryptoService, Crypto, type CryptoService } from "../../src/adapters/crypto.ts"
import type { ClientSettings } from "../../src/adapters/client/tunnel.ts"
import type { PeerStream } from "../../src/adapters/client/tunnel-stream.ts"
import { makeRelayServer, type RelayServer, testRelayOptions } from "../../src/adapters/relay-server.ts"
import { makeMemoryNetwork, type MemoryNetwork } from "../../src/adapters/transport-memory.ts"
import { makeDeterministicRandom } from "../../src/core/random.ts"
import type { RelayAddress } from "../../src/core/relay-address.ts"
import { SimRuntime } from "./sim-runtime.ts"

/** A relay process in the world. */
export interface SimRelay {
  readonly host: string
  readonly address: RelayAddress
  readonly server: () => RelayServer | undefined
  /** Kills the process: its connections reset at their peers, dials are refused. */
  readonly stop: () => void
  /** Starts it again with the same identity and address. */
  readonly restart: () => void
}

/** Identity of a simulated peer. */
export interface SimIdentity {
  readonly seed: Uint8Array
  readonly publicKey: Uint8Array
}

/** A world on virtual time. */
export interface SimWorld {
  readonly rt: SimRuntime
  readonly net: MemoryNetwork
  readonly crypto: CryptoService
  /** Every log line of every relay and client, stamped with virtual time. */
  readonly log: Array<string>
  readonly identity: () => SimIdentity
  readonly relay: (host: string) => SimRelay
  /**
   * A host that accepts connections on port 4747 and never says a word (a
   * hung relay): its address, with a key nobody holds. The connections stay
   * open until the world ends.
   */
  readonly blackHole: (host: string) => RelayAddress
  /** Client settings for a peer on `host` (1 s ticks unless given). */
  readonly settings: (host: string, identity: SimIdentity, tickMs?: number) => ClientSettings
  /** Runs `effect` in a scope that lives until `close` (or the world's end). */
  readonly spawn: <A, E>(effect: Effect.Effect<A, E, Scope.Scope>) => Fiber.Fiber<A, E>
  /** Runs virtual time until `condition` holds; throws (with the log's end) if it does not within `limitMs`. */
  readonly runUntil: (condition: () => boolean, limitMs: number, what: string) => void
  /** Runs `effect` to its end on virtual time (within `limitMs`) and returns its exit. */
  readonly await: <A, E>(effect: Effect.Effect<A, E, Scope.Scope>, limitMs: number) => Exit.Exit<A, E>
}

/** A world whose randomness comes from `seed` (NOT SECURE: tests only). */
export const makeSimWorld = (seed: number): SimWorld => {
  const rt = new SimRuntime()
  const net = makeMemoryNetwork({ clock: rt.networkClock, defaultLink: { latencyMs: 1, bytesPerMs: 10_000 } })
  const crypto: CryptoService = { ...autoCryptoService(), randomBytes: makeDeterministicRandom(seed) }
  const log: Array<string> = []
  const identity = (): SimIdentity => {
    const secret = crypto.randomBytes(32)
    return { seed: secret, publicKey: crypto.ed25519PublicKey(secret) }
  }

  const relay = (host: string): SimRelay => {
    const id = identity()
    let server: RelayServer | undefined
    let fiber: Fiber.Fiber<void, unknown> | undefined
    const start = () => {
      const options = { ...testRelayOptions(id, 1000), host, port: 4747, closeLingerMs: 2000, transport: net.host(host) }
      fiber = rt.fork(
        Effect.gen(function*() {
          server = yield* makeRelayServer(options)
          yield* Effect.never
        }).pipe(Effect.scoped, Effect.provideService(Crypto, crypto), Effect.orDie),
        (line) => log.push(`${line} [${host}]`)
      )
      rt.runFor(0)
    }
    start()
    return {
      host,
      address: { publicKey: id.publicKey, host, port: 4747 },
      server: () => server,
      stop: () => {
        net.kill(host)
        if (fiber !== undefined) rt.fork(Fiber.interrupt(fiber))
        fiber = undefined
        server = undefined
        rt.runFor(0)
      },
      restart: start
    }
  }

  const spawn = <A, E>(effect: Effect.Effect<A, E, Scope.Scope>): Fiber.Fiber<A, E> =>
    rt.fork(Effect.scoped(Effect.andThen(effect, (a) => Effect.as(Effect.never, a))), (line) => log.push(line))

  const runUntil = (condition: () => boolean, limitMs: number, what: string): void => {
    const deadline = rt.now + limitMs
    rt.runUntil(deadline, condition)
    if (!condition()) {
      throw new Error(`waited ${limitMs} ms of virtual time for ${what}; the log ends:\n${log.slice(-30).join("\n")}`)
    }
  }

  const blackHole = (host: string): RelayAddress => {
    // Accepted streams are left alone: never read, written or closed.
    spawn(net.host(host).listen({ host, port: 4747 }, () => {}))
    rt.runFor(0)
    return { publicKey: identity().publicKey, host, port: 4747 }
  }

  const await_ = <A, E>(effect: Effect.Effect<A, E, Scope.Scope>, limitMs: number): Exit.Exit<A, E> => {
    const fiber = rt.fork(Effect.scoped(effect), (line) => log.push(line))
    runUntil(() => fiber.pollUnsafe() !== undefined, limitMs, "an effect to finish")
    return fiber.pollUnsafe()!
  }

  return {
    rt,
    net,
    crypto,
    log,
    identity,
    relay,
    blackHole,
    settings: (host, who, tickMs = 1000) => ({ crypto, identity: who, tickMs, transport: net.host(host) }),
    spawn,
    runUntil,
    await: await_
  }
}

/** Writes `data`, half closes, and reads the peer's bytes to their end. */
export const exchange = (stream: PeerStream, data: Uint8Array): Effect.Effect<Uint8Array, unknown> =>
  Effect.gen(function*() {
    const reader = yield* Effect.forkChild(readToEnd(stream))
    yield* stream.write(data)
    yield* stream.end
    return yield* Fiber.join(reader)
  })

/** Reads a stream to its end. */
export const readToEnd = (stream: PeerStream): Effect.Effect<Uint8Array, unknown> =>
  Effect.gen(function*() {
    const chunks: Array<Uint8Array> = []
    while (true) {
      const chunk = yield* stream.read
      if (Option.isNone(chunk)) break
      chunks.push(chunk.value)
    }
    const out = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0))
    let offset = 0
    for (const chunk of chunks) {
      out.set(chunk, offset)
      offset += chunk.length
    }
    return out
  })

/** Echoes a stream: everything read is written back, then our end follows the peer's. */
export const echo = (stream: PeerStream): Effect.Effect<void, unknown> =>
  Effect.gen(function*() {
    while (true) {
      const chunk = yield* stream.read
      if (Option.isNone(chunk)) break
      yield* stream.write(chunk.value)
    }
    yield* stream.end
    yield* stream.done
  })
