/**
 * `offset-relay connect`: reach a peer by its public key through its relays.
 *
 * Two modes:
 * - with `--local-port P`: listens on --local-host:P (like `ssh -L`) and
 *   carries each local connection through its own relayed tunnel; prints the
 *   bound `host:port` on stdout (useful with `--local-port 0`) and runs until
 *   SIGINT/SIGTERM (exit 0);
 * - without: carries stdin/stdout (like netcat). At the end of stdin it
 *   half-closes, keeps writing what arrives to stdout, and exits 0 once the
 *   peer has finished too.
 * Progress and errors go to stderr. Exit codes: see client-common.ts.
 */
import * as Net from "node:net"
import type { PeerDuplex } from "../client/index.ts"
import type { Identity } from "../identity.ts"
import type { RelayAddress } from "../../core/relay-address.ts"
import {
  type CommonSettings,
  ExitCode,
  identityOption,
  keyOf,
  parseCommand,
  quietOption,
  relayName,
  relaysOf,
  say,
  tickOption,
  untilStopSignal
} from "./client-common.ts"
import { cryptoOption } from "./crypto-option.ts"
import { makeIdleCompactor } from "./idle-memory.ts"
import { describeListenFailure, errorCode } from "./listen-error.ts"
import { UsageError, type OptionTable } from "./options.ts"
import { keepYoungGenerationSmall } from "./young-generation.ts"

/**
 * The library's defaults (DEFAULT_CONNECT_TIMEOUT_MS and DEFAULT_STAGGER_MS
 * of client/connector.ts), written out here so that --help need not load the
 * library; test/cli-footprint.test.ts checks that they agree.
 */
export const CONNECT_DEFAULTS = { timeoutMs: 20_000, staggerMs: 1000 } as const

/** What the commands below use from the client library (local-bridge.ts), loaded once the flags are checked. */
type Bridge = typeof import("./local-bridge.ts")

const table: OptionTable = {
  identity: identityOption,
  relay: { type: "list", value: "ADDR", help: "the peer's relay <key hex>@<host>:<port> (TCP) or <key hex>@ws[s]://<host>:<port> (WebSocket); repeat for several, in order" },
  to: { type: "string", value: "KEY", help: "the peer's public key (hex); required" },
  "local-port": {
    type: "integer",
    max: 65535,
    value: "PORT",
    help: "listen here and carry each connection to the peer (0 picks a port); without it: stdin/stdout"
  },
  "local-host": { type: "string", default: "127.0.0.1", value: "HOST", help: "address for --local-port" },
  "timeout-ms": {
    type: "integer",
    default: CONNECT_DEFAULTS.timeoutMs,
    min: 1,
    value: "MS",
    help: "give up reaching the peer after this long"
  },
  "stagger-ms": {
    type: "integer",
    default: CONNECT_DEFAULTS.staggerMs,
    value: "MS",
    help: "also try the next relay if the current one has not answered after this long"
  },
  "tick-ms": tickOption,
  quiet: quietOption,
  crypto: cryptoOption
}

const usage = "offset-relay connect --identity FILE --relay ADDR [--relay ADDR ...] --to KEY [--local-port P]"
const description = [
  "Reaches a peer by its public key through its relays (tried in order; the next one also",
  "starts if one is slow to answer). The peer is authenticated end to end, so a relay can",
  "neither read nor forge the traffic.",
  "With --local-port: forwards each local TCP connection to the peer (like ssh -L).",
  "Without: carries stdin/stdout (like netcat); the end of stdin half-closes, and the",
  "command exits 0 once the peer has finished too."
].join("\n")

interface Settings extends CommonSettings {
  readonly relays: ReadonlyArray<RelayAddress>
  readonly to: Uint8Array
  readonly localPort: number | undefined
  readonly localHost: string
  readonly timeoutMs: number
  readonly staggerMs: number
}

/** Entry point of `offset-relay connect`. */
export const run = async (args: ReadonlyArray<string>): Promise<number> => {
  const settings = await parseCommand("connect", args, { usage, description, table }, (o, common): Settings => {
    const relays = relaysOf(o.relay as ReadonlyArray<string>)
    const toText = o.to as string | undefined
    if (toText === undefined) throw new UsageError("--to KEY is required: the public key of the peer to reach")
    const localPort = o["local-port"] as number | undefined
    const timeoutMs = o["timeout-ms"] as number
    return {
      ...common,
      relays,
      to: keyOf("to", toText),
      localPort,
      localHost: o["local-host"] as string,
      timeoutMs,
      staggerMs: o["stagger-ms"] as number
    }
  })
  if (typeof settings === "number") return settings
  // Before the library loads: its loading is the first thing that would grow it.
  keepYoungGenerationSmall()
  // The client library, loaded only now: --help and usage errors need none of it.
  const bridge = await import("./local-bridge.ts")
  const identity = await bridge.loadIdentity("connect", settings.identityPath, settings.crypto)
  if (identity === undefined) return ExitCode.Identity
  return settings.localPort === undefined
    ? carryStdio(bridge, settings, identity)
    : forwardPort(bridge, settings, identity, settings.localPort)
}

const progressOf = (settings: Settings) => (line: string) => {
  if (!settings.quiet) say("connect", line)
}

const reach = (bridge: Bridge, settings: Settings, identity: Identity, signal?: AbortSignal): Promise<PeerDuplex> =>
  bridge.connect({
    identity,
    crypto: settings.crypto,
    relays: settings.relays,
    to: settings.to,
    timeoutMs: settings.timeoutMs,
    staggerMs: settings.staggerMs,
    tickMs: settings.tickMs,
    ...(signal === undefined ? {} : { signal })
  })

// netcat mode: stdin → peer, peer → stdout, with the half close in between.
const carryStdio = async (bridge: Bridge, settings: Settings, identity: Identity): Promise<number> => {
  const progress = progressOf(settings)
  let tunnel: PeerDuplex
  try {
    tunnel = await reach(bridge, settings, identity)
  } catch (error) {
    say("connect", error instanceof Error ? error.message : String(error))
    return bridge.connectExitCode(error)
  }
  progress(`connected to ${tunnel.remotePublicKey} through ${relayName(tunnel.relay)}`)
  const stdin = process.stdin
  const stdout = process.stdout
  return new Promise<number>((resolve) => {
    let done = false
    const finish = (code: number, message?: string) => {
      if (done) return
      done = true
      process.off("SIGINT", onInterrupt)
      process.off("SIGTERM", onInterrupt)
      if (message !== undefined) say("connect", message)
      if (code !== ExitCode.Ok) tunnel.destroy()
      // Stop reading stdin so the process can exit even if stdin stays open.
      stdin.unpipe(tunnel)
      stdin.pause()
      stdin.destroy()
      // Everything received has been handed to stdout; wait until it is written.
      stdout.write("", () => resolve(code))
    }
    const onInterrupt = () => finish(ExitCode.Interrupted, "interrupted")
    process.once("SIGINT", onInterrupt)
    process.once("SIGTERM", onInterrupt)
    tunnel.on("error", (error) => finish(bridge.tunnelExitCode(error), `the tunnel failed: ${error.message}`))
    stdout.on("error", (error) => finish(ExitCode.Failed, `cannot write to stdout: ${error.message}`))
    stdin.on("error", (error) => finish(ExitCode.Failed, `cannot read stdin: ${error.message}`))
    tunnel.pipe(stdout, { end: false })
    stdin.pipe(tunnel) // the end of stdin ends our half of the tunnel
    // Done once the peer finished (its end was read) and ours was sent.
    let peerFinished = false
    let weFinished = false
    const check = () => {
      if (peerFinished && weFinished) finish(ExitCode.Ok)
    }
    tunnel.on("end", () => {
      peerFinished = true
      check()
    })
    tunnel.on("finish", () => {
      weFinished = true
      check()
    })
  })
}

// ssh -L mode: each local connection gets its own tunnel.
const forwardPort = async (bridge: Bridge, settings: Settings, identity: Identity, localPort: number): Promise<number> => {
  const progress = progressOf(settings)
  // Everything open, so a signal can close it all and let the process exit.
  const open = new Set<{ destroy: () => void }>()
  const track = (stream: { destroy: () => void; once: (event: "close", listener: () => void) => unknown }) => {
    open.add(stream)
    stream.once("close", () => open.delete(stream))
  }
  // Aborted on shutdown: connects still in progress give up instead of
  // keeping the process alive until their deadline.
  const shutdown = new AbortController()
  const compactor = makeIdleCompactor()
  const server = Net.createServer({ allowHalfOpen: true, noDelay: true }, (local) => {
    track(local)
    compactor.busy()
    local.once("close", compactor.idle)
    const from = `${local.remoteAddress ?? "?"}:${local.remotePort ?? "?"}`
    // Until pipeBothWays takes over, a local reset must not be an unhandled
    // 'error' event: that would end the process and every other tunnel.
    const onEarlyError = (error: Error) => say("connect", `${from}: ${error.message}`)
    local.on("error", onEarlyError)
    // Hold what the local client sends until the tunnel is there.
    local.pause()
    reach(bridge, settings, identity, shutdown.signal).then(
      (tunnel) => {
        track(tunnel)
        local.off("error", onEarlyError)
        if (local.destroyed) return void tunnel.destroy()
        progress(`${from}: connected to ${tunnel.remotePublicKey} through ${relayName(tunnel.relay)}`)
        bridge.pipeBothWays(tunnel, local).then(
          (counts) => progress(`${from}: closed (${counts.fromPeer} bytes from the peer, ${counts.toPeer} to it)`),
          (error: Error) => say("connect", `${from}: ${error.message}`)
        )
        local.resume()
      },
      (error: unknown) => {
        if (!shutdown.signal.aborted) say("connect", `${from}: ${error instanceof Error ? error.message : String(error)}`)
        local.destroy()
      }
    )
  })
  const bound = await new Promise<Net.AddressInfo | Error>((resolve) => {
    server.once("error", (error) => resolve(error))
    server.listen(localPort, settings.localHost, () => resolve(server.address() as Net.AddressInfo))
  })
  if (bound instanceof Error) {
    compactor.stop()
    say(
      "connect",
      describeListenFailure(
        errorCode(bound),
        settings.localHost,
        localPort,
        { port: "--local-port", host: "--local-host" },
        bound.message
      )
    )
    return ExitCode.LocalAddress
  }
  const address = bound.family === "IPv6" ? `[${bound.address}]:${bound.port}` : `${bound.address}:${bound.port}`
  process.stdout.write(`${address}\n`)
  progress(`listening on ${address}; each connection goes to the peer through its own tunnel`)
  const signal = await untilStopSignal()
  progress(`${signal}: closing`)
  compactor.stop()
  shutdown.abort()
  await new Promise<void>((resolve) => {
    server.close(() => resolve())
    for (const stream of open) stream.destroy()
  })
  return ExitCode.Ok
}
