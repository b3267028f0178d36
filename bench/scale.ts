/**
 * Scale: the relay's resident memory and V8 heap with many idle tunnels
 * (each with its own listener, so three relay connections per tunnel), per
 * tunnel; the handshakes per second it sustains; and whether every file
 * descriptor is given back once all clients are gone.
 *
 * Clients run in load-worker processes (at most WORKER_TUNNELS tunnels
 * each), apart from the relay. A level that needs more file descriptors
 * than the relay process may open is reported as not run, and the largest
 * level that fits is measured instead.
 */
import type { CryptoBenchRow } from "./crypto.ts"
import { startLoadWorker, toWireEndpoint, type LoadWorker } from "./load-worker.ts"
import { proxyIdleMemory } from "./baseline.ts"
import { ONE_HOST_AS_MANY_ARGS, type ProcessMemory, type RelayProcess } from "./relay-process.ts"
import { row, type BenchRow } from "./report.ts"

/** Tunnels one worker process holds (3 sockets each, well inside a 20k fd limit). */
const WORKER_TUNNELS = 2000

/**
 * Flags the scale relay runs with: every connection comes from 127.0.0.1, so
 * the per-IP caps must not apply; and the workers open tunnels 32 at a time
 * each, several handshakes per tunnel, so on a busy machine more than the
 * default 256 handshakes (1024 unidentified connections) can be in flight:
 * the relay would evict some, which is right for a flood and wrong here.
 */
export const SCALE_RELAY_ARGS = [
  "--max-connections",
  "1000000",
  "--max-handshakes",
  "100000",
  "--max-unidentified",
  "100000",
  ...ONE_HOST_AS_MANY_ARGS
]

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

/** Polls the relay until `condition` holds on its metrics, up to `timeoutMs`. */
const waitForRelay = async (relay: RelayProcess, what: string, condition: (s: Awaited<ReturnType<RelayProcess["scrape"]>>) => boolean, timeoutMs: number) => {
  const deadline = Date.now() + timeoutMs
  while (true) {
    const s = await relay.scrape()
    if (condition(s)) return s
    if (Date.now() > deadline) throw new Error(`relay never reached ${what}: ${s.connections} connections, ${s.tunnels} tunnels, ${s.listeners} listeners`)
    await sleep(200)
  }
}

/** Runs the scenario against a relay started with SCALE_RELAY_ARGS. */
export const benchScale = async (
  relay: RelayProcess,
  quick: boolean,
  ceiling: ReadonlyArray<CryptoBenchRow>,
  log: (line: string) => void
): Promise<Array<BenchRow>> => {
  const rows: Array<BenchRow> = []
  const wanted = quick ? [100, 300] : [1000, 5000, 10_000]
  const fdLimit = relay.fdLimit()
  const idleFds = relay.openFds()
  // 3 relay sockets per tunnel, and room for the relay's own files.
  const fits = (n: number) => fdLimit === undefined || idleFds === undefined || 3 * n + idleFds + 64 <= fdLimit
  const levels = wanted.filter(fits)
  const skipped = wanted.filter((n) => !fits(n))
  if (skipped.length > 0 && fdLimit !== undefined && idleFds !== undefined) {
    const largest = Math.floor((fdLimit - idleFds - 64) / 3 / 500) * 500
    if (largest > (levels[levels.length - 1] ?? 0)) levels.push(largest)
  }
  // The baseline: the minimal proxy holding as many idle sockets (3 per tunnel+listener).
  const proxied = await proxyIdleMemory(levels, 3)
  const base: ProcessMemory = await relay.memory(true)
  const workers: Array<LoadWorker> = []
  const held: Array<number> = [] // tunnels per worker
  const endpoint = toWireEndpoint(relay.endpoint)
  let peakFds = idleFds ?? 0
  try {
    let total = 0
    for (const level of levels) {
      // Fill workers up to WORKER_TUNNELS each, in parallel.
      const orders: Array<Promise<unknown>> = []
      let toOpen = level - total
      const start = performance.now()
      for (let w = 0; toOpen > 0; w++) {
        if (workers[w] === undefined) {
          workers.push(await startLoadWorker())
          held.push(0)
        }
        const n = Math.min(toOpen, WORKER_TUNNELS - held[w]!)
        if (n <= 0) continue
        held[w]! += n
        toOpen -= n
        orders.push(
          workers[w]!.request({ type: "open-idle", relay: endpoint, count: n, concurrency: 32 }).then((reply) => {
            if ((reply.failed ?? 0) > 0) throw new Error(`${reply.failed} of ${n} tunnels failed to open: ${reply.firstFailure}`)
          })
        )
      }
      await Promise.all(orders)
      const openMs = performance.now() - start
      total = level
      await waitForRelay(relay, `${level} tunnels`, (s) => s.tunnels === level && s.listeners === level, 30_000)
      const memory = await relay.memory(true)
      peakFds = Math.max(peakFds, relay.openFds() ?? 0)
      log(`scale: ${level} idle tunnels open (${(openMs / 1000).toFixed(1)} s)`)
      const proxy = proxied.get(level)!
      rows.push(
        row("scale", `relay RSS per idle tunnel+listener @${level}`, (memory.rss - base.rss) / level, "bytes", [
          { to: "proxy, per 3 idle sockets", baseline: proxy.rssPerUnit }
        ], `RSS ${(memory.rss / 1e6).toFixed(0)} MB (${(base.rss / 1e6).toFixed(0)} MB idle) with ${level} tunnels, ${level} listeners: ${3 * level} connections`),
        row("scale", `relay heap per idle tunnel+listener @${level}`, (memory.heapUsed - base.heapUsed) / level, "bytes", [
          { to: "proxy, per 3 idle sockets", baseline: proxy.heapPerUnit }
        ], `heap ${(memory.heapUsed / 1e6).toFixed(0)} MB after GC (${(base.heapUsed / 1e6).toFixed(0)} MB idle)`)
      )
    }
    if (skipped.length > 0) {
      rows.push(
        row("scale", `idle tunnels not run: ${skipped.join(", ")}`, Number.NaN, "", [], `the relay may open ${fdLimit} files (ulimit -n) and needs 3 per tunnel+listener; raise the limit to run them`)
      )
    }

    // Everything closes; every descriptor must come back.
    await Promise.all(workers.map((w) => w.request({ type: "close-all" })))
    await waitForRelay(relay, "no connections", (s) => s.connections === 0, 60_000)
    const after = await relay.memory(true)
    // The last metrics scrape is a connection of its own: give it a moment to close.
    for (let i = 0; i < 40 && idleFds !== undefined && (relay.openFds() ?? 0) > idleFds; i++) await sleep(50)
    const fdsAfter = relay.openFds()
    if (fdsAfter !== undefined && idleFds !== undefined) {
      rows.push(
        row("scale", "relay fds still open after all closed", fdsAfter - idleFds, "fds", [
          { to: "peak fds", baseline: peakFds }
        ], `${peakFds - fdsAfter} freed; 0 still open is right`)
      )
    }
    rows.push(
      row("scale", "relay heap after all closed", after.heapUsed, "bytes", [{ to: "heap before", baseline: base.heapUsed }])
    )

    // Handshakes per second: every worker loops connect + handshake + close.
    const durationMs = quick ? 2000 : 8000
    const before = await relay.scrape()
    const cpuBefore = relay.cpuMs()
    while (workers.length < 2) workers.push(await startLoadWorker())
    const loopers = workers.slice(0, 2)
    const replies = await Promise.all(
      loopers.map((w) => w.request({ type: "handshakes", relay: endpoint, durationMs, concurrency: 32 }))
    )
    const afterHs = await relay.scrape()
    const cpuAfter = relay.cpuMs()
    const done = replies.reduce((n, r) => n + (r.done ?? 0), 0)
    const failed = replies.reduce((n, r) => n + (r.failed ?? 0), 0)
    const ms = Math.max(...replies.map((r) => r.ms ?? durationMs))
    const accepted = (afterHs.samples.get("offset_relay_connections_accepted_total") ?? 0) -
      (before.samples.get("offset_relay_connections_accepted_total") ?? 0)
    const nodeHandshake = ceiling.find((c) => c.layer === "node")?.handshakeCryptoPerSec ?? Number.NaN
    const relayCpuShare = cpuBefore === undefined || cpuAfter === undefined ? undefined : (cpuAfter - cpuBefore) / ms
    rows.push(
      row("scale", "relay handshakes per second", (done * 1000) / ms, "/s", [{ to: "node handshake crypto, one core", baseline: nodeHandshake }], [
        `${accepted} accepted, ${failed} failed; 64 clients in 2 processes`,
        relayCpuShare === undefined ? undefined : `relay used ${(relayCpuShare * 100).toFixed(0)}% of a core`
      ].filter((s) => s !== undefined).join("; "))
    )
    return rows
  } finally {
    await Promise.all(workers.map((w) => w.stop("SIGTERM")))
  }
}
