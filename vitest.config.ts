import { defineConfig } from "vitest/config"

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // Real-socket tests bind 127.0.0.1:0; two workers match the 2-core machine.
    maxWorkers: 2,
    // CI reads the counts from the JSON report (.ci/run); people read the default one.
    reporters: process.env.CI ? ["default", ["json", { outputFile: ".vitest-report.json" }]] : ["default"]
  }
})
