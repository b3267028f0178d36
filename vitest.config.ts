import { defineConfig } from "vitest/config"

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // Real-socket tests bind 127.0.0.1:0; two workers match the 2-core machine.
    maxWorkers: 2
  }
})
