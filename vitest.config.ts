import { defineConfig } from "vitest/config"

/**
 * Two projects. "fast" is `npm test`: unit, property and model tests, the
 * whole-system simulation on virtual time, and real-socket tests that
 * finish in seconds. "heavy" is `npm run test:heavy`: load, soak and
 * process-level fault tests, the bench, real-socket tests of throughput and
 * timing, and whatever runs child processes (the CLI, the capnp reference
 * compiler, other runtimes, a headless browser); they need real time and real processes, and a
 * busy machine slows them. CI runs both (.ci/run).
 */
const HEAVY = [
  "test/load-*.test.ts",
  "test/fault-kill.test.ts",
  "test/resource-safety.test.ts",
  "test/relay-backpressure.test.ts",
  "test/client-slow-fast.test.ts",
  "test/fuzz-relay.test.ts",
  "test/crypto-choice.test.ts",
  "test/capnp-golden.test.ts",
  "test/cli.test.ts",
  "test/cli-*.test.ts",
  "test/browser.test.ts"
]

// CI reads the counts from the JSON reports (.ci/run): one per project run,
// named by the npm script that ran it; people read the default reporter.
const report = process.env.npm_lifecycle_event === "test:heavy" ? ".vitest-report-heavy.json" : ".vitest-report.json"

export default defineConfig({
  test: {
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // Real-socket tests bind 127.0.0.1:0; two workers match the 2-core machine.
    maxWorkers: 2,
    reporters: process.env.CI ? ["default", ["json", { outputFile: report }]] : ["default"],
    projects: [
      { extends: true, test: { name: "fast", include: ["test/**/*.test.ts"], exclude: HEAVY } },
      { extends: true, test: { name: "heavy", include: HEAVY } }
    ]
  }
})
