/**
 * Loaded into a relay child process with `node --import` (see
 * relay-process.ts) so the bench and the load tests can read the relay's
 * heap without the server exporting heap gauges: it answers `memory`
 * requests on the IPC channel with `process.memoryUsage()`, after a full GC
 * when asked (the child runs with --expose-gc).
 *
 * It also stops the relay (SIGTERM, a graceful shutdown) when the parent
 * goes away, so a crashed bench never leaves relays running.
 */
import process from "node:process"

/** A request the parent sends. */
export interface ProbeRequest {
  readonly type: "memory"
  readonly id: number
  /** Run a full garbage collection first, so the heap figure is what is live. */
  readonly gc: boolean
}

/** The answer to a `memory` request (bytes). */
export interface ProbeMemory {
  readonly type: "memory"
  readonly id: number
  readonly rss: number
  readonly heapUsed: number
  readonly heapTotal: number
  readonly external: number
  readonly arrayBuffers: number
}

if (process.send !== undefined) {
  // The IPC channel must not keep the relay alive after it shut down.
  process.channel?.unref()
  process.on("message", (request: ProbeRequest) => {
    if (request.type !== "memory") return
    const gc = (globalThis as { gc?: () => void }).gc
    if (request.gc && gc !== undefined) {
      // Twice: the first pass can leave objects whose finalizers free more.
      gc()
      gc()
    }
    const m = process.memoryUsage()
    const answer: ProbeMemory = {
      type: "memory",
      id: request.id,
      rss: m.rss,
      heapUsed: m.heapUsed,
      heapTotal: m.heapTotal,
      external: m.external,
      arrayBuffers: m.arrayBuffers
    }
    process.send?.(answer)
  })
  process.on("disconnect", () => process.kill(process.pid, "SIGTERM"))
}
