/**
 * The composed connection (secure channel + keepalive) over a simulated link:
 * what the socket adapters see. Handshake and messages with both crypto
 * layers, keepalive timing through the whole stack, rekeys during transfer,
 * the exact bytes of the data path, misuse and sticky close.
 */
import { createHash } from "node:crypto"
import { describe, expect, it } from "vitest"
import { nobleCrypto } from "../src/adapters/crypto-noble.ts"
// auto: node:crypto on Node (as before), noble where node:crypto lacks a primitive (Bun), so test:runtimes can run this file.
import { autoCryptoService } from "../src/adapters/crypto.ts"
const nodeCrypto = autoCryptoService()
import {
  ChannelMisuseError,
  type ConnectionConfig,
  type ConnectionError,
  Connection
} from "../src/core/connection.ts"
import type { CryptoPrimitives } from "../src/core/crypto.ts"
import { decodeChannelMessage, decodeKaMessage, encodeChannelMessage, encodeKaMessage } from "../src/core/messages.ts"
import { makeDeterministicRandom } from "../src/core/random.ts"
import { transportNonce } from "../src/core/secure-channel.ts"
import { inflate } from "./support/capnp-bombs.ts"
import { type Link, makeIdentity, makeLink, type Side, stepMachine } from "./support/sim-link.ts"

const layers: ReadonlyArray<CryptoPrimitives> = [nodeCrypto, nobleCrypto]
const pairs = layers.flatMap((a) => layers.map((b) => [a, b] as const))

type ConnectionLink = Link<Connection, ConnectionError>
type ConnectionSide = Side<Connection, ConnectionError>

interface LinkOptions {
  readonly cryptoA?: CryptoPrimitives
  readonly cryptoB?: CryptoPrimitives
  readonly a?: Partial<ConnectionConfig>
  readonly b?: Partial<ConnectionConfig>
}

const connectionLink = (options: LinkOptions = {}): ConnectionLink => {
  const cryptoA = options.cryptoA ?? nodeCrypto
  const cryptoB = options.cryptoB ?? nodeCrypto
  const idA = makeIdentity(cryptoA, 1)
  const idB = makeIdentity(cryptoB, 2)
  return makeLink<Connection, ConnectionError>(
    new Connection({
      crypto: cryptoA,
      identity: idA,
      expectedRemotePublicKey: idB.publicKey,
      random: makeDeterministicRandom(11),
      ...options.a
    }),
    new Connection({ crypto: cryptoB, identity: idB, random: makeDeterministicRandom(22), ...options.b })
  )
}

const connect = (link: ConnectionLink): void => {
  link.a.start()
  link.b.start()
  link.flush()
}

const utf8 = (text: string): Uint8Array => new TextEncoder().encode(text)

const channelPhase = (side: ConnectionSide) => {
  const phase = side.machine.channel.phase
  if (phase._tag !== "Established") throw new Error(`side ${side.name} is ${phase._tag}`)
  return phase
}

describe("connection", () => {
  for (const [cryptoA, cryptoB] of pairs) {
    it(`${cryptoA.name} ↔ ${cryptoB.name}: authenticates once and carries messages both ways`, () => {
      const link = connectionLink({ cryptoA, cryptoB })
      expect(link.a.machine.isAuthenticated).toBe(false)
      connect(link)
      expect(link.a.machine.isAuthenticated).toBe(true)
      expect(link.b.machine.isAuthenticated).toBe(true)
      expect(link.a.authenticated).toEqual(makeIdentity(nodeCrypto, 2).publicKey)
      expect(link.b.authenticated).toEqual(makeIdentity(nodeCrypto, 1).publicKey)
      expect(link.a.authenticatedCount).toBe(1)
      const fromA = ["one", "", "three"].map(utf8)
      const fromB = [utf8("reply"), new Uint8Array(100_000).fill(7)]
      for (const m of fromA) link.a.send(m)
      for (const m of fromB) link.b.send(m)
      link.flush()
      expect(link.b.delivered).toEqual(fromA)
      expect(link.a.delivered).toEqual(fromB)
    })
  }

  it("a peer with the wrong key is refused before anything is delivered", () => {
    const link = connectionLink({ a: { expectedRemotePublicKey: makeIdentity(nodeCrypto, 9).publicKey } })
    connect(link)
    expect(link.a.closed).toMatchObject({ _tag: "SecureChannelError", reason: "UnexpectedRemoteKey" })
    expect(link.b.closed).toMatchObject({ _tag: "SecureChannelError", reason: "UnexpectedDestination" })
    expect(link.a.authenticated).toBeUndefined()
    expect(link.a.machine.isAuthenticated).toBe(false)
  })

  it("the data path: frame = nonce ‖ AEAD(ChannelMessage{padding, user: KaMessage.message(data)})", () => {
    const link = connectionLink({ a: { maxPaddingBytes: 0 } })
    connect(link)
    const key = channelPhase(link.b).receive
    link.a.send(utf8("payload"))
    const frame = link.a.sentFrames.at(-1)!
    expect(frame.subarray(0, 12)).toEqual(transportNonce(0))
    const plaintext = nodeCrypto.aeadOpen(key.key, frame.subarray(0, 12), frame.subarray(12))
    expect(plaintext).toEqual(
      encodeChannelMessage({
        randPadding: new Uint8Array(0),
        content: { _tag: "User", data: encodeKaMessage({ _tag: "Message", data: utf8("payload") }) }
      })
    )
  })

  it("send before Authenticated throws ChannelMisuseError; after Closed every call does nothing", () => {
    const link = connectionLink()
    expect(() => link.a.machine.send(utf8("early"))).toThrow(ChannelMisuseError)
    link.a.start()
    expect(() => link.a.send(utf8("early"))).toThrow(ChannelMisuseError)
    expect(() => link.a.machine.start()).toThrow(ChannelMisuseError)
    link.b.start()
    link.flush()
    link.b.feed({ _tag: "FrameReceived", frame: new Uint8Array(64).fill(1) })
    expect(link.b.closed).toMatchObject({ reason: "UnexpectedNonce" })
    expect(link.b.machine.isAuthenticated).toBe(false)
    const closed = link.b.machine
    const error = closed.closed
    for (const event of [
      { _tag: "Send", data: utf8("late") },
      { _tag: "Tick" },
      { _tag: "Start" },
      { _tag: "FrameReceived", frame: link.a.sentFrames[0]! }
    ] as const) {
      expect(stepMachine(closed, event)).toEqual([])
      expect(closed.closed).toBe(error)
    }
  })

  it("the handshake times out at handshakeTimeoutTicks (default 32)", () => {
    const link = connectionLink()
    link.a.start()
    for (let i = 0; i < 31; i++) link.a.tick()
    expect(link.a.closed).toBeUndefined()
    link.a.tick()
    expect(link.a.closed).toMatchObject({ _tag: "SecureChannelError", reason: "HandshakeTimeout" })
  })

  it("a user message that is not a KaMessage closes with the keepalive layer's MalformedMessage", () => {
    const link = connectionLink()
    connect(link)
    // Forge a channel-level user message from B that skips the KaMessage wrapping.
    const [forged] = stepMachine(link.b.machine.channel, { _tag: "Send", data: Uint8Array.of(1, 2, 3) })
    if (forged?._tag !== "SendFrame") throw new Error("expected a frame")
    link.a.feed({ _tag: "FrameReceived", frame: forged.frame })
    expect(link.a.closed).toMatchObject({ _tag: "KeepaliveError", reason: "MalformedMessage" })
    expect(link.a.closeCount).toBe(1)
  })
})

describe("keepalive through the whole stack", () => {
  it("an idle peer is closed on exactly the keepaliveTicks-th tick after authentication", () => {
    for (const keepaliveTicks of [32, 7]) {
      const link = connectionLink({ a: { keepaliveTicks } })
      connect(link)
      // B is dead: it never reads, ticks or sends again.
      for (let i = 0; i < keepaliveTicks - 1; i++) link.a.tick()
      expect(link.a.closed).toBeUndefined()
      link.a.tick()
      expect(link.a.closed).toMatchObject({ _tag: "KeepaliveError", reason: "KeepaliveTimeout" })
      expect(link.a.closeCount).toBe(1)
      // A pinged B every keepaliveTicks/2 ticks meanwhile.
      const pings = link.b.inbox.length
      expect(pings).toBe(Math.floor((keepaliveTicks - 1) / Math.floor(keepaliveTicks / 2)))
    }
  })

  it("a quiet but alive peer stays open for 10,000 ticks, through rekeys; keepalives never reach the application", () => {
    const link = connectionLink({ a: { rekeyIntervalTicks: 1000 } })
    connect(link)
    const keys = new Set<string>()
    for (let t = 0; t < 10_000; t++) {
      link.a.tick()
      link.b.tick()
      link.flush()
      keys.add(Buffer.from(channelPhase(link.a).send.key).toString("hex"))
    }
    expect(link.a.closed).toBeUndefined()
    expect(link.b.closed).toBeUndefined()
    expect(link.a.delivered).toEqual([])
    expect(link.b.delivered).toEqual([])
    // Rekeys every 1000 ticks from A, and B's default 3600 countdown restarted by each.
    expect(keys.size).toBe(11)
    // Only keepalives and rekey frames were sent: about one per 16 ticks.
    expect(link.a.sentFrames.length).toBeGreaterThan(600)
    expect(link.a.sentFrames.length).toBeLessThan(700)
  })

  it("ticks with receive paused do not time the peer out; unpaused, they do", () => {
    const link = connectionLink()
    connect(link)
    for (let i = 0; i < 10; i++) link.a.tick()
    for (let i = 0; i < 500; i++) link.a.tick(true)
    expect(link.a.closed).toBeUndefined()
    // Pings went out all along.
    expect(link.b.inbox.length).toBe(Math.floor(510 / 16))
    for (let i = 0; i < 21; i++) link.a.tick()
    expect(link.a.closed).toBeUndefined()
    link.a.tick()
    expect(link.a.closed).toMatchObject({ reason: "KeepaliveTimeout" })
  })

  it("application messages count as life and replace keepalives", () => {
    const link = connectionLink()
    connect(link)
    for (let t = 0; t < 200; t++) {
      if (t % 10 === 0) link.a.send(utf8(`m${t}`))
      link.a.tick()
      link.b.tick()
      link.flush()
    }
    expect(link.a.closed).toBeUndefined()
    expect(link.b.closed).toBeUndefined()
    // A sent only its 20 messages (no keepalive was due); B pinged every 16 ticks.
    expect(link.a.sentFrames).toHaveLength(2 + 20)
    expect(link.b.sentFrames).toHaveLength(2 + Math.floor(200 / 16))
    const key = channelPhase(link.a).receive.key
    const kinds = link.b.sentFrames.slice(2).map((frame) => {
      const plain = nodeCrypto.aeadOpen(key, frame.subarray(0, 12), frame.subarray(12))
      const message = plain === undefined ? undefined : decodeChannelMessage(plain)
      if (message?._tag !== "Ok" || message.value.content._tag !== "User") throw new Error("expected a user message")
      const ka = decodeKaMessage(message.value.content.data)
      return ka._tag === "Ok" ? ka.value._tag : "bad"
    })
    expect(new Set(kinds)).toEqual(new Set(["KeepAlive"]))
  })
})

describe("rekeys during transfer", () => {
  for (const [cryptoA, cryptoB] of pairs) {
    it(`${cryptoA.name} ↔ ${cryptoB.name}: continuous two-way transfer with frequent and simultaneous rekeys`, () => {
      const link = connectionLink({
        cryptoA,
        cryptoB,
        a: { rekeyIntervalTicks: 2, keepaliveTicks: 8 },
        b: { rekeyIntervalTicks: 2, keepaliveTicks: 8 }
      })
      connect(link)
      const choose = makeDeterministicRandom(99)
      const sent = { a: createHash("sha256"), b: createHash("sha256") }
      let crossings = 0
      const rounds = cryptoA === nobleCrypto || cryptoB === nobleCrypto ? 300 : 1000
      for (let round = 0; round < rounds; round++) {
        const draw = choose(4)
        for (const [side, name] of [
          [link.a, "a"],
          [link.b, "b"]
        ] as const) {
          const data = choose(draw[0]! % 64)
          sent[name].update(data)
          side.send(data)
        }
        // Both sides tick before either reads: their rekeys cross whenever both are due.
        link.a.tick()
        link.b.tick()
        if (channelPhase(link.a).pendingRekey !== undefined && channelPhase(link.b).pendingRekey !== undefined) {
          crossings++
        }
        // Deliver part of what is in flight, in random amounts, the rest later.
        for (let i = 0; i < draw[1]! % 4; i++) link.b.receiveOne()
        for (let i = 0; i < draw[2]! % 4; i++) link.a.receiveOne()
        if (draw[3]! % 3 === 0) link.flush()
      }
      link.flush()
      expect(link.a.closed).toBeUndefined()
      expect(link.b.closed).toBeUndefined()
      const digest = (messages: ReadonlyArray<Uint8Array>): string => {
        const hash = createHash("sha256")
        for (const m of messages) hash.update(m)
        return hash.digest("hex")
      }
      expect(link.b.delivered).toHaveLength(rounds)
      expect(link.a.delivered).toHaveLength(rounds)
      expect(digest(link.b.delivered)).toBe(sent.a.digest("hex"))
      expect(digest(link.a.delivered)).toBe(sent.b.digest("hex"))
      expect(crossings).toBeGreaterThan(10)
    })
  }
})

describe("hop bounds: decoding cannot amplify, rekeys are rate-limited", () => {
  const sealAs = (link: ConnectionLink, plaintext: Uint8Array): Uint8Array => {
    const send = channelPhase(link.a).send
    const nonce = transportNonce(send.counter)
    return nodeCrypto.aeadSeal(send.key, nonce, plaintext, nonce)
  }
  const honestUser = encodeChannelMessage({
    randPadding: new Uint8Array(0),
    content: { _tag: "User", data: encodeKaMessage({ _tag: "Message", data: utf8("hi") }) }
  })

  it("with maxExpansion, a ChannelMessage claiming far more than its wire size is refused before it is unpacked", () => {
    const link = connectionLink({ b: { maxExpansion: 2 } })
    connect(link)
    const bomb = inflate(honestUser, 128 * 1024) // 1 MiB unpacked from a few KiB
    expect(bomb.length).toBeLessThan(4096)
    link.b.feed({ _tag: "FrameReceived", frame: sealAs(link, bomb) })
    expect(link.b.closed).toMatchObject({ reason: "MalformedMessage", decodeError: { reason: "TooLarge" } })
    expect(link.b.delivered).toEqual([])
  })

  it("with maxExpansion, a KaMessage inside an honest ChannelMessage is held to the same bound", () => {
    const link = connectionLink({ b: { maxExpansion: 2 } })
    connect(link)
    const kaBomb = inflate(encodeKaMessage({ _tag: "Message", data: utf8("hi") }), 128 * 1024)
    const plaintext = encodeChannelMessage({ randPadding: new Uint8Array(0), content: { _tag: "User", data: kaBomb } })
    link.b.feed({ _tag: "FrameReceived", frame: sealAs(link, plaintext) })
    expect(link.b.closed).toMatchObject({ _tag: "KeepaliveError", reason: "MalformedMessage", decodeError: { reason: "TooLarge" } })
  })

  it("without maxExpansion (end to end, where plaintext compresses) the same message is delivered", () => {
    const link = connectionLink()
    connect(link)
    link.b.feed({ _tag: "FrameReceived", frame: sealAs(link, inflate(honestUser, 128 * 1024)) })
    expect(link.b.closed).toBeUndefined()
    expect(link.b.delivered).toEqual([utf8("hi")])
  })

  it("honest traffic passes a factor of 2: random padding, ciphertext, small relay messages", () => {
    const link = connectionLink({ a: { maxPaddingBytes: 255 }, b: { maxExpansion: 2 } })
    connect(link)
    const messages = [new Uint8Array(0), utf8("x"), makeDeterministicRandom(5)(1024 * 1024 - 4096), makeDeterministicRandom(6)(100)]
    for (const m of messages) link.a.send(m)
    link.flush()
    expect(link.b.closed).toBeUndefined()
    expect(link.b.delivered).toEqual(messages)
  })

  it("a peer starting more rekeys than peerRekeyLimit is closed RekeyFlood; the allowance refills with ticks", () => {
    const link = connectionLink({
      a: { rekeyIntervalTicks: 1 },
      b: { peerRekeyLimit: { burst: 2, refillTicks: 3 }, rekeyIntervalTicks: Infinity }
    })
    connect(link)
    // Two rekeys at once pass; then one per three ticks.
    for (let i = 0; i < 2; i++) {
      link.a.tick()
      link.flush()
    }
    expect(link.b.closed).toBeUndefined()
    link.b.tick()
    link.b.tick()
    link.b.tick() // one token back
    link.a.tick()
    link.flush()
    expect(link.b.closed).toBeUndefined()
    link.a.tick()
    link.flush()
    expect(link.b.closed).toMatchObject({ _tag: "SecureChannelError", reason: "RekeyFlood" })
  })
})
