// The `offset-relay` command as the npm package runs it: one ESM bundle of
// src/adapters/cli/main.ts and everything it imports (Effect, ws, noble),
// tree-shaken, with a chunk per lazily loaded command, in dist/cli/.
//
// Why a bundle and not the per-file dist/: Node keeps every ES module's
// source text and module record for the life of the process, and the
// per-file build loads hundreds of modules of which the CLI uses a part. An
// idle `listen` holds about 8 MiB less as a bundle (bench/README.md, the
// cli rows). The library exports stay per-file (dist/**), for bundlers and
// type declarations.
//
// Used by scripts/build.ts and by the bench (which measures the command as
// users get it).
import { join } from "node:path"
import * as esbuild from "esbuild"

/** Bundles the CLI from the checkout at `root` into `outdir`; resolves to the entry file. */
export const bundleCli = async (root: string, outdir: string): Promise<string> => {
  await esbuild.build({
    entryPoints: [{ in: join(root, "src/adapters/cli/main.ts"), out: "offset-relay" }],
    bundle: true,
    splitting: true,
    format: "esm",
    platform: "node",
    target: "node22",
    outdir,
    // Bundled CommonJS (ws) calls require() for Node's own modules.
    banner: { js: "import { createRequire as __createRequire } from 'node:module'; const require = __createRequire(import.meta.url);" },
    sourcemap: true,
    sourcesContent: false,
    logLevel: "warning"
  })
  return join(outdir, "offset-relay.js")
}
