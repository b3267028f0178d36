/**
 * The relay's web page (`serve --ws-port PORT --web`): plain HTTP requests
 * on the WebSocket port get a small page at `/` where a person pastes a
 * peer's key and exchanges messages with it (src/web-page/app.ts, bundled
 * into dist/browser/page.js by `npm run build`), and the library bundle at
 * `/offset-relay.js` for pages of one's own. The page learns the relay's
 * key from a meta tag and its host and port from the address bar, so it
 * also works behind a reverse proxy.
 */
import * as Fs from "node:fs"
import type * as Http from "node:http"
import { fileURLToPath } from "node:url"

// dist/browser/ from src/adapters/ (development) and from dist/adapters/ (the package) alike.
const bundleDirectory = fileURLToPath(new URL("../../dist/browser/", import.meta.url))

/** Files the page needs, by URL path. */
const FILES: Readonly<Record<string, { readonly file: string; readonly type: string }>> = {
  "/page.js": { file: "page.js", type: "text/javascript; charset=utf-8" },
  "/offset-relay.js": { file: "offset-relay.js", type: "text/javascript; charset=utf-8" }
}

/** The page's HTML for the relay with this public key (hex). */
export const webPageHtml = (relayKeyHex: string): string => `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="offset-relay-key" content="${relayKeyHex}">
<title>offset-relay: talk to a peer by its key</title>
<style>
  body { font: 15px/1.45 system-ui, sans-serif; max-width: 52rem; margin: 1.5rem auto; padding: 0 1rem; color: #1d232b; }
  h1 { font-size: 1.3rem; margin-bottom: .2rem; }
  dl { display: grid; grid-template-columns: 7rem 1fr; gap: .3rem .8rem; }
  dt { font-weight: 600; }
  dd { margin: 0; }
  code { font: 13px/1.4 ui-monospace, monospace; word-break: break-all; background: #f1f3f5; padding: 0 .25rem; }
  #state[data-state=listening], #state[data-state=connected] { color: #17692f; }
  #state[data-state=relay-unreachable], #state[data-state=connect-failed], #state[data-state=failed] { color: #a4161a; }
  #error { color: #a4161a; background: #fdecec; padding: .5rem .7rem; border-radius: 4px; }
  form { display: flex; gap: .5rem; margin: .8rem 0; }
  input { flex: 1; font: inherit; padding: .35rem .5rem; }
  input#peer-key { font-family: ui-monospace, monospace; font-size: 13px; }
  button { font: inherit; padding: .35rem .9rem; }
  #log { list-style: none; padding: .5rem .7rem; border: 1px solid #ccd2d8; border-radius: 4px; height: 16rem; overflow-y: auto; margin: 0; }
  #log .me { color: #1b4f9c; } #log .peer { color: #1d232b; } #log .note { color: #68737d; font-style: italic; }
</style>
</head>
<body>
<h1>offset-relay</h1>
<p>Reach a peer by its public key through this relay: another tab of this page, or a listener started with <code>offset-relay listen</code>.</p>
<dl>
  <dt>Your key</dt><dd><code id="own-key">…</code></dd>
  <dt>Relay</dt><dd><code id="relay">…</code></dd>
  <dt>State</dt><dd id="state" data-state="loading">Loading…</dd>
</dl>
<p id="error" role="alert" hidden></p>
<form id="connect-form">
  <input id="peer-key" placeholder="the peer's public key: 64 hex digits" autocomplete="off" spellcheck="false">
  <button id="connect" type="submit">Connect</button>
  <button id="disconnect" type="button" disabled>End</button>
</form>
<ul id="log" aria-live="polite"></ul>
<form id="message-form">
  <input id="message" placeholder="a message" autocomplete="off" disabled>
  <button type="submit">Send</button>
</form>
<noscript>This page needs JavaScript: it runs the offset relay protocol in your browser.</noscript>
<script type="module" src="/page.js"></script>
</body>
</html>
`

/**
 * Answers plain HTTP requests on the WebSocket port: the page at `/`, its
 * scripts, 404 for anything else. A missing bundle (sources never built)
 * gets a 500 that says to run `npm run build`.
 */
export const webPageHandler = (relayKeyHex: string) => {
  const html = webPageHtml(relayKeyHex)
  return (request: Http.IncomingMessage, response: Http.ServerResponse): void => {
    const path = (request.url ?? "/").split("?")[0]!
    if (request.method !== "GET" && request.method !== "HEAD") {
      response.writeHead(405, { allow: "GET, HEAD", "content-type": "text/plain; charset=utf-8" })
      return void response.end("only GET and HEAD here\n")
    }
    if (path === "/") {
      response.writeHead(200, { "content-type": "text/html; charset=utf-8", "cache-control": "no-cache" })
      return void response.end(html)
    }
    const served = FILES[path]
    if (served === undefined) {
      response.writeHead(404, { "content-type": "text/plain; charset=utf-8" })
      return void response.end(`nothing at ${path}: the page is at /\n`)
    }
    Fs.readFile(`${bundleDirectory}${served.file}`, (error, body) => {
      if (error !== null) {
        response.writeHead(500, { "content-type": "text/plain; charset=utf-8" })
        return void response.end(`the browser bundle ${served.file} is missing from ${bundleDirectory}: run npm run build\n`)
      }
      response.writeHead(200, { "content-type": served.type, "cache-control": "no-cache" })
      response.end(body)
    })
  }
}
