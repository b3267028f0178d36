/**
 * `offset-relay listen`: expose a local TCP service to peers through relays.
 *
 * Keeps a listen channel open on every --relay at once; each authenticated
 * tunnel from an allowed key is piped to a new TCP connection to --forward
 * (with half close both ways). Progress (each relay's state, each peer) and
 * errors go to stderr; runs until SIGINT/SIGTERM, then closes everything and
 * exits 0. Exit codes: see client-common.ts.
 */
import * as Net from "node:net"
import * as NodeFs from "node:fs/promises"
import { parseAllowList } from "../../core/allow-list.ts"
import { defaultBackoffPolicy } from "../../core/backoff.ts"
import { hexToBytes } from "../../core/keys.ts"
import { parseHostPort } from "../../core/relay-address.ts"
import { listen, type ListenerEvent, type PeerDuplex, type RelayStatus } from "../client/index.ts"
import {
  ExitCode,
  identityOption,
  keyOf,
  loadIdentity,
  parseCommand,
  pipeBothWays,
  quietOption,
  relayName,
  relaysOf,
  say,
  tickOption,
  untilStopSignal
} from "./client-common.ts"
import { cryptoOption } from "./runtime.ts"
import { UsageError, type OptionTable } from "./options.ts"
import { absurd } from "../../core/absurd.ts"

const table: OptionTable = {
  identity: identityOption,
  relay: {
    type: "list",
    value: "ADDR",
    help: "relay <key hex>@<host>:<port> to listen on; repeat for several (all at once)"
  },
  allow: { type: "list", value: "KEY", help: "public key (hex) allowed to connect; repeat for several" },
  "allow-file": { type: "string", value: "FILE", help: "more allowed keys, one hex key per line (# comments)" },
  forward: { type: "string", value: "HOST:PORT", help: "local TCP service each tunnel is connected to; required" },
  "backoff-initial-ms": {
    type: "integer",
    default: defaultBackoffPolicy.initialMs,
    value: "MS",
    help: "first wait before reconnecting a dropped relay"
  },
  "backoff-max-ms": {
    type: "integer",
    default: defaultBackoffPolicy.maxMs,
    value: "MS",
    help: "longest wait before reconnecting a relay"
  },
  "tick-ms": tickOption,
  quiet: quietOption,
  crypto: cryptoOption
}

const usage = "offset-relay listen --identity FILE --relay ADDR [--relay ADDR ...] --allow KEY [...] --forward HOST:PORT"
const description = [
  "Exposes a local TCP service to peers: stays reachable by our public key through every",
  "relay at once, and connects each authenticated tunnel from an allowed key to --forward.",
  "Relays that drop are reconnected with exponential backoff, each on its own."
].join("\n")

/** Entry point of `offset-relay listen`. */
export const run = async (args: ReadonlyArray<string>): Promise<number> => {
  const settings = parseCommand("listen", args, { usage, description, table }, (o, common) => {
    const relays = relaysOf(o.relay as ReadonlyArray<string>)
    const forwardText = o.forward as string | undefined
    if (forwardText === undefined) throw new UsageError("--forward HOST:PORT is required: the local service to expose")
    const forward = parseHostPort(forwardText)
    if (forward._tag === "Err") throw new UsageError(`--forward: ${forward.error.message}`)
    const allow = (o.allow as ReadonlyArray<string>).map((key) => keyOf("allow", key))
    const allowFile = o["allow-file"] as string | undefined
    if (allow.length === 0 && allowFile === undefined) {
      throw new UsageError("give at least one --allow KEY (or --allow-file FILE): nobody else may connect")
    }
    const initialMs = o["backoff-initial-ms"] as number
    const maxMs = o["backoff-max-ms"] as number
    if (maxMs < initialMs) throw new UsageError("--backoff-max-ms must be at least --backoff-initial-ms")
    return { ...common, relays, forward: forward.value, allow, allowFile, initialMs, maxMs }
  })
  if (typeof settings === "number") return settings

  const identity = await loadIdentity("listen", settings.identityPath, settings.crypto)
  if (identity === undefined) return ExitCode.Identity
  const allow = [...settings.allow]
  if (settings.allowFile !== undefined) {
    let text: string
    try {
      text = await NodeFs.readFile(settings.allowFile, "utf8")
    } catch (error) {
      say("listen", `cannot read --allow-file ${settings.allowFile}: ${error instanceof Error ? error.message : String(error)}`)
      return ExitCode.Usage
    }
    const keys = parseAllowList(text)
    if ("_tag" in keys) {
      say("listen", `--allow-file ${settings.allowFile}, ${keys.message}`)
      return ExitCode.Usage
    }
    // Keys from parseAllowList are 64 lower-case hex digits.
    for (const key of keys) allow.push(hexToBytes(key)!)
  }

  const progress = (line: string) => {
    if (!settings.quiet) say("listen", line)
  }
  const { host, port } = settings.forward
  const listener = listen({
    identity,
    crypto: settings.crypto,
    relays: settings.relays,
    allow,
    tickMs: settings.tickMs,
    backoff: { initialMs: settings.initialMs, maxMs: settings.maxMs }
  })
  progress(
    `listening as ${listener.publicKey} through ${settings.relays.length} relay(s), forwarding to ${host}:${port}`
  )
  listener.on("status", (status: RelayStatus) => progress(describeStatus(status)))
  listener.on("event", (event: ListenerEvent) => {
    switch (event._tag) {
      case "Denied":
        return progress(`peer ${event.peer}: denied (not on the allow list), through ${relayName(event.relay)}`)
      case "AcceptFailed":
        return say("listen", `peer ${event.peer}: could not accept through ${relayName(event.relay)}: ${event.message}`)
      case "Busy":
        return say("listen", `peer ${event.peer}: refused, too many accepts already under way through ${relayName(event.relay)}`)
      case "Incoming":
      case "Accepted":
      case "StatusChanged":
        return
      default:
        return absurd(event)
    }
  })
  listener.on("connection", (tunnel: PeerDuplex) => {
    const peer = tunnel.remotePublicKey
    progress(`peer ${peer}: connected through ${relayName(tunnel.relay)}; forwarding to ${host}:${port}`)
    const local = Net.connect({ host, port, allowHalfOpen: true })
    pipeBothWays(tunnel, local).then(
      (counts) => progress(`peer ${peer}: closed (${counts.toPeer} bytes to the peer, ${counts.fromPeer} from it)`),
      (error: Error) => say("listen", `peer ${peer}: ${error.message}`)
    )
  })

  const signal = await untilStopSignal()
  progress(`${signal}: closing every relay and tunnel`)
  await listener.close()
  return ExitCode.Ok
}

/** One line about a relay's state. */
const describeStatus = (status: RelayStatus): string => {
  const relay = `relay ${relayName(status.relay)}`
  switch (status.state) {
    case "connecting":
      return `${relay}: connecting`
    case "listening":
      return `${relay}: listening`
    case "backing-off":
      if (status.displaced === true) {
        return `${relay}: standing back, retry in ${((status.retryInMs ?? 0) / 1000).toFixed(1)} s: ${status.lastError ?? "displaced"}`
      }
      return `${relay}: backing off, retry in ${((status.retryInMs ?? 0) / 1000).toFixed(1)} s (failure ${status.failures}): ${status.lastError ?? "unknown error"}`
    default:
      return absurd(status.state)
  }
}
