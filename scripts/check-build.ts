// CI: the build in dist/ agrees with the sources (run after `npm run build`).
// Every export path offers the same names, and every namespace in them the
// same members, from dist/ as from src/; the CLI's help is the same text.
// Prints what differs and exits 1.
import { execFileSync } from "node:child_process"
import { dirname, join } from "node:path"
import { fileURLToPath, pathToFileURL } from "node:url"

const root = join(dirname(fileURLToPath(import.meta.url)), "..")
const entries: ReadonlyArray<readonly [string, string, string]> = [
  [".", "src/index.ts", "dist/index.js"],
  ["./effect", "src/effect.ts", "dist/effect.js"],
  ["./core", "src/core/index.ts", "dist/core/index.js"],
  ["./wire", "src/wire.ts", "dist/wire.js"],
  ["./browser", "src/browser.ts", "dist/browser/offset-relay.js"]
]

// Names, and for namespace objects (`export * as X`) their members as
// X.member. Which names are namespaces is taken from the sources (a bundler
// makes them plain objects).
const isModule = (value: unknown): boolean =>
  value !== null && typeof value === "object" && Object.prototype.toString.call(value) === "[object Module]"
const shape = (module: Record<string, unknown>, namespaces: ReadonlySet<string>): Array<string> =>
  Object.keys(module).sort().flatMap((name) => {
    const value = module[name]
    return namespaces.has(name) && value !== null && typeof value === "object"
      ? [name, ...Object.keys(value).sort().map((member) => `${name}.${member}`)]
      : [name]
  })

let failed = false
for (const [path, source, built] of entries) {
  const sourceModule = await import(pathToFileURL(join(root, source)).href)
  const namespaces = new Set(Object.keys(sourceModule).filter((name) => isModule(sourceModule[name])))
  const fromSource = shape(sourceModule, namespaces)
  const fromBuild = shape(await import(pathToFileURL(join(root, built)).href), namespaces)
  const missing = fromSource.filter((name) => !fromBuild.includes(name))
  const extra = fromBuild.filter((name) => !fromSource.includes(name))
  if (missing.length > 0 || extra.length > 0) {
    failed = true
    console.log(`${path}: ${built} differs from ${source}: missing ${missing.join(", ") || "-"}; extra ${extra.join(", ") || "-"}`)
  } else {
    console.log(`${path}: ${fromSource.length} names, the same in ${built} and ${source}`)
  }
}

const help = (main: string) => execFileSync(process.execPath, [join(root, main), "serve", "--help"], { encoding: "utf8" })
const sourceHelp = help("src/adapters/cli/main.ts")
for (const built of ["dist/adapters/cli/main.js", "dist/cli/offset-relay.js"]) {
  if (sourceHelp !== help(built)) {
    failed = true
    console.log(`${built}: \`serve --help\` differs from the sources'`)
  } else {
    console.log(`${built}: \`serve --help\` is the sources'`)
  }
}
process.exit(failed ? 1 : 0)
