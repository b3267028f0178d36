/**
 * Helpers for real-socket relay tests: start a relay on 127.0.0.1:0, open
 * well-behaved clients (openRelayConnection) that can be closed one by one,
 * and drive hand-made "raw" clients over node:net with the pure connection
 * machine, so a test can stop a handshake halfway, sign with the wrong key,
 * send garbage or go silent.
 */
import * as Net from "node:net"
import { createHash } from "node:crypto"
import * as Clock from "effect/Clock"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Scope from "effect/Scope"
// auto: node:crypto on Node (as before), noble where node:crypto lacks a primitive (Bun), so test:runtimes can run these.
import { autoCryptoService, type CryptoService } from "../../src/adapters/crypto.ts"
const nodeCryptoService = autoCryptoService()
import type { MessageChannel } from "../../src/adapters/message-channel.ts"
import type { Transport } from "../../src/adapters/transport.ts"
import { openRelayConnection, type RelayEndpoint } from "../../src/adapters/relay-connection.ts"
import {
  testRelayOptions,
  makeRelayServer,
  type RelayIdentity,
  type RelayServer,
  type RelayServerOptions
} from "../../src/adapters/relay-server.ts"
import { Connection } from "../../src/core/connection.ts"
import { encodeFrame, FrameDecoder } from "../../src/core/frame.ts"
import { encodeInitConnection, type InitConnection } from "../../src/core/messages.ts"
import type { RelayConfig } from "../../src/core/relay-core.ts"
import { encodeVersion } from "../../src/core/version.ts"
import { transportNonce } from "../../src/core/secure-channel.ts"
import { Crypto } from "../../src/adapters/crypto.ts"

/** Milliseconds per tick in these tests: timeouts of N ticks take N × 50 ms. */
export const TEST_TICK_MS = 50

/** A fresh random identity. */
export const makeIdentity = (crypto: CryptoService = nodeCryptoService): RelayIdentity => {
  const seed = crypto.randomBytes(32)
  return { seed, publicKey: crypto.ed25519PublicKey(seed) }
}

/** Options for a test relay: any server option, and any part of the core's config. */
export type RelayOverrides = Partial<Omit<RelayServerOptions, "core">> & { readonly core?: Partial<RelayConfig> }

/** A relay on 127.0.0.1 with an ephemeral port and 50 ms ticks, living in the current scope. */
export const startRelay = (overrides: RelayOverrides = {}) =>
  Effect.gen(function*() {
    const identity = makeIdentity(yield* Crypto)
    // Short ticks: the hello deadline gets the handshake's (the hello rule has its own test).
    const defaults = testRelayOptions(identity, TEST_TICK_MS)
    const server = yield* makeRelayServer({ ...defaults, ...overrides, core: { ...defaults.core, ...overrides.core } })
    const endpoint: RelayEndpoint = { publicKey: identity.publicKey, host: "127.0.0.1", port: server.port }
    return { server, endpoint, identity }
  })

/** A well-behaved client connection with its own scope, so a test can close it alone. */
export interface TestClient {
  readonly channel: MessageChannel
  readonly identity: RelayIdentity
  /** Closes the connection (its socket and fibers). */
  readonly close: Effect.Effect<void>
}

/** Opens a client connection to `endpoint` saying `init`, ticking at the test rate. */
export const openClient = (
  endpoint: RelayEndpoint,
  identity: RelayIdentity,
  init: InitConnection,
  options: {
    readonly inboxBytes?: number
    readonly maxPaddingBytes?: number
    readonly rekeyIntervalTicks?: number
    /** Default TCP; a host of the in-memory network for tests on virtual time. */
    readonly transport?: Transport
    /** Default TEST_TICK_MS; it should match the relay's ticks (a world's relay ticks every 1000 ms). */
    readonly tickMs?: number
  } = {}
) =>
  Effect.gen(function*() {
    const crypto = yield* Crypto
    const parent = yield* Effect.scope
    const scope = yield* Scope.fork(parent)
    const channel = yield* openRelayConnection(endpoint, init, {
      crypto,
      identity,
      tickMs: options.tickMs ?? TEST_TICK_MS,
      handshakeTimeoutMs: 5000,
      ...(options.transport === undefined ? {} : { transport: options.transport }),
      channel: {
        inboxBytes: options.inboxBytes,
        machine: {
          maxPaddingBytes: options.maxPaddingBytes ?? 0,
          ...(options.rekeyIntervalTicks === undefined ? {} : { rekeyIntervalTicks: options.rekeyIntervalTicks })
        }
      }
    }).pipe(Scope.provide(scope), Effect.onError(() => Scope.close(scope, Exit.void)))
    return { channel, identity, close: Scope.close(scope, Exit.void) } satisfies TestClient
  })

/**
 * Polls `condition` every 10 ms until it holds; dies with `what` after
 * `timeoutMs`. On Effect's Clock, so it also works on virtual time.
 */
export const waitUntil = (what: string, condition: () => boolean, timeoutMs = 5000) =>
  Effect.gen(function*() {
    const start = yield* Clock.currentTimeMillis
    while (!condition()) {
      if ((yield* Clock.currentTimeMillis) - start > timeoutMs) return yield* Effect.die(new Error(`timed out waiting for ${what}`))
      yield* Effect.sleep(10)
    }
  })

/** Reads the value of one sample line (`name{label="value"}`) from Prometheus text; 0 when absent. */
export const metricValue = (text: string, sample: string): number => {
  for (const line of text.split("\n")) {
    if (line.startsWith(sample + " ")) return Number(line.slice(sample.length + 1))
  }
  return 0
}

/** A closed-connection count by reason, from the server's metrics. */
export const closes = (server: RelayServer, reason: string): number =>
  metricValue(server.metrics.render(), `offset_relay_closes_total{reason="${reason}"}`)

/** A refusal count by limit, from the server's metrics. */
export const overLimit = (server: RelayServer, limit: string): number =>
  metricValue(server.metrics.render(), `offset_relay_over_limit_total{limit="${limit}"}`)

/** Deterministic pseudo-random bytes (xorshift), so a stream can be checked at the far end. */
export const patternBytes = (length: number, seed: number): Uint8Array => {
  const out = new Uint8Array(length)
  let x = seed | 1
  for (let i = 0; i < length; i++) {
    x ^= x << 13
    x ^= x >>> 17
    x ^= x << 5
    out[i] = x & 0xff
  }
  return out
}

/** SHA-256 of a byte string, hex. */
export const sha256 = (bytes: Uint8Array): string => createHash("sha256").update(bytes).digest("hex")

/** An incremental SHA-256 with a byte count. */
export class StreamHash {
  private readonly hash = createHash("sha256")
  bytes = 0
  update(chunk: Uint8Array): void {
    this.hash.update(chunk)
    this.bytes += chunk.length
  }
  digest(): string {
    return this.hash.digest("hex")
  }
}

/** Sends `data` as messages of `chunkBytes`, waiting for each send (so backpressure is felt). */
export const sendChunked = (channel: MessageChannel, data: Uint8Array, chunkBytes: number) =>
  Effect.gen(function*() {
    for (let offset = 0; offset < data.length; offset += chunkBytes) {
      yield* channel.send(data.subarray(offset, Math.min(data.length, offset + chunkBytes)))
    }
  })

/** Receives messages until `total` bytes arrived; returns their SHA-256. */
export const receiveBytes = (channel: MessageChannel, total: number) =>
  Effect.gen(function*() {
    const hash = new StreamHash()
    while (hash.bytes < total) hash.update(yield* channel.receive)
    return hash.digest()
  })

/** How a raw socket ended. */
export interface RawEnd {
  /** True when the server reset the connection (or another socket error occurred). */
  readonly error: string | undefined
}

/**
 * A client on a bare node:net socket. Frames are read with the project's
 * decoder; the secure channel runs in the pure connection machine, fed by
 * hand, so tests decide exactly what goes on the wire and when.
 */
export class RawClient {
  readonly socket: Net.Socket
  /** Resolves once the socket has closed. */
  readonly ended: Promise<RawEnd>
  private readonly decoder = new FrameDecoder()
  private readonly frames: Array<Uint8Array> = []
  private frameWaiters: Array<() => void> = []
  private isClosed = false
  private machine: Connection | undefined
  private readonly messages: Array<Uint8Array> = []

  private constructor(socket: Net.Socket) {
    this.socket = socket
    let error: string | undefined
    socket.on("error", (e) => {
      error = e.message
    })
    this.ended = new Promise((resolve) => {
      socket.on("close", () => {
        this.isClosed = true
        this.wake()
        resolve({ error })
      })
    })
    socket.on("data", (chunk: Buffer) => {
      const result = this.decoder.push(new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.length))
      if (result._tag === "Frames") for (const f of result.frames) this.frames.push(f.slice())
      this.wake()
    })
  }

  /**
   * Connects to 127.0.0.1:`port`, optionally from another loopback address
   * (per-IP limits). `neverClose` keeps our side open after the relay's FIN
   * (Node would otherwise answer it with its own).
   */
  static connect(port: number, localAddress?: string, neverClose = false): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const socket = Net.connect({ host: "127.0.0.1", port, localAddress, noDelay: true, allowHalfOpen: neverClose })
      socket.once("connect", () => resolve(new RawClient(socket)))
      socket.once("error", reject)
    })
  }

  /** True once the handshake succeeded (messages may be sent). */
  get isAuthenticated(): boolean {
    return this.machine !== undefined
  }

  /** True once the socket closed. */
  get closed(): boolean {
    return this.isClosed
  }

  private wake(): void {
    const waiters = this.frameWaiters
    this.frameWaiters = []
    for (const w of waiters) w()
  }

  /** Writes raw bytes. */
  write(bytes: Uint8Array): void {
    if (!this.socket.destroyed) this.socket.write(bytes)
  }

  /** Writes one frame (length header + payload). */
  writeFrame(payload: Uint8Array): void {
    this.write(encodeFrame(payload))
  }

  /** The next frame from the server, or undefined when the socket closed first. */
  async nextFrame(timeoutMs = 5000): Promise<Uint8Array | undefined> {
    const deadline = Date.now() + timeoutMs
    while (this.frames.length === 0) {
      if (this.isClosed) return undefined
      if (Date.now() > deadline) throw new Error("no frame from the relay in time")
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, 50)
        this.frameWaiters.push(() => {
          clearTimeout(timer)
          resolve()
        })
      })
    }
    return this.frames.shift()
  }

  /**
   * Version prefix and secure channel with the pure machine. `signingSeed`
   * replaces the seed the ExchangeDh is signed with (a forged identity:
   * the handshake claims `identity.publicKey` but cannot prove it).
   * `stopAfterRandNonce` sends only the first handshake frame.
   */
  async handshake(
    relayPublicKey: Uint8Array,
    identity: RelayIdentity,
    options: { readonly signingSeed?: Uint8Array; readonly stopAfterRandNonce?: boolean } = {}
  ): Promise<"authenticated" | "closed" | "stopped"> {
    this.writeFrame(encodeVersion())
    const version = await this.nextFrame()
    if (version === undefined) return "closed"
    const machine = new Connection({
      crypto: nodeCryptoService,
      identity: { seed: options.signingSeed ?? identity.seed, publicKey: identity.publicKey },
      expectedRemotePublicKey: relayPublicKey,
      random: nodeCryptoService.randomBytes,
      maxPaddingBytes: 0,
      handshakeTimeoutTicks: Infinity
    })
    let authenticated = false
    let closed = false
    const run = (feed: () => void) => {
      feed()
      this.writeQueued(machine)
      for (let event = machine.pollEvent(); event !== undefined; event = machine.pollEvent()) {
        switch (event._tag) {
          case "Authenticated":
            authenticated = true
            break
          case "Deliver":
            this.messages.push(event.data)
            break
          case "Closed":
            closed = true
            break
        }
      }
    }
    run(() => machine.start())
    if (options.stopAfterRandNonce) return "stopped"
    while (!authenticated && !closed) {
      const frame = await this.nextFrame()
      if (frame === undefined) return "closed"
      run(() => machine.handleFrame(frame))
    }
    this.machine = machine
    return authenticated ? "authenticated" : "closed"
  }

  /** Sends one application message over the established channel (never ticks: no keepalives). */
  sendMessage(data: Uint8Array): void {
    if (this.machine === undefined) throw new Error("sendMessage before handshake")
    this.machine.send(data)
    this.writeQueued(this.machine)
  }

  /** Sends `packed` as the KaMessage of one message, as is (e.g. a crafted one). */
  sendPackedKaMessage(packed: Uint8Array): void {
    if (this.machine === undefined) throw new Error("sendPackedKaMessage before handshake")
    this.machine.sendPacked(packed)
    this.writeQueued(this.machine)
  }

  // Writes every frame the machine queued.
  private writeQueued(machine: Connection): void {
    for (let frame = machine.pollTransmit(); frame !== undefined; frame = machine.pollTransmit()) this.writeFrame(frame)
  }

  /** Seals `plaintext` as the next transport frame, in place of a ChannelMessage the machine would build. */
  sendSealedPlaintext(plaintext: Uint8Array): void {
    const phase = this.machine?.channel.phase
    if (this.machine === undefined || phase?._tag !== "Established") throw new Error("sendSealedPlaintext before handshake")
    const nonce = transportNonce(phase.send.counter)
    this.writeFrame(nodeCryptoService.aeadSeal(phase.send.key, nonce, plaintext, nonce))
    // The frame used the machine's next nonce: advance it as sealing would.
    phase.send.counter++
  }

  /** Sends the packed InitConnection. */
  sendInit(init: InitConnection): void {
    this.sendMessage(encodeInitConnection(init))
  }

  /**
   * Ticks the machine every `tickMs` (sending keepalives when due, as an
   * honest client does) until the socket closes.
   */
  keepAlive(tickMs: number): void {
    const timer = setInterval(() => {
      if (this.machine === undefined || this.socket.destroyed) return
      // Paused: this client does not feed the relay's frames back to its
      // machine, which must not judge the relay silent for it.
      this.machine.tick(true)
      this.writeQueued(this.machine)
    }, tickMs)
    this.socket.once("close", () => clearInterval(timer))
  }

  /** Destroys the socket. */
  destroy(): void {
    this.socket.destroy()
  }
}

/** Connects a raw client from Effect. */
export const rawConnect = (port: number, localAddress?: string, neverClose = false) =>
  Effect.acquireRelease(Effect.promise(() => RawClient.connect(port, localAddress, neverClose)), (client) =>
    Effect.sync(() => client.destroy()))

/** Waits for a raw client's socket to close; dies after `timeoutMs`. */
export const rawEnded = (client: RawClient, timeoutMs = 5000) =>
  Effect.promise(() => client.ended).pipe(
    Effect.timeoutOrElse({
      duration: timeoutMs,
      orElse: () => Effect.die(new Error("the relay did not close the raw connection in time"))
    })
  )

/**
 * A tunnel between two fresh identities: listen, connect, IncomingConnection,
 * accept; returns once the relay has spliced it.
 */
export const openTunnel = (server: RelayServer, endpoint: RelayEndpoint) =>
  Effect.gen(function*() {
    const listenerId = makeIdentity()
    const connectorId = makeIdentity()
    const listeners = server.stats().core.listeners
    const listen = yield* openClient(endpoint, listenerId, { _tag: "Listen" })
    yield* waitUntil("the listen channel", () => server.stats().core.listeners === listeners + 1)
    const pending = server.stats().core.pendingHalfTunnels
    const connect = yield* openClient(endpoint, connectorId, { _tag: "Connect", publicKey: listenerId.publicKey })
    yield* listen.channel.receive // the IncomingConnection
    yield* waitUntil("the half tunnel", () => server.stats().core.pendingHalfTunnels === pending + 1)
    const tunnels = server.stats().core.tunnels
    const accept = yield* openClient(endpoint, listenerId, { _tag: "Accept", publicKey: connectorId.publicKey })
    yield* waitUntil("the tunnel", () => server.stats().core.tunnels === tunnels + 1)
    return { listen, connect, accept }
  })

/**
 * Keeps bytes flowing both ways through a tunnel (8 KiB every 5 ms each
 * way) until `finish` is run, which stops the senders, waits for every byte
 * sent to arrive and fails unless both streams arrived intact.
 */
export const keepFlowing = (connect: MessageChannel, accept: MessageChannel) =>
  Effect.gen(function*() {
    let stopped = false
    const direction = (from: MessageChannel, to: MessageChannel, seed: number) => {
      const sent = new StreamHash()
      const received = new StreamHash()
      let chunk = seed
      const sender = Effect.gen(function*() {
        while (!stopped) {
          const data = patternBytes(8 * 1024, chunk++)
          yield* from.send(data)
          sent.update(data)
          yield* Effect.sleep(5)
        }
      })
      const receiver = Effect.forever(Effect.map(to.receive, (m) => received.update(m)))
      return { sent, received, sender, receiver }
    }
    const up = direction(connect, accept, 1000)
    const down = direction(accept, connect, 2000)
    const senders = yield* Effect.forkScoped(Effect.all([up.sender, down.sender], { concurrency: 2 }))
    const receivers = yield* Effect.forkScoped(Effect.all([up.receiver, down.receiver], { concurrency: 2 }))
    const finish = Effect.gen(function*() {
      stopped = true
      yield* Fiber.join(senders)
      yield* waitUntil(
        "every flowing byte to arrive",
        () => up.received.bytes === up.sent.bytes && down.received.bytes === down.sent.bytes
      )
      yield* Fiber.interrupt(receivers)
      return {
        bytes: up.sent.bytes + down.sent.bytes,
        intact: up.sent.digest() === up.received.digest() && down.sent.digest() === down.received.digest()
      }
    })
    return { finish, bytesSoFar: () => up.received.bytes + down.received.bytes }
  })

/** Closes `clients`, then waits until the server holds no socket, no core state and no buffered byte. */
export const expectIdle = (server: RelayServer, clients: ReadonlyArray<TestClient>) =>
  Effect.gen(function*() {
    for (const c of clients) yield* c.close
    yield* waitUntil("the relay to release everything", () => {
      const s = server.stats()
      return s.sockets === 0 && s.handshaking === 0 && s.core.connections === 0 && s.bufferedBytes === 0 &&
        s.core.unidentified === 0 && s.core.listeners === 0 && s.core.pendingHalfTunnels === 0 && s.core.tunnels === 0
    })
    // Every connection the relay accepted was closed exactly once, under one reason.
    const text = server.metrics.render()
    let closed = 0
    for (const line of text.split("\n")) if (line.startsWith("offset_relay_closes_total{")) closed += Number(line.split(" ")[1])
    const accepted = metricValue(text, "offset_relay_connections_accepted_total")
    if (closed !== accepted) {
      return yield* Effect.die(new Error(`${accepted} connections accepted but ${closed} closes counted:\n${text}`))
    }
  })
