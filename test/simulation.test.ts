/**
 * Whole-system simulation (test/sim/): relays, listeners and connectors on
 * the in-memory network and virtual time, in scenarios fast-check draws
 * from a seed, with faults. A failure prints the seed, the shrunk scenario,
 * what went wrong and the end of the run's log, and the command that
 * replays it: SIM_SEED=<seed> SIM_PATH=<path> npx vitest run test/simulation.test.ts
 * (SIM_RUNS=<n> runs more scenarios.)
 */
import * as fc from "fast-check"
import { describe, expect, it } from "vitest"
import { defaultBounds, describeScenario, scenarioArbitrary } from "./sim/scenario.ts"
import { runScenario, type Scenario } from "./sim/system.ts"

// `npm test` draws 60 scenarios (a few seconds); CI draws 1000 (.ci/run).
const runs = Number(process.env.SIM_RUNS ?? 60)
const seed = process.env.SIM_SEED === undefined ? undefined : Number(process.env.SIM_SEED)
const path = process.env.SIM_PATH

/** Runs the property; on failure, throws an error that says everything needed to read and replay it. */
const checkScenarios = (arbitrary: fc.Arbitrary<Scenario>, numRuns: number): void => {
  const property = fc.property(arbitrary, fc.integer({ min: 0, max: 0x7fffffff }), (scenario, runSeed) => {
    const report = runScenario(scenario, runSeed)
    if (report.violations.length > 0) throw new ScenarioFailure(scenario, runSeed, report.violations, report.log)
  })
  const details = fc.check(property, {
    numRuns,
    ...(seed === undefined ? {} : { seed }),
    ...(path === undefined ? {} : { path }),
    endOnFailure: process.env.SIM_SHRINK === "0"
  })
  if (!details.failed) return
  const error = details.errorInstance
  const body = error instanceof ScenarioFailure
    ? [
      `scenario (run seed ${error.runSeed}):`,
      describeScenario(error.scenario),
      "violations:",
      ...error.violations.map((v) => `  ${v}`),
      "end of the run's log:",
      ...error.log.slice(-80).map((line) => `  ${line}`)
    ].join("\n")
    : String(error)
  throw new Error(
    [
      `simulation failed after ${details.numRuns} scenarios (${details.numShrinks} shrinks)`,
      `replay: SIM_SEED=${details.seed} SIM_PATH=${details.counterexamplePath} npx vitest run test/simulation.test.ts`,
      body
    ].join("\n")
  )
}

// A run that broke a property, with what a person needs to read it.
class ScenarioFailure extends Error {
  readonly scenario: Scenario
  readonly runSeed: number
  readonly violations: ReadonlyArray<string>
  readonly log: ReadonlyArray<string>
  constructor(scenario: Scenario, runSeed: number, violations: ReadonlyArray<string>, log: ReadonlyArray<string>) {
    super(violations.join("; "))
    this.scenario = scenario
    this.runSeed = runSeed
    this.violations = violations
    this.log = log
  }
}

describe("whole-system simulation", () => {
  it("a stream with no faults delivers both ways, half closes seen, nothing left behind", () => {
    const report = runScenario(
      {
        relays: 1,
        listeners: [[0]],
        latencyMs: 5,
        streams: [{ listener: 0, startMs: 1000, request: [1000, 70_000], reply: [500], thinkMs: 0, relayRotation: 0 }],
        faults: []
      },
      1
    )
    expect(report.violations).toEqual([])
    expect(report.outcomes).toEqual(["stream 0: connector done"])
  })

  it("scenarios drawn from a seed keep every property", () => {
    checkScenarios(scenarioArbitrary(defaultBounds), runs)
  }, 600_000) // passing takes seconds; shrinking a failure may take minutes on a busy machine
})
