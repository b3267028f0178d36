/**
 * `offset-relay serve`: run a relay until SIGINT/SIGTERM.
 *
 * Prints one line on stdout once listening, `<public key hex>@<host>:<port>`,
 * which is what clients are given, and with `--ws-port` a second one,
 * `<key>@ws://<host>:<port>` (wss:// with --tls-cert); logs go to stderr. SIGHUP reloads the
 * `--allow-keys` file. On SIGINT/SIGTERM the relay stops accepting, lets
 * tunnels drain for up to `--drain-ms`, closes the rest and exits 0.
 */
import * as NodePath from "node:path"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as FileSystem from "effect/FileSystem"
import { parseAllowList } from "../../core/allow-list.ts"
import { checkPrefixLengths } from "../../core/address-prefix.ts"
import { LOG_KEYS_MODES, parseLogKeys } from "../../core/log-keys.ts"
import { checkRelayConfig, defaultRelayConfig, type RelayConfig } from "../../core/relay-core.ts"
import { bytesToHex } from "../../core/keys.ts"
import { loadOrCreateIdentity } from "../identity.ts"
import { webSocketTransport } from "../transport-ws.ts"
import { WS_MAX_MESSAGE_BYTES } from "../transport-ws-dial.ts"
import { webPageHandler } from "../web-page.ts"
import { serveMetrics } from "../metrics-http.ts"
import { defaultDataDir } from "./data-dir.ts"
import { ExitCode, exitCodeHelp } from "./exit-codes.ts"
import { describeListenFailure, errorCode, probeListen } from "./listen-error.ts"
import { defaultRelayServerOptions, makeRelayServer, type RelayServerOptions } from "../relay-server.ts"
import { helpText, type OptionTable, type ParsedOptions, parseOptions, UsageError } from "./options.ts"
import { checkCryptoChoice, checkLogOptions, CliError, cryptoOption, runProgram } from "./runtime.ts"
import { keepYoungGenerationSmall } from "./young-generation.ts"

const serverDefaults = defaultRelayServerOptions({ seed: new Uint8Array(32), publicKey: new Uint8Array(32) })

const table: OptionTable = {
  host: { type: "string", default: serverDefaults.host, value: "HOST", help: "address to listen on" },
  port: { type: "integer", default: serverDefaults.port, max: 65535, value: "PORT", help: "TCP port to listen on (0 picks one)" },
  identity: {
    type: "string",
    value: "FILE",
    help: "identity key file (default: DATA_DIR/identity.key, created on first start)"
  },
  "data-dir": { type: "string", value: "DIR", help: `where the default identity lives (default ${defaultDataDir()})` },
  "tick-ms": { type: "integer", default: serverDefaults.tickMs, min: 1, value: "MS", help: "milliseconds per protocol tick" },
  "max-connections": {
    type: "integer",
    default: defaultRelayConfig.maxConnections,
    value: "N",
    help: "connections in total"
  },
  "max-connections-per-prefix": {
    type: "integer",
    default: defaultRelayConfig.maxConnectionsPerPrefix,
    value: "N",
    help: "listen and connect channels from one address prefix (a listener's accepts do not count)"
  },
  "max-connections-per-key": {
    type: "integer",
    default: defaultRelayConfig.maxConnectionsPerKey,
    value: "N",
    help: "listen and connect channels of one client key (a listener's accepts do not count)"
  },
  "max-handshakes": {
    type: "integer",
    default: defaultRelayConfig.maxHandshakes,
    value: "N",
    help: "handshakes in progress at once; when full, the busiest prefix's oldest makes room"
  },
  "max-handshakes-per-prefix": {
    type: "integer",
    default: defaultRelayConfig.maxHandshakesPerPrefix,
    value: "N",
    help: "handshakes in progress at once from one address prefix"
  },
  "max-unidentified-per-prefix": {
    type: "integer",
    default: defaultRelayConfig.maxUnidentifiedPerPrefix,
    value: "N",
    help: "connections from one prefix that have not said what they are for yet"
  },
  "handshake-rate-per-prefix": {
    type: "integer",
    default: defaultRelayConfig.handshakeRatePerPrefix,
    value: "N",
    help: "new connections per tick from one address prefix, on average"
  },
  "handshake-burst-per-prefix": {
    type: "integer",
    default: defaultRelayConfig.handshakeBurstPerPrefix,
    value: "N",
    help: "new connections at once from one address prefix before its rate applies"
  },
  "ipv4-prefix-length": {
    type: "integer",
    default: serverDefaults.prefixLengths.ipv4,
    value: "BITS",
    help: "IPv4 clients sharing this many leading bits count as one prefix"
  },
  "ipv6-prefix-length": {
    type: "integer",
    default: serverDefaults.prefixLengths.ipv6,
    value: "BITS",
    help: "IPv6 clients sharing this many leading bits count as one prefix"
  },
  "max-buffered-bytes": {
    type: "integer",
    default: serverDefaults.core.maxBufferedBytes,
    value: "BYTES",
    help: "memory all connections may hold together (default: min(1 GiB, a quarter of the machine's memory))"
  },
  "stuck-tunnel-ticks": {
    type: "integer",
    default: defaultRelayConfig.stuckTunnelTicks,
    value: "TICKS",
    help: "at the memory budget, a tunnel with nothing delivered this long is closed"
  },
  "hello-timeout-ms": {
    type: "integer",
    default: defaultRelayConfig.helloTimeoutTicks * serverDefaults.tickMs,
    value: "MS",
    help: "time to send the version and ExchangeRandNonce after connecting (rounded up to whole ticks)"
  },
  "max-connections-per-ip": { type: "integer", value: "N", help: "old name of --max-connections-per-prefix" },
  "max-handshakes-per-ip": { type: "integer", value: "N", help: "old name of --max-handshakes-per-prefix" },
  "handshake-timeout-ms": {
    type: "integer",
    default: defaultRelayConfig.handshakeTimeoutTicks * serverDefaults.tickMs,
    value: "MS",
    help: "time to finish version exchange and handshake (rounded up to whole ticks)"
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
  "rate-limit": { type: "integer", min: 1, value: "BYTES_PER_S", help: "per client key read rate (off when unset)" },
  "rate-burst": { type: "integer", value: "BYTES", help: "burst allowed above --rate-limit (default: one second's worth)" },
  "drain-ms": { type: "integer", default: 10_000, value: "MS", help: "on SIGINT/SIGTERM, time tunnels may drain" },
  "ws-port": {
    type: "integer",
    max: 65535,
    value: "PORT",
    help: "also accept WebSocket connections (browsers; ws://HOST:PORT/) on this port (off when unset)"
  },
  "ws-allowed-origins": {
    type: "list",
    value: "ORIGINS",
    help: "WebSocket connections only from these page origins, e.g. https://app.example.org (default: any)"
  },
  "ws-max-message-bytes": {
    type: "integer",
    default: WS_MAX_MESSAGE_BYTES,
    min: 1024,
    max: 16 * 1024 * 1024,
    value: "BYTES",
    help: "largest WebSocket message taken (a frame may span several messages)"
  },
  "ws-trust-forwarded-for": {
    type: "boolean",
    default: false,
    help: "WebSocket clients' addresses from X-Forwarded-For (only behind a reverse proxy that sets it)"
  },
  "tls-cert": { type: "string", value: "FILE", help: "PEM certificate: the WebSocket port serves wss:// (with --tls-key)" },
  "tls-key": { type: "string", value: "FILE", help: "PEM private key of --tls-cert" },
  web: {
    type: "boolean",
    default: false,
    help: "serve a page at / on the WebSocket port to talk to peers by key from a browser"
  },
  "metrics-port": { type: "integer", max: 65535, value: "PORT", help: "serve /metrics and /healthz on this port (off when unset)" },
  "metrics-host": { type: "string", default: "127.0.0.1", value: "HOST", help: "address for the metrics endpoint" },
  "log-level": { type: "string", default: "info", value: "LEVEL", help: "debug, info, warn, error or none" },
  "log-format": { type: "string", default: "pretty", value: "FORMAT", help: "pretty (logfmt) or json" },
  "log-keys": {
    type: "string",
    default: "short",
    value: "HOW",
    help: "client keys in log lines: short (first 8 hex digits) or full"
  },
  crypto: cryptoOption
}

const usage = "offset-relay serve [options]"
const description =
  "Runs a relay. Once listening it prints its address, <public key hex>@<host>:<port>, on stdout " +
  "(and with --ws-port its WebSocket address, <key>@ws://<host>:<port>, on the next line)."

/** Fails with the cause and the flag to change when host:port cannot be listened on now. */
const checkPort = (host: string, port: number, flags: { readonly port: string; readonly host: string }) =>
  Effect.flatMap(Effect.promise(() => probeListen(host, port)), (error) =>
    error === undefined
      ? Effect.void
      : Effect.fail(new CliError(describeListenFailure(errorCode(error), host, port, flags, error.message), ExitCode.LocalAddress)))

/** Entry point of `offset-relay serve`. */
export const run = async (args: ReadonlyArray<string>): Promise<number> => {
  let parsed
  try {
    parsed = parseOptions(args, table)
    if (parsed.help) {
      process.stdout.write(`${helpText(usage, description, table)}\n\n${exitCodeHelp}\n`)
      return 0
    }
    if (parsed.positionals.length > 0) throw new UsageError(`unexpected argument '${parsed.positionals[0]}'`)
    checkLogOptions(parsed.options["log-level"] as string, parsed.options["log-format"] as string)
    if (parseLogKeys(parsed.options["log-keys"] as string) === undefined) {
      throw new UsageError(`--log-keys must be one of ${LOG_KEYS_MODES.join(", ")}; got '${parsed.options["log-keys"]}'`)
    }
    const prefixError = checkPrefixLengths(prefixLengthsOf(parsed.options))
    if (prefixError !== undefined) throw new UsageError(`--ipv4-prefix-length/--ipv6-prefix-length: ${prefixError}`)
    const configError = checkRelayConfig(coreConfigOf(parsed.options))
    if (configError !== undefined) throw new UsageError(`invalid limit: ${configError.message}`)
    checkCryptoChoice(parsed.options.crypto as string)
    checkWebSocketOptions(parsed.options)
  } catch (error) {
    if (error instanceof UsageError) {
      process.stderr.write(`offset-relay serve: ${error.message}\nRun 'offset-relay serve --help' for the options.\n`)
      return ExitCode.Usage
    }
    throw error
  }
  // Every relayed message allocates 64 KiB buffers outside the heap: a small
  // young generation frees them in cheap scavenges (young-generation.ts).
  keepYoungGenerationSmall()
  const o = parsed.options
  const int = (name: string) => o[name] as number
  const dataDir = (o["data-dir"] as string | undefined) ?? defaultDataDir()
  const identityPath = (o.identity as string | undefined) ?? NodePath.join(dataDir, "identity.key")
  const allowKeysPath = o["allow-keys"] as string | undefined
  const rate = o["rate-limit"] as number | undefined
  // Checked above. The relay server writes client keys in its log lines this way.
  const logKeys = parseLogKeys(o["log-keys"] as string)!
  const host = o.host as string
  const port = int("port")

  const readAllowList = (path: string) =>
    Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      const text = yield* fs.readFileString(path).pipe(
        Effect.mapError((error) => new CliError(`cannot read allow-keys file ${path}: ${error.message}`, ExitCode.Usage))
      )
      const keys = parseAllowList(text)
      if ("_tag" in keys) return yield* Effect.fail(new CliError(`allow-keys file ${path}, ${keys.message}`, ExitCode.Usage))
      return keys
    })

  const program = Effect.scoped(
    Effect.gen(function*() {
      // Every input is checked before the identity is read or created: the
      // allow-list, and whether the ports can be opened at all (the servers
      // below still report a port taken in between).
      const allowList = allowKeysPath === undefined ? undefined : yield* readAllowList(allowKeysPath)
      yield* checkPort(host, port, { port: "--port", host: "--host" })
      const wsPort = o["ws-port"] as number | undefined
      if (wsPort !== undefined) yield* checkPort(host, wsPort, { port: "--ws-port", host: "--host" })
      const tls = yield* readTls(o["tls-cert"] as string | undefined, o["tls-key"] as string | undefined)
      if (o["metrics-port"] !== undefined) {
        yield* checkPort(o["metrics-host"] as string, o["metrics-port"] as number, {
          port: "--metrics-port",
          host: "--metrics-host"
        })
      }
      const identity = yield* loadOrCreateIdentity(identityPath).pipe(
        Effect.mapError((error) => new CliError(error.message, ExitCode.Identity))
      )
      const options: RelayServerOptions = {
        ...defaultRelayServerOptions(identity),
        logKeys,
        host,
        port,
        tickMs: int("tick-ms"),
        keepaliveTicks: int("keepalive-ticks"),
        prefixLengths: prefixLengthsOf(o),
        core: { ...coreConfigOf(o), allowList },
        rateLimit: rate === undefined
          ? undefined
          : { bytesPerSecond: rate, burstBytes: (o["rate-burst"] as number | undefined) ?? rate },
        extraListeners: wsPort === undefined ? [] : [{
          transport: webSocketTransport({
            maxMessageBytes: int("ws-max-message-bytes"),
            allowedOrigins: allowedOriginsOf(o),
            tls,
            trustForwardedFor: o["ws-trust-forwarded-for"] === true,
            onHttpRequest: o.web === true ? webPageHandler(bytesToHex(identity.publicKey)) : undefined
          }),
          host,
          port: wsPort
        }]
      }
      // The system's reason, from the error's cause when it carries one,
      // else from a second try on the same address (the error says "Open").
      const server = yield* makeRelayServer(options).pipe(
        Effect.catch((error) =>
          Effect.flatMap(
            errorCode(error) === undefined ? Effect.promise(() => probeListen(host, port)) : Effect.succeed(error),
            (cause) =>
              Effect.fail(
                new CliError(
                  describeListenFailure(errorCode(cause), host, port, { port: "--port", host: "--host" }, error.message),
                  ExitCode.LocalAddress
                )
              )
          )
        )
      )
      let stopping = false
      const metricsPort = o["metrics-port"] as number | undefined
      const metricsHost = o["metrics-host"] as string
      if (metricsPort !== undefined) {
        const bound = yield* serveMetrics(server.metrics, metricsHost, metricsPort, () => !stopping).pipe(
          Effect.mapError((error) =>
            new CliError(
              describeListenFailure(
                errorCode(error),
                metricsHost,
                metricsPort,
                { port: "--metrics-port", host: "--metrics-host" },
                error.message
              ),
              ExitCode.LocalAddress
            )
          )
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
      // Run with this program's services, so the reload is logged by the same
      // logger (stderr, --log-format, --log-level) as everything else.
      const services = yield* Effect.context<FileSystem.FileSystem>()
      const onHangup = () => {
        if (allowKeysPath === undefined) {
          Effect.runForkWith(services)(Effect.logInfo("SIGHUP: nothing to reload (no --allow-keys)"))
          return
        }
        Effect.runForkWith(services)(
          readAllowList(allowKeysPath).pipe(
            Effect.flatMap((keys) =>
              Effect.andThen(
                server.setAllowList(keys),
                Effect.logInfo("allow-list reloaded").pipe(Effect.annotateLogs({ keys: keys.size }))
              )
            ),
            Effect.catch((error) => Effect.logWarning(`allow-list not reloaded: ${error.message}`))
          )
        )
      }
      process.on("SIGHUP", onHangup)
      yield* Effect.addFinalizer(() => Effect.sync(() => process.off("SIGHUP", onHangup)))
      process.stdout.write(`${server.listening.map((l) => l.address).join("\n")}\n`)
      const webSocket = server.listening.find((l) => l.transport !== "tcp")
      if (webSocket !== undefined && o.web === true) {
        yield* Effect.logInfo("web page served").pipe(
          Effect.annotateLogs({ url: `${webSocket.transport === "wss" ? "https" : "http"}://${webSocket.host}:${webSocket.port}/` })
        )
      }

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
    exitCodeOf: (error) => error.exitCode,
    command: "serve",
    crypto: checkCryptoChoice(o.crypto as string)
  })
}

// The WebSocket flags that only make sense together.
const checkWebSocketOptions = (o: ParsedOptions): void => {
  const wsPort = o["ws-port"] as number | undefined
  const cert = o["tls-cert"] as string | undefined
  const key = o["tls-key"] as string | undefined
  if ((cert === undefined) !== (key === undefined)) throw new UsageError("--tls-cert and --tls-key go together: give both or neither")
  if (wsPort === undefined) {
    for (const flag of ["web", "tls-cert", "ws-allowed-origins", "ws-trust-forwarded-for"] as const) {
      const value = o[flag]
      const given = value === true || typeof value === "string" || (Array.isArray(value) && value.length > 0)
      if (given) throw new UsageError(`--${flag} applies to the WebSocket port: add --ws-port PORT`)
    }
  }
  if (wsPort !== undefined && wsPort === (o.port as number) && wsPort !== 0) {
    throw new UsageError(`--ws-port ${wsPort} is the TCP --port too: give the WebSocket its own port`)
  }
  for (const origin of allowedOriginsOf(o) ?? []) {
    if (!/^https?:\/\/[^/\s]+$/.test(origin)) {
      throw new UsageError(`--ws-allowed-origins: "${origin}" is not an origin; write scheme://host[:port] with no path, e.g. https://app.example.org`)
    }
  }
}

const allowedOriginsOf = (o: ParsedOptions): ReadonlyArray<string> | undefined => {
  const list = o["ws-allowed-origins"] as ReadonlyArray<string> | undefined
  return list === undefined || list.length === 0 ? undefined : list
}

// The PEM files of --tls-cert/--tls-key, read before the relay starts so a bad path is a clear error.
const readTls = (certPath: string | undefined, keyPath: string | undefined) =>
  Effect.gen(function*() {
    if (certPath === undefined || keyPath === undefined) return undefined
    const fs = yield* FileSystem.FileSystem
    const read = (path: string, flag: string) =>
      fs.readFileString(path).pipe(
        Effect.mapError((error) => new CliError(`cannot read ${flag} file ${path}: ${error.message}`, ExitCode.Usage))
      )
    return { cert: yield* read(certPath, "--tls-cert"), key: yield* read(keyPath, "--tls-key") }
  })

// The flags' prefix lengths and relay core config (without the allow-list),
// built once for the checks before the identity and once for the server.
const prefixLengthsOf = (o: ParsedOptions) => ({ ipv4: o["ipv4-prefix-length"] as number, ipv6: o["ipv6-prefix-length"] as number })

const coreConfigOf = (o: ParsedOptions): RelayConfig => {
  const int = (name: string) => o[name] as number
  // Wall-clock flags become whole ticks, rounded up: the core counts in ticks.
  const ticksOf = (ms: number) => Math.ceil(ms / Math.max(1, int("tick-ms")))
  return {
    ...defaultRelayConfig,
    maxConnections: int("max-connections"),
    maxConnectionsPerPrefix: (o["max-connections-per-ip"] as number | undefined) ?? int("max-connections-per-prefix"),
    maxConnectionsPerKey: int("max-connections-per-key"),
    maxHandshakes: int("max-handshakes"),
    maxHandshakesPerPrefix: (o["max-handshakes-per-ip"] as number | undefined) ?? int("max-handshakes-per-prefix"),
    maxUnidentifiedPerPrefix: int("max-unidentified-per-prefix"),
    handshakeRatePerPrefix: int("handshake-rate-per-prefix"),
    handshakeBurstPerPrefix: int("handshake-burst-per-prefix"),
    maxBufferedBytes: int("max-buffered-bytes"),
    stuckTunnelTicks: int("stuck-tunnel-ticks"),
    // The one handshake deadline, in whole ticks.
    handshakeTimeoutTicks: ticksOf(int("handshake-timeout-ms")),
    helloTimeoutTicks: ticksOf(int("hello-timeout-ms")),
    initTimeoutTicks: int("init-timeout-ticks"),
    halfTunnelTicks: int("half-tunnel-ticks"),
    maxPendingHalfTunnelsPerListener: int("max-pending-per-listener"),
    maxUnidentified: int("max-unidentified"),
    // --drain-ms is the one drain deadline: the core's own must not end it sooner.
    shutdownDrainTicks: ticksOf(int("drain-ms")) + 1
  }
}
