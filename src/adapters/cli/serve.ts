/**
 * `offset-relay serve`: run a relay until SIGINT/SIGTERM.
 *
 * Prints one line on stdout once listening, `<public key hex>@<host>:<port>`,
 * which is what clients are given; logs go to stderr. SIGHUP reloads the
 * `--allow-keys` file. On SIGINT/SIGTERM the relay stops accepting, lets
 * tunnels drain for up to `--drain-ms`, closes the rest and exits 0.
 */
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as FileSystem from "effect/FileSystem"
import { parseAllowList } from "../../core/allow-list.ts"
import { defaultRelayConfig } from "../../core/relay-core.ts"
import { loadOrCreateIdentity } from "../identity.ts"
import { serveMetrics } from "../metrics-http.ts"
import { defaultRelayServerOptions, makeRelayServer, type RelayServerOptions } from "../relay-server.ts"
import { helpText, parseOptions, UsageError, type OptionTable } from "./options.ts"
import { checkCryptoChoice, checkLogOptions, cryptoOption, runProgram } from "./runtime.ts"

/** The default data directory: $XDG_DATA_HOME/offset-relay, else ~/.local/share/offset-relay. */
export const defaultDataDir = (): string =>
  NodePath.join(process.env.XDG_DATA_HOME ?? NodePath.join(NodeOs.homedir(), ".local", "share"), "offset-relay")

const serverDefaults = defaultRelayServerOptions({ seed: new Uint8Array(32), publicKey: new Uint8Array(32) })

const table: OptionTable = {
  host: { type: "string", default: serverDefaults.host, value: "HOST", help: "address to listen on" },
  port: { type: "integer", default: serverDefaults.port, value: "PORT", help: "TCP port to listen on (0 picks one)" },
  identity: {
    type: "string",
    value: "FILE",
    help: "identity key file (default: DATA_DIR/identity.key, created on first start)"
  },
  "data-dir": { type: "string", value: "DIR", help: `where the default identity lives (default ${defaultDataDir()})` },
  "tick-ms": { type: "integer", default: serverDefaults.tickMs, value: "MS", help: "milliseconds per protocol tick" },
  "max-connections": { type: "integer", default: serverDefaults.maxConnections, value: "N", help: "open TCP connections in total" },
  "max-connections-per-ip": {
    type: "integer",
    default: serverDefaults.maxConnectionsPerIp,
    value: "N",
    help: "open TCP connections from one IP address"
  },
  "max-handshakes": {
    type: "integer",
    default: serverDefaults.maxConcurrentHandshakes,
    value: "N",
    help: "handshakes in progress at once"
  },
  "max-handshakes-per-ip": {
    type: "integer",
    default: serverDefaults.maxHandshakesPerIp,
    value: "N",
    help: "handshakes in progress at once from one IP address"
  },
  "handshake-timeout-ms": {
    type: "integer",
    default: serverDefaults.handshakeTimeoutMs,
    value: "MS",
    help: "time to finish version exchange and handshake"
  },
  "init-timeout-ticks": {
    type: "integer",
    default: defaultRelayConfig.initTimeoutTicks,
    value: "TICKS",
    help: "time to send InitConnection after the handshake"
  },
  "half-tunnel-ticks": {
    type: "integer",
    default: defaultRelayConfig.halfTunnelTicks,
    value: "TICKS",
    help: "time a connect waits for the listener's accept"
  },
  "max-pending-per-listener": {
    type: "integer",
    default: defaultRelayConfig.maxPendingHalfTunnelsPerListener,
    value: "N",
    help: "half tunnels waiting on one listener"
  },
  "max-unidentified": {
    type: "integer",
    default: defaultRelayConfig.maxUnidentified,
    value: "N",
    help: "connections that have not said what they are for yet"
  },
  "keepalive-ticks": {
    type: "integer",
    default: serverDefaults.keepaliveTicks,
    value: "TICKS",
    help: "silence after which a connection is closed"
  },
  "allow-keys": {
    type: "string",
    value: "FILE",
    help: "only these client keys (one hex key per line) may use the relay; reloaded on SIGHUP"
  },
  "rate-limit": { type: "integer", value: "BYTES_PER_S", help: "per client key read rate (off when unset)" },
  "rate-burst": { type: "integer", value: "BYTES", help: "burst allowed above --rate-limit (default: one second's worth)" },
  "drain-ms": { type: "integer", default: 10_000, value: "MS", help: "on SIGINT/SIGTERM, time tunnels may drain" },
  "metrics-port": { type: "integer", value: "PORT", help: "serve /metrics and /healthz on this port (off when unset)" },
  "metrics-host": { type: "string", default: "127.0.0.1", value: "HOST", help: "address for the metrics endpoint" },
  "log-level": { type: "string", default: "info", value: "LEVEL", help: "debug, info, warn, error or none" },
  "log-format": { type: "string", default: "pretty", value: "FORMAT", help: "pretty (logfmt) or json" },
  crypto: cryptoOption
}

const usage = "offset-relay serve [options]"
const description =
  "Runs a relay. Once listening it prints its address, <public key hex>@<host>:<port>, on stdout."

/** Entry point of `offset-relay serve`. */
export const run = async (args: ReadonlyArray<string>): Promise<number> => {
  let parsed
  try {
    parsed = parseOptions(args, table)
    if (parsed.help) {
      process.stdout.write(helpText(usage, description, table) + "\n")
      return 0
    }
    if (parsed.positionals.length > 0) throw new UsageError(`unexpected argument '${parsed.positionals[0]}'`)
    checkLogOptions(parsed.options["log-level"] as string, parsed.options["log-format"] as string)
    checkCryptoChoice(parsed.options.crypto as string)
  } catch (error) {
    if (error instanceof UsageError) {
      process.stderr.write(`offset-relay serve: ${error.message}\nRun 'offset-relay serve --help' for the options.\n`)
      return 2
    }
    throw error
  }
  const o = parsed.options
  const int = (name: string) => o[name] as number
  const dataDir = (o["data-dir"] as string | undefined) ?? defaultDataDir()
  const identityPath = (o.identity as string | undefined) ?? NodePath.join(dataDir, "identity.key")
  const allowKeysPath = o["allow-keys"] as string | undefined
  const rate = o["rate-limit"] as number | undefined

  const readAllowList = (path: string) =>
    Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      const text = yield* fs.readFileString(path).pipe(
        Effect.mapError((error) => new CliError(`cannot read allow-keys file ${path}: ${error.message}`))
      )
      const keys = parseAllowList(text)
      if ("_tag" in keys) return yield* Effect.fail(new CliError(`allow-keys file ${path}, ${keys.message}`))
      return keys
    })

  const program = Effect.scoped(
    Effect.gen(function*() {
      const identity = yield* loadOrCreateIdentity(identityPath).pipe(
        Effect.mapError((error) => new CliError(error.message))
      )
      const allowList = allowKeysPath === undefined ? undefined : yield* readAllowList(allowKeysPath)
      const options: RelayServerOptions = {
        ...defaultRelayServerOptions(identity),
        host: o.host as string,
        port: int("port"),
        tickMs: int("tick-ms"),
        maxConnections: int("max-connections"),
        maxConnectionsPerIp: int("max-connections-per-ip"),
        maxConcurrentHandshakes: int("max-handshakes"),
        maxHandshakesPerIp: int("max-handshakes-per-ip"),
        handshakeTimeoutMs: int("handshake-timeout-ms"),
        keepaliveTicks: int("keepalive-ticks"),
        core: {
          ...defaultRelayConfig,
          initTimeoutTicks: int("init-timeout-ticks"),
          halfTunnelTicks: int("half-tunnel-ticks"),
          maxPendingHalfTunnelsPerListener: int("max-pending-per-listener"),
          maxUnidentified: int("max-unidentified"),
          // --drain-ms is the one drain deadline: the core's own must not end it sooner.
          shutdownDrainTicks: Math.ceil(int("drain-ms") / Math.max(1, int("tick-ms"))) + 1,
          allowList
        },
        rateLimit: rate === undefined
          ? undefined
          : { bytesPerSecond: rate, burstBytes: (o["rate-burst"] as number | undefined) ?? rate }
      }
      if (options.tickMs < 1) return yield* Effect.fail(new CliError("--tick-ms must be at least 1"))
      if (rate !== undefined && rate < 1) return yield* Effect.fail(new CliError("--rate-limit must be at least 1"))
      const server = yield* makeRelayServer(options).pipe(Effect.mapError((error) => new CliError(error.message)))
      let stopping = false
      const metricsPort = o["metrics-port"] as number | undefined
      if (metricsPort !== undefined) {
        const bound = yield* serveMetrics(server.metrics, o["metrics-host"] as string, metricsPort, () => !stopping).pipe(
          Effect.mapError((error) => new CliError(error.message))
        )
        yield* Effect.logInfo("metrics endpoint listening").pipe(
          Effect.annotateLogs({ url: `http://${o["metrics-host"]}:${bound}/metrics` })
        )
      }
      // Signal handlers go in before the address is printed: whoever reads the
      // address may signal us at once and must get a graceful stop.
      const stopSignal = yield* Deferred.make<string>()
      const onStop = (name: string) => Deferred.doneUnsafe(stopSignal, Exit.succeed(name))
      process.on("SIGINT", onStop)
      process.on("SIGTERM", onStop)
      yield* Effect.addFinalizer(() =>
        Effect.sync(() => {
          process.off("SIGINT", onStop)
          process.off("SIGTERM", onStop)
        })
      )

      // SIGHUP reloads the allow-list; a bad file keeps the old list.
      const fs = yield* FileSystem.FileSystem
      const onHangup = () => {
        if (allowKeysPath === undefined) return
        Effect.runFork(
          readAllowList(allowKeysPath).pipe(
            Effect.flatMap((keys) =>
              Effect.andThen(
                server.setAllowList(keys),
                Effect.logInfo("allow-list reloaded").pipe(Effect.annotateLogs({ keys: keys.size }))
              )
            ),
            Effect.catch((error) => Effect.logWarning(`allow-list not reloaded: ${error.message}`)),
            Effect.provideService(FileSystem.FileSystem, fs)
          )
        )
      }
      process.on("SIGHUP", onHangup)
      yield* Effect.addFinalizer(() => Effect.sync(() => process.off("SIGHUP", onHangup)))
      process.stdout.write(`${server.address}\n`)

      const signal = yield* Deferred.await(stopSignal)
      stopping = true
      const drainMs = int("drain-ms")
      yield* Effect.logInfo("shutting down").pipe(Effect.annotateLogs({ signal, drainMs }))
      yield* server.shutdown(drainMs)
      yield* Effect.logInfo("stopped").pipe(Effect.annotateLogs({ ...server.stats().core }))
      return 0
    })
  )
  return runProgram(program, {
    logLevel: o["log-level"] as string,
    logFormat: o["log-format"] as string,
    describeError: (error) => error.message,
    crypto: checkCryptoChoice(o.crypto as string)
  })
}

/** A failure the CLI reports as one line. */
class CliError extends Error {
  readonly _tag = "CliError"
}
