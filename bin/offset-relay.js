#!/usr/bin/env node
// Entry point of the `offset-relay` command. The sources are TypeScript run
// directly by Node's type stripping (Node >= 22.18 / 24).
import "../src/adapters/cli/main.ts"
