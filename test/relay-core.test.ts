/**
 * Transition tests of the relay core: events in, commands out, nothing else.
 * One test per rule of the module header of src/core/relay-core.ts, the two
 * diagrams of seed/relaying-tcp-connections-in-offset.md, and every
 * forbidden message. Each step also cross-checks the core's internal tables.
 */
import { describe, expect, it } from "vitest"
import { publicKeyHex } from "../src/core/keys.ts"
import {
  decodeIncomingConnection,
  encodeIncomingConnection,
  encodeInitConnection,
  encodeRejectConnection,
  type InitConnection
} from "../src/core/messages.ts"
import {
  CLOSE_REASONS,
  checkRelayConfig,
  type CloseMode,
  type CloseReason,
  ConnectionId,
  defaultRelayConfig,
  endReasonOfChannelFailure,
  idleRelayStats,
  RelayCore,
  type RelayCommand,
  type RelayConfig,
  type RelayLimit,
  type RelayEvent
} from "../src/core/relay-core.ts"
import { ABORTED_REASONS_AND_LIMITS } from "./support/close-modes.ts"
import { handleAll } from "./support/handle-all.ts"

const key = (n: number): Uint8Array => new Uint8Array(32).fill(n)
const C = key(0xc1)
const D = key(0xd1)
const E = key(0xe1)

const id = ConnectionId

/** A core plus shorthands for the events an adapter feeds; checks invariants after every event. */
class Harness {
  readonly core: RelayCore
  constructor(config: Partial<RelayConfig> = {}) {
    this.core = new RelayCore({ ...defaultRelayConfig, ...config })
  }
  /** Whether listeners read their IncomingConnection messages (each is reported written at once). */
  listenersRead = true
  feed(event: RelayEvent): ReadonlyArray<RelayCommand> {
    const commands = handleAll(this.core, event)
    expect(this.core.checkInvariants()).toEqual([])
    if (this.listenersRead) {
      for (const command of commands) {
        if (command._tag !== "SendIncomingConnection") continue
        expect(handleAll(this.core, { _tag: "IncomingConnectionWritten", id: command.id })).toEqual([])
      }
    }
    return commands
  }
  opened(n: number, prefix = "203.0.113.1"): ReadonlyArray<RelayCommand> {
    return this.feed({ _tag: "Opened", id: id(n), prefix })
  }
  hello(n: number): ReadonlyArray<RelayCommand> {
    return this.feed({ _tag: "HelloReceived", id: id(n) })
  }
  usage(n: number, heldBytes: number, deliveredBytes = 0): ReadonlyArray<RelayCommand> {
    return this.feed({ _tag: "Usage", id: id(n), heldBytes, deliveredBytes })
  }
  authenticated(n: number, publicKey: Uint8Array): ReadonlyArray<RelayCommand> {
    return this.feed({ _tag: "Authenticated", id: id(n), publicKey })
  }
  received(n: number, message: Uint8Array): ReadonlyArray<RelayCommand> {
    return this.feed({ _tag: "Received", id: id(n), message })
  }
  closed(n: number): ReadonlyArray<RelayCommand> {
    return this.feed({ _tag: "Closed", id: id(n) })
  }
  ticks(count: number): ReadonlyArray<RelayCommand> {
    const all: Array<RelayCommand> = []
    for (let i = 0; i < count; i++) all.push(...this.feed({ _tag: "Tick" }))
    return all
  }
  /** Opens and authenticates connection n as `publicKey`; expects no commands. */
  authed(n: number, publicKey: Uint8Array): void {
    expect(this.opened(n)).toEqual([])
    expect(this.authenticated(n, publicKey)).toEqual([])
  }
  init(n: number, publicKey: Uint8Array, init: InitConnection): ReadonlyArray<RelayCommand> {
    this.authed(n, publicKey)
    return this.received(n, encodeInitConnection(init))
  }
  listen(n: number, publicKey: Uint8Array): ReadonlyArray<RelayCommand> {
    return this.init(n, publicKey, { _tag: "Listen" })
  }
  connect(n: number, publicKey: Uint8Array, target: Uint8Array): ReadonlyArray<RelayCommand> {
    return this.init(n, publicKey, { _tag: "Connect", publicKey: target })
  }
  accept(n: number, publicKey: Uint8Array, connector: Uint8Array): ReadonlyArray<RelayCommand> {
    return this.init(n, publicKey, { _tag: "Accept", publicKey: connector })
  }
  reject(listener: number, connector: Uint8Array): ReadonlyArray<RelayCommand> {
    return this.received(listener, encodeRejectConnection({ publicKey: connector }))
  }
  /** connect(target) that must become a half tunnel waiting on listen channel `listener`. */
  pending(n: number, publicKey: Uint8Array, target: Uint8Array, listener: number): void {
    expect(summary(this.connect(n, publicKey, target))).toEqual([
      `hold ${n} on ${listener}`,
      `incoming ${publicKeyHex(publicKey).slice(0, 4)} on ${listener}`
    ])
  }
}

/** Commands as short strings, so a failing test shows the whole sequence at a glance. */
const summary = (commands: ReadonlyArray<RelayCommand>): Array<string> =>
  commands.map((command) => {
    switch (command._tag) {
      case "SendIncomingConnection":
        return `incoming ${publicKeyHex(command.publicKey).slice(0, 4)} on ${command.id}`
      case "HoldConnect":
        return `hold ${command.id} on ${command.listener}`
      case "Splice":
        return `splice ${command.connectId}+${command.acceptId}`
      case "Close":
        return `close ${command.id} ${command.reason}${command.limit === undefined ? "" : ` (${command.limit})`} ${command.mode}`
      case "PauseReading":
        return `pause ${command.id}`
      case "ResumeReading":
        return `resume ${command.id}`
    }
  })

// The close mode the module header gives: abort for the hostile or dead,
// and for limits that only refuse newcomers (before any handshake).
const ABORTING: ReadonlyArray<string> = [
  ...ABORTED_REASONS_AND_LIMITS,
  "max-connections",
  "max-buffered-bytes",
  "handshake-rate",
  "max-unidentified-per-prefix",
  "max-handshakes-per-prefix",
  "max-unidentified",
  "max-handshakes"
]

/** A Close as the core gives it; `mode` only where the default rule above is not enough (a client still handshaking). */
const close = (n: number, reason: CloseReason, limit?: RelayLimit, mode?: CloseMode): RelayCommand => {
  const m = mode ?? (ABORTING.includes(reason) || (limit !== undefined && ABORTING.includes(limit)) ? "abort" : "graceful")
  return limit === undefined ? { _tag: "Close", id: id(n), reason, mode: m } : { _tag: "Close", id: id(n), reason, mode: m, limit }
}

const emptyStats = idleRelayStats
const emptySizes = { connections: 0, listeners: 0, deadlines: 0, prefixes: 0, keys: 0, usage: 0 }

describe("the seed's diagrams", () => {
  it("connect and accept: listen, connect → IncomingConnection, accept → relayed tunnel", () => {
    const relay = new Harness()
    expect(relay.listen(1, D)).toEqual([]) // D: InitConnection::listen
    expect(relay.core.roleOf(id(1))).toBe("listen")
    const connect = relay.connect(2, C, D) // C: InitConnection::connect(D)
    expect(connect).toEqual([
      { _tag: "HoldConnect", id: id(2), listener: id(1) },
      { _tag: "SendIncomingConnection", id: id(1), publicKey: C, message: expect.any(Uint8Array) }
    ])
    // The bytes sent to D are IncomingConnection(C).
    const incoming = connect[1]
    if (incoming?._tag !== "SendIncomingConnection") throw new Error("expected SendIncomingConnection")
    const decoded = decodeIncomingConnection(incoming.message)
    expect(decoded._tag === "Ok" && Array.from(decoded.value.publicKey)).toEqual(Array.from(C))
    expect(relay.core.stats()).toMatchObject({ pendingHalfTunnels: 1, listeners: 1 })
    // D: InitConnection::accept(C) on a new connection.
    expect(relay.accept(3, D, C)).toEqual([{ _tag: "Splice", connectId: id(2), acceptId: id(3) }])
    expect(relay.core.stats()).toEqual({ ...emptyStats, listeners: 1, tunnels: 1, connections: 3 })
    expect([relay.core.roleOf(id(2)), relay.core.roleOf(id(3))]).toEqual(["tunnel", "tunnel"])
  })

  it("connect and reject: RejectConnection closes the connect channel, the listen channel stays", () => {
    const relay = new Harness()
    relay.listen(1, D)
    relay.pending(2, C, D, 1)
    expect(relay.reject(1, C)).toEqual([close(2, "rejected")])
    expect(relay.core.roleOf(id(1))).toBe("listen")
    expect(relay.core.stats()).toMatchObject({ listeners: 1, pendingHalfTunnels: 0, connections: 1 })
    // The listen channel still works: C may try again.
    relay.pending(3, C, D, 1)
  })
})

describe("listen", () => {
  it("the newest listen channel for a key replaces the older, whose half tunnels close", () => {
    const relay = new Harness()
    relay.listen(1, D)
    relay.pending(2, C, D, 1)
    expect(relay.listen(3, D)).toEqual([close(1, "replaced"), close(2, "listener-gone")])
    // New connects go to the newest channel.
    relay.pending(4, C, D, 3)
  })

  it("a replaced listener's tunnels go on", () => {
    const relay = new Harness()
    relay.listen(1, D)
    relay.pending(2, C, D, 1)
    relay.accept(3, D, C)
    expect(relay.listen(4, D)).toEqual([close(1, "replaced")])
    expect(relay.core.stats().tunnels).toBe(1)
  })

  it("listeners of different keys are independent", () => {
    const relay = new Harness()
    relay.listen(1, D)
    relay.listen(2, E)
    expect(relay.core.stats().listeners).toBe(2)
    relay.pending(3, C, E, 2)
    relay.pending(4, C, D, 1)
  })
})

describe("connect", () => {
  it("connect to a key nobody listens as → no-such-listener", () => {
    const relay = new Harness()
    relay.listen(1, D)
    expect(relay.connect(2, C, E)).toEqual([close(2, "no-such-listener")])
    expect(relay.core.stats()).toMatchObject({ connections: 1, unidentified: 0 })
  })

  it("a second connect from the same connector to the same listener is closed duplicate; the first stays", () => {
    const relay = new Harness()
    relay.listen(1, D)
    relay.pending(2, C, D, 1)
    expect(relay.connect(3, C, D)).toEqual([close(3, "duplicate")])
    expect(relay.accept(4, D, C)).toEqual([{ _tag: "Splice", connectId: id(2), acceptId: id(4) }])
  })

  it("other connectors to the same listener each get a half tunnel", () => {
    const relay = new Harness()
    relay.listen(1, D)
    relay.pending(2, C, D, 1)
    relay.pending(3, E, D, 1)
    expect(relay.core.stats().pendingHalfTunnels).toBe(2)
    expect(relay.accept(4, D, E)).toEqual([{ _tag: "Splice", connectId: id(3), acceptId: id(4) }])
    expect(relay.accept(5, D, C)).toEqual([{ _tag: "Splice", connectId: id(2), acceptId: id(5) }])
  })

  it("an existing tunnel between the pair does not block a new connect", () => {
    const relay = new Harness()
    relay.listen(1, D)
    relay.pending(2, C, D, 1)
    relay.accept(3, D, C)
    relay.pending(4, C, D, 1)
  })

  it("connecting to oneself works like any other pair", () => {
    const relay = new Harness()
    relay.listen(1, D)
    relay.pending(2, D, D, 1)
    expect(relay.accept(3, D, D)).toEqual([{ _tag: "Splice", connectId: id(2), acceptId: id(3) }])
  })

  it("more than maxPendingHalfTunnelsPerListener half tunnels → over-limit, until one resolves", () => {
    const relay = new Harness({ maxPendingHalfTunnelsPerListener: 2 })
    relay.listen(1, D)
    relay.pending(2, key(0x01), D, 1)
    relay.pending(3, key(0x02), D, 1)
    expect(relay.connect(4, key(0x03), D)).toEqual([close(4, "over-limit", "max-pending-per-listener")])
    // The cap is per listener: E still takes connects.
    relay.listen(5, E)
    relay.pending(6, key(0x03), E, 5)
    relay.reject(1, key(0x01))
    relay.pending(7, key(0x03), D, 1)
  })
})

describe("accept", () => {
  it("accept with nothing pending → no-pending", () => {
    const relay = new Harness()
    relay.listen(1, D)
    expect(relay.accept(2, D, C)).toEqual([close(2, "no-pending")])
  })

  it("accept from a client that is not listening → no-pending", () => {
    const relay = new Harness()
    expect(relay.accept(1, D, C)).toEqual([close(1, "no-pending")])
  })

  it("only the listener a half tunnel was offered to can accept it", () => {
    const relay = new Harness()
    relay.listen(1, D)
    relay.listen(2, E)
    relay.pending(3, C, D, 1)
    expect(relay.accept(4, E, C)).toEqual([close(4, "no-pending")])
    expect(relay.core.roleOf(id(3))).toBe("pending-connect")
    expect(relay.accept(5, D, C)).toEqual([{ _tag: "Splice", connectId: id(3), acceptId: id(5) }])
  })

  it("a half tunnel is spliced once: a second accept gets no-pending", () => {
    const relay = new Harness()
    relay.listen(1, D)
    relay.pending(2, C, D, 1)
    relay.accept(3, D, C)
    expect(relay.accept(4, D, C)).toEqual([close(4, "no-pending")])
  })
})

describe("reject", () => {
  it("RejectConnection with nothing pending is ignored", () => {
    const relay = new Harness()
    relay.listen(1, D)
    expect(relay.reject(1, C)).toEqual([])
    expect(relay.core.roleOf(id(1))).toBe("listen")
  })

  it("a listener cannot reject a half tunnel offered to another listener", () => {
    const relay = new Harness()
    relay.listen(1, D)
    relay.listen(2, E)
    relay.pending(3, C, D, 1)
    expect(relay.reject(2, C)).toEqual([])
    expect(relay.core.roleOf(id(3))).toBe("pending-connect")
  })

  it("a RejectConnection after the splice does not touch the tunnel", () => {
    const relay = new Harness()
    relay.listen(1, D)
    relay.pending(2, C, D, 1)
    relay.accept(3, D, C)
    expect(relay.reject(1, C)).toEqual([])
    expect(relay.core.stats().tunnels).toBe(1)
  })
})

describe("timeouts", () => {
  it("no Authenticated within handshakeTimeoutTicks of Opened → timeout-handshake", () => {
    const relay = new Harness({ handshakeTimeoutTicks: 8 })
    relay.opened(1)
    expect(relay.ticks(1)).toEqual([])
    relay.hello(1) // the deadline counts from Opened, not from the hello
    expect(relay.ticks(6)).toEqual([])
    expect(relay.ticks(1)).toEqual([close(1, "timeout-handshake")])
    expect(relay.core.stats().unidentified).toBe(0)
  })

  it("no HelloReceived within helloTimeoutTicks of Opened → timeout-handshake", () => {
    const relay = new Harness({ helloTimeoutTicks: 2, handshakeTimeoutTicks: 8 })
    relay.opened(1)
    expect(relay.ticks(1)).toEqual([])
    expect(relay.ticks(1)).toEqual([close(1, "timeout-handshake")])
    // A second hello is harmless, and Authenticated without one is fine.
    relay.opened(2)
    relay.hello(2)
    expect(relay.hello(2)).toEqual([])
    expect(relay.authenticated(2, C)).toEqual([])
    relay.opened(3)
    expect(relay.authenticated(3, D)).toEqual([])
    expect(relay.core.stats()).toMatchObject({ handshaking: 0, unidentified: 2 })
  })

  it("no first message within initTimeoutTicks of Authenticated → timeout-init", () => {
    const relay = new Harness()
    relay.opened(1)
    relay.hello(1)
    relay.ticks(5) // the handshake's ticks do not count toward the init timeout
    relay.authenticated(1, C)
    expect(relay.ticks(3)).toEqual([])
    expect(relay.ticks(1)).toEqual([close(1, "timeout-init")])
  })

  it("a first message in time cancels the init timeout", () => {
    const relay = new Harness()
    relay.listen(1, D)
    expect(relay.ticks(100)).toEqual([])
    expect(relay.core.roleOf(id(1))).toBe("listen")
  })

  it("a half tunnel not accepted within halfTunnelTicks → timeout-half-tunnel", () => {
    const relay = new Harness()
    relay.listen(1, D)
    relay.pending(2, C, D, 1)
    expect(relay.ticks(31)).toEqual([])
    expect(relay.ticks(1)).toEqual([close(2, "timeout-half-tunnel")])
    expect(relay.accept(3, D, C)).toEqual([close(3, "no-pending")])
    expect(relay.core.roleOf(id(1))).toBe("listen")
  })

  it("a spliced tunnel has no timeout", () => {
    const relay = new Harness()
    relay.listen(1, D)
    relay.pending(2, C, D, 1)
    relay.accept(3, D, C)
    expect(relay.ticks(100)).toEqual([])
    expect(relay.core.stats().tunnels).toBe(1)
  })

  it("timeouts due on the same tick all fire, in the order they were set", () => {
    const relay = new Harness()
    relay.listen(1, D)
    relay.pending(2, C, D, 1)
    relay.pending(3, E, D, 1)
    expect(relay.ticks(32)).toEqual([close(2, "timeout-half-tunnel"), close(3, "timeout-half-tunnel")])
  })
})

describe("closes", () => {
  it("a listen channel closes → its half tunnels close listener-gone; its tunnels go on", () => {
    const relay = new Harness()
    relay.listen(1, D)
    relay.pending(2, C, D, 1)
    relay.accept(3, D, C)
    relay.pending(4, E, D, 1)
    expect(relay.closed(1)).toEqual([close(4, "listener-gone")])
    expect(relay.core.stats()).toEqual({ ...emptyStats, tunnels: 1, connections: 2 })
  })

  it("(fix) a pending connect channel closes → its half tunnel is dropped at once", () => {
    const relay = new Harness()
    relay.listen(1, D)
    relay.pending(2, C, D, 1)
    expect(relay.closed(2)).toEqual([])
    expect(relay.core.stats().pendingHalfTunnels).toBe(0)
    expect(relay.accept(3, D, C)).toEqual([close(3, "no-pending")])
    // And C's retry is not a duplicate of the dead one.
    relay.pending(4, C, D, 1)
  })

  it("the connect side of a tunnel closes → the accept side closes peer-closed", () => {
    const relay = new Harness()
    relay.listen(1, D)
    relay.pending(2, C, D, 1)
    relay.accept(3, D, C)
    expect(relay.closed(2)).toEqual([close(3, "peer-closed")])
    expect(relay.core.stats()).toMatchObject({ tunnels: 0, connections: 1 })
  })

  it("the accept side of a tunnel closes → the connect side closes peer-closed", () => {
    const relay = new Harness()
    relay.listen(1, D)
    relay.pending(2, C, D, 1)
    relay.accept(3, D, C)
    expect(relay.closed(3)).toEqual([close(2, "peer-closed")])
    // The adapter's own Closed for the side the core closed is ignored.
    expect(relay.closed(2)).toEqual([])
    expect(relay.core.stats()).toMatchObject({ tunnels: 0, connections: 1 })
  })

  it("after a close, every event naming the connection does nothing", () => {
    const relay = new Harness()
    relay.listen(1, D)
    relay.connect(2, C, E) // closed no-such-listener
    expect(relay.closed(2)).toEqual([])
    expect(relay.authenticated(2, C)).toEqual([])
    expect(relay.received(2, encodeInitConnection({ _tag: "Listen" }))).toEqual([])
    expect(relay.ticks(10)).toEqual([])
    expect(relay.core.roleOf(id(2))).toBeUndefined()
  })

  it("events for ids never opened are ignored", () => {
    const relay = new Harness()
    expect(relay.authenticated(9, C)).toEqual([])
    expect(relay.received(9, encodeInitConnection({ _tag: "Listen" }))).toEqual([])
    expect(relay.closed(9)).toEqual([])
    expect(relay.core.internalSizes()).toEqual(emptySizes)
  })

  it("once every connection has closed the core holds nothing", () => {
    const relay = new Harness()
    relay.listen(1, D)
    relay.pending(2, C, D, 1)
    relay.accept(3, D, C)
    relay.pending(4, E, D, 1)
    relay.authed(5, E)
    relay.opened(6)
    for (const n of [1, 2, 5, 6]) relay.closed(n)
    expect(relay.core.stats()).toEqual(emptyStats)
    // The prefix's handshake bucket refills within a tick; then nothing is left.
    relay.ticks(1)
    expect(relay.core.internalSizes()).toEqual(emptySizes)
  })
})

describe("forbidden messages close the sender and harm nothing else", () => {
  // A listener D with one pending half tunnel from E and one tunnel: what must survive.
  const bystanders = (relay: Harness): void => {
    relay.listen(1, D)
    relay.pending(2, E, D, 1)
    relay.pending(3, C, D, 1)
    relay.accept(4, D, C)
  }
  const unharmed = (relay: Harness): void => {
    expect(relay.core.roleOf(id(1))).toBe("listen")
    expect(relay.core.roleOf(id(2))).toBe("pending-connect")
    expect(relay.core.stats().tunnels).toBe(1)
  }

  it("an undecodable first message → protocol-violation", () => {
    const relay = new Harness()
    bystanders(relay)
    relay.authed(10, C)
    expect(relay.received(10, new Uint8Array([0xff, 0x01, 0x02]))).toEqual([close(10, "protocol-violation")])
    unharmed(relay)
  })

  it("an empty first message → protocol-violation", () => {
    const relay = new Harness()
    bystanders(relay)
    relay.authed(10, C)
    expect(relay.received(10, new Uint8Array(0))).toEqual([close(10, "protocol-violation")])
    unharmed(relay)
  })

  it("an InitConnection with an unknown union member → protocol-violation", () => {
    const relay = new Harness()
    bystanders(relay)
    relay.authed(10, C)
    // Packed by hand: one segment of 3 words; root struct (1 data word, 1 pointer); discriminant 3.
    const unknownMember = new Uint8Array([0x10, 0x03, 0x50, 0x01, 0x01, 0x01, 0x03, 0x00, 0x00])
    expect(relay.received(10, unknownMember)).toEqual([close(10, "protocol-violation")])
    unharmed(relay)
  })

  it("an undecodable message on a listen channel → protocol-violation; its half tunnels close", () => {
    const relay = new Harness()
    bystanders(relay)
    expect(relay.received(1, new Uint8Array([0xff]))).toEqual([
      close(1, "protocol-violation"),
      close(2, "listener-gone")
    ])
    expect(relay.core.stats()).toMatchObject({ listeners: 0, tunnels: 1 })
  })

  // Relay messages carry no type tag, and Cap'n Proto reads absent fields as
  // zero (so that schemas can grow). Some wrong messages therefore decode as
  // right ones, in Offset's relay as in ours; these tests pin what happens.
  it("an IncomingConnection-shaped first message reads as listen (harmless: the client's own key)", () => {
    const relay = new Harness()
    bystanders(relay)
    relay.authed(10, E)
    expect(relay.received(10, encodeIncomingConnection({ publicKey: C }))).toEqual([])
    expect(relay.core.roleOf(id(10))).toBe("listen")
    expect(relay.core.roleOf(id(1))).toBe("listen") // D's listener is untouched
  })

  it("a second InitConnection on a listen channel reads as RejectConnection of the same key", () => {
    const relay = new Harness()
    bystanders(relay)
    // listen → a reject of the all-zero key: nothing pending from it, ignored.
    expect(relay.received(1, encodeInitConnection({ _tag: "Listen" }))).toEqual([])
    // connect(E) → reject(E): D may reject E in either spelling.
    expect(relay.received(1, encodeInitConnection({ _tag: "Connect", publicKey: E }))).toEqual([close(2, "rejected")])
    expect(relay.core.roleOf(id(1))).toBe("listen")
    expect(relay.core.stats().tunnels).toBe(1)
  })

  it("a message before Authenticated → adapter-misuse (nothing is decrypted before the handshake)", () => {
    const relay = new Harness()
    bystanders(relay)
    relay.opened(10)
    expect(relay.received(10, encodeInitConnection({ _tag: "Listen" }))).toEqual([close(10, "adapter-misuse")])
    unharmed(relay)
  })

  it("a message forwarded from a pending connect channel → adapter-misuse", () => {
    const relay = new Harness()
    bystanders(relay)
    expect(relay.received(2, encodeInitConnection({ _tag: "Listen" }))).toEqual([close(2, "adapter-misuse")])
    expect(relay.core.roleOf(id(1))).toBe("listen")
    expect(relay.core.stats().tunnels).toBe(1)
  })

  it("a message forwarded from a tunnel (e.g. RejectConnection on an accept channel) → adapter-misuse, its peer closes", () => {
    const relay = new Harness()
    bystanders(relay)
    expect(relay.received(4, encodeRejectConnection({ publicKey: C }))).toEqual([
      close(4, "adapter-misuse"),
      close(3, "peer-closed")
    ])
    expect(relay.core.roleOf(id(1))).toBe("listen")
    expect(relay.core.roleOf(id(2))).toBe("pending-connect")
  })

  it("Authenticated twice → adapter-misuse", () => {
    const relay = new Harness()
    bystanders(relay)
    relay.authed(10, C)
    expect(relay.authenticated(10, C)).toEqual([close(10, "adapter-misuse")])
    unharmed(relay)
  })

  it("Authenticated with a key that is not 32 bytes → adapter-misuse", () => {
    const relay = new Harness()
    relay.opened(10)
    expect(relay.authenticated(10, new Uint8Array(31))).toEqual([close(10, "adapter-misuse")])
  })

  it("Opened with the id of an open connection → adapter-misuse", () => {
    const relay = new Harness()
    bystanders(relay)
    relay.authed(10, C)
    expect(relay.opened(10)).toEqual([close(10, "adapter-misuse")])
    unharmed(relay)
  })
})

describe("allow-list", () => {
  const allowOnly = (...keys: Array<Uint8Array>): ReadonlySet<string> => new Set(keys.map(publicKeyHex))

  it("a key outside the list is closed not-allowed at its first message: listen, connect or accept", () => {
    const relay = new Harness({ allowList: allowOnly(D) })
    relay.listen(1, D)
    expect(relay.listen(2, C)).toEqual([close(2, "not-allowed")])
    expect(relay.connect(3, C, D)).toEqual([close(3, "not-allowed")])
    expect(relay.accept(4, E, C)).toEqual([close(4, "not-allowed")])
    expect(relay.core.stats()).toMatchObject({ connections: 1, listeners: 1 })
  })

  it("AllowListChanged applies to new first messages; existing connections stay", () => {
    const relay = new Harness()
    relay.listen(1, D)
    relay.pending(2, C, D, 1)
    relay.feed({ _tag: "AllowListChanged", keys: allowOnly(D) })
    expect(relay.core.roleOf(id(2))).toBe("pending-connect")
    expect(relay.connect(3, E, D)).toEqual([close(3, "not-allowed")])
    // D is allowed, so it can still accept C's half tunnel.
    expect(relay.accept(4, D, C)).toEqual([{ _tag: "Splice", connectId: id(2), acceptId: id(4) }])
    relay.feed({ _tag: "AllowListChanged", keys: undefined })
    relay.pending(5, E, D, 1)
  })
})

describe("caps", () => {
  it("an Opened beyond maxUnidentified → over-limit; a first message frees the slot", () => {
    const relay = new Harness({ maxUnidentified: 2 })
    relay.opened(1)
    relay.authed(2, D)
    expect(relay.opened(3)).toEqual([close(3, "over-limit", "max-unidentified")])
    expect(relay.core.stats().unidentified).toBe(2)
    relay.received(2, encodeInitConnection({ _tag: "Listen" }))
    expect(relay.opened(4)).toEqual([])
    expect(relay.closed(3)).toEqual([]) // the adapter's late Closed for the refused one
  })
})

describe("admission by address prefix", () => {
  it("maxConnections tracked → over-limit (max-connections)", () => {
    const relay = new Harness({ maxConnections: 2 })
    relay.listen(1, D)
    relay.opened(2, "b")
    expect(relay.opened(3, "c")).toEqual([close(3, "over-limit", "max-connections")])
  })

  it("an Authenticated gives its token back: finished handshakes are not rate-limited", () => {
    const relay = new Harness({ handshakeBurstPerPrefix: 2, handshakeRatePerPrefix: 1 })
    for (let n = 1; n <= 10; n++) {
      expect(relay.opened(n, "a")).toEqual([])
      relay.authenticated(n, key(n))
    }
    relay.opened(11, "a")
    relay.opened(12, "a")
    expect(relay.opened(13, "a")).toEqual([close(13, "over-limit", "handshake-rate")])
  })

  it("every Opened spends a prefix token; none left → handshake-rate, refilled per tick", () => {
    const relay = new Harness({ handshakeBurstPerPrefix: 3, handshakeRatePerPrefix: 1 })
    for (const n of [1, 2, 3]) {
      relay.opened(n, "a")
      relay.closed(n)
    }
    expect(relay.opened(4, "a")).toEqual([close(4, "over-limit", "handshake-rate")])
    expect(relay.opened(5, "b")).toEqual([]) // another prefix has its own bucket
    relay.ticks(1)
    expect(relay.opened(6, "a")).toEqual([])
    expect(relay.opened(7, "a")).toEqual([close(7, "over-limit", "handshake-rate")])
  })

  it("maxUnidentifiedPerPrefix and maxHandshakesPerPrefix refuse the prefix's newcomer", () => {
    const relay = new Harness({ maxUnidentifiedPerPrefix: 3, maxHandshakesPerPrefix: 2 })
    relay.opened(1, "a")
    relay.opened(2, "a")
    expect(relay.opened(3, "a")).toEqual([close(3, "over-limit", "max-handshakes-per-prefix")])
    relay.authenticated(1, C)
    relay.opened(4, "a")
    relay.authenticated(4, E)
    expect(relay.opened(5, "a")).toEqual([close(5, "over-limit", "max-unidentified-per-prefix")])
    expect(relay.opened(6, "b")).toEqual([])
  })

  it("maxHandshakes full: the oldest handshake of the prefix holding the most is evicted", () => {
    const relay = new Harness({ maxHandshakes: 4 })
    for (const n of [1, 2, 3]) relay.opened(n, "attacker")
    relay.opened(4, "other")
    expect(relay.opened(5, "honest")).toEqual([close(1, "over-limit", "handshake-evicted")])
    expect(relay.core.roleOf(id(5))).toBe("handshaking")
    // The attacker cannot evict anyone: no prefix holds more than it would.
    expect(relay.opened(6, "attacker")).toEqual([close(6, "over-limit", "max-handshakes")])
    // Nor can a prefix evict when the largest holds only one more than it would.
    relay.opened(7, "other")
    expect(relay.core.stats().handshaking).toBe(4)
  })

  it("maxUnidentified full: the oldest unidentified of the prefix holding the most is evicted", () => {
    const relay = new Harness({ maxUnidentified: 3 })
    relay.authed(1, C)
    relay.feed({ _tag: "Opened", id: id(2), prefix: "203.0.113.1" })
    expect(relay.opened(3, "honest")).toEqual([])
    expect(relay.opened(4, "honest2")).toEqual([close(1, "over-limit", "unidentified-evicted")])
  })

  it("listen and connect count per prefix and per key; accepts do not", () => {
    const relay = new Harness({ maxConnectionsPerPrefix: 2, maxConnectionsPerKey: 10 })
    relay.listen(1, D)
    relay.pending(2, D, D, 1) // the listener host connecting to itself
    expect(relay.accept(3, D, D)).toEqual([{ _tag: "Splice", connectId: id(2), acceptId: id(3) }])
    expect(relay.connect(4, C, D)).toEqual([close(4, "over-limit", "max-connections-per-prefix")])
    // Another prefix may connect; the listener host's accept is not refused.
    expect(relay.opened(5, "b")).toEqual([])
    relay.authenticated(5, C)
    expect(summary(relay.received(5, encodeInitConnection({ _tag: "Connect", publicKey: D })))).toEqual([
      "hold 5 on 1",
      `incoming ${publicKeyHex(C).slice(0, 4)} on 1`
    ])
    expect(relay.accept(6, D, C)).toEqual([{ _tag: "Splice", connectId: id(5), acceptId: id(6) }])
  })

  it("maxConnectionsPerKey bounds one key across prefixes", () => {
    const relay = new Harness({ maxConnectionsPerKey: 2 })
    relay.listen(1, D)
    relay.pending(2, C, D, 1)
    relay.accept(3, D, C)
    relay.opened(4, "elsewhere")
    relay.authenticated(4, C)
    relay.received(4, encodeInitConnection({ _tag: "Listen" }))
    relay.opened(5, "third")
    relay.authenticated(5, C)
    expect(relay.received(5, encodeInitConnection({ _tag: "Connect", publicKey: D }))).toEqual([
      close(5, "over-limit", "max-connections-per-key")
    ])
  })
})

describe("memory budget", () => {
  it("pressure from maxBufferedBytes: new connections refused, heavy holders paused, all resumed at low water", () => {
    const relay = new Harness({ maxBufferedBytes: 1000 })
    relay.listen(1, D)
    relay.pending(2, C, D, 1)
    relay.accept(3, D, C)
    relay.authed(4, E)
    expect(relay.usage(2, 600)).toEqual([])
    // 900 of 1000: no pressure yet. 1000 reached by the accept side: paused (holds ≥ 1000/4).
    expect(relay.usage(3, 300)).toEqual([])
    expect(relay.usage(3, 400)).toEqual([{ _tag: "PauseReading", id: id(3) }])
    expect(relay.core.stats()).toMatchObject({ memoryPressure: 1, pausedReading: 1, heldBytes: 1000 })
    // A light holder keeps reading; a heavy one reporting again is paused.
    expect(relay.usage(4, 10)).toEqual([])
    expect(relay.usage(2, 600)).toEqual([{ _tag: "PauseReading", id: id(2) }])
    // The prefix holding the memory is refused; another prefix still gets in.
    expect(relay.opened(5)).toEqual([close(5, "over-limit", "max-buffered-bytes")])
    expect(relay.opened(7, "b")).toEqual([])
    // 760 > low water 750: still under pressure; 750: both resume.
    expect(relay.usage(2, 350)).toEqual([])
    expect(relay.usage(4, 0)).toEqual([{ _tag: "ResumeReading", id: id(2) }, { _tag: "ResumeReading", id: id(3) }])
    expect(relay.opened(6, "b")).toEqual([])
  })

  it("a close that frees enough memory ends the pressure", () => {
    const relay = new Harness({ maxBufferedBytes: 1000 })
    relay.authed(1, C)
    relay.authed(2, E)
    relay.usage(1, 300)
    expect(relay.usage(2, 700)).toEqual([{ _tag: "PauseReading", id: id(2) }])
    expect(relay.closed(1)).toEqual([{ _tag: "ResumeReading", id: id(2) }])
    expect(relay.core.stats()).toMatchObject({ memoryPressure: 0, heldBytes: 700 })
  })

  it("under pressure a tunnel holding bytes with no delivery for stuckTunnelTicks closes stuck-tunnel", () => {
    const relay = new Harness({ maxBufferedBytes: 1000, stuckTunnelTicks: 3 })
    relay.listen(1, D)
    relay.pending(2, C, D, 1)
    relay.accept(3, D, C)
    relay.pending(4, E, D, 1)
    relay.accept(5, D, E)
    relay.usage(2, 500)
    relay.usage(3, 500) // pressure; tunnel 2+3 stuck from now on
    relay.usage(4, 0, 10)
    expect(relay.ticks(2)).toEqual([])
    relay.usage(5, 0, 20) // tunnel 4+5 delivers, and holds nothing anyway
    expect(relay.core.isPaused(id(3))).toBe(true)
    expect(relay.ticks(1)).toEqual([close(2, "over-limit", "stuck-tunnel"), close(3, "over-limit", "stuck-tunnel")])
    expect(relay.core.stats()).toMatchObject({ tunnels: 1, memoryPressure: 0, heldBytes: 0 })
  })

  it("without pressure a tunnel that stopped moving is left alone", () => {
    const relay = new Harness({ maxBufferedBytes: 1000, stuckTunnelTicks: 3 })
    relay.listen(1, D)
    relay.pending(2, C, D, 1)
    relay.accept(3, D, C)
    relay.usage(2, 700)
    expect(relay.ticks(10)).toEqual([])
    expect(relay.core.stats().tunnels).toBe(1)
  })

  it("Usage for unknown or closed connections is ignored", () => {
    const relay = new Harness({ maxBufferedBytes: 1000 })
    expect(relay.usage(9, 5000)).toEqual([])
    relay.authed(1, C)
    relay.closed(1)
    expect(relay.usage(1, 5000)).toEqual([])
    expect(relay.core.stats()).toMatchObject({ heldBytes: 0, memoryPressure: 0 })
  })
})

describe("shutdown", () => {
  it("closes everything but tunnels at once, refuses new connections, then closes tunnels after the drain", () => {
    const relay = new Harness({ shutdownDrainTicks: 5 })
    relay.listen(1, D)
    relay.pending(2, C, D, 1)
    relay.accept(3, D, C)
    relay.pending(4, E, D, 1)
    relay.authed(5, E)
    relay.opened(6)
    expect(relay.feed({ _tag: "Shutdown" })).toEqual([
      close(4, "shutting-down"),
      close(1, "shutting-down"),
      close(5, "shutting-down"),
      close(6, "shutting-down", undefined, "abort") // still handshaking
    ])
    expect(relay.opened(7)).toEqual([close(7, "shutting-down", undefined, "abort")])
    expect(relay.feed({ _tag: "Shutdown" })).toEqual([])
    expect(relay.ticks(4)).toEqual([])
    expect(relay.ticks(1)).toEqual([close(2, "shutting-down"), close(3, "shutting-down")])
    expect(relay.core.internalSizes()).toEqual(emptySizes)
  })

  it("a tunnel that ends during the drain closes as usual", () => {
    const relay = new Harness({ shutdownDrainTicks: 5 })
    relay.listen(1, D)
    relay.pending(2, C, D, 1)
    relay.accept(3, D, C)
    relay.feed({ _tag: "Shutdown" })
    expect(relay.closed(2)).toEqual([close(3, "peer-closed")])
    expect(relay.ticks(10)).toEqual([])
  })

  it("with shutdownDrainTicks 0 tunnels close at once", () => {
    const relay = new Harness({ shutdownDrainTicks: 0 })
    relay.listen(1, D)
    relay.pending(2, C, D, 1)
    relay.accept(3, D, C)
    expect(relay.feed({ _tag: "Shutdown" })).toEqual([
      close(1, "shutting-down"),
      close(2, "shutting-down"),
      close(3, "shutting-down")
    ])
  })
})

describe("config and reasons", () => {
  it("defaults are Offset's values", () => {
    expect(defaultRelayConfig).toMatchObject({ initTimeoutTicks: 4, halfTunnelTicks: 32, allowList: undefined })
    expect(checkRelayConfig(defaultRelayConfig)).toBeUndefined()
  })

  it("out-of-range values are reported by field, and the constructor refuses them", () => {
    expect(checkRelayConfig({ ...defaultRelayConfig, halfTunnelTicks: 0 })).toMatchObject({
      _tag: "RelayConfigError",
      field: "halfTunnelTicks"
    })
    expect(checkRelayConfig({ ...defaultRelayConfig, maxUnidentified: 1.5 })?.field).toBe("maxUnidentified")
    expect(checkRelayConfig({ ...defaultRelayConfig, shutdownDrainTicks: -1 })?.field).toBe("shutdownDrainTicks")
    expect(() => new RelayCore({ ...defaultRelayConfig, initTimeoutTicks: 0 })).toThrow(/initTimeoutTicks/)
  })

  it("CLOSE_REASONS lists every reason exactly once", () => {
    // A Record over the union fails to compile when a reason is added without a line here.
    const all: Record<CloseReason, true> = {
      "timeout-handshake": true,
      "timeout-init": true,
      "timeout-half-tunnel": true,
      rejected: true,
      "no-such-listener": true,
      "no-pending": true,
      duplicate: true,
      replaced: true,
      "listener-gone": true,
      "peer-closed": true,
      "protocol-violation": true,
      "not-allowed": true,
      "over-limit": true,
      "shutting-down": true,
      "adapter-misuse": true,
      "client-closed": true,
      "connection-lost": true,
      "frame-too-long": true,
      "version-mismatch": true,
      "handshake-failed": true,
      "keepalive-timeout": true,
      "internal-error": true
    }
    expect([...CLOSE_REASONS].sort()).toEqual(Object.keys(all).sort())
    expect(new Set(CLOSE_REASONS).size).toBe(CLOSE_REASONS.length)
  })
})

describe("ends the adapter sees, and how each close happens", () => {
  it("a connection machine's close names its end: keepalive and rekey flood by name, else by whether the key was proven", () => {
    for (const authenticated of [false, true]) {
      expect(endReasonOfChannelFailure("KeepaliveTimeout", authenticated)).toBe("keepalive-timeout")
      expect(endReasonOfChannelFailure("RekeyFlood", authenticated)).toBe("rekey-rate")
    }
    for (const reason of ["BadSignature", "DecryptFailed", "MalformedMessage", "UnexpectedNonce", "HandshakeTimeout"] as const) {
      expect(endReasonOfChannelFailure(reason, false)).toBe("handshake-failed")
      expect(endReasonOfChannelFailure(reason, true)).toBe("protocol-violation")
    }
  })

  it("Ended closes with the adapter's reason and closes what depended on it", () => {
    const relay = new Harness()
    relay.listen(1, D)
    relay.pending(2, C, D, 1)
    expect(relay.feed({ _tag: "Ended", id: id(1), reason: "keepalive-timeout" })).toEqual([
      close(1, "keepalive-timeout"),
      close(2, "listener-gone")
    ])
    expect(relay.feed({ _tag: "Ended", id: id(1), reason: "client-closed" })).toEqual([]) // forgotten
  })

  it("a tunnel side that ends closes the other peer-closed, gracefully", () => {
    const relay = new Harness()
    relay.listen(1, D)
    relay.pending(2, C, D, 1)
    relay.accept(3, D, C)
    expect(relay.feed({ _tag: "Ended", id: id(2), reason: "client-closed" })).toEqual([
      close(2, "client-closed", undefined, "graceful"),
      close(3, "peer-closed", undefined, "graceful")
    ])
  })

  it("a rekey flood closes over-limit (rekey-rate), abruptly", () => {
    const relay = new Harness()
    relay.listen(1, D)
    expect(relay.feed({ _tag: "Ended", id: id(1), reason: "rekey-rate" })).toEqual([
      close(1, "over-limit", "rekey-rate", "abort")
    ])
  })

  it("a client still in its handshake is aborted whatever the reason; an authenticated one is closed gracefully unless hostile or dead", () => {
    const relay = new Harness()
    relay.opened(1)
    expect(relay.feed({ _tag: "Ended", id: id(1), reason: "client-closed" })).toEqual([
      close(1, "client-closed", undefined, "abort")
    ])
    relay.authed(2, C)
    expect(relay.feed({ _tag: "Ended", id: id(2), reason: "client-closed" })).toEqual([
      close(2, "client-closed", undefined, "graceful")
    ])
    relay.authed(3, C)
    expect(relay.feed({ _tag: "Ended", id: id(3), reason: "frame-too-long" })).toEqual([
      close(3, "frame-too-long", undefined, "abort")
    ])
    relay.authed(4, E)
    expect(relay.received(4, encodeInitConnection({ _tag: "Connect", publicKey: D }))).toEqual([
      close(4, "no-such-listener", undefined, "graceful")
    ])
  })

  it("a listener with maxPendingHalfTunnelsPerListener IncomingConnections unwritten closes listener-backlog; its half tunnels listener-gone", () => {
    const relay = new Harness({ maxPendingHalfTunnelsPerListener: 2, halfTunnelTicks: 1 })
    relay.listenersRead = false
    relay.listen(1, D)
    relay.pending(2, C, D, 1)
    relay.pending(3, E, D, 1)
    // Both half tunnels time out, but their IncomingConnections were never written.
    expect(relay.ticks(1)).toEqual([close(2, "timeout-half-tunnel"), close(3, "timeout-half-tunnel")])
    expect(relay.connect(4, C, D)).toEqual([
      { _tag: "HoldConnect", id: id(4), listener: id(1) },
      close(1, "over-limit", "listener-backlog", "graceful"),
      close(4, "listener-gone")
    ])
  })

  it("a written IncomingConnection frees its place in the backlog", () => {
    const relay = new Harness({ maxPendingHalfTunnelsPerListener: 1, halfTunnelTicks: 1 })
    relay.listenersRead = false
    relay.listen(1, D)
    relay.pending(2, C, D, 1)
    relay.ticks(1)
    expect(relay.feed({ _tag: "IncomingConnectionWritten", id: id(1) })).toEqual([])
    relay.pending(3, C, D, 1)
  })

  it("Shutdown's drainTicks is the one drain deadline; drainDeadlinePassed says when it is over", () => {
    const relay = new Harness({ shutdownDrainTicks: 30 })
    relay.listen(1, D)
    relay.pending(2, C, D, 1)
    relay.accept(3, D, C)
    expect(relay.core.drainDeadlinePassed).toBe(false)
    expect(relay.feed({ _tag: "Shutdown", drainTicks: 2 })).toEqual([close(1, "shutting-down")])
    expect(relay.ticks(1)).toEqual([])
    expect(relay.core.drainDeadlinePassed).toBe(false)
    expect(relay.ticks(1)).toEqual([close(2, "shutting-down"), close(3, "shutting-down")])
    expect(relay.core.drainDeadlinePassed).toBe(true)
  })

  it("Shutdown with no drain closes tunnels at once", () => {
    const relay = new Harness()
    relay.listen(1, D)
    relay.pending(2, C, D, 1)
    relay.accept(3, D, C)
    expect(relay.feed({ _tag: "Shutdown", drainTicks: 0 })).toEqual([
      close(1, "shutting-down"),
      close(2, "shutting-down"),
      close(3, "shutting-down")
    ])
    expect(relay.core.drainDeadlinePassed).toBe(true)
  })
})
