/**
 * The access policy, through the Effect API: a denied key gets
 * RejectConnection (the relay closes the connect channel "rejected") and the
 * connector's error says rejected; an allowed key gets through; a policy
 * function is asked with the peer's key.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Logger from "effect/Logger"
import * as Option from "effect/Option"
import { ConnectError, makeRelayClient, type ListenerEvent } from "../src/adapters/client/effect.ts"
// auto: node:crypto on Node (as before), noble where node:crypto lacks a primitive (Bun), so test:runtimes can run this file.
import { autoCryptoService, layerAuto as layerNode } from "../src/adapters/crypto.ts"
const nodeCryptoService = autoCryptoService()
import { makeRelayServer, testRelayOptions } from "../src/adapters/relay-server.ts"
import { bytesToHex } from "../src/core/keys.ts"
import type { RelayAddress } from "../src/core/relay-address.ts"
import { newIdentity, TICK_MS } from "./support/client-harness.ts"

const relay = Effect.gen(function*() {
  const identity = newIdentity()
  const server = yield* makeRelayServer(testRelayOptions(identity, TICK_MS))
  const address: RelayAddress = { publicKey: identity.publicKey, host: "127.0.0.1", port: server.port }
  return { server, address }
})

const client = (identity = newIdentity()) =>
  makeRelayClient({ crypto: nodeCryptoService, identity, tickMs: TICK_MS })

const untilListening = (status: () => ReadonlyArray<{ readonly state: string }>) =>
  Effect.gen(function*() {
    for (let i = 0; i < 250 && !status().every((s) => s.state === "listening"); i++) yield* Effect.sleep(20)
    expect(status().map((s) => s.state)).toEqual(["listening"])
  })

const text = (bytes: Uint8Array) => new TextDecoder().decode(bytes)

describe("access policy", () => {
  it.live("an allow-list: the allowed key talks, the denied key is rejected and told so", () =>
    Effect.gen(function*() {
      const { server, address } = yield* relay
      const friend = client()
      const stranger = client()
      const events: Array<ListenerEvent> = []
      const listener = yield* client().listen({
        relays: [address],
        allow: [friend.publicKey],
        onEvent: (event) => events.push(event)
      })
      yield* untilListening(listener.status)

      // Allowed: hello in, its upper case back, both halves closed.
      const stream = yield* friend.connect(listener.publicKey, [address])
      expect(bytesToHex(stream.remotePublicKey)).toBe(bytesToHex(listener.publicKey))
      const accepted = yield* listener.accept
      expect(bytesToHex(accepted.remotePublicKey)).toBe(bytesToHex(friend.publicKey))
      yield* stream.write(new TextEncoder().encode("hello"))
      yield* stream.end
      const got = yield* accepted.read
      expect(Option.map(got, text)).toEqual(Option.some("hello"))
      expect(Option.isNone(yield* accepted.read)).toBe(true) // the connector's half close
      yield* accepted.write(new TextEncoder().encode("HELLO"))
      yield* accepted.end
      expect(Option.map(yield* stream.read, text)).toEqual(Option.some("HELLO"))
      expect(Option.isNone(yield* stream.read)).toBe(true)
      yield* stream.done
      yield* accepted.done

      // Denied: RejectConnection on the listen channel, a clear error at the connector.
      const error = yield* Effect.flip(stranger.connect(listener.publicKey, [address], { timeoutMs: 5000 }))
      expect(error).toBeInstanceOf(ConnectError)
      expect(error.reason).toBe("Rejected")
      expect(error.message).toContain("the relays closed our connect request (the peer is not listening there or refused us")
      expect(error.attempts.map((a) => a.outcome._tag)).toEqual(["Rejected"])
      expect(events.filter((e) => e._tag === "Denied").map((e) => e._tag === "Denied" && e.peer)).toEqual([
        bytesToHex(stranger.publicKey)
      ])
      // The relay closed the connect channel because of the listener's RejectConnection (not a timeout).
      expect(server.metrics.render()).toMatch(/offset_relay_closes_total\{reason="rejected"\} 1\b/)
    }).pipe(Effect.provide(layerNode), Effect.provide(Logger.layer([]))))

  it.live("a policy function decides per key, and an Effect that fails denies", () =>
    Effect.gen(function*() {
      const { address } = yield* relay
      const good = client()
      const bad = client()
      const flaky = client()
      const asked: Array<string> = []
      const listener = yield* client().listen({
        relays: [address],
        allow: (peer) => {
          asked.push(bytesToHex(peer))
          if (bytesToHex(peer) === bytesToHex(flaky.publicKey)) return Effect.fail("policy store down")
          return bytesToHex(peer) === bytesToHex(good.publicKey)
        }
      })
      yield* untilListening(listener.status)
      yield* good.connect(listener.publicKey, [address])
      const badError = yield* Effect.flip(bad.connect(listener.publicKey, [address], { timeoutMs: 5000 }))
      expect(badError.reason).toBe("Rejected")
      const flakyError = yield* Effect.flip(flaky.connect(listener.publicKey, [address], { timeoutMs: 5000 }))
      expect(flakyError.reason).toBe("Rejected")
      expect(asked).toEqual([good.publicKey, bad.publicKey, flaky.publicKey].map(bytesToHex))
    }).pipe(Effect.provide(layerNode), Effect.provide(Logger.layer([]))))
})
