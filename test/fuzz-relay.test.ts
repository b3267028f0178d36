/**
 * A fast-check fuzz of a live relay process's network input, one property
 * per layer of PROTOCOL.md, each case on a fresh TCP connection:
 *
 * | layer            | input                                                            |
 * |------------------|------------------------------------------------------------------|
 * | bytes            | random bytes in place of everything                              |
 * | frame / version  | a frame with a random length field and payload as the version    |
 * | handshake        | our ExchangeRandNonce, or later our ExchangeDh, mutated          |
 * | transport        | a valid encrypted frame (an InitConnection), mutated             |
 * | channel message  | random or mutated ChannelMessage plaintext, sealed correctly      |
 * | keepalive        | random or mutated KaMessage in a well-formed ChannelMessage      |
 * | relay message    | random or mutated first message (InitConnection)                 |
 *
 * Property: the relay closes the connection within the bound its settings
 * give (handshake timeout, init timeout, keepalive) — except where the input
 * happens to be a valid `listen` first message, which the relay must keep.
 * After every layer: the relay process is still running and holds no
 * connection; at the end a good tunnel still carries data.
 * A failure prints fast-check's seed and path to replay it.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import fc from "fast-check"
import * as Effect from "effect/Effect"
import { nodeCryptoService } from "../src/adapters/crypto.ts"
import { Connection } from "../src/core/connection.ts"
import { drainMachine, feedMachine, type LinkEvent } from "./support/sim-link.ts"
import { encodeFrameHeader } from "../src/core/frame.ts"
import {
  decodeInitConnection,
  encodeChannelMessage,
  encodeInitConnection,
  encodeKaMessage
} from "../src/core/messages.ts"
import { transportNonce } from "../src/core/secure-channel.ts"
import { encodeVersion } from "../src/core/version.ts"
import { echo, listen, newIdentity, openTunnel, type PeerOptions } from "../bench/peers.ts"
import { ONE_HOST_AS_MANY_ARGS, startRelayProcess, type RelayProcess } from "../bench/relay-process.ts"
import { patternBytes, RawClient } from "./support/relay-harness.ts"

const TICK_MS = 50
const HANDSHAKE_TIMEOUT_MS = 400
const INIT_TIMEOUT_TICKS = 4
/** Every bad connection must be closed by then: the longest of the relay's timeouts that apply, plus slack. */
const CLOSE_BOUND_MS = HANDSHAKE_TIMEOUT_MS + INIT_TIMEOUT_TICKS * TICK_MS + 3000
const RUNS = 40

const crypto = nodeCryptoService
const options: PeerOptions = { crypto, tickMs: TICK_MS }
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

/** One edit of a byte string. */
type Mutation =
  | { readonly kind: "flip"; readonly at: number; readonly bit: number }
  | { readonly kind: "set"; readonly at: number; readonly value: number }
  | { readonly kind: "truncate"; readonly at: number }
  | { readonly kind: "insert"; readonly at: number; readonly bytes: Uint8Array }

const mutationArb: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ kind: fc.constant("flip" as const), at: fc.nat(), bit: fc.integer({ min: 0, max: 7 }) }),
  fc.record({ kind: fc.constant("set" as const), at: fc.nat(), value: fc.integer({ min: 0, max: 255 }) }),
  fc.record({ kind: fc.constant("truncate" as const), at: fc.nat() }),
  fc.record({ kind: fc.constant("insert" as const), at: fc.nat(), bytes: fc.uint8Array({ minLength: 1, maxLength: 16 }) })
)
/** One to four edits. */
const mutationsArb = fc.array(mutationArb, { minLength: 1, maxLength: 4 })

/** Applies edits (positions wrap around the current length); the result always differs from `base`. */
const mutate = (base: Uint8Array, mutations: ReadonlyArray<Mutation>): Uint8Array => {
  let bytes = Uint8Array.from(base)
  for (const m of mutations) {
    const at = bytes.length === 0 ? 0 : m.at % bytes.length
    switch (m.kind) {
      case "flip":
        if (bytes.length > 0) bytes[at] = bytes[at]! ^ (1 << m.bit)
        break
      case "set":
        if (bytes.length > 0) bytes[at] = m.value
        break
      case "truncate":
        bytes = bytes.slice(0, at)
        break
      case "insert":
        bytes = Uint8Array.from([...bytes.subarray(0, at), ...m.bytes, ...bytes.subarray(at)])
        break
    }
  }
  if (Buffer.from(bytes).equals(Buffer.from(base))) bytes = Uint8Array.from([...base, 0])
  return bytes
}

const concat = (...parts: ReadonlyArray<Uint8Array>) => Uint8Array.from(Buffer.concat(parts))
const frameOf = (payload: Uint8Array) => concat(encodeFrameHeader(payload.length), payload)

/**
 * A client driving the pure connection machine by hand, so a case can stop
 * at any step and send anything in place of the next frame.
 */
class FuzzClient {
  readonly raw: RawClient
  private readonly machine: Connection
  private constructor(raw: RawClient, relayKey: Uint8Array) {
    this.raw = raw
    this.machine = new Connection({
      crypto,
      identity: newIdentity(crypto),
      expectedRemotePublicKey: relayKey,
      random: crypto.randomBytes,
      maxPaddingBytes: 0,
      handshakeTimeoutTicks: Infinity
    })
  }

  static async open(relay: RelayProcess): Promise<FuzzClient> {
    return new FuzzClient(await RawClient.connect(relay.port), relay.endpoint.publicKey)
  }

  /** Makes one call on the machine; returns the frames it wants written (not written). */
  step(event: LinkEvent): Array<Uint8Array> {
    feedMachine(this.machine, event)
    return drainMachine(this.machine).flatMap((c) => (c._tag === "SendFrame" ? [c.frame] : []))
  }

  writeFrames(frames: ReadonlyArray<Uint8Array>): void {
    for (const f of frames) this.raw.writeFrame(f)
  }

  /** Exchanges versions; false if the relay closed first. */
  async version(): Promise<boolean> {
    this.raw.writeFrame(encodeVersion())
    return (await this.raw.nextFrame()) !== undefined
  }

  /** Feeds the relay's frames until the machine has produced `wanted` frames of its own; returns them. */
  async framesUntil(wanted: number, first: ReadonlyArray<Uint8Array>): Promise<Array<Uint8Array> | undefined> {
    const out = [...first]
    while (out.length < wanted) {
      const frame = await this.raw.nextFrame()
      if (frame === undefined) return undefined
      out.push(...this.step({ _tag: "FrameReceived", frame }))
    }
    return out
  }

  /** A complete handshake; false if the relay closed first. */
  async handshake(): Promise<boolean> {
    if (!(await this.version())) return false
    const ours = await this.framesUntil(1, this.step({ _tag: "Start" }))
    if (ours === undefined) return false
    this.writeFrames(ours)
    const dh = await this.framesUntil(1, [])
    if (dh === undefined) return false
    this.writeFrames(dh)
    while (this.machine.channel.phase._tag !== "Established") {
      const frame = await this.raw.nextFrame()
      if (frame === undefined) return false
      this.writeFrames(this.step({ _tag: "FrameReceived", frame }))
    }
    return true
  }

  /** Seals `plaintext` as our next transport frame, as the channel would, without the machine's encoding. */
  seal(plaintext: Uint8Array): Uint8Array {
    const phase = this.machine.channel.phase
    if (phase._tag !== "Established") throw new Error("seal before the handshake")
    const nonce = transportNonce(phase.send.counter)
    return concat(nonce, crypto.aeadSeal(phase.send.key, nonce, plaintext))
  }

  /** Resolves true once the relay closed the connection, false after `timeoutMs`. */
  closedWithin(timeoutMs: number): Promise<boolean> {
    return Promise.race([this.raw.ended.then(() => true), sleep(timeoutMs).then(() => false)])
  }
}

describe("fuzzing a live relay's network input", () => {
  let relay: RelayProcess
  beforeAll(async () => {
    relay = await startRelayProcess({
      tickMs: TICK_MS,
      args: [
        "--handshake-timeout-ms",
        String(HANDSHAKE_TIMEOUT_MS),
        "--init-timeout-ticks",
        String(INIT_TIMEOUT_TICKS),
        ...ONE_HOST_AS_MANY_ARGS
      ]
    })
  })
  afterAll(async () => {
    await relay?.stop()
    relay?.removeDataDir()
  })

  /** Runs one case's connection and checks the relay closes it (it never keeps garbage). */
  const expectClosed = async (client: FuzzClient) => {
    const closed = await client.closedWithin(CLOSE_BOUND_MS)
    client.raw.destroy()
    return closed
  }

  /** After a layer: the relay runs and holds no connection. */
  const expectRelayAtRest = async () => {
    expect(relay.process.exitCode).toBeNull()
    const deadline = Date.now() + 3000
    let s = await relay.scrape()
    while (s.connections > 0 && Date.now() < deadline) s = (await sleep(20), await relay.scrape())
    expect(s.connections).toBe(0)
  }

  /**
   * Every case closes, except one that a mutation left a valid `listen`
   * first message (e.g. a flipped padding byte): the relay must keep that.
   */
  const property = <T>(arb: fc.Arbitrary<T>, sendCase: (input: T) => Promise<FuzzClient>) =>
    fc.assert(
      fc.asyncProperty(arb, async (input) => {
        const client = await sendCase(input)
        return (await listenKept(client)) || expectClosed(client)
      }),
      { numRuns: RUNS }
    )

  it("random bytes in place of the whole stream", async () => {
    // Fewer than 8 bytes is an unfinished frame header: those wait for the handshake timeout.
    const arb = fc.oneof(
      { arbitrary: fc.uint8Array({ minLength: 8, maxLength: 64 }), weight: 4 },
      { arbitrary: fc.uint8Array({ minLength: 1, maxLength: 7 }), weight: 1 }
    )
    await property(arb, async (bytes) => {
      const client = await FuzzClient.open(relay)
      client.raw.write(bytes)
      return client
    })
    await expectRelayAtRest()
  }, 60_000)

  it("random frames as the version frame", async () => {
    const arb = fc.record({
      length: fc.oneof(fc.integer({ min: 0, max: 16 }), fc.integer({ min: 0, max: 2 ** 53 - 1 })),
      payload: fc.uint8Array({ maxLength: 16 })
    })
    await property(arb, async ({ length, payload }) => {
      const client = await FuzzClient.open(relay)
      client.raw.write(concat(encodeFrameHeader(length), payload))
      return client
    })
    await expectRelayAtRest()
  }, 60_000)

  it("mutated handshake frames (ExchangeRandNonce, then ExchangeDh)", async () => {
    await property(fc.record({ second: fc.boolean(), mutations: mutationsArb }), async ({ second, mutations }) => {
      const client = await FuzzClient.open(relay)
      if (!(await client.version())) return client
      const nonce = await client.framesUntil(1, client.step({ _tag: "Start" }))
      if (nonce === undefined) return client
      if (!second) {
        client.raw.write(frameOf(mutate(nonce[0]!, mutations)))
        return client
      }
      client.writeFrames(nonce)
      const dh = await client.framesUntil(1, [])
      if (dh !== undefined) client.raw.write(frameOf(mutate(dh[0]!, mutations)))
      return client
    })
    await expectRelayAtRest()
  }, 60_000)

  it("mutated encrypted frames", async () => {
    await property(mutationsArb, async (mutations) => {
      const client = await FuzzClient.open(relay)
      if (!(await client.handshake())) return client
      const [frame] = client.step({ _tag: "Send", data: encodeInitConnection({ _tag: "Listen" }) })
      client.raw.write(frameOf(mutate(frame!, mutations)))
      return client
    })
    await expectRelayAtRest()
  }, 60_000)

  // A plaintext that is a well-formed ChannelMessage carrying a KeepAlive is
  // legal (the relay then waits for the first message and closes on the init
  // timeout): still a close, within the bound.
  it("random and mutated ChannelMessage plaintexts, sealed correctly", async () => {
    const valid = encodeChannelMessage({ randPadding: new Uint8Array(3), content: { _tag: "User", data: encodeKaMessage({ _tag: "Message", data: encodeInitConnection({ _tag: "Listen" }) }) } })
    const arb = fc.oneof(fc.uint8Array({ maxLength: 96 }), mutationsArb.map((m) => mutate(valid, m)))
    await property(arb, async (plaintext) => {
      const client = await FuzzClient.open(relay)
      if (!(await client.handshake())) return client
      client.raw.writeFrame(client.seal(plaintext))
      return client
    })
    await expectRelayAtRest()
  }, 60_000)

  it("random and mutated KaMessages in a well-formed ChannelMessage", async () => {
    const valid = encodeKaMessage({ _tag: "Message", data: encodeInitConnection({ _tag: "Listen" }) })
    const arb = fc.oneof(fc.uint8Array({ maxLength: 64 }), mutationsArb.map((m) => mutate(valid, m)))
    await property(arb, async (ka) => {
      const client = await FuzzClient.open(relay)
      if (await client.handshake()) {
        client.raw.writeFrame(client.seal(encodeChannelMessage({ randPadding: new Uint8Array(0), content: { _tag: "User", data: ka } })))
      }
      return client
    })
    await expectRelayAtRest()
  }, 60_000)

  it("random and mutated first messages (InitConnection)", async () => {
    const listenKey = newIdentity(crypto).publicKey
    const valids = [
      encodeInitConnection({ _tag: "Connect", publicKey: listenKey }),
      encodeInitConnection({ _tag: "Accept", publicKey: listenKey }),
      encodeInitConnection({ _tag: "Listen" })
    ]
    const arb = fc.oneof(
      fc.uint8Array({ maxLength: 64 }),
      fc.tuple(fc.constantFrom(...valids), mutationsArb).map(([v, m]) => mutate(v, m))
    )
    await fc.assert(
      fc.asyncProperty(arb, async (message) => {
        const client = await FuzzClient.open(relay)
        if (await client.handshake()) client.writeFrames(client.step({ _tag: "Send", data: message }))
        const decoded = decodeInitConnection(message)
        if (decoded._tag === "Ok" && decoded.value._tag === "Listen") {
          // A valid listen: the relay must keep it (and our own close frees it).
          expect(await client.closedWithin(INIT_TIMEOUT_TICKS * TICK_MS * 2)).toBe(false)
          client.raw.destroy()
          return true
        }
        return expectClosed(client)
      }),
      { numRuns: RUNS }
    )
    await expectRelayAtRest()
  }, 60_000)

  it("after all that, the relay still carries a good tunnel", async () => {
    await Effect.runPromise(
      Effect.scoped(
        Effect.gen(function*() {
          const service = yield* listen(relay.endpoint, newIdentity(crypto), options, echo)
          yield* Effect.sleep(50)
          const channel = yield* openTunnel(relay.endpoint, newIdentity(crypto), service.identity.publicKey, options)
          const message = patternBytes(100_000, 3)
          yield* channel.send(message)
          expect(Buffer.from(yield* channel.receive).equals(Buffer.from(message))).toBe(true)
        })
      )
    )
    expect(relay.process.exitCode).toBeNull()
  }, 30_000)

  /** True when the relay took the case as a valid `listen` (it stays open and is counted as a listener). */
  const listenKept = async (client: FuzzClient): Promise<boolean> => {
    if (await client.closedWithin(INIT_TIMEOUT_TICKS * TICK_MS * 2)) return false
    const listeners = (await relay.scrape()).listeners
    client.raw.destroy()
    return listeners > 0
  }
})
