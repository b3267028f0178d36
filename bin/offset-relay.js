#!/usr/bin/env node
// Entry point of the `offset-relay` command. In a git checkout it runs the
// TypeScript sources directly (Node's type stripping, Node >= 22.18 / 24;
// Deno and Bun run them too); the npm package ships no sources, only the
// compiled dist/ (`npm run build`), and runs that.
import { existsSync } from "node:fs"

const sources = new URL("../src/adapters/cli/main.ts", import.meta.url)
await import(existsSync(sources) ? sources.href : new URL("../dist/adapters/cli/main.js", import.meta.url).href)
