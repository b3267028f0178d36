/**
 * Bench results: rows of one measured figure each, compared with baselines
 * measured in the same run, printed as a table and written as JSON and an
 * SVG chart of the ratios under bench/results/.
 */
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"

/** A figure beside one baseline measured in the same run. */
export interface Comparison {
  /** What the baseline is, e.g. "proxy" or "crypto ceiling". */
  readonly to: string
  readonly baseline: number
  /** value / baseline. */
  readonly ratio: number
}

/** One measured figure. */
export interface BenchRow {
  readonly scenario: string
  readonly measure: string
  readonly value: number
  readonly unit: string
  readonly comparisons: ReadonlyArray<Comparison>
  /** Why a figure is missing or what it depends on, printed after the row. */
  readonly note?: string
}

/** Builds a row, computing each comparison's ratio. */
export const row = (
  scenario: string,
  measure: string,
  value: number,
  unit: string,
  baselines: ReadonlyArray<{ readonly to: string; readonly baseline: number }> = [],
  note?: string
): BenchRow => ({
  scenario,
  measure,
  value,
  unit,
  comparisons: baselines.map((b) => ({ ...b, ratio: value / b.baseline })),
  ...(note === undefined ? {} : { note })
})

/** Where and how the run happened, so numbers from two machines are not compared blindly. */
export interface RunInfo {
  readonly startedAt: string
  readonly quick: boolean
  readonly node: string
  readonly cpus: string
  readonly cores: number
  /** 1-minute load average when the run started (other work on the machine skews every figure). */
  readonly loadAverage: number
  readonly durationS: number
}

/** Describes this machine and run. */
export const runInfo = (quick: boolean, startedAt: Date): RunInfo => ({
  startedAt: startedAt.toISOString(),
  quick,
  node: process.version,
  cpus: Os.cpus()[0]?.model ?? "unknown",
  cores: Os.cpus().length,
  loadAverage: Os.loadavg()[0] ?? 0,
  durationS: (Date.now() - startedAt.getTime()) / 1000
})

const formatNumber = (value: number): string => {
  if (Number.isNaN(value)) return "–"
  if (!Number.isFinite(value)) return String(value)
  const abs = Math.abs(value)
  if (abs >= 1000) return Math.round(value).toLocaleString("en-US")
  if (abs >= 100) return value.toFixed(0)
  if (abs >= 10) return value.toFixed(1)
  if (abs >= 1) return value.toFixed(2)
  return value.toPrecision(2)
}

const formatRatio = (ratio: number): string =>
  !Number.isFinite(ratio) ? "–" : ratio >= 100 ? ratio.toFixed(0) : ratio >= 10 ? ratio.toFixed(1) : ratio.toFixed(2)

/** The table printed on stdout. */
export const formatTable = (rows: ReadonlyArray<BenchRow>, info: RunInfo): string => {
  const cells = rows.map((r) => [
    r.scenario,
    r.measure,
    formatNumber(r.value),
    r.unit,
    r.comparisons.map((c) => `${formatRatio(c.ratio)}× ${c.to} (${formatNumber(c.baseline)})`).join("; ")
  ])
  const header = ["scenario", "measure", "value", "unit", "ratio to baseline (baseline value, same unit)"]
  const widths = header.map((h, i) => Math.max(h.length, ...cells.map((c) => c[i]!.length)))
  const line = (c: ReadonlyArray<string>) =>
    c.map((text, i) => (i === 2 ? text.padStart(widths[i]!) : text.padEnd(widths[i]!))).join("  ").trimEnd()
  const out = [
    `offset-relay bench${info.quick ? " (--quick)" : ""}: node ${info.node}, ${info.cores} × ${info.cpus}, load ${
      info.loadAverage.toFixed(2)
    } at start, ${info.durationS.toFixed(0)} s`,
    "",
    line(header),
    line(widths.map((w) => "-".repeat(w)))
  ]
  let last = ""
  rows.forEach((r, i) => {
    if (r.scenario !== last && last !== "") out.push("")
    last = r.scenario
    out.push(line(cells[i]!))
    if (r.note !== undefined) out.push(`${" ".repeat(widths[0]! + 2)}↳ ${r.note}`)
  })
  return out.join("\n")
}

const escapeXml = (text: string): string => text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")

/**
 * An SVG bar chart of each row's first ratio on a log scale centred on 1×
 * (bars right of the line: more than the baseline, left: less).
 */
export const formatSvg = (rows: ReadonlyArray<BenchRow>, info: RunInfo): string => {
  const bars = rows.filter((r) => r.comparisons.length > 0 && Number.isFinite(r.comparisons[0]!.ratio) && r.comparisons[0]!.ratio > 0)
  const labelWidth = 430
  const plotWidth = 420
  const rowHeight = 18
  const top = 40
  const height = top + bars.length * rowHeight + 30
  const decades = 3 // 10^-3 .. 10^3
  const x = (ratio: number) =>
    labelWidth + plotWidth / 2 + (Math.max(-decades, Math.min(decades, Math.log10(ratio))) / decades) * (plotWidth / 2)
  const parts = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${labelWidth + plotWidth + 150}" height="${height}" font-family="monospace" font-size="11">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    `<text x="8" y="16" font-size="13">${escapeXml(`offset-relay bench ${info.startedAt}${info.quick ? " (quick)" : ""}: ratio to baseline, log scale`)}</text>`
  ]
  for (const tick of [0.001, 0.01, 0.1, 1, 10, 100, 1000]) {
    parts.push(
      `<line x1="${x(tick)}" y1="${top - 6}" x2="${x(tick)}" y2="${height - 24}" stroke="${tick === 1 ? "#333" : "#ddd"}"/>`,
      `<text x="${x(tick)}" y="${height - 10}" text-anchor="middle">${tick}×</text>`
    )
  }
  bars.forEach((r, i) => {
    const c = r.comparisons[0]!
    const y = top + i * rowHeight
    const x0 = Math.min(x(1), x(c.ratio))
    const w = Math.max(1, Math.abs(x(c.ratio) - x(1)))
    parts.push(
      `<text x="8" y="${y + 12}">${escapeXml(`${r.scenario}: ${r.measure}`.slice(0, 68))}</text>`,
      `<rect x="${x0}" y="${y + 3}" width="${w}" height="${rowHeight - 6}" fill="${c.ratio >= 1 ? "#4a7bd0" : "#d08a4a"}"/>`,
      `<text x="${labelWidth + plotWidth + 6}" y="${y + 12}">${escapeXml(`${formatRatio(c.ratio)}× ${c.to}`)}</text>`
    )
  })
  parts.push("</svg>")
  return parts.join("\n")
}

/** Writes `<dir>/bench-<time>.json` and `.svg`, plus `latest.json` / `latest.svg`; returns the JSON path. */
export const writeResults = (dir: string, rows: ReadonlyArray<BenchRow>, info: RunInfo): string => {
  Fs.mkdirSync(dir, { recursive: true })
  const stamp = info.startedAt.replace(/[:.]/g, "-")
  const json = JSON.stringify({ info, rows }, null, 2) + "\n"
  const svg = formatSvg(rows, info) + "\n"
  const jsonPath = Path.join(dir, `bench-${stamp}.json`)
  Fs.writeFileSync(jsonPath, json)
  Fs.writeFileSync(Path.join(dir, `bench-${stamp}.svg`), svg)
  Fs.writeFileSync(Path.join(dir, "latest.json"), json)
  Fs.writeFileSync(Path.join(dir, "latest.svg"), svg)
  return jsonPath
}

/** Nearest-rank percentile (p in 0..100) of unsorted samples. */
export const percentile = (samples: ReadonlyArray<number>, p: number): number => {
  if (samples.length === 0) return Number.NaN
  const sorted = [...samples].sort((a, b) => a - b)
  const rank = Math.max(1, Math.ceil((p / 100) * sorted.length))
  return sorted[rank - 1]!
}
