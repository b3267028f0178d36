/**
 * The access policy, through the Effect API: a denied key gets
 * RejectConnection (the relay closes the connect channel "rejected") and the
 * connector's error says rejected; an allowed key gets through; a policy
 * function is asked with the peer's key. On the in-memory network and
 * virtual time (test/sim/world.ts): nothing here is about sockets.
 */
import { describe, expect, it } from "vitest"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Option from "effect/Option"
import type * as Scope from "effect/Scope"
import { ConnectError, makeRelayClient, type ListenerEvent } from "../src/adapters/client/effect.ts"
import { bytesToHex } from "../src/core/keys.ts"
import { TICK_MS } from "./support/client-harness.ts"
import { makeSimWorld, type SimWorld } from "./sim/world.ts"

// A client on its own host of the world, with a fresh identity.
let hosts = 0
const client = (world: SimWorld) => makeRelayClient(world.settings(`client-${hosts++}`, world.identity(), TICK_MS))

// Waits (on virtual time) for the listener to listen on its one relay.
const untilListening = (status: () => ReadonlyArray<{ readonly state: string }>) =>
  Effect.gen(function*() {
    for (let i = 0; i < 250 && !status().every((s) => s.state === "listening"); i++) yield* Effect.sleep(20)
    expect(status().map((s) => s.state)).toEqual(["listening"])
  })

// Runs a test's story to its end on the world's virtual time.
const play = (world: SimWorld, story: Effect.Effect<void, unknown, Scope.Scope>) => {
  const exit = world.await(story, 60_000)
  if (!Exit.isSuccess(exit)) throw new Error(`the story failed: ${String(exit.cause)}\n${world.log.slice(-30).join("\n")}`)
}

const text = (bytes: Uint8Array) => new TextDecoder().decode(bytes)

describe("access policy", () => {
  it("an allow-list: the allowed key talks, the denied key is rejected and told so", () => {
    const world = makeSimWorld(41)
    const relay = world.relay("relay")
    const address = relay.address
    play(world, Effect.gen(function*() {
      const friend = client(world)
      const stranger = client(world)
      const events: Array<ListenerEvent> = []
      const listener = yield* client(world).listen({
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
      expect(relay.server()!.metrics.render()).toMatch(/offset_relay_closes_total\{reason="rejected"\} 1\b/)
    }))
  })

  it("a policy function decides per key, and an Effect that fails denies", () => {
    const world = makeSimWorld(43)
    const address = world.relay("relay").address
    play(world, Effect.gen(function*() {
      const good = client(world)
      const bad = client(world)
      const flaky = client(world)
      const asked: Array<string> = []
      const listener = yield* client(world).listen({
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
    }))
  })
})
