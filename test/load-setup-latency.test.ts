/**
 * Tunnel setup latency depends on one socket option the bench found
 * missing: the relay must turn Nagle's algorithm off (TCP_NODELAY) on the
 * sockets it accepts, as the client does on the sockets it opens. With
 * Nagle on, a handshake step that writes twice in a row waits for the
 * peer's delayed ACK (40 ms on Linux) before its second write leaves, and a
 * tunnel setup (three handshakes) took about 60 ms on 127.0.0.1 instead of
 * about 15 (`npm run bench -- --only setup`).
 *
 * No timing is asserted: the test reads the option Node keeps on each
 * accepted socket (set by `noDelay` on the server or `setNoDelay()` on the
 * socket), seen through Node's `net.server.socket` diagnostics channel.
 */
import * as DiagnosticsChannel from "node:diagnostics_channel"
import type * as Net from "node:net"
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as References from "effect/References"
import { layerNode } from "../src/adapters/crypto.ts"
import { makeIdentity, openClient, startRelay, waitUntil } from "./support/relay-harness.ts"

/** Node's own record of TCP_NODELAY on a socket (undefined if Node stops keeping it). */
const noDelayOf = (socket: Net.Socket): boolean | undefined => {
  const symbol = Object.getOwnPropertySymbols(socket).find((s) => s.description === "kSetNoDelay")
  return symbol === undefined ? undefined : Boolean((socket as unknown as Record<symbol, unknown>)[symbol])
}

describe("relay sockets and latency", () => {
  it.live("every socket the relay accepts has Nagle's algorithm off (TCP_NODELAY)", () =>
    Effect.gen(function*() {
      const accepted: Array<Net.Socket> = []
      const onSocket = (message: unknown) => accepted.push((message as { socket: Net.Socket }).socket)
      DiagnosticsChannel.subscribe("net.server.socket", onSocket)
      yield* Effect.addFinalizer(() => Effect.sync(() => DiagnosticsChannel.unsubscribe("net.server.socket", onSocket)))

      const { server, endpoint } = yield* startRelay()
      const listener = makeIdentity()
      yield* openClient(endpoint, listener, { _tag: "Listen" })
      yield* openClient(endpoint, makeIdentity(), { _tag: "Connect", publicKey: listener.publicKey })
      yield* waitUntil("both connections past their first message", () => server.stats().core.listeners === 1 && server.stats().core.pendingHalfTunnels === 1)

      const relaySockets = accepted.filter((s) => s.localPort === server.port)
      expect(relaySockets.length).toBe(2)
      // Our own client sockets set it (relay-connection.ts); the relay's must too.
      expect(relaySockets.map(noDelayOf)).toEqual([true, true])
    }).pipe(Effect.provide(layerNode), Effect.provideService(References.MinimumLogLevel, "Warn")))
})
