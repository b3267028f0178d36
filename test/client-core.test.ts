/**
 * The client's pure decisions: relay address parsing, the reconnect
 * schedule, the byte-stream half-close machine and the connect outcome.
 */
import { describe, expect, it } from "vitest"
import fc from "fast-check"
import {
  backoffDelayMs,
  checkBackoffPolicy,
  defaultBackoffPolicy,
  initialReconnect,
  jitterUnit,
  stepReconnect,
  type BackoffPolicy,
  type ReconnectState
} from "../src/core/backoff.ts"
import {
  classifyFailure,
  connectFailureReason,
  describeOutcome,
  formatConnectFailure,
  type Attempt
} from "../src/core/connect-outcome.ts"
import { bytesToHex } from "../src/core/keys.ts"
import { formatRelayAddress, parseHostPort, parseRelayAddress } from "../src/core/relay-address.ts"
import {
  decodeStreamError,
  encodeStreamError,
  MAX_STREAM_ERROR_BYTES,
  STREAM_ERROR_PREFIX,
  type StreamCommand,
  type StreamEvent,
  StreamState
} from "../src/core/stream-state.ts"
import { handleAll } from "./support/handle-all.ts"

const keyHex = "3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29"

describe("relay address", () => {
  it("parses key@host:port, IPv4, names and bracketed IPv6", () => {
    for (const [text, host, port] of [
      [`${keyHex}@127.0.0.1:4747`, "127.0.0.1", 4747],
      [`  ${keyHex.toUpperCase()}@relay.example.org:1  `, "relay.example.org", 1],
      [`${keyHex}@[::1]:65535`, "::1", 65535]
    ] as const) {
      const result = parseRelayAddress(text)
      expect(result._tag).toBe("Ok")
      if (result._tag !== "Ok") continue
      expect(bytesToHex(result.value.publicKey)).toBe(keyHex)
      expect(result.value.host).toBe(host)
      expect(result.value.port).toBe(port)
    }
  })

  it("parses ws:// and wss:// relay addresses, with or without a trailing slash, and formats them back", () => {
    for (const [text, scheme, host, port] of [
      [`${keyHex}@ws://127.0.0.1:4748`, "ws", "127.0.0.1", 4748],
      [`${keyHex}@WSS://relay.example.org:443/`, "wss", "relay.example.org", 443],
      [`${keyHex}@ws://[::1]:80`, "ws", "::1", 80]
    ] as const) {
      const result = parseRelayAddress(text)
      expect(result._tag, text).toBe("Ok")
      if (result._tag !== "Ok") continue
      expect(result.value.scheme).toBe(scheme)
      expect(result.value.host).toBe(host)
      expect(result.value.port).toBe(port)
      expect(formatRelayAddress(result.value)).toBe(`${keyHex}@${scheme}://${host.includes(":") ? `[${host}]` : host}:${port}`)
    }
    // A TCP address has no scheme at all, so code that builds addresses by hand keeps meaning TCP.
    const tcp = parseRelayAddress(`${keyHex}@127.0.0.1:4747`)
    expect(tcp._tag === "Ok" && !("scheme" in tcp.value)).toBe(true)
  })

  it("refuses anything else with a reason and a message that shows the expected form", () => {
    const cases: ReadonlyArray<readonly [string, string]> = [
      ["127.0.0.1:4747", "MissingKey"],
      [`${keyHex.slice(2)}@127.0.0.1:4747`, "BadKey"],
      [`${keyHex.slice(0, 63)}x@127.0.0.1:4747`, "BadKey"],
      [`${keyHex}@127.0.0.1`, "MissingPort"],
      [`${keyHex}@127.0.0.1:`, "BadPort"],
      [`${keyHex}@127.0.0.1:0`, "BadPort"],
      [`${keyHex}@127.0.0.1:65536`, "BadPort"],
      [`${keyHex}@127.0.0.1:80a`, "BadPort"],
      [`${keyHex}@:4747`, "BadHost"],
      [`${keyHex}@::1:4747`, "BadHost"],
      [`${keyHex}@[::1:4747`, "BadHost"],
      [`${keyHex}@[::1]4747`, "MissingPort"],
      [`${keyHex}@bad host:4747`, "BadHost"],
      [`${keyHex}@http://127.0.0.1:4747`, "BadScheme"],
      [`${keyHex}@ws://127.0.0.1:4747/relay`, "BadScheme"],
      [`${keyHex}@ws://127.0.0.1`, "MissingPort"],
      [`${keyHex}@wss://:443`, "BadHost"],
      ["", "MissingKey"]
    ]
    for (const [text, reason] of cases) {
      const result = parseRelayAddress(text)
      expect(result._tag, text).toBe("Err")
      if (result._tag !== "Err") continue
      expect(result.error.reason, text).toBe(reason)
      expect(result.error.message).toContain("<host>:<port>")
    }
  })

  it("formats what it parses back to the canonical text", () => {
    fc.assert(
      fc.property(
        fc.uint8Array({ minLength: 32, maxLength: 32 }),
        fc.oneof(fc.constantFrom("localhost", "10.0.0.1", "::1", "fe80::1"), fc.domain()),
        fc.integer({ min: 1, max: 65535 }),
        fc.constantFrom(undefined, "ws" as const, "wss" as const),
        (publicKey, host, port, scheme) => {
          const text = formatRelayAddress({ publicKey, host, port, scheme })
          const parsed = parseRelayAddress(text)
          expect(parsed._tag).toBe("Ok")
          if (parsed._tag === "Ok") expect(formatRelayAddress(parsed.value)).toBe(text)
        }
      )
    )
  })

  it("parses a forward target host:port", () => {
    expect(parseHostPort("127.0.0.1:8080")).toEqual({ _tag: "Ok", value: { host: "127.0.0.1", port: 8080 } })
    expect(parseHostPort("[::1]:22")).toEqual({ _tag: "Ok", value: { host: "::1", port: 22 } })
    const bad = parseHostPort("8080")
    expect(bad._tag).toBe("Err")
    if (bad._tag === "Err") expect(bad.error.message).toContain("expected <host>:<port>")
  })
})

describe("backoff", () => {
  const policy: BackoffPolicy = {
    initialMs: 100,
    maxMs: 2000,
    multiplier: 2,
    jitter: 0.5,
    resetAfterMs: 5000,
    displacedWithinMs: 1000,
    displacedInitialMs: 3000,
    displacedMaxMs: 12_000
  }

  it("doubles from the initial wait up to the bound, without jitter", () => {
    expect([0, 1, 2, 3, 4, 5, 6, 50, 5000].map((n) => backoffDelayMs(policy, n, 0))).toEqual([
      100, 200, 400, 800, 1600, 2000, 2000, 2000, 2000
    ])
  })

  it("stays within [step × (1 - jitter), step] and never above maxMs", () => {
    fc.assert(
      fc.property(fc.nat({ max: 100 }), fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true }), (n, unit) => {
        const step = Math.min(policy.maxMs, policy.initialMs * 2 ** n)
        const delay = backoffDelayMs(policy, n, unit)
        expect(delay).toBeLessThanOrEqual(policy.maxMs)
        expect(delay).toBeLessThanOrEqual(step)
        expect(delay).toBeGreaterThanOrEqual(Math.floor(step * (1 - policy.jitter)))
      })
    )
  })

  it("turns 4 random bytes into a unit in [0,1)", () => {
    expect(jitterUnit(new Uint8Array([0, 0, 0, 0]))).toBe(0)
    expect(jitterUnit(new Uint8Array([255, 255, 255, 255]))).toBeLessThan(1)
    expect(jitterUnit(new Uint8Array([128, 0, 0, 0]))).toBe(0.5)
  })

  it("checks policies", () => {
    expect(checkBackoffPolicy(defaultBackoffPolicy)).toBeUndefined()
    expect(checkBackoffPolicy({ ...policy, maxMs: 50 })?.field).toBe("maxMs")
    expect(checkBackoffPolicy({ ...policy, multiplier: 0.5 })?.field).toBe("multiplier")
    expect(checkBackoffPolicy({ ...policy, jitter: 2 })?.field).toBe("jitter")
    expect(checkBackoffPolicy({ ...policy, initialMs: -1 })?.field).toBe("initialMs")
  })

  it("walks connecting → listening → backing off → connecting, counting consecutive failures", () => {
    let state: ReconnectState = initialReconnect
    const feed = (event: Parameters<typeof stepReconnect>[2]) => {
      const [next, command] = stepReconnect(policy, state, event)
      state = next
      return command
    }
    expect(feed({ _tag: "Failed", now: 0, error: "refused", jitter: 0 })).toEqual({ _tag: "Wait", delayMs: 100 })
    expect(state).toMatchObject({ _tag: "BackingOff", failures: 1, retryAt: 100, lastError: "refused" })
    expect(feed({ _tag: "RetryDue" })).toEqual({ _tag: "Connect" })
    expect(feed({ _tag: "Failed", now: 200, error: "refused", jitter: 0 })).toEqual({ _tag: "Wait", delayMs: 200 })
    expect(feed({ _tag: "RetryDue" })).toEqual({ _tag: "Connect" })
    feed({ _tag: "Listening", now: 500 })
    expect(state).toMatchObject({ _tag: "Listening", failures: 2, since: 500 })
    // Dropped soon after opening: the schedule goes on growing.
    expect(feed({ _tag: "Failed", now: 600, error: "lost", jitter: 0 })).toEqual({ _tag: "Wait", delayMs: 400 })
    feed({ _tag: "RetryDue" })
    feed({ _tag: "Listening", now: 1000 })
    // Up for resetAfterMs: the next failure starts over.
    expect(feed({ _tag: "Failed", now: 6000, error: "lost", jitter: 0 })).toEqual({ _tag: "Wait", delayMs: 100 })
    // Events that do not apply change nothing.
    expect(feed({ _tag: "Listening", now: 6001 })).toEqual({ _tag: "None" })
    expect(feed({ _tag: "Failed", now: 6001, error: "again", jitter: 0 })).toEqual({ _tag: "None" })
    expect(state).toMatchObject({ _tag: "BackingOff", lastError: "lost" })
  })

  it("the owner of a contested channel (closed by the relay after the window) retries on the first step every time", () => {
    let state: ReconnectState = initialReconnect
    const feed = (event: Parameters<typeof stepReconnect>[2]) => {
      const [next, command] = stepReconnect(policy, state, event)
      state = next
      return command
    }
    feed({ _tag: "Listening", now: 0 })
    // Taken over again and again after 1.5 s up (past the 1 s window, short of the 5 s reset):
    // the wait stays at the first step, well inside a newcomer's window.
    for (let round = 0, now = 1500; round < 6; round++, now += 1700) {
      expect(feed({ _tag: "Failed", now, error: "closed", jitter: 0, closedByRelay: true })).toEqual({ _tag: "Wait", delayMs: 100 })
      feed({ _tag: "RetryDue" })
      feed({ _tag: "Listening", now: now + 200 })
    }
    // A channel the relay did not close (a reset) after the window still counts up.
    expect(feed({ _tag: "Failed", now: 20_000, error: "reset", jitter: 0 })).toEqual({ _tag: "Wait", delayMs: 100 })
    feed({ _tag: "RetryDue" })
    feed({ _tag: "Listening", now: 20_100 })
    expect(feed({ _tag: "Failed", now: 21_600, error: "reset", jitter: 0 })).toEqual({ _tag: "Wait", delayMs: 200 })
  })

  it("a listen channel the relay closes soon after it opened, twice in a row, was displaced: a slower schedule of its own, said in the status", () => {
    let state: ReconnectState = initialReconnect
    const feed = (event: Parameters<typeof stepReconnect>[2]) => {
      const [next, command] = stepReconnect(policy, state, event)
      state = next
      return command
    }
    const up = (now: number) => {
      feed({ _tag: "RetryDue" })
      feed({ _tag: "Listening", now })
    }
    feed({ _tag: "Listening", now: 0 })
    // Closed by the relay 0.4 s after opening: maybe the relay stopped; retry as usual.
    expect(feed({ _tag: "Failed", now: 400, error: "the relay closed the listen channel", jitter: 0, closedByRelay: true }))
      .toEqual({ _tag: "Wait", delayMs: 100 })
    expect(state).toMatchObject({ _tag: "BackingOff", displaced: false, displacements: 1 })
    up(500)
    // Again: displaced.
    expect(feed({ _tag: "Failed", now: 900, error: "the relay closed the listen channel", jitter: 0, closedByRelay: true }))
      .toEqual({ _tag: "Wait", delayMs: 3000 })
    expect(state).toMatchObject({ _tag: "BackingOff", displaced: true, displacements: 2 })
    expect((state as { lastError: string }).lastError).toContain(
      "another process is probably listening with the same identity on this relay"
    )
    // Again and again: the wait grows to its own bound.
    up(3400)
    expect(feed({ _tag: "Failed", now: 3500, error: "x", jitter: 0, closedByRelay: true })).toEqual({ _tag: "Wait", delayMs: 6000 })
    up(9500)
    expect(feed({ _tag: "Failed", now: 9600, error: "x", jitter: 0, closedByRelay: true })).toEqual({ _tag: "Wait", delayMs: 12_000 })
    up(21_600)
    expect(feed({ _tag: "Failed", now: 21_700, error: "x", jitter: 0, closedByRelay: true })).toEqual({ _tag: "Wait", delayMs: 12_000 })
    // A reset soon after opening is an ordinary failure, and breaks the streak.
    up(33_700)
    expect(feed({ _tag: "Failed", now: 33_800, error: "reset", jitter: 0 })).toMatchObject({ _tag: "Wait" })
    expect(state).toMatchObject({ _tag: "BackingOff", displaced: false, displacements: 0, lastError: "reset" })
    // So does a channel that was up longer than the window.
    up(40_000)
    expect(feed({ _tag: "Failed", now: 40_400, error: "closed", jitter: 0, closedByRelay: true })).toMatchObject({ _tag: "Wait" })
    up(41_000)
    expect(feed({ _tag: "Failed", now: 46_000, error: "closed", jitter: 0, closedByRelay: true })).toEqual({ _tag: "Wait", delayMs: 100 })
    expect(state).toMatchObject({ displaced: false, displacements: 0, failures: 1 })
  })

  it("the owner, closed after it was up a while, comes back on the normal schedule, faster than the displacement window", () => {
    // Two processes with one key, modelled by their states alone: the newest
    // channel wins on the relay. The owner's return always lands within the
    // newcomer's displacement window, so the newcomer always waits longer.
    fc.assert(
      fc.property(fc.array(fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true }), { minLength: 20, maxLength: 20 }), (units) => {
        const p = defaultBackoffPolicy
        let owner: ReconnectState = { _tag: "Listening", failures: 0, displacements: 0, since: 0 }
        // The newcomer was already displaced once (its first quick close is retried as usual).
        let newcomer: ReconnectState = { _tag: "Listening", failures: 1, displacements: 1, since: 100_000 }
        let now = 100_000
        const ownerWaits: Array<number> = []
        for (let i = 0; i < 10; i++) {
          // The newcomer's channel displaced the owner's at `now`.
          const [ownerOff, ownerWait] = stepReconnect(p, owner, { _tag: "Failed", now, error: "closed", jitter: units[2 * i]!, closedByRelay: true })
          const wait = (ownerWait as { delayMs: number }).delayMs
          ownerWaits.push(wait)
          expect(ownerOff).toMatchObject({ displaced: false })
          now += wait
          owner = { _tag: "Listening", failures: ownerOff.failures, displacements: ownerOff.displacements, since: now }
          // The owner is back: the newcomer was displaced.
          const [newOff, newWait] = stepReconnect(p, newcomer, { _tag: "Failed", now, error: "closed", jitter: units[2 * i + 1]!, closedByRelay: true })
          expect(newOff).toMatchObject({ displaced: true, displacements: i + 2 })
          now += (newWait as { delayMs: number }).delayMs
          newcomer = { _tag: "Listening", failures: newOff.failures, displacements: newOff.displacements, since: now }
        }
        expect(Math.max(...ownerWaits)).toBeLessThan(p.displacedWithinMs)
      })
    )
  })
})

describe("byte stream over a tunnel", () => {
  const config = { maxMessageBytes: 4 }
  const run = (events: ReadonlyArray<StreamEvent>, state: StreamState = new StreamState(config)) => {
    const commands: Array<StreamCommand> = []
    for (const event of events) commands.push(...handleAll(state, event))
    return { state, commands }
  }
  const bytes = (...values: Array<number>) => new Uint8Array(values)

  it("splits writes into messages and never sends an empty one for an empty write", () => {
    const { commands } = run([{ _tag: "Write", data: bytes(1, 2, 3, 4, 5, 6, 7, 8, 9) }, { _tag: "Write", data: bytes() }])
    expect(commands.map((c) => (c._tag === "Send" ? [...c.data] : c._tag))).toEqual([[1, 2, 3, 4], [5, 6, 7, 8], [9]])
  })

  it("half close: we end, the peer keeps sending, then ends; then the tunnel finishes", () => {
    const { state, commands } = run([
      { _tag: "End" },
      { _tag: "EndSent" },
      { _tag: "Received", data: bytes(7) },
      { _tag: "Received", data: bytes() }
    ])
    expect(commands.map((c) => c._tag)).toEqual(["SendEnd", "Deliver", "DeliverEnd", "Finish"])
    expect(state.outcome).toEqual({ _tag: "Finished" })
  })

  it("the peer ends first: we can still write, and finishing waits for our end to be sent", () => {
    const { commands } = run([
      { _tag: "Received", data: bytes() },
      { _tag: "Write", data: bytes(1) },
      { _tag: "End" },
      { _tag: "EndSent" }
    ])
    expect(commands.map((c) => c._tag)).toEqual(["DeliverEnd", "Send", "SendEnd", "Finish"])
  })

  it("ending twice sends one end; writing after end is refused without harming the stream", () => {
    const { state, commands } = run([{ _tag: "End" }, { _tag: "End" }, { _tag: "Write", data: bytes(1) }])
    expect(commands.map((c) => c._tag)).toEqual(["SendEnd", "Refuse"])
    expect(state.outcome).toBeUndefined()
  })

  it("fails on bytes after the peer's end, on an early close, and on abort", () => {
    expect(run([{ _tag: "Received", data: bytes() }, { _tag: "Received", data: bytes(1) }]).commands.at(-1)).toMatchObject({
      _tag: "Fail",
      error: { reason: "DataAfterEnd" }
    })
    const early = run([{ _tag: "End" }, { _tag: "EndSent" }, { _tag: "ChannelEnded", message: "relay died" }])
    expect(early.commands.at(-1)).toMatchObject({ _tag: "Fail", error: { reason: "ClosedEarly" } })
    if (early.commands.at(-1)?._tag === "Fail") {
      const last = early.commands.at(-1) as Extract<StreamCommand, { _tag: "Fail" }>
      expect(last.error.message).toContain("the peer had not finished sending")
      expect(last.error.message).not.toContain("we had not finished")
      expect(last.error.message).toContain("relay died")
    }
    expect(run([{ _tag: "Abort", message: "bye" }]).commands).toEqual([
      { _tag: "Fail", error: { _tag: "StreamError", reason: "Aborted", message: "bye" } }
    ])
  })

  const hex = (data: Uint8Array) => Buffer.from(data).toString("hex")

  it("a stream error message has fixed bytes: 0x00, 'offset-relay error:', the code, a space, the text", () => {
    const message = encodeStreamError({ code: "local-refused", text: "ECONNREFUSED" })
    expect(hex(message)).toBe(
      "00" + Buffer.from("offset-relay error:").toString("hex") + Buffer.from("local-refused ECONNREFUSED").toString("hex")
    )
    expect(decodeStreamError(message)).toEqual({ code: "local-refused", text: "ECONNREFUSED" })
    // Bounded, cut on a character boundary; control characters never reach a terminal.
    const long = encodeStreamError({ code: "aborted", text: "é".repeat(2000) })
    expect(long.length).toBeLessThanOrEqual(MAX_STREAM_ERROR_BYTES)
    expect(decodeStreamError(long).text).toMatch(/^é+$/)
    const hostile = new Uint8Array([...STREAM_ERROR_PREFIX, ...Buffer.from("aborted \u001b[2Jboo\n")])
    expect(decodeStreamError(hostile)).toEqual({ code: "aborted", text: "[2Jboo" })
    expect(decodeStreamError(new Uint8Array([...STREAM_ERROR_PREFIX, ...Buffer.from("NOT A CODE")])).code).toBe("unknown")
  })

  it("abort with a report sends the stream error, then fails; the peer's stream error fails ours with its reason", () => {
    const aborted = run([{ _tag: "Abort", message: "target down", tell: { code: "local-refused", text: "ECONNREFUSED" } }])
    expect(aborted.commands.map((c) => c._tag)).toEqual(["SendError", "Fail"])
    expect((aborted.commands[0] as Extract<StreamCommand, { _tag: "SendError" }>).data).toEqual(
      encodeStreamError({ code: "local-refused", text: "ECONNREFUSED" })
    )
    const told = encodeStreamError({ code: "local-refused", text: "ECONNREFUSED" })
    for (const before of [[], [{ _tag: "Received", data: bytes(1) }], [{ _tag: "Received", data: bytes() }]] as Array<Array<StreamEvent>>) {
      const received = run([...before, { _tag: "Received", data: told }])
      expect(received.commands.at(-1)).toEqual({
        _tag: "Fail",
        error: {
          _tag: "StreamError",
          reason: "PeerError",
          peerCode: "local-refused",
          message: "the peer's local service refused the connection (ECONNREFUSED)"
        }
      })
    }
  })

  it("never sends a data message that reads as a stream error, and loses no byte doing so", () => {
    const withPrefix = fc.array(fc.oneof(fc.uint8Array({ maxLength: 30 }), fc.constant(STREAM_ERROR_PREFIX)), { maxLength: 6 })
      .map((parts) => Uint8Array.from(parts.flatMap((p) => [...p])))
    fc.assert(
      fc.property(withPrefix, fc.integer({ min: 1, max: 40 }), fc.array(fc.nat(), { maxLength: 5 }), (data, max, cuts) => {
        // Written in several pieces at arbitrary cuts, with any message size.
        const points = [...new Set(cuts.map((c) => c % (data.length + 1)))].sort((x, y) => x - y)
        const writes: Array<StreamEvent> = []
        let from = 0
        for (const point of [...points, data.length]) {
          writes.push({ _tag: "Write", data: data.subarray(from, point) })
          from = point
        }
        const state = new StreamState({ maxMessageBytes: max })
        const sent: Array<Uint8Array> = []
        for (const event of writes) {
          for (const c of handleAll(state, event)) if (c._tag === "Send") sent.push(c.data)
        }
        for (const message of sent) {
          expect(message.length).toBeGreaterThan(0)
          const received = handleAll(new StreamState({ maxMessageBytes: max }), { _tag: "Received", data: message })
          expect(received.map((c) => c._tag)).toEqual(["Deliver"])
        }
        expect(hex(Uint8Array.from(sent.flatMap((m) => [...m])))).toBe(hex(data))
      })
    )
  })

  it("after finishing, a channel end changes nothing", () => {
    const done = run([{ _tag: "End" }, { _tag: "EndSent" }, { _tag: "Received", data: bytes() }])
    const after = run([{ _tag: "ChannelEnded", message: "closed" }], done.state)
    expect(after.commands).toEqual([])
    expect(after.state.outcome).toEqual({ _tag: "Finished" })
  })

  it("delivers exactly the bytes written, in order, for any split and any interleaving of ends", () => {
    fc.assert(
      fc.property(fc.array(fc.uint8Array({ maxLength: 11 }), { maxLength: 20 }), (writes) => {
        const { commands } = run(writes.map((data) => ({ _tag: "Write", data }) as const))
        const sent = commands.flatMap((c) => (c._tag === "Send" ? [...c.data] : []))
        expect(sent).toEqual(writes.flatMap((w) => [...w]))
        for (const c of commands) if (c._tag === "Send") expect(c.data.length).toBeGreaterThan(0)
        for (const c of commands) if (c._tag === "Send") expect(c.data.length).toBeLessThanOrEqual(4)
      })
    )
  })
})

describe("connect outcome", () => {
  it("names hop failures and tunnel failures differently", () => {
    expect(classifyFailure("relay", { reason: "Reset", message: "ECONNREFUSED" })._tag).toBe("Unreachable")
    // Closed before the relay's version prefix: it refused us at accept; during its handshake: maybe the wrong key.
    expect(classifyFailure("relay", { reason: "Reset", detail: "ClosedBeforeVersion", message: "x" })).toMatchObject({
      _tag: "RelayRefused",
      message: expect.stringContaining("connection limit")
    })
    expect(describeOutcome(classifyFailure("relay", { reason: "Closed", message: "x" }))).toContain(
      "the key in the address may not be the relay's, or the relay is shutting down"
    )
    expect(connectFailureReason([{ relay: "r", outcome: { _tag: "RelayRefused", message: "m" } }])).toBe("RelayRefused")
    // Closed after our connect request: the relay's doing or the peer's; the peer is never blamed alone.
    expect(describeOutcome(classifyFailure("tunnel", { reason: "Closed", message: "x" }))).toContain(
      "or the relay refused the request (our key is not on its allow-list"
    )
    expect(classifyFailure("relay", { reason: "Protocol", detail: "UnexpectedRemoteKey", message: "x" })._tag).toBe(
      "RelayKeyMismatch"
    )
    expect(classifyFailure("tunnel", { reason: "Closed", message: "tunnel: closed" })).toMatchObject({
      _tag: "Rejected"
    })
    expect(classifyFailure("tunnel", { reason: "Protocol", detail: "UnexpectedRemoteKey", message: "x" })._tag).toBe(
      "PeerAuthenticationFailed"
    )
    expect(classifyFailure("tunnel", { reason: "HandshakeTimeout", message: "x" })._tag).toBe("TimedOut")
    expect(classifyFailure("tunnel", { reason: "Reset", message: "x" })._tag).toBe("Lost")
  })

  it("ranks authentication over rejection over timeout over unreachable, and lists every relay", () => {
    const a = (relay: string, outcome: Attempt["outcome"]): Attempt => ({ relay, outcome })
    const unreachable = a("r1", { _tag: "Unreachable", message: "refused" })
    const rejected = a("r2", { _tag: "Rejected", message: "rejected: closed" })
    const mitm = a("r3", { _tag: "PeerAuthenticationFailed", message: "someone else" })
    expect(connectFailureReason([])).toBe("NoRelays")
    expect(connectFailureReason([unreachable])).toBe("Unreachable")
    expect(connectFailureReason([unreachable, rejected])).toBe("Rejected")
    expect(connectFailureReason([unreachable, rejected, mitm])).toBe("Authentication")
    expect(connectFailureReason([unreachable, a("r4", { _tag: "TimedOut", message: "slow" })])).toBe("Timeout")
    const text = formatConnectFailure("peer", [unreachable, rejected])
    expect(text.split("\n")).toEqual([
      "peer peer was not reached: the relays closed our connect request (the peer is not listening there or refused us, or the relay refused us)",
      "  r1: unreachable: refused",
      "  r2: closed by the relay: rejected: closed"
    ])
  })
})
