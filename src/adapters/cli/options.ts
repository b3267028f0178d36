/**
 * Command-line options shared by every subcommand: one table per command
 * gives each flag its type, default, environment variable and help line, so
 * `--help`, environment fallback and validation come from one place.
 *
 * Precedence: flag, then `OFFSET_RELAY_<NAME>` (upper case, dashes as
 * underscores), then the default.
 */
import { parseArgs } from "node:util"

/** One flag of a command. */
export interface OptionSpec {
  readonly type: "string" | "integer" | "boolean" | "list"
  readonly help: string
  readonly default?: string | number | boolean
  /** Placeholder shown in help, e.g. FILE. */
  readonly value?: string
  readonly short?: string
  /** Integers: smallest allowed value (default 0). */
  readonly min?: number
  /** Integers: largest allowed value, e.g. 65535 for a port. */
  readonly max?: number
}

/** Every flag of a command, by name (without the leading dashes). */
export type OptionTable = Readonly<Record<string, OptionSpec>>

/** Parsed values: strings, integers, booleans or string lists, by flag name. */
export type ParsedOptions = Record<string, string | number | boolean | ReadonlyArray<string> | undefined>

/** A usage error: the message is shown with a hint to run --help. */
export class UsageError extends Error {
  override readonly name = "UsageError"
}

/** The environment variable a flag falls back to. */
const envName = (flag: string): string => `OFFSET_RELAY_${flag.toUpperCase().replace(/-/g, "_")}`

/** Help text: usage line, description, then one line per flag. */
export const helpText = (usage: string, description: string, table: OptionTable): string => {
  const rows = Object.entries(table).map(([name, spec]) => {
    const flag = `${spec.short ? `-${spec.short}, ` : ""}--${name}${spec.type === "boolean" ? "" : ` ${spec.value ?? "VALUE"}`}`
    const extra = [
      spec.default !== undefined && spec.default !== "" ? `default ${String(spec.default)}` : undefined,
      `env ${envName(name)}`
    ]
      .filter((x) => x !== undefined)
      .join("; ")
    return `  ${flag.padEnd(28)} ${spec.help} (${extra})`
  })
  return [`usage: ${usage}`, "", description, "", "options:", ...rows, `  ${"-h, --help".padEnd(28)} show this help`].join("\n")
}

/** Parses argv against the table; throws UsageError for unknown flags or bad values. */
export const parseOptions = (
  args: ReadonlyArray<string>,
  table: OptionTable,
  env: Readonly<Record<string, string | undefined>> = process.env
): { readonly help: boolean; readonly options: ParsedOptions; readonly positionals: ReadonlyArray<string> } => {
  const config: Record<string, { type: "string" | "boolean"; multiple?: boolean; short?: string }> = {
    help: { type: "boolean", short: "h" }
  }
  for (const [name, spec] of Object.entries(table)) {
    config[name] = {
      type: spec.type === "boolean" ? "boolean" : "string",
      ...(spec.type === "list" ? { multiple: true } : {}),
      ...(spec.short ? { short: spec.short } : {})
    }
  }
  let parsed
  try {
    parsed = parseArgs({ args: joinNegativeValues(args, table), options: config, allowPositionals: true, strict: true })
  } catch (error) {
    throw new UsageError(error instanceof Error ? error.message.split("\n")[0]! : String(error))
  }
  const options: ParsedOptions = {}
  for (const [name, spec] of Object.entries(table)) {
    const raw = (parsed.values as Record<string, unknown>)[name]
    const fromEnv = env[envName(name)]
    options[name] = convert(name, spec, raw, fromEnv)
  }
  return { help: parsed.values.help === true, options, positionals: parsed.positionals }
}

const convert = (name: string, spec: OptionSpec, raw: unknown, fromEnv: string | undefined) => {
  switch (spec.type) {
    case "boolean": {
      if (raw === true) return true
      if (fromEnv !== undefined) {
        if (/^(1|true|yes|on)$/i.test(fromEnv)) return true
        if (/^(0|false|no|off|)$/i.test(fromEnv)) return false
        throw new UsageError(`${envName(name)}=${fromEnv} is not a boolean (use true or false)`)
      }
      return (spec.default as boolean | undefined) ?? false
    }
    case "list": {
      const values = raw as Array<string> | undefined
      if (values !== undefined && values.length > 0) return values.flatMap(splitList)
      if (fromEnv !== undefined && fromEnv.trim() !== "") return splitList(fromEnv)
      return []
    }
    case "string": {
      const value = (raw as string | undefined) ?? fromEnv ?? (spec.default as string | undefined)
      return value
    }
    case "integer": {
      const text = (raw as string | undefined) ?? fromEnv
      if (text === undefined) return spec.default as number | undefined
      const min = spec.min ?? 0
      const range = spec.max === undefined ? `at least ${min}` : `${min}..${spec.max}`
      if (!/^\d+$/.test(text.trim())) {
        throw new UsageError(`--${name} must be a whole number ${range}, got '${text}'`)
      }
      const value = Number(text.trim())
      if (!Number.isSafeInteger(value) || value < min || (spec.max !== undefined && value > spec.max)) {
        throw new UsageError(`--${name} must be a whole number ${range}, got ${text.trim()}`)
      }
      return value
    }
  }
}

// `--port -5` would make parseArgs complain that the value is "ambiguous"
// (it looks like a flag); a dash and a digit after a flag that takes a value
// is that flag's value, which the integer check then refuses by name.
const joinNegativeValues = (args: ReadonlyArray<string>, table: OptionTable): Array<string> => {
  const out: Array<string> = []
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!
    const spec = arg.startsWith("--") && !arg.includes("=") ? table[arg.slice(2)] : undefined
    const next = args[i + 1]
    if (spec !== undefined && spec.type !== "boolean" && next !== undefined && /^-\d/.test(next)) {
      out.push(`${arg}=${next}`)
      i++
    } else {
      out.push(arg)
    }
  }
  return out
}

// A list flag may be repeated or given comma/space separated (handy in env vars).
const splitList = (text: string): Array<string> => text.split(/[\s,]+/).filter((s) => s.length > 0)
