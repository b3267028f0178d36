#!/usr/bin/env node
// Entry point of the `offset-relay` command. In a git checkout it runs the
// TypeScript sources directly (Node's type stripping, Node >= 22.18 / 24;
// Deno and Bun run them too); the npm package ships no sources, only the
// compiled dist/ (`npm run build`), and runs the command's bundle there
// (scripts/bundle-cli.ts says why a bundle).
import { existsSync } from "node:fs"
import * as NodeModule from "node:module"

// Node's on-disk compile cache (os.tmpdir(), keyed by file contents): a run
// after the first skips compiling, and in a checkout skips type stripping
// too, whose stripper alone costs ~0.1 s and ~20 MB for the life of the
// process. NODE_DISABLE_COMPILE_CACHE=1 turns it off; runtimes without it
// (Deno, Bun, Node < 22.1) lack the function.
NodeModule.enableCompileCache?.()

const sources = new URL("../src/adapters/cli/main.ts", import.meta.url)
await import(existsSync(sources) ? sources.href : new URL("../dist/cli/offset-relay.js", import.meta.url).href)
