/**
 * The resource-safety issue's attacks against a relay process with default
 * flags, each on a fresh relay, with a legitimate client beside it:
 *
 *   node bench/attacks.ts [--only name,name] [--tunnels N]
 *
 * For each attack it prints the relay's peak RSS (VmHWM), the relay's CPU
 * time during the attack, and the legitimate client's success rate: one
 * tunnel at a time from 127.0.0.1 to a listener there, each echoing 1 KiB
 * within 5 s. Attackers use 127.0.0.2 and up. `self-tunnels` instead counts
 * the tunnels one listener host opens to itself before the first refusal
 * (up to --tunnels, default 5000, as the fd limit allows).
 *
 * OFFSET_RELAY_BENCH_RELAY_ROOT=<checkout> runs another checkout's relay
 * (e.g. an older commit, for before/after figures); the attackers and the
 * legitimate client are this checkout's.
 */
import * as Fs from "node:fs"
import * as Path from "node:path"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Scope from "effect/Scope"
import { nodeCryptoService } from "../src/adapters/crypto.ts"
import { openRelayConnection } from "../src/adapters/relay-connection.ts"
import { bytesToHex } from "../src/core/keys.ts"
import { encodeChannelMessage, encodeKaMessage } from "../src/core/messages.ts"
import { inflate } from "../test/support/capnp-bombs.ts"
import { RawClient } from "../test/support/relay-harness.ts"
import { newIdentity, type PeerOptions } from "./peers.ts"
import { repoRoot, startChild, startRelayProcess, type RelayProcess } from "./relay-process.ts"

const MiB = 1024 * 1024
const TICK_MS = 1000
const ATTACK_MS = 8000
const options: PeerOptions = { crypto: nodeCryptoService, tickMs: TICK_MS }
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

interface Outcome {
  readonly attack: string
  readonly peakRssMb: number
  readonly cpuMs: number
  readonly legit: string
  readonly note: string
}

const peakRss = (relay: RelayProcess): number => {
  const status = Fs.readFileSync(`/proc/${relay.pid}/status`, "utf8")
  const line = status.split("\n").find((l) => l.startsWith("VmHWM:"))
  return line === undefined ? NaN : Number(line.replace(/\D+/g, "")) / 1024
}

// A raw client from `address` that finished its handshake (ok), or was refused or closed (not ok).
const authenticated = async (relay: RelayProcess, address: string, identity = newIdentity(options.crypto)) => {
  const c = await connectFrom(relay, address)
  const result = await c.handshake(relay.endpoint.publicKey, identity).catch(() => "closed" as const)
  if (result === "authenticated") c.keepAlive(TICK_MS)
  return { client: c, ok: result === "authenticated", identity }
}

// Connects from `address`, retrying while the kernel's accept queue refuses (floods).
const connectFrom = async (relay: RelayProcess, address: string): Promise<RawClient> => {
  for (let attempt = 0; ; attempt++) {
    try {
      return await RawClient.connect(relay.port, address)
    } catch (error) {
      if (attempt >= 50) throw error
      await sleep(20)
    }
  }
}

/**
 * Legitimate traffic during `body`, from its own process (bench/legit-client.ts):
 * a listener on 127.0.0.1 and, one after another, tunnels that echo 1 KiB within 5 s.
 */
const withLegitimateClient = async (relay: RelayProcess, body: () => Promise<string>): Promise<{ legit: string; note: string }> => {
  const child = await startChild(Path.join(repoRoot, "bench", "legit-client.ts"), [bytesToHex(relay.endpoint.publicKey), String(relay.port)])
  let out = ""
  child.process.stdout!.on("data", (text: Buffer) => (out += text.toString()))
  const note = await body()
  child.process.kill("SIGTERM")
  await child.exited
  const [ok, tried] = out.trim().split(/\s+/).slice(-2)
  return { legit: `${ok}/${tried}`, note }
}

type Attack = (relay: RelayProcess) => Promise<string>

const attacks: Record<string, Attack> = {
  // One authenticated connect channel (waiting on the attacker's own listener) sends inflated ChannelMessages.
  inflate: async (relay) => {
    const target = await authenticated(relay, "127.0.0.2")
    target.client.sendInit({ _tag: "Listen" })
    // A message the relay delivers to the held connect channel's inbox, its
    // payload a view into the whole unpacked buffer.
    const bomb = inflate(
      encodeChannelMessage({
        randPadding: new Uint8Array(0),
        content: { _tag: "User", data: encodeKaMessage({ _tag: "Message", data: new Uint8Array(8) }) }
      }),
      // Just under the decoder's absolute bound of 8 MiB, as the issue's attacker did.
      MiB - 64
    )
    let sent = 0
    let connections = 0
    const started = Date.now()
    while (Date.now() - started < ATTACK_MS && sent < 500 * bomb.length) {
      const { client } = await authenticated(relay, "127.0.0.2")
      connections++
      client.sendInit({ _tag: "Connect", publicKey: target.identity.publicKey })
      while (!client.closed && Date.now() - started < ATTACK_MS && sent < 500 * bomb.length) {
        client.sendSealedPlaintext(bomb)
        sent += bomb.length
        await sleep(3)
      }
      client.destroy()
    }
    target.client.destroy()
    return `${(sent / MiB).toFixed(1)} MiB of ${bomb.length}-byte bombs sent over ${connections} connection(s)`
  },

  // Both ends of many tunnels from `addresses` send 1 MiB messages and never read.
  "stuck-125": (relay) => stuckTunnels(relay, ["127.0.0.2"], 125),
  "stuck-4x112": (relay) => stuckTunnels(relay, ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"], 112),

  // Nine addresses × 32 connections trickling handshake bytes at 1 byte/s, re-opened when closed.
  trickle: async (relay) => {
    const version = new Uint8Array([0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0])
    const live = new Set<RawClient>()
    let opened = 0
    let refusedOrClosed = 0
    const started = Date.now()
    const open = async (address: string) => {
      const c = await connectFrom(relay, address).catch(() => undefined)
      if (c === undefined) return
      opened++
      live.add(c)
      let i = 0
      const timer = setInterval(() => c.write(version.subarray(i % version.length, (i++ % version.length) + 1)), 1000)
      void c.ended.then(() => {
        clearInterval(timer)
        live.delete(c)
        refusedOrClosed++
        if (Date.now() - started < ATTACK_MS) void open(address)
      })
    }
    for (let a = 2; a <= 10; a++) for (let i = 0; i < 32; i++) void open(`127.0.0.${a}`)
    await sleep(ATTACK_MS)
    for (const c of live) c.destroy()
    return `${opened} trickling connections opened, ${refusedOrClosed} refused or closed`
  },

  // Five addresses × 256 connections that finish the handshake and say nothing, re-opened when closed.
  silent: async (relay) => {
    const live = new Set<RawClient>()
    let ok = 0
    const started = Date.now()
    const open = async (address: string): Promise<void> => {
      if (Date.now() - started > ATTACK_MS) return
      const { client, ok: authed } = await authenticated(relay, address).catch(() => ({ client: undefined, ok: false }))
      if (client === undefined) return
      if (authed) ok++
      live.add(client)
      void client.ended.then(() => {
        live.delete(client)
        void sleep(50).then(() => open(address))
      })
    }
    const all: Array<Promise<void>> = []
    for (let a = 2; a <= 6; a++) for (let i = 0; i < 256; i++) all.push(open(`127.0.0.${a}`))
    await Promise.all(all)
    await sleep(Math.max(0, ATTACK_MS - (Date.now() - started)))
    for (const c of live) c.destroy()
    return `${ok} silent authenticated connections made`
  },

  // Handshakes with garbage signatures from 8 addresses, as fast as they go.
  "garbage-signatures": async (relay) => {
    let attempts = 0
    const started = Date.now()
    const loop = async (address: string) => {
      while (Date.now() - started < ATTACK_MS) {
        const c = await connectFrom(relay, address).catch(() => undefined)
        if (c === undefined) continue
        attempts++
        await c.handshake(relay.endpoint.publicKey, newIdentity(options.crypto), { signingSeed: new Uint8Array(32).fill(7) })
          .catch(() => "closed")
        c.destroy()
      }
    }
    await Promise.all(Array.from({ length: 8 }, (_, a) => Array.from({ length: 8 }, () => loop(`127.0.0.${a + 2}`))).flat())
    return `${attempts} forged handshakes (${Math.round(attempts / (ATTACK_MS / 1000))}/s)`
  },

  // 64 established connections rekeying as fast as the relay answers.
  rekeys: async (relay) => {
    const scope = Effect.runSync(Scope.make())
    let closedEarly = 0
    try {
      await Promise.all(Array.from({ length: 64 }, () =>
        Effect.runPromise(
          Scope.provide(
            openRelayConnection(relay.endpoint, { _tag: "Listen" }, {
              crypto: options.crypto,
              identity: newIdentity(options.crypto),
              tickMs: 1,
              channel: { machine: { rekeyIntervalTicks: 1, keepaliveTicks: 100_000 } }
            }).pipe(Effect.tap((channel) => Effect.forkDetach(Effect.tap(channel.ended, () => Effect.sync(() => closedEarly++))))),
            scope
          )
        ).catch(() => undefined)
      ))
      await sleep(ATTACK_MS)
    } finally {
      await Effect.runPromise(Scope.close(scope, Exit.void))
    }
    return `64 connections rekeying every 1 ms; ${closedEarly} closed by the relay`
  }
}

const stuckTunnels = async (relay: RelayProcess, addresses: ReadonlyArray<string>, perAddress: number): Promise<string> => {
  const clients: Array<RawClient> = []
  let made = 0
  for (const address of addresses) {
    for (let i = 0; i < perAddress; i++) {
      const listener = await authenticated(relay, address)
      const connector = await authenticated(relay, address)
      const accept = await authenticated(relay, address, listener.identity)
      clients.push(listener.client, connector.client, accept.client)
      // Refused (a relay with a per-address cap): this address is done.
      if (!listener.ok || !connector.ok || !accept.ok) break
      listener.client.sendInit({ _tag: "Listen" })
      await sleep(5)
      connector.client.sendInit({ _tag: "Connect", publicKey: listener.identity.publicKey })
      await sleep(5)
      accept.client.sendInit({ _tag: "Accept", publicKey: connector.identity.publicKey })
      made++
      connector.client.socket.pause()
      accept.client.socket.pause()
    }
  }
  const payload = new Uint8Array(MiB - 16 * 1024).fill(0x5a)
  const started = Date.now()
  let sent = 0
  // Longer than the others: the attacker seals every megabyte it sends, so
  // filling the relay takes it a while.
  while (Date.now() - started < 3 * ATTACK_MS) {
    for (let i = 1; i < clients.length; i += 3) {
      for (const c of [clients[i]!, clients[i + 1]!]) {
        if (!c.closed && c.isAuthenticated && c.socket.writableLength < 2 * MiB) {
          c.sendMessage(payload)
          sent += payload.length
        }
      }
    }
    await sleep(20)
  }
  const closed = clients.filter((c) => c.closed).length
  for (const c of clients) c.destroy()
  return `${made} tunnels, ${(sent / MiB).toFixed(0)} MiB written into them, ${closed}/${clients.length} connections closed by the relay`
}

const selfTunnels = async (relay: RelayProcess, max: number): Promise<Outcome> => {
  const cpuBefore = relay.cpuMs() ?? 0
  const listener = await authenticated(relay, "127.0.0.2")
  listener.client.sendInit({ _tag: "Listen" })
  const clients: Array<RawClient> = [listener.client]
  let tunnels = 0
  let failure = ""
  while (tunnels < max) {
    const connector = await authenticated(relay, "127.0.0.2")
    if (!connector.ok) {
      failure = "connect refused"
      break
    }
    connector.client.sendInit({ _tag: "Connect", publicKey: listener.identity.publicKey })
    const accept = await authenticated(relay, "127.0.0.2", listener.identity)
    clients.push(connector.client, accept.client)
    if (!accept.ok) {
      failure = "accept refused"
      break
    }
    await sleep(1)
    accept.client.sendInit({ _tag: "Accept", publicKey: connector.identity.publicKey })
    await sleep(1)
    if (connector.client.closed || accept.client.closed) {
      failure = "tunnel closed by the relay"
      break
    }
    tunnels++
  }
  await sleep(2000)
  const alive = (await relay.scrape()).tunnels
  const over = (await relay.scrape())
  const outcome: Outcome = {
    attack: "self-tunnels",
    peakRssMb: peakRss(relay),
    cpuMs: (relay.cpuMs() ?? 0) - cpuBefore,
    legit: "-",
    note: `${alive} tunnels held by one listener host (${tunnels} opened${failure === "" ? "" : `, then ${failure}`}; over-limit closes ${over.closes("over-limit")})`
  }
  for (const c of clients) c.destroy()
  return outcome
}

const main = async () => {
  const args = process.argv.slice(2)
  const only = args.includes("--only") ? args[args.indexOf("--only") + 1]!.split(",") : [...Object.keys(attacks), "self-tunnels"]
  const maxTunnels = args.includes("--tunnels") ? Number(args[args.indexOf("--tunnels") + 1]) : 5000
  const outcomes: Array<Outcome> = []
  for (const name of only) {
    const relay = await startRelayProcess({ tickMs: TICK_MS })
    try {
      await sleep(500)
      if (name === "self-tunnels") {
        outcomes.push(await selfTunnels(relay, maxTunnels))
      } else {
        const attack = attacks[name]
        if (attack === undefined) throw new Error(`no attack named ${name}`)
        const cpuBefore = relay.cpuMs() ?? 0
        const { legit, note } = await withLegitimateClient(relay, () => attack(relay))
        outcomes.push({ attack: name, peakRssMb: peakRss(relay), cpuMs: (relay.cpuMs() ?? 0) - cpuBefore, legit, note })
      }
    } catch (error) {
      outcomes.push({ attack: name, peakRssMb: NaN, cpuMs: NaN, legit: "-", note: `failed: ${String(error)}; relay: ${relay.stderrTail().slice(-300)}` })
    } finally {
      await relay.stop("SIGKILL").catch(() => undefined)
      relay.removeDataDir()
    }
    const o = outcomes.at(-1)!
    console.log(`${o.attack.padEnd(20)} peak RSS ${o.peakRssMb.toFixed(0).padStart(6)} MB  relay CPU ${String(Math.round(o.cpuMs)).padStart(6)} ms  legit ${o.legit.padStart(7)}  ${o.note}`)
  }
}

await main()
process.exit(0)
