/**
 * The relay server for code without Effect: `startRelay` resolves once the
 * relay listens, and the returned handle stops it.
 *
 *     import { startRelay } from "offset-relay"
 *
 *     const relay = await startRelay({ host: "127.0.0.1", port: 0 })   // a new identity, a free port
 *     console.log(relay.address)        // <public key hex>@127.0.0.1:<port>: what clients are given
 *     await relay.shutdown(5000)        // stop accepting, let tunnels drain up to 5 s, close the rest
 *
 * Every option of `RelayServerOptions` can be given; unset ones take
 * `defaultRelayServerOptions` (the CLI's defaults). Logs go to stderr at
 * `logLevel` (default "warn").
 */
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import type * as LogLevel from "effect/LogLevel"
import * as References from "effect/References"
import * as Scope from "effect/Scope"
import { bytesToHex } from "../core/keys.ts"
import { type CryptoChoice, cryptoServiceFor, layerWith } from "./crypto.ts"
import { generateIdentity, type Identity } from "./identity.ts"
import {
  defaultRelayServerOptions,
  makeRelayServer,
  type RelayServerOptions,
  type RelayServerStats
} from "./relay-server.ts"

/** What `startRelay` takes: any server option, plus identity, crypto and log level. */
export interface StartRelayOptions extends Partial<Omit<RelayServerOptions, "identity">> {
  /** The relay's key pair (default: a new one; see `readIdentity`, `createIdentity`). */
  readonly identity?: Identity
  /** Crypto implementation (default "auto"). */
  readonly crypto?: CryptoChoice
  /** Least severe log level written to stderr (default "warn"). */
  readonly logLevel?: LogLevel.LogLevel
}

/** A running relay. */
export interface Relay {
  /** `<public key hex>@<host>:<port>`: what clients are given. */
  readonly address: string
  /** The relay's public key (hex). */
  readonly publicKey: string
  readonly host: string
  /** The bound port (the chosen one when `port` was 0). */
  readonly port: number
  /** Counts of connections, tunnels, bytes (see RelayServerStats). */
  stats(): RelayServerStats
  /** Replaces the allow-list of client keys (hex); undefined lets everyone in. */
  setAllowList(keys: ReadonlySet<string> | undefined): Promise<void>
  /** Graceful stop: refuse new connections, let tunnels drain up to `drainMs`, then close everything. */
  shutdown(drainMs: number): Promise<void>
  /** Closes every connection at once and stops listening. */
  close(): Promise<void>
  /** `await using relay = await startRelay(...)` closes it at the end of the block. */
  [Symbol.asyncDispose](): Promise<void>
}

/** Starts a relay; rejects with a `ServerStartError` when it cannot listen. */
export const startRelay = async (options: StartRelayOptions = {}): Promise<Relay> => {
  const crypto = cryptoServiceFor(options.crypto ?? "auto")
  const cryptoLayer = layerWith(crypto, crypto.randomBytes)
  const { identity: given, crypto: _choice, logLevel, ...overrides } = options
  const identity = given ?? Effect.runSync(generateIdentity.pipe(Effect.provide(cryptoLayer)))
  const scope = Scope.makeUnsafe()
  const logs = Layer.mergeAll(cryptoLayer, Logger.layer([Logger.withConsoleError(Logger.formatLogFmt)]))
  const exit = await Effect.runPromiseExit(
    makeRelayServer({ ...defaultRelayServerOptions(identity), ...overrides }).pipe(
      Scope.provide(scope),
      Effect.provide(logs),
      Effect.provideService(References.MinimumLogLevel, logLevel ?? "Warn")
    )
  )
  if (Exit.isFailure(exit)) {
    await Effect.runPromise(Scope.close(scope, Exit.void))
    const failure = exit.cause.reasons.find((reason) => reason._tag === "Fail")
    if (failure?._tag === "Fail") throw failure.error
    throw new Error(`the relay did not start: ${String(exit.cause)}`)
  }
  const server = exit.value
  let closing: Promise<void> | undefined
  const close = (): Promise<void> => (closing ??= Effect.runPromise(Scope.close(scope, Exit.void)))
  return {
    address: server.address,
    publicKey: bytesToHex(server.publicKey),
    host: server.host,
    port: server.port,
    stats: () => server.stats(),
    setAllowList: (keys) => Effect.runPromise(server.setAllowList(keys)),
    shutdown: async (drainMs) => {
      if (closing === undefined) await Effect.runPromise(server.shutdown(drainMs))
      await close()
    },
    close,
    [Symbol.asyncDispose]: close
  }
}
