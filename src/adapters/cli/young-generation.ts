/**
 * Keeps V8's young generation at its initial size (two 1 MiB semi-spaces) in
 * the bridge commands (`listen`, `connect`), which move bulk bytes.
 *
 * Why: each tunnel message allocates a few 64 KiB buffers (pack, seal,
 * open, unpack) whose bytes live outside the JavaScript heap until their
 * small JavaScript wrappers are collected. Under that load V8 grows the young
 * generation to 32 MiB, so the wrappers wait many megabytes for a scavenge;
 * their buffers pile up as external memory, and that triggers full
 * mark-compact collections instead, each one marking the whole heap (about
 * 20 MB of loaded modules): some 35 per 128 MiB carried, half of a bridge's
 * CPU time. With the young generation kept small, frequent cheap scavenges
 * free the buffers and full collections all but stop: a bridge's CPU per
 * byte halves, and an idle one holds some 20 MB less (bench/README.md, cli
 * and throughput rows).
 *
 * Set from inside the process, before the client library loads: the usual
 * `--max-semi-space-size` is read only when V8 starts (and `node
 * bin/offset-relay.js` passes no flags), while the growth factor is read each
 * time V8 would grow the space.
 */
import * as NodeV8 from "node:v8"

/** Stops the young generation from growing past its initial size; does nothing on a runtime without V8 flags. */
export const keepYoungGenerationSmall = (): void => {
  try {
    NodeV8.setFlagsFromString("--semi-space-growth-factor=1")
  } catch {
    // A runtime without V8's flags (Bun): nothing to tune; the command works the same, with more GC time.
  }
}
