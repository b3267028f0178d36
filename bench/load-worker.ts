/**
 * A load-generator process: it holds idle tunnels, runs handshake loops or
 * streams bytes to a listener on request over its IPC channel, so the bench
 * and the load tests can spread clients over processes (each process has its
 * own file descriptor limit and event loop) and kill them (SIGKILL) as a
 * crashed client would be.
 *
 * The child (`node bench/load-worker.ts`) prints "ready" and then answers
 * each `WorkerRequest` with one `WorkerReply`; `startLoadWorker` is the
 * parent's side. Clients use node:crypto and the relay's default ticks.
 */
import * as Path from "node:path"
import process from "node:process"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Scope from "effect/Scope"
import { nodeCryptoService } from "../src/adapters/crypto.ts"
import { openRelayConnection, type RelayEndpoint } from "../src/adapters/relay-connection.ts"
import { bytesToHex, hexToBytes } from "../src/core/keys.ts"
import { echo, listen, newIdentity, openTunnel, type PeerOptions } from "./peers.ts"
import { repoRoot, startChild, type Child } from "./relay-process.ts"

/** A relay endpoint in a form that survives IPC (JSON). */
export interface WireEndpoint {
  readonly publicKeyHex: string
  readonly host: string
  readonly port: number
}

/** Converts an endpoint for IPC. */
export const toWireEndpoint = (endpoint: RelayEndpoint): WireEndpoint => ({
  publicKeyHex: bytesToHex(endpoint.publicKey),
  host: endpoint.host,
  port: endpoint.port
})

/** What the parent asks. */
export type WorkerRequest =
  /** Open `count` listeners and one tunnel to each (one echo round trip), and hold them. */
  | {
    readonly type: "open-idle"
    readonly relay: WireEndpoint
    readonly count: number
    readonly concurrency: number
    /** The relay's tick, so keepalives keep pace with its keepalive timeout (default 1000). */
    readonly tickMs?: number
  }
  /** Close everything held. */
  | { readonly type: "close-all" }
  /** For `durationMs`, `concurrency` loops of: connect, handshake, InitConnection(listen), close. */
  | { readonly type: "handshakes"; readonly relay: WireEndpoint; readonly durationMs: number; readonly concurrency: number }
  /** Connect to `listenerKeyHex` and send bytes until killed; replies once the tunnel is open. */
  | { readonly type: "stream"; readonly relay: WireEndpoint; readonly listenerKeyHex: string; readonly tickMs?: number }

/** The answer to one request. */
export interface WorkerReply {
  readonly id: number
  readonly error?: string
  /** Tunnels opened or handshakes completed. */
  readonly done?: number
  readonly failed?: number
  readonly ms?: number
  /** The first failure's message, to tell a refusal from a bug. */
  readonly firstFailure?: string
}

const fromWire = (wire: WireEndpoint): RelayEndpoint => {
  const publicKey = hexToBytes(wire.publicKeyHex)
  if (publicKey === undefined) throw new Error(`bad relay key ${wire.publicKeyHex}`)
  return { publicKey, host: wire.host, port: wire.port }
}

const options: PeerOptions = { crypto: nodeCryptoService }

// The child's side.
const serveRequests = async (): Promise<void> => {
  let held = Effect.runSync(Scope.make())

  const handle = (request: WorkerRequest): Promise<Omit<WorkerReply, "id">> => {
    switch (request.type) {
      case "open-idle": {
        const relay = fromWire(request.relay)
        const peerOptions: PeerOptions = { ...options, ...(request.tickMs === undefined ? {} : { tickMs: request.tickMs }) }
        return Effect.runPromise(
          Effect.gen(function*() {
            const start = performance.now()
            let failed = 0
            let firstFailure: string | undefined
            const fail = (error: { readonly message: string }) =>
              Effect.sync(() => {
                failed++
                firstFailure ??= error.message
              })
            // Listeners first, so every connect finds its listener.
            const listeners = yield* Effect.forEach(
              Array.from({ length: request.count }),
              () => Effect.option(listen(relay, newIdentity(options.crypto), peerOptions, echo).pipe(Effect.tapError(fail))),
              { concurrency: request.concurrency }
            )
            yield* Effect.sleep(200)
            let done = 0
            yield* Effect.forEach(
              listeners,
              (listener) =>
                listener._tag === "None"
                  ? Effect.void
                  : Effect.gen(function*() {
                    const channel = yield* openTunnel(relay, newIdentity(options.crypto), listener.value.identity.publicKey, peerOptions)
                    yield* channel.send(Uint8Array.of(1))
                    yield* channel.receive
                    done++
                  }).pipe(Effect.catch(fail)),
              { concurrency: request.concurrency, discard: true }
            )
            return { done, failed, ms: performance.now() - start, ...(firstFailure === undefined ? {} : { firstFailure }) }
          }).pipe(Scope.provide(held))
        )
      }
      case "close-all": {
        const old = held
        held = Effect.runSync(Scope.make())
        return Effect.runPromise(Effect.as(Scope.close(old, Exit.void), {}))
      }
      case "handshakes": {
        const relay = fromWire(request.relay)
        return Effect.runPromise(
          Effect.gen(function*() {
            const start = performance.now()
            const deadline = start + request.durationMs
            let done = 0
            let failed = 0
            let firstFailure: string | undefined
            const loop = Effect.gen(function*() {
              const identity = newIdentity(options.crypto)
              while (performance.now() < deadline) {
                const exit = yield* Effect.exit(
                  Effect.scoped(openRelayConnection(relay, { _tag: "Listen" }, { crypto: options.crypto, identity }))
                )
                if (Exit.isSuccess(exit)) done++
                else {
                  failed++
                  firstFailure ??= String(exit.cause)
                }
              }
            })
            yield* Effect.forEach(Array.from({ length: request.concurrency }), () => loop, {
              concurrency: "unbounded",
              discard: true
            })
            return { done, failed, ms: performance.now() - start, ...(firstFailure === undefined ? {} : { firstFailure }) }
          })
        )
      }
      case "stream": {
        const relay = fromWire(request.relay)
        const listenerKey = hexToBytes(request.listenerKeyHex)
        if (listenerKey === undefined) return Promise.resolve({ error: "bad listener key" })
        return Effect.runPromise(
          Effect.gen(function*() {
            const channel = yield* openTunnel(relay, newIdentity(options.crypto), listenerKey, {
              ...options,
              ...(request.tickMs === undefined ? {} : { tickMs: request.tickMs })
            })
            const chunk = options.crypto.randomBytes(16 * 1024)
            yield* Effect.forkIn(Effect.forever(channel.send(chunk)), held)
            return {}
          }).pipe(Scope.provide(held))
        )
      }
    }
  }

  process.on("message", (message: WorkerRequest & { readonly id: number }) => {
    handle(message).then(
      (reply) => process.send?.({ id: message.id, ...reply } satisfies WorkerReply),
      (error: unknown) => process.send?.({ id: message.id, error: String(error) } satisfies WorkerReply)
    )
  })
  // A worker whose parent is gone has nothing left to do.
  process.on("disconnect", () => process.exit(0))
  process.stdout.write("ready\n")
}

/** The parent's handle on a worker process. */
export interface LoadWorker extends Child {
  readonly request: (request: WorkerRequest, timeoutMs?: number) => Promise<WorkerReply>
}

/** Starts a worker process. */
export const startLoadWorker = async (): Promise<LoadWorker> => {
  const child = await startChild(Path.join(repoRoot, "bench", "load-worker.ts"), [], { ipc: true })
  let nextId = 1
  const waiting = new Map<number, (reply: WorkerReply) => void>()
  child.process.on("message", (reply: WorkerReply) => {
    waiting.get(reply.id)?.(reply)
    waiting.delete(reply.id)
  })
  void child.exited.then(() => {
    for (const [id, resolve] of waiting) resolve({ id, error: "the worker exited" })
    waiting.clear()
  })
  return {
    ...child,
    request: (request, timeoutMs = 600_000) =>
      new Promise((resolve, reject) => {
        const id = nextId++
        const timer = setTimeout(() => {
          waiting.delete(id)
          reject(new Error(`load worker did not answer '${request.type}' within ${timeoutMs} ms`))
        }, timeoutMs)
        waiting.set(id, (reply) => {
          clearTimeout(timer)
          if (reply.error !== undefined) reject(new Error(`load worker: ${reply.error}`))
          else resolve(reply)
        })
        child.process.send({ ...request, id })
      })
  }
}

if (import.meta.main) void serveRequests()
