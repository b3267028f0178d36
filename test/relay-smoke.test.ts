import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as References from "effect/References"
import { layerNode, Crypto } from "../src/adapters/crypto.ts"
import { makeRelayServer, testRelayOptions } from "../src/adapters/relay-server.ts"
import { openRelayConnection } from "../src/adapters/relay-connection.ts"
import { decodeIncomingConnection } from "../src/core/messages.ts"

const identity = (crypto: Crypto["Service"]) => {
  const seed = crypto.randomBytes(32)
  return { seed, publicKey: crypto.ed25519PublicKey(seed) }
}

describe("relay smoke", () => {
  it.live("connect, incoming, accept, bytes both ways", () =>
    Effect.gen(function*() {
      const crypto = yield* Crypto
      const relayId = identity(crypto)
      const server = yield* makeRelayServer(testRelayOptions(relayId, 100))
      const endpoint = { publicKey: relayId.publicKey, host: "127.0.0.1", port: server.port }
      const listener = identity(crypto)
      const connector = identity(crypto)
      const listen = yield* openRelayConnection(endpoint, { _tag: "Listen" }, { crypto, identity: listener })
      yield* Effect.sleep(50)
      const connect = yield* openRelayConnection(endpoint, { _tag: "Connect", publicKey: listener.publicKey }, {
        crypto,
        identity: connector
      })
      yield* connect.send(new Uint8Array([1, 2, 3]))
      const incoming = yield* listen.receive
      const decoded = decodeIncomingConnection(incoming)
      expect(decoded._tag).toBe("Ok")
      if (decoded._tag === "Ok") expect([...decoded.value.publicKey]).toEqual([...connector.publicKey])
      const accept = yield* openRelayConnection(endpoint, { _tag: "Accept", publicKey: connector.publicKey }, {
        crypto,
        identity: listener
      })
      expect([...(yield* accept.receive)]).toEqual([1, 2, 3])
      yield* accept.send(new Uint8Array([4, 5]))
      expect([...(yield* connect.receive)]).toEqual([4, 5])
      expect(server.stats().core.tunnels).toBe(1)
    }).pipe(Effect.provide(layerNode), Effect.provideService(References.MinimumLogLevel, "Error")))
})
