/**
 * Relays that misbehave, against the end-to-end channel. A relay sees only
 * the end-to-end ciphertext; whatever it changes or forges is caught there,
 * and the application never sees a wrong byte:
 * - a relay that flips one byte of a relayed message (tunnel data);
 * - a relay that answers the connect itself, with its own key, instead of
 *   forwarding it (impersonating the peer);
 * - a relay whose key is not the one in its address.
 */
import { afterEach, describe, expect, it } from "vitest"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Scope from "effect/Scope"
import { connect, ConnectError, listen, type PeerDuplex } from "../src/adapters/client/index.ts"
// auto: node:crypto on Node (as before), noble where node:crypto lacks a primitive (Bun), so test:runtimes can run this file.
import { autoCryptoService } from "../src/adapters/crypto.ts"
const nodeCryptoService = autoCryptoService()
import type { Identity } from "../src/adapters/identity.ts"
import type { FrameLink } from "../src/adapters/frame-link.ts"
import { serveFrames } from "./support/frame-server.ts"
import { establishChannel, type MessageChannel } from "../src/adapters/message-channel.ts"
import { Connection } from "../src/core/connection.ts"
import { bytesToHex } from "../src/core/keys.ts"
import { decodeInitConnection, encodeIncomingConnection } from "../src/core/messages.ts"
import { formatRelayAddress } from "../src/core/relay-address.ts"
import { newIdentity, randomData, startRelay, TICK_MS, waitFor, writeAllAndEnd } from "./support/client-harness.ts"

const cleanups: Array<() => Promise<void>> = []
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup()
})

type Mode =
  /** Relays faithfully, except one flipped byte in the n-th message from connector to listener. */
  | { readonly _tag: "Flip"; readonly message: number }
  /** Answers every connect itself, running the end-to-end handshake with `as` instead of the peer. */
  | { readonly _tag: "Impersonate"; readonly as: Identity }

/** A hand-made relay that speaks the protocol but cheats as told. */
const startEvilRelay = async (mode: Mode) => {
  const identity = newIdentity()
  const scope = Scope.makeUnsafe()
  const crypto = nodeCryptoService
  const listeners = new Map<string, MessageChannel>()
  // connector key > listener key → the accept channel, once it comes
  const accepts = new Map<string, Deferred.Deferred<MessageChannel>>()
  const pairKey = (connector: Uint8Array, listener: Uint8Array) => `${bytesToHex(connector)}>${bytesToHex(listener)}`
  const acceptFor = (key: string) => {
    let deferred = accepts.get(key)
    if (deferred === undefined) {
      deferred = Deferred.makeUnsafe<MessageChannel>()
      accepts.set(key, deferred)
    }
    return deferred
  }
  let flipped = 0

  const pump = (from: MessageChannel, to: MessageChannel, tamper: boolean) =>
    Effect.gen(function*() {
      let n = 0
      while (true) {
        const message = yield* from.receive
        n++
        if (tamper && mode._tag === "Flip" && n === mode.message) {
          const copy = new Uint8Array(message)
          copy[copy.length >> 1]! ^= 0x01
          flipped++
          yield* to.send(copy)
        } else {
          yield* to.send(message)
        }
      }
    })

  const handle = (link: FrameLink) =>
    Effect.gen(function*() {
      const channel = yield* establishChannel(link, { crypto, identity })
      yield* Effect.forkScoped(Effect.forever(Effect.andThen(Effect.sleep(TICK_MS), Effect.sync(channel.tick))))
      const init = decodeInitConnection(yield* channel.receive)
      if (init._tag === "Err") return
      const client = channel.remotePublicKey
      switch (init.value._tag) {
        case "Listen":
          listeners.set(bytesToHex(client), channel)
          return yield* channel.ended
        case "Accept":
          yield* Deferred.succeed(acceptFor(pairKey(init.value.publicKey, client)), channel)
          return yield* channel.ended
        case "Connect": {
          if (mode._tag === "Impersonate") {
            // Speaks the end-to-end handshake itself, as `mode.as`, and keeps
            // the tunnel open whatever it hears: an attacker does not give up.
            const fake = new Connection({ crypto, identity: mode.as, random: crypto.randomBytes, handshakeTimeoutTicks: Infinity })
            fake.start()
            while (true) {
              for (let frame = fake.pollTransmit(); frame !== undefined; frame = fake.pollTransmit()) {
                yield* channel.send(frame)
              }
              fake.handleFrame(yield* channel.receive)
            }
          }
          const listener = listeners.get(bytesToHex(init.value.publicKey))
          if (listener === undefined) return
          yield* listener.send(encodeIncomingConnection({ publicKey: client }))
          const accept = yield* Deferred.await(acceptFor(pairKey(client, init.value.publicKey)))
          yield* Effect.raceFirst(pump(channel, accept, true), pump(accept, channel, false)).pipe(Effect.ignore)
        }
      }
    })

  const port = await Effect.runPromise(serveFrames(handle).pipe(Scope.provide(scope)))
  cleanups.push(() => Effect.runPromise(Scope.close(scope, Exit.void)))
  return {
    address: formatRelayAddress({ publicKey: identity.publicKey, host: "127.0.0.1", port }),
    flipped: () => flipped
  }
}

describe("a malicious relay is caught end to end", () => {
  it("a flipped byte in tunnel data fails the stream; the application only ever saw correct bytes", async () => {
    const relay = await startEvilRelay({ _tag: "Flip", message: 8 })
    const server = newIdentity()
    const client = newIdentity()
    const listener = listen({ identity: server, relays: [relay.address], allow: [client.publicKey], tickMs: TICK_MS })
    cleanups.push(() => listener.close())
    const seen: Array<Buffer> = []
    let listenerError: Error | undefined
    let listenerEnded = false
    listener.on("connection", (socket: PeerDuplex) => {
      socket.on("data", (chunk: Buffer) => seen.push(chunk))
      socket.on("error", (error) => (listenerError = error))
      socket.on("end", () => (listenerEnded = true))
    })
    await waitFor(() => listener.status()[0]?.state === "listening", 5000, "listening")
    const socket = await connect({ identity: client, relays: [relay.address], to: server.publicKey, tickMs: TICK_MS })
    let connectorError: Error | undefined
    socket.on("error", (error) => (connectorError = error))
    socket.resume()
    const data = randomData(2 * 1024 * 1024)
    await writeAllAndEnd(socket, data, 16 * 1024).catch(() => {})
    await waitFor(() => listenerError !== undefined, 5000, "the listener's stream to fail")
    expect(relay.flipped()).toBe(1)
    expect(listenerEnded).toBe(false)
    expect(listenerError?.message).toContain("DecryptFailed")
    const got = Buffer.concat(seen)
    expect(got.length).toBeLessThan(data.length)
    expect(got.equals(Buffer.from(data.subarray(0, got.length)))).toBe(true)
    // The listener closed the tunnel: the connector hears of it too.
    await waitFor(() => connectorError !== undefined || socket.destroyed, 5000, "the connector's stream to end")
  })

  it("a relay answering in the peer's place is refused: the connect fails and names the attack", async () => {
    const relay = await startEvilRelay({ _tag: "Impersonate", as: newIdentity() })
    const server = newIdentity()
    const error = await connect({
      identity: newIdentity(),
      relays: [relay.address],
      to: server.publicKey,
      tickMs: TICK_MS
    }).then(() => undefined, (e: unknown) => e)
    expect(error).toBeInstanceOf(ConnectError)
    expect((error as ConnectError).reason).toBe("Authentication")
    expect((error as ConnectError).attempts[0]?.outcome._tag).toBe("PeerAuthenticationFailed")
    expect((error as ConnectError).message).toContain("UnexpectedRemoteKey")
  })

  it("a relay that does not hold the key in its address is refused by connector and listener", async () => {
    const real = await startRelay()
    cleanups.push(real.stop)
    const impostorKey = newIdentity().publicKey
    const address = formatRelayAddress({ publicKey: impostorKey, host: "127.0.0.1", port: real.port })
    // The relay shows its own key before it closes on us (PROTOCOL.md: each
    // side sends its nonce first), so the client names the mismatch.
    const error = await connect({ identity: newIdentity(), relays: [address], to: newIdentity().publicKey, tickMs: TICK_MS })
      .then(() => undefined, (e: unknown) => e)
    expect(error).toBeInstanceOf(ConnectError)
    expect((error as ConnectError).reason).toBe("Authentication")
    expect((error as ConnectError).attempts[0]?.outcome._tag).toBe("RelayKeyMismatch")
    expect((error as ConnectError).message).toContain("UnexpectedRemoteKey")

    const listener = listen({
      identity: newIdentity(),
      relays: [address],
      allow: [],
      tickMs: TICK_MS,
      backoff: { initialMs: 50, maxMs: 200 }
    })
    cleanups.push(() => listener.close())
    await waitFor(() => listener.status()[0]?.state === "backing-off", 5000, "backing off")
    expect(listener.status()[0]?.lastError).toContain("UnexpectedRemoteKey")
    await new Promise((resolve) => setTimeout(resolve, 300))
    expect(real.server().stats().core.listeners).toBe(0)
    expect(real.server().stats().core.tunnels).toBe(0)
  })
})
