// `npm run build` (also `prepack`): the npm package's compiled code in dist/.
//
//   1. tsc -p tsconfig.build.json: JavaScript, declarations and source maps
//      of src/ (relative `.ts` imports rewritten to `.js` in the JavaScript);
//   2. the same rewrite in the declarations, which tsc leaves as `.ts`, so a
//      consumer's TypeScript resolves them to the `.d.ts` files;
//   3. the command's bundle, dist/cli/offset-relay.js (scripts/bundle-cli.ts),
//      which bin/offset-relay.js runs in the package;
//   4. the browser bundles (esbuild, ESM), refused if anything in them
//      imports `node:*`: dist/browser/offset-relay.js (the library, from
//      src/browser.ts) and dist/browser/page.js (the relay's --web page,
//      from src/web-page/app.ts). In both, transport-tcp.ts is replaced by
//      transport-tcp-unavailable.ts: a page cannot open TCP connections.
//
//   npm run build -- --browser-only   only step 4 (CI's browser bundle step)
//
// Development runs the sources directly; this is only for the package.
import { execFileSync } from "node:child_process"
import { readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs"
import { dirname, join } from "node:path"
import { fileURLToPath } from "node:url"
import * as esbuild from "esbuild"
import { bundleCli } from "./bundle-cli.ts"

const root = join(dirname(fileURLToPath(import.meta.url)), "..")
const dist = join(root, "dist")
const browserOnly = process.argv.includes("--browser-only")

const filesUnder = (dir: string): Array<string> =>
  readdirSync(dir, { withFileTypes: true }).flatMap((entry) =>
    entry.isDirectory() ? filesUnder(join(dir, entry.name)) : [join(dir, entry.name)]
  )

if (!browserOnly) {
  rmSync(dist, { recursive: true, force: true })
  execFileSync(join(root, "node_modules/.bin/tsc"), ["-p", "tsconfig.build.json"], { cwd: root, stdio: "inherit" })
  // Relative specifiers only: `from "./x.ts"`, `import("../y.ts")`.
  const relativeTs = /((?:from|import)\s*\(?\s*["'])(\.{1,2}\/[^"']*?)\.ts(["'])/g
  for (const file of filesUnder(dist).filter((f) => f.endsWith(".d.ts"))) {
    const text = readFileSync(file, "utf8")
    const rewritten = text.replace(relativeTs, "$1$2.js$3")
    if (rewritten !== text) writeFileSync(file, rewritten)
  }
  const cli = await bundleCli(root, join(dist, "cli"))
  console.log(`command bundle: ${cli.slice(root.length + 1)} (${Math.round(statSync(cli).size / 1024)} KiB and its chunks)`)
}

// A page has no TCP: the relay connection's TCP transport becomes one that says so.
const noTcp: esbuild.Plugin = {
  name: "no-tcp-in-browsers",
  setup: (build) => {
    build.onResolve({ filter: /\/transport-tcp\.ts$/ }, (args) => ({
      path: join(args.resolveDir, args.path.replace(/transport-tcp\.ts$/, "transport-tcp-unavailable.ts"))
    }))
  }
}

const outdir = join(dist, "browser")
const outfile = join(outdir, "offset-relay.js")
const result = await esbuild.build({
  entryPoints: [
    { in: join(root, "src/browser.ts"), out: "offset-relay" },
    { in: join(root, "src/web-page/app.ts"), out: "page" }
  ],
  plugins: [noTcp],
  bundle: true,
  format: "esm",
  platform: "browser",
  target: "es2022",
  outdir,
  sourcemap: true,
  // The bundled libraries' sources would triple the package; ours are in dist/**/*.js.map.
  sourcesContent: false,
  metafile: true,
  logLevel: "warning"
})
const nodeImports = Object.values(result.metafile.inputs).flatMap((input) =>
  input.imports.filter((i) => i.path.startsWith("node:")).map((i) => i.path)
)
for (const bundle of [outfile, join(outdir, "page.js")]) {
  const bundled = readFileSync(bundle, "utf8")
  if (nodeImports.length > 0 || /\bfrom\s*["']node:|import\(\s*["']node:|require\(\s*["']node:/.test(bundled)) {
    console.error(`browser bundle imports node modules: ${[...new Set(nodeImports)].join(", ") || `(see ${bundle})`}`)
    process.exit(1)
  }
  console.log(`browser bundle: ${bundle.slice(root.length + 1)} (${Math.round(statSync(bundle).size / 1024)} KiB, no node: imports)`)
}
