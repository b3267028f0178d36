/**
 * A small Prometheus registry: counters (optionally by one label) that the
 * server increments, and gauges read from callbacks at scrape time, rendered
 * in the Prometheus text exposition format (version 0.0.4).
 */
import { existsSync, readdirSync } from "node:fs"

/** A monotonically increasing count, optionally split by one label. */
export interface Counter {
  readonly inc: (by?: number, labelValue?: string) => void
  readonly value: (labelValue?: string) => number
}

interface CounterEntry {
  readonly kind: "counter"
  readonly help: string
  readonly label: string | undefined
  readonly values: Map<string, number>
}

interface GaugeEntry {
  readonly kind: "gauge"
  readonly help: string
  readonly label: string | undefined
  readonly read: () => number | ReadonlyMap<string, number>
}

/** The metric registry of one relay. */
export class Metrics {
  private readonly entries = new Map<string, CounterEntry | GaugeEntry>()

  /** Registers a counter; `label` names its one label, if any. */
  counter(name: string, help: string, label?: string): Counter {
    const entry: CounterEntry = { kind: "counter", help, label, values: new Map() }
    this.entries.set(name, entry)
    return {
      inc: (by = 1, labelValue = "") => entry.values.set(labelValue, (entry.values.get(labelValue) ?? 0) + by),
      value: (labelValue = "") => entry.values.get(labelValue) ?? 0
    }
  }

  /** Registers a gauge read at scrape time: one number, or one per label value. */
  gauge(name: string, help: string, read: () => number | ReadonlyMap<string, number>, label?: string): void {
    this.entries.set(name, { kind: "gauge", help, label, read })
  }

  /** The Prometheus text format of every metric. */
  render(): string {
    const lines: Array<string> = []
    for (const [name, entry] of this.entries) {
      lines.push(`# HELP ${name} ${entry.help}`, `# TYPE ${name} ${entry.kind}`)
      const values = entry.kind === "counter" ? entry.values : entry.read()
      if (typeof values === "number") {
        lines.push(`${name} ${values}`)
        continue
      }
      if (values.size === 0 && entry.label === undefined) lines.push(`${name} 0`)
      for (const [labelValue, value] of values) {
        lines.push(entry.label === undefined || labelValue === "" ? `${name} ${value}` : `${name}{${entry.label}="${escapeLabel(labelValue)}"} ${value}`)
      }
    }
    return lines.join("\n") + "\n"
  }
}

const escapeLabel = (value: string): string => value.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n")

/**
 * The process gauges operators expect beside the relay's own: resident
 * memory, V8 heap and open file descriptors (Linux: counted in /proc/self/fd
 * at scrape time; left out where /proc is missing).
 */
export const registerProcessMetrics = (metrics: Metrics): void => {
  metrics.gauge("process_resident_memory_bytes", "Resident memory size in bytes.", () => process.memoryUsage.rss())
  metrics.gauge("nodejs_heap_used_bytes", "V8 heap in use, in bytes.", () => process.memoryUsage().heapUsed)
  metrics.gauge("nodejs_heap_total_bytes", "V8 heap reserved, in bytes.", () => process.memoryUsage().heapTotal)
  if (existsSync("/proc/self/fd")) {
    metrics.gauge("process_open_fds", "Open file descriptors.", () => readdirSync("/proc/self/fd").length)
  }
}
