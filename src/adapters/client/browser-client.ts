/**
 * The client library for pages (and any runtime without `node:*`): listen
 * and connect through relays' WebSocket ports, with Promises, messages and
 * web streams. The browser bundle (`offset-relay/browser`) exports it.
 *
 *     import { connect, listen, loadOrCreateIdentity } from "offset-relay/browser"
 *
 *     const identity = await loadOrCreateIdentity()        // kept in IndexedDB
 *     const relay = "3b6a…@wss://relay.example.org:443"
 *
 *     // Be reachable by our key:
 *     const listener = listen({ identity, relays: [relay], allow: (peer) => true })
 *     for (;;) { const peer = await listener.accept(); peer.send("hello") }
 *
 *     // Reach a peer by its key:
 *     const peer = await connect({ identity, relays: [relay], to: peerKeyHex })
 *     await peer.send(new TextEncoder().encode("hi"))
 *     const answer = await peer.receive()                  // undefined once the peer ended
 *
 * Relays must be given with ws:// or wss:// (a page cannot open TCP
 * connections; a TCP address fails with that reason). Crypto is @noble/*,
 * randomness `crypto.getRandomValues`. Errors are the library's tagged
 * errors (ConnectError says what happened at each relay).
 */
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Option from "effect/Option"
import * as Scope from "effect/Scope"
import { bytesToHex } from "../../core/keys.ts"
import type { RelayAddress } from "../../core/relay-address.ts"
import { nobleCryptoService } from "../crypto-service.ts"
import type { Identity } from "../identity.ts"
import { keyOf, relayOf } from "./arguments.ts"
import { ConnectError, connectToPeer } from "./connector.ts"
import { type Listener, type ListenerEvent, makeListener, type RelayStatus } from "./listener.ts"
import type { ClientSettings } from "./tunnel.ts"
import type { PeerStream } from "./tunnel-stream.ts"

export { ConnectError } from "./connector.ts"
export type { ListenerEvent, RelayStatus } from "./listener.ts"
export { PeerStreamError } from "./tunnel-stream.ts"
export type { Identity } from "../identity.ts"

/** Settings shared by `listen` and `connect`. */
export interface BrowserClientOptions {
  /** Our key pair (`createIdentity`, `loadOrCreateIdentity`, or the application's own). */
  readonly identity: Identity
  /** Relays, `<key hex>@ws://host:port` or `<key hex>@wss://host:port` (text or parsed). */
  readonly relays: ReadonlyArray<string | RelayAddress>
  /** Milliseconds per keepalive tick (default 1000, as Offset). */
  readonly tickMs?: number
  /** Bound on each relay handshake (default 10 s). */
  readonly handshakeTimeoutMs?: number
}

export { InvalidArgumentError } from "./arguments.ts"

/** A new random identity (crypto.getRandomValues), not saved anywhere. */
export const createIdentity = (): Identity => {
  const seed = nobleCryptoService.randomBytes(32)
  return { seed, publicKey: nobleCryptoService.ed25519PublicKey(seed) }
}

/**
 * The identity saved in this origin's IndexedDB under `name` (database
 * "offset-relay"), created and saved on first use. Anyone who can run
 * script on this origin can read it, as with any browser-held key.
 */
export const loadOrCreateIdentity = async (name = "identity"): Promise<Identity> => {
  const db = await openIdentityDatabase()
  try {
    const saved = await requestResult<unknown>(db.transaction("identities", "readonly").objectStore("identities").get(name))
    if (saved instanceof Uint8Array && saved.length === 32) {
      return { seed: saved, publicKey: nobleCryptoService.ed25519PublicKey(saved) }
    }
    const identity = createIdentity()
    await requestResult(db.transaction("identities", "readwrite").objectStore("identities").put(identity.seed, name))
    return identity
  } finally {
    db.close()
  }
}

/** What `listen` needs besides the shared settings. */
export interface BrowserListenOptions extends BrowserClientOptions {
  /** Keys allowed to connect, or a function of the peer's key (hex). */
  readonly allow: ReadonlyArray<string | Uint8Array> | ((peer: string) => boolean | Promise<boolean>)
  /** Hears every relay state change and incoming connection (for the page's status line). */
  readonly onEvent?: (event: ListenerEvent) => void
}

/** A listener: reachable by our key through every relay given. */
export class BrowserListener {
  /** Our public key (hex): what peers connect to. */
  readonly publicKey: string
  readonly #scope: Scope.Closeable
  readonly #listener: Listener
  #closing: Promise<void> | undefined

  /** Use `listen(...)`. */
  constructor(scope: Scope.Closeable, listener: Listener) {
    this.#scope = scope
    this.#listener = listener
    this.publicKey = bytesToHex(listener.publicKey)
  }

  /** The next peer whose key passed `allow` and proved itself end to end; rejects once the listener is closed. */
  accept(): Promise<PeerConnection> {
    return Effect.runPromise(this.#listener.accept).then((stream) => new PeerConnection(stream, undefined))
  }

  /** Each relay's current state. */
  status(): ReadonlyArray<RelayStatus> {
    return this.#listener.status()
  }

  /** Stops listening; closes every listen channel and every connection it accepted. */
  close(): Promise<void> {
    this.#closing ??= Effect.runPromise(Scope.close(this.#scope, Exit.void))
    return this.#closing
  }
}

/** Starts listening; throws InvalidArgumentError for a bad relay address or key. */
export const listen = (options: BrowserListenOptions): BrowserListener => {
  const relays = options.relays.map(relayOf)
  const allow = options.allow
  const policy = typeof allow === "function"
    ? (peer: Uint8Array) => Effect.tryPromise(async () => allow(bytesToHex(peer)))
    : allow.map(keyOf)
  const scope = Scope.makeUnsafe()
  const listener = Effect.runSync(
    makeListener(settingsOf(options), {
      relays,
      allow: policy,
      ...(options.onEvent === undefined ? {} : { onEvent: options.onEvent })
    }).pipe(Scope.provide(scope))
  )
  return new BrowserListener(scope, listener)
}

/** What `connect` needs besides the shared settings. */
export interface BrowserConnectOptions extends BrowserClientOptions {
  /** The peer's public key (64 hex digits or 32 bytes). */
  readonly to: string | Uint8Array
  /** Overall deadline (default 20 s). */
  readonly timeoutMs?: number
}

/**
 * Reaches a peer by its key; resolves once the peer proved its key end to
 * end, rejects with a ConnectError that says what happened at each relay.
 */
export const connect = async (options: BrowserConnectOptions): Promise<PeerConnection> => {
  const relays = options.relays.map(relayOf)
  const peer = keyOf(options.to)
  const scope = Scope.makeUnsafe("parallel")
  const exit = await Effect.runPromiseExit(
    connectToPeer(settingsOf(options), peer, relays, options.timeoutMs === undefined ? {} : { timeoutMs: options.timeoutMs })
      .pipe(Scope.provide(scope))
  )
  if (Exit.isFailure(exit)) {
    Effect.runFork(Scope.close(scope, Exit.void))
    const failure = exit.cause.reasons.find((reason) => reason._tag === "Fail")
    if (failure?._tag === "Fail" && failure.error instanceof ConnectError) throw failure.error
    throw new Error("connect was interrupted")
  }
  return new PeerConnection(exit.value, scope)
}

/**
 * A connection to one authenticated peer: messages (`send`, `receive`) or
 * web streams (`readable`, `writable`) — use one or the other for reading.
 * The tunnel carries bytes; a message may arrive split or joined with
 * others when the far side is a byte stream (a command-line listener).
 */
export class PeerConnection {
  /** The peer's public key (hex), proven end to end. */
  readonly remotePublicKey: string
  /** The relay this tunnel runs through. */
  readonly relay: string
  /** Settles once both sides ended cleanly; rejects with the tunnel's error. */
  readonly done: Promise<void>
  readonly #stream: PeerStream
  readonly #scope: Scope.Closeable | undefined

  /** Use `connect` or `BrowserListener.accept`. */
  constructor(stream: PeerStream, scope: Scope.Closeable | undefined) {
    this.#stream = stream
    this.#scope = scope
    this.remotePublicKey = bytesToHex(stream.remotePublicKey)
    this.relay = stream.relay
    this.done = Effect.runPromise(stream.done)
    // Nobody may wait on `done`: its failure is reported by send/receive too.
    this.done.catch(() => {})
    if (scope !== undefined) {
      const release = () => Effect.runPromise(Scope.close(scope, Exit.void))
      this.done.then(release, release)
    }
  }

  /** Sends bytes (text is sent as UTF-8); resolves once the tunnel took them. */
  send(data: Uint8Array | string): Promise<void> {
    const bytes = typeof data === "string" ? new TextEncoder().encode(data) : data
    return Effect.runPromise(this.#stream.write(bytes))
  }

  /** The next bytes the peer sent, or undefined once it ended its side. */
  receive(): Promise<Uint8Array | undefined> {
    return Effect.runPromise(this.#stream.read).then(Option.getOrUndefined)
  }

  /** We send no more; receiving goes on until the peer ends too. */
  end(): Promise<void> {
    return Effect.runPromise(this.#stream.end)
  }

  /** Closes the tunnel at once (the peer sees "aborted"). */
  async close(): Promise<void> {
    await Effect.runPromise(this.#stream.abort("closed by the page"))
    if (this.#scope !== undefined) await Effect.runPromise(Scope.close(this.#scope, Exit.void))
  }

  /** What the peer sends, as a web stream (ends when the peer ends). */
  get readable(): ReadableStream<Uint8Array> {
    return new ReadableStream<Uint8Array>({
      pull: async (controller) => {
        const chunk = await this.receive()
        if (chunk === undefined) controller.close()
        else controller.enqueue(chunk)
      },
      cancel: () => this.close()
    })
  }

  /** What we send, as a web stream (closing it ends our side). */
  get writable(): WritableStream<Uint8Array> {
    return new WritableStream<Uint8Array>({
      write: (chunk) => this.send(chunk),
      close: () => this.end(),
      abort: () => this.close()
    })
  }
}

const settingsOf = (options: BrowserClientOptions): ClientSettings => ({
  crypto: nobleCryptoService,
  identity: options.identity,
  tickMs: options.tickMs,
  handshakeTimeoutMs: options.handshakeTimeoutMs
})

// IndexedDB, typed here by the little we use: the package's types do not
// include the DOM library.
interface IdbRequest<T> {
  result: T
  error: unknown
  onsuccess: (() => void) | null
  onerror: (() => void) | null
}
interface IdbDatabase {
  readonly objectStoreNames: { contains: (name: string) => boolean }
  createObjectStore: (name: string) => unknown
  transaction: (store: string, mode: "readonly" | "readwrite") => {
    objectStore: (name: string) => { get: (key: string) => IdbRequest<unknown>; put: (value: unknown, key: string) => IdbRequest<unknown> }
  }
  close: () => void
}

const requestResult = <T>(request: IdbRequest<unknown>): Promise<T> =>
  new Promise((resolve, reject) => {
    request.onsuccess = () => resolve(request.result as T)
    request.onerror = () => reject(request.error)
  })

const openIdentityDatabase = (): Promise<IdbDatabase> => {
  const indexedDB = (globalThis as { indexedDB?: { open: (name: string, version: number) => IdbRequest<IdbDatabase> & { onupgradeneeded: (() => void) | null } } }).indexedDB
  if (indexedDB === undefined) {
    return Promise.reject(new Error("this runtime has no IndexedDB to keep an identity in: use createIdentity() and keep the seed yourself"))
  }
  const request = indexedDB.open("offset-relay", 1)
  request.onupgradeneeded = () => {
    if (!request.result.objectStoreNames.contains("identities")) request.result.createObjectStore("identities")
  }
  return requestResult<IdbDatabase>(request)
}
