/**
 * Gives memory back to the system while a long-running client command
 * (`listen`, `connect --local-port`) is idle.
 *
 * Loading the modules, the handshakes and any bulk transfer grow V8's young
 * generation to its largest size (32 MiB on 64-bit Node), and V8 keeps those
 * pages although an idle process uses well under 1 MiB of them: about a
 * quarter of an idle `listen`'s resident memory. Only a memory-reducing
 * collection (V8's "last resort" kind, which it runs itself under memory
 * pressure) shrinks it and returns the pages; a plain collection shrinks the
 * space but keeps the pages. (`--max-semi-space-size` would cap the growth,
 * but a flag cannot be set from inside the process once V8 runs, and
 * `node bin/offset-relay.js` gives none.)
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
