/**
 * Gives memory back to the system while a long-running client command
 * (`listen`, `connect --local-port`) is idle.
 *
 * Loading the modules and the handshakes leave garbage behind, and V8
 * keeps the pages it freed, both in the old generation and in the young one
 * (which grows to 32 MiB on 64-bit Node unless young-generation.ts stops
 * it). A plain collection frees the objects but keeps the pages; only a
 * memory-reducing collection (V8's "last resort" kind, which it runs itself
 * under memory pressure) returns them: about 5 MB of an idle `listen` with
 * the young generation kept small, about 25 MB without.
 *
 * So the command calls `busy()` when a tunnel opens and `idle()` when it
 * closes; once nothing has been open for IDLE_COMPACT_DELAY_MS, one such
 * collection runs (a few tens of milliseconds of one core, while idle), and
 * not again until a tunnel has come and gone.
 */
import * as NodeVm from "node:vm"
import * as NodeV8 from "node:v8"

/** How long a command must have been idle before it compacts its heap. */
export const IDLE_COMPACT_DELAY_MS = 2000

/** Counts open tunnels; compacts the heap once the count has stayed at zero for a while. */
export interface IdleCompactor {
  /** A tunnel opened. */
  readonly busy: () => void
  /** A tunnel closed (one call per `busy`). */
  readonly idle: () => void
  /** The command is stopping: no more collections. */
  readonly stop: () => void
}

/**
 * Starts idle (a command that just started has its startup garbage to give
 * back). `collect` defaults to `memoryReducingGc()`; with none (a runtime
 * without it) the compactor does nothing.
 */
export const makeIdleCompactor = (
  options: { readonly delayMs?: number; readonly collect?: (() => void) | undefined } = {}
): IdleCompactor => {
  const delayMs = options.delayMs ?? IDLE_COMPACT_DELAY_MS
  const collect = "collect" in options ? options.collect : memoryReducingGc()
  let open = 0
  // Whether anything ran since the last collection: an idle process needs only one.
  let grown = true
  let timer: NodeJS.Timeout | undefined
  let stopped = false
  const schedule = () => {
    if (collect === undefined || stopped || !grown || open > 0 || timer !== undefined) return
    timer = setTimeout(() => {
      timer = undefined
      if (open > 0 || stopped) return
      grown = false
      collect()
    }, delayMs)
    // Never what keeps the process alive.
    timer.unref()
  }
  const cancel = () => {
    if (timer === undefined) return
    clearTimeout(timer)
    timer = undefined
  }
  schedule()
  return {
    busy: () => {
      open++
      grown = true
      cancel()
    },
    idle: () => {
      open = Math.max(0, open - 1)
      schedule()
    },
    stop: () => {
      stopped = true
      cancel()
    }
  }
}

/**
 * V8's gc() with the last-resort flavour, or undefined on a runtime without
 * it (Bun has no node:v8 flags; Deno has no gc extension). --expose-gc
 * applies to contexts created after it is set, so a fresh vm context offers
 * gc() while the program's own global stays as it was.
 */
export const memoryReducingGc = (): (() => void) | undefined => {
  let gc: unknown
  try {
    NodeV8.setFlagsFromString("--expose-gc")
    gc = NodeVm.runInNewContext("typeof gc === 'function' ? gc : undefined")
  } catch {
    // No V8 flags or no vm contexts on this runtime: nothing to collect with; the command works the same.
    return undefined
  }
  if (typeof gc !== "function") return undefined
  return () => void gc({ type: "major", execution: "sync", flavor: "last-resort" })
}
