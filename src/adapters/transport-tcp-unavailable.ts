/**
 * What the browser bundle has instead of transport-tcp.ts (scripts/build.ts
 * swaps the module): a page cannot open TCP connections, so dialing a relay
 * by a plain `<key>@host:port` address fails with what to use instead.
 */
import * as Effect from "effect/Effect"
import { type Transport, TransportError } from "./transport.ts"

const unavailable = (host: string, port: number) =>
  new TransportError({
    reason: "Unreachable",
    message: `cannot reach ${host}:${port} over TCP from a browser: give the relay's WebSocket address, ` +
      "<key>@ws://host:port or <key>@wss://host:port (the relay's --ws-port)"
  })

/** The TCP transport's stand-in: every listen and dial fails with the reason. */
export const tcpTransport: Transport = {
  name: "tcp",
  listen: (address) => Effect.fail(unavailable(address.host, address.port)),
  dial: (address) => Effect.fail(unavailable(address.host, address.port))
}
