/**
 * The client library for code without Effect: Promises and Node streams.
 *
 *     import { connect, listen, readIdentity } from "offset-relay"
 *
 *     // Be reachable through two relays by anyone on the allow-list:
 *     const listener = listen({ identity, relays: [relayA, relayB], allow: [friendKeyHex] })
 *     listener.on("connection", (socket) => socket.pipe(socket))          // an echo service
 *     listener.on("status", (status) => console.error(status.relay, status.state))
 *
 *     // Reach a peer by its key:
 *     const socket = await connect({ identity, relays: [relayA, relayB], to: peerKeyHex })
 *     socket.end("hello")                                                 // half close
 *     for await (const chunk of socket) process.stdout.write(chunk)       // the answer, to its end
 *
 * Every connection is a `PeerDuplex` (a Node `Duplex` like a TCP socket with
 * `allowHalfOpen`) whose peer proved its key end to end. `listener.close()`
 * and `destroy()` close everything they opened; so does the end of both
 * directions of a connection.
 */
import { EventEmitter } from "node:events"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Scope from "effect/Scope"
import * as NodeFileSystem from "@effect/platform-node/NodeFileSystem"
import { type BackoffPolicy, checkBackoffPolicy, defaultBackoffPolicy } from "../../core/backoff.ts"
import { bytesToHex } from "../../core/keys.ts"
import { type CryptoChoice, cryptoServiceFor, layerFor } from "../crypto.ts"
import { generateIdentity, type Identity, readIdentityFile } from "../identity.ts"
import type { Transport } from "../transport.ts"
import { InvalidArgumentError, keyOf, type KeyInput, relayOf, type RelayInput } from "./arguments.ts"
import { ConnectError, connectToPeer } from "./connector.ts"
import { type Listener, type ListenerEvent, makeListener, type RelayStatus } from "./listener.ts"
import { PeerDuplex } from "./peer-duplex.ts"
import { checkMaxMessageBytes } from "./tunnel-stream.ts"
import type { ClientSettings } from "./tunnel.ts"

export { ConnectError } from "./connector.ts"
export type { ListenerEvent, RelayStatus } from "./listener.ts"
export { PeerDuplex } from "./peer-duplex.ts"
export { PeerStreamError, StreamAbort } from "./tunnel-stream.ts"
export type { Identity } from "../identity.ts"
export type { CryptoChoice } from "../crypto.ts"

/** Settings shared by `listen` and `connect`. */
export interface ClientOptions {
  /** Our key pair (see `readIdentity`, `createIdentity`). */
  readonly identity: Identity
  /** Milliseconds per keepalive tick (default 1000, as Offset). */
  readonly tickMs?: number
  /** Bound on each relay handshake and on a listener's end-to-end handshake (default 10 s). */
  readonly handshakeTimeoutMs?: number
  /** Largest message a stream sends (default 64 KiB). */
  readonly maxMessageBytes?: number
  /**
   * Crypto implementation (default "auto": node:crypto where this runtime's
   * has ChaCha20-Poly1305 and raw keys, else the portable @noble/* one).
   */
  readonly crypto?: CryptoChoice
  /** How relays are reached (default TCP; `makeMemoryNetwork` from transport-memory.ts in tests). */
  readonly transport?: Transport
}

export { InvalidArgumentError, type KeyInput, type RelayInput } from "./arguments.ts"

/** What `listen` needs. */
export interface ListenOptions extends ClientOptions {
  /** Relays to be reachable through, all at once. */
  readonly relays: ReadonlyArray<RelayInput>
  /** Keys allowed to connect, or a function of the peer's key (hex). */
  readonly allow: ReadonlyArray<KeyInput> | ((peer: string) => boolean | Promise<boolean>)
  /** Reconnect schedule of each relay's listen channel. */
  readonly backoff?: Partial<BackoffPolicy>
}

/** What `connect` needs. */
export interface ConnectOptions extends ClientOptions {
  /** The peer's relays, in order of preference. */
  readonly relays: ReadonlyArray<RelayInput>
  /** The peer's public key. */
  readonly to: KeyInput
  /** Overall deadline (default 20 s). */
  readonly timeoutMs?: number
  /** Start the next relay if the current one has not answered after this long (default 1 s). */
  readonly staggerMs?: number
  /** Aborting it gives up: every relay connection opened so far is closed and `connect` rejects with `signal.reason`. */
  readonly signal?: AbortSignal
}

/**
 * A listener, reachable through all its relays at once.
 *
 * Events: `connection` (a `PeerDuplex` whose peer passed the access policy
 * and proved its key), `status` (a `RelayStatus` whenever a relay's state
 * changes), `event` (every `ListenerEvent`, for logs), `close`.
 */
export class RelayListener extends EventEmitter {
  /** Our public key (hex): what peers connect to. */
  readonly publicKey: string
  readonly #scope: Scope.Closeable
  readonly #listener: Listener
  #closing: Promise<void> | undefined

  /** Use `listen(...)`. */
  constructor(scope: Scope.Closeable, listener: Listener) {
    super()
    this.#scope = scope
    this.#listener = listener
    this.publicKey = bytesToHex(listener.publicKey)
  }

  /** Each relay's current state. */
  status(): ReadonlyArray<RelayStatus> {
    return this.#listener.status()
  }

  /** Stops listening and closes every listen channel and every connection it accepted. */
  close(): Promise<void> {
    this.#closing ??= Effect.runPromise(Scope.close(this.#scope, Exit.void)).then(() => {
      this.emit("close")
    })
    return this.#closing
  }

  /** `await using listener = listen(...)` closes it at the end of the block. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close()
  }
}

/** Starts listening (see `RelayListener`); throws InvalidArgumentError for a bad relay address or key. */
export const listen = (options: ListenOptions): RelayListener => {
  const relays = options.relays.map(relayOf)
  const backoffProblem = checkBackoffPolicy({ ...defaultBackoffPolicy, ...options.backoff })
  if (backoffProblem !== undefined) throw new InvalidArgumentError(`backoff: ${backoffProblem.message}`)
  const allow = options.allow
  const policy = typeof allow === "function"
    ? (peer: Uint8Array) => Effect.tryPromise(async () => allow(bytesToHex(peer)))
    : allow.map(keyOf)
  const scope = Scope.makeUnsafe()
  let emitter: RelayListener | undefined
  const pending: Array<ListenerEvent> = []
  const onEvent = (event: ListenerEvent) => {
    // Events of the first instant arrive before the emitter exists.
    if (emitter === undefined) return void pending.push(event)
    dispatch(emitter, event)
  }
  const listener = Effect.runSync(
    makeListener(settingsOf(options), {
      relays,
      allow: policy,
      ...(options.backoff === undefined ? {} : { backoff: options.backoff }),
      onEvent
    }).pipe(Scope.provide(scope))
  )
  const created = new RelayListener(scope, listener)
  emitter = created
  // Let the caller attach handlers before the first events.
  queueMicrotask(() => {
    for (const event of pending.splice(0)) dispatch(created, event)
  })
  // Hands each accepted stream to the application until the listener closes.
  const acceptLoop = Effect.forever(
    Effect.flatMap(listener.accept, (stream) => Effect.sync(() => created.emit("connection", new PeerDuplex(stream))))
  )
  Effect.runSync(Effect.forkIn(Effect.ignore(acceptLoop), scope))
  return created
}

const dispatch = (emitter: RelayListener, event: ListenerEvent): void => {
  emitter.emit("event", event)
  if (event._tag === "StatusChanged") emitter.emit("status", event.status)
}

/**
 * Reaches a peer by its key; resolves once the peer proved its key end to
 * end, rejects with a `ConnectError` that says what happened at each relay
 * (or with `signal.reason` once `options.signal` aborts).
 */
export const connect = async (options: ConnectOptions): Promise<PeerDuplex> => {
  const relays = options.relays.map(relayOf)
  const peer = keyOf(options.to)
  // Parallel: closing a failed connect's relay connections takes one linger, not one each.
  const scope = Scope.makeUnsafe("parallel")
  const exit = await Effect.runPromiseExit(
    connectToPeer(settingsOf(options), peer, relays, {
      ...(options.timeoutMs === undefined ? {} : { timeoutMs: options.timeoutMs }),
      ...(options.staggerMs === undefined ? {} : { staggerMs: options.staggerMs })
    }).pipe(Scope.provide(scope)),
    { signal: options.signal }
  )
  if (Exit.isFailure(exit)) {
    Effect.runFork(Scope.close(scope, Exit.void))
    const failure = exit.cause.reasons.find((reason) => reason._tag === "Fail")
    if (failure?._tag === "Fail" && failure.error instanceof ConnectError) throw failure.error
    if (options.signal?.aborted === true) throw options.signal.reason
    throw new Error("connect was interrupted")
  }
  const socket = new PeerDuplex(exit.value)
  socket.once("close", () => Effect.runFork(Scope.close(scope, Exit.void)))
  return socket
}

/** Reads an identity key file (mode 0600, see src/adapters/identity.ts). */
export const readIdentity = (path: string, crypto: CryptoChoice = "auto"): Promise<Identity> =>
  Effect.runPromise(readIdentityFile(path).pipe(Effect.provide(Layer.merge(NodeFileSystem.layer, layerFor(crypto)))))

/** A new random identity (not saved anywhere). */
export const createIdentity = (crypto: CryptoChoice = "auto"): Identity =>
  Effect.runSync(generateIdentity.pipe(Effect.provide(layerFor(crypto))))

const settingsOf = (options: ClientOptions): ClientSettings => {
  if (options.maxMessageBytes !== undefined) {
    const problem = checkMaxMessageBytes(options.maxMessageBytes)
    if (problem !== undefined) throw new InvalidArgumentError(problem)
  }
  return {
    crypto: cryptoServiceFor(options.crypto ?? "auto"),
    identity: options.identity,
    tickMs: options.tickMs,
    handshakeTimeoutMs: options.handshakeTimeoutMs,
    maxMessageBytes: options.maxMessageBytes,
    transport: options.transport
  }
}

