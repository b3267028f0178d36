/**
 * The operations endpoint: `GET /metrics` (Prometheus text) and
 * `GET /healthz` on a separate HTTP port, closed with its scope.
 */
import * as Http from "node:http"
import * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"
import type { Metrics } from "./metrics.ts"

/** The endpoint could not listen. */
export class MetricsServerError extends Error {
  readonly _tag = "MetricsServerError"
}

/** Serves `/metrics` and `/healthz` on host:port (port 0 picks one); returns the bound port. */
export const serveMetrics = (
  metrics: Metrics,
  host: string,
  port: number,
  healthy: () => boolean
): Effect.Effect<number, MetricsServerError, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.callback<Http.Server, MetricsServerError>((resume) => {
      const server = Http.createServer((request, response) => {
        const path = (request.url ?? "/").split("?")[0]
        if (request.method !== "GET" && request.method !== "HEAD") {
          response.writeHead(405, { allow: "GET, HEAD" }).end()
        } else if (path === "/metrics") {
          response.writeHead(200, { "content-type": "text/plain; version=0.0.4; charset=utf-8" }).end(metrics.render())
        } else if (path === "/healthz") {
          const ok = healthy()
          response.writeHead(ok ? 200 : 503, { "content-type": "text/plain" }).end(ok ? "ok\n" : "shutting down\n")
        } else {
          response.writeHead(404, { "content-type": "text/plain" }).end("not found: try /metrics or /healthz\n")
        }
      })
      server.once("error", (error) =>
        resume(Effect.fail(new MetricsServerError(`cannot serve metrics on ${host}:${port}: ${error.message}`, { cause: error })))
      )
      server.listen(port, host, () => resume(Effect.succeed(server)))
    }),
    (server) =>
      Effect.callback<void>((resume) => {
        server.closeAllConnections()
        server.close(() => resume(Effect.void))
      })
  ).pipe(Effect.map((server) => (server.address() as { port: number }).port))
