/**
 * What a client can tell its user when a relay connection fails.
 *
 * 1. A relay dialed under the wrong key (fixed in message-channel.ts by
 * d8a6fe9; this test found it).
 * PROTOCOL.md has each side SEND its ExchangeRandNonce first and only then
 * check the peer's. The relay's machine does emit its nonce at Start, but
 * when the client's nonce is already buffered (it names another relay key,
 * so the relay closes with UnexpectedDestination), establishChannel fails
 * and the scope finalizer interrupts the writer fiber before it writes the
 * queued frame, although message-channel.ts promises "Frames queued before
 * the Close are still written (best effort)". So the client only sees a
 * close and cannot tell the user "this relay's key is X, not the Y in your
 * address". The fix: let the writer flush the outbox (bounded by a short
 * deadline) before the finalizer interrupts it. (The channel has no writer
 * fiber any more: it writes frames at once, and its finalizer waits, bounded
 * by CLOSE_FLUSH_MS, for the transport to drain them.)
 *
 * 2. A refused TCP connect names the system error (ECONNREFUSED host:port):
 * what a person needs to see in `listen`'s status and `connect`'s error.
 */
import * as Net from "node:net"
import { describe, expect, it } from "vitest"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import { nodeCryptoService } from "../src/adapters/crypto.ts"
import { openRelayConnection } from "../src/adapters/relay-connection.ts"
import { Connection } from "../src/core/connection.ts"
import { encodeFrame, FrameDecoder } from "../src/core/frame.ts"
import { decodeExchangeRandNonce } from "../src/core/messages.ts"
import { encodeVersion } from "../src/core/version.ts"
import { newIdentity, startRelay } from "./support/client-harness.ts"

describe("a relay dialed under the wrong key", () => {
  it("still sends its own ExchangeRandNonce before it closes, so the client can name the key it holds", async () => {
    const relay = await startRelay()
    try {
      const client = newIdentity()
      const machine = new Connection({
        crypto: nodeCryptoService,
        identity: client,
        expectedRemotePublicKey: newIdentity().publicKey, // not the relay's key
        random: nodeCryptoService.randomBytes,
        handshakeTimeoutTicks: Infinity
      })
      machine.start()
      const nonce = machine.pollTransmit()
      if (nonce === undefined) throw new Error("the machine sends its nonce at start")
      // Version and nonce in one write, as a fast client does.
      const frames = await new Promise<Array<Uint8Array>>((resolve, reject) => {
        const received: Array<Uint8Array> = []
        const decoder = new FrameDecoder(1 << 20)
        const socket = Net.connect(relay.port, "127.0.0.1", () => {
          socket.write(Buffer.concat([encodeFrame(encodeVersion()), encodeFrame(nonce)]))
        })
        socket.on("data", (chunk) => {
          const result = decoder.push(chunk)
          if (result._tag === "Error") return reject(new Error(result.error.message))
          received.push(...result.frames)
        })
        socket.on("error", () => {})
        socket.on("close", () => resolve(received))
      })
      expect(frames.length).toBe(2) // the version, then the relay's nonce
      const relayNonce = decodeExchangeRandNonce(frames[1] ?? new Uint8Array(0))
      expect(relayNonce._tag).toBe("Ok")
      if (relayNonce._tag === "Ok") expect([...relayNonce.value.srcPublicKey]).toEqual([...relay.identity.publicKey])
    } finally {
      await relay.stop()
    }
  })

  it("a refused TCP connect names the system error", async () => {
    const relay = await startRelay()
    await relay.stop()
    const exit = await Effect.runPromiseExit(
      Effect.scoped(
        openRelayConnection({ publicKey: relay.identity.publicKey, host: "127.0.0.1", port: relay.port }, { _tag: "Listen" }, {
          crypto: nodeCryptoService,
          identity: newIdentity()
        })
      )
    )
    const failure = Exit.isFailure(exit) ? exit.cause.reasons.find((reason) => reason._tag === "Fail") : undefined
    expect(failure?._tag).toBe("Fail")
    // The message is what reaches the user (listener status, connect errors).
    if (failure?._tag === "Fail") expect(failure.error.message).toContain("ECONNREFUSED")
  })
})

describe("a relay that is draining", () => {
  it("refuses a new connect at accept, and the error names the relay (RelayRefused), not the key in the address", async () => {
    const { connect, listen } = await import("../src/adapters/client/index.ts")
    const { ConnectError } = await import("../src/adapters/client/index.ts")
    const relay = await startRelay()
    const server = newIdentity()
    const client = newIdentity()
    const listener = listen({ identity: server, relays: [relay.address], allow: [client.publicKey], tickMs: 100 })
    listener.on("connection", (socket) => socket.on("error", () => {}))
    try {
      await new Promise<void>((resolve) => listener.on("status", (s) => s.state === "listening" && resolve()))
      // A live tunnel keeps the relay draining.
      const tunnel = await connect({ identity: client, relays: [relay.address], to: server.publicKey, tickMs: 100 })
      tunnel.on("error", () => {})
      const draining = Effect.runPromise(relay.server().shutdown(3000))
      await new Promise((resolve) => setTimeout(resolve, 200))
      const error = await connect({ identity: client, relays: [relay.address], to: server.publicKey, tickMs: 100 }).then(
        () => undefined,
        (e: unknown) => e
      )
      expect(error).toBeInstanceOf(ConnectError)
      const failure = error as InstanceType<typeof ConnectError>
      expect(failure.reason).toBe("RelayRefused")
      expect(failure.message).toContain("or shutting down")
      expect(failure.message).not.toContain("key in the address")
      tunnel.destroy()
      await draining
    } finally {
      await listener.close()
      await relay.stop()
    }
  })
})
