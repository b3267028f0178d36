/**
 * The in-memory network (src/adapters/transport-memory.ts) on virtual time:
 * the event order contract of transport.ts (data* → end? → close), buffers
 * and backpressure, and each fault.
 */
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Scope from "effect/Scope"
import { describe, expect, it } from "vitest"
import type { ByteStream, TransportError } from "../src/adapters/transport.ts"
import { makeMemoryNetwork, type MemoryNetworkOptions } from "../src/adapters/transport-memory.ts"
import { SimRuntime } from "./sim/sim-runtime.ts"

/** What a started stream reported, in order. */
interface Recorder {
  readonly events: Array<string>
  readonly bytes: Array<number>
  closeError: TransportError | undefined
}

const record = (stream: ByteStream): Recorder => {
  const recorder: Recorder = { events: [], bytes: [], closeError: undefined }
  stream.start({
    data: (chunk) => {
      recorder.bytes.push(...chunk)
      if (recorder.events.at(-1) !== "data") recorder.events.push("data")
    },
    drain: () => void recorder.events.push("drain"),
    end: () => void recorder.events.push("end"),
    close: (error) => {
      recorder.events.push(error === undefined ? "close" : `close:${error.reason}`)
      recorder.closeError = error
    }
  })
  return recorder
}

/** A network on virtual time with one listener on server:1; `dial` connects client to it. */
const setup = (options: Omit<MemoryNetworkOptions, "clock"> = {}) => {
  const rt = new SimRuntime()
  const net = makeMemoryNetwork({ ...options, clock: rt.networkClock })
  const accepted: Array<ByteStream> = []
  const scope = Effect.runSync(Scope.make())
  const listen = () =>
    Effect.runSync(net.host("server").listen({ host: "server", port: 1 }, (s) => void accepted.push(s)).pipe(Scope.provide(scope)))
  listen()
  const dial = (from = "client") => {
    const fiber = rt.fork(net.host(from).dial({ host: "server", port: 1 }).pipe(Scope.provide(scope)))
    rt.runFor(1_000)
    return fiber.pollUnsafe()
  }
  const connect = () => {
    const exit = dial()
    if (exit === undefined || !Exit.isSuccess(exit)) throw new Error(`dial failed: ${String(exit)}`)
    return { client: exit.value, server: accepted.at(-1)! }
  }
  return { rt, net, accepted, dial, connect }
}

/** The TransportError reason a dial failed with, or "ok" / "pending". */
const dialOutcome = (exit: Exit.Exit<unknown, TransportError> | undefined): string => {
  if (exit === undefined) return "pending"
  if (Exit.isSuccess(exit)) return "ok"
  const failure = exit.cause.reasons.find((reason) => reason._tag === "Fail")
  return failure?._tag === "Fail" ? failure.error.reason : "defect"
}

const bytes = (length: number, seed = 0) => Uint8Array.from({ length }, (_, i) => (i * 7 + seed) & 0xff)

describe("in-memory network", () => {
  it("carries bytes both ways in order, then half closes each way: data* → end → close on both ends", () => {
    const { rt, net, connect } = setup()
    const { client, server } = connect()
    const atClient = record(client)
    const atServer = record(server)
    client.write([bytes(10), bytes(5, 1)])
    client.end()
    rt.runFor(10)
    expect(atServer.events).toEqual(["data", "end"])
    expect(atServer.bytes).toEqual([...bytes(10), ...bytes(5, 1)])
    // Half open: the server still writes after the client's end.
    server.write([bytes(3, 2)])
    server.end()
    rt.runFor(10)
    expect(atClient.events).toEqual(["data", "end", "close"])
    expect(atServer.events).toEqual(["data", "end", "close"])
    expect(atClient.bytes).toEqual([...bytes(3, 2)])
    expect(net.stats()).toMatchObject({ openEnds: 0, bufferedBytes: 0 })
  })

  it("holds bytes for a stream not started yet, and for a paused one, then delivers them", () => {
    const { rt, connect } = setup()
    const { client, server } = connect()
    client.write([bytes(100)])
    rt.runFor(10)
    const atServer = record(server)
    server.pause()
    rt.runFor(10)
    expect(atServer.bytes).toEqual([])
    server.resume()
    rt.runFor(10)
    expect(atServer.bytes).toEqual([...bytes(100)])
  })

  it("backs a writer up behind a paused reader: write returns false, the buffers stay bounded, drain follows resume", () => {
    const window = 64 * 1024
    const { rt, net, connect } = setup({ receiveWindowBytes: window, highWaterMark: 16 * 1024 })
    const { client, server } = connect()
    const atClient = record(client)
    const atServer = record(server)
    server.pause()
    let accepted = true
    let written = 0
    while (accepted && written < 1_000_000) {
      accepted = client.write([bytes(8 * 1024, written)])
      written += 8 * 1024
    }
    expect(accepted).toBe(false)
    rt.runFor(100)
    // Only the window crossed; the rest waits at the writer.
    expect(net.stats().bufferedBytes).toBe(written)
    expect(client.writableLength()).toBe(written - window)
    expect(atClient.events).toEqual([])
    server.resume()
    rt.runFor(100)
    expect(atClient.events).toEqual(["drain"])
    expect(atServer.bytes.length).toBe(written)
    expect(client.writableLength()).toBe(0)
  })

  it("takes latency plus size over bandwidth to cross a link", () => {
    const { rt, net, connect } = setup()
    net.setLink("client", "server", { latencyMs: 20, bytesPerMs: 100 })
    const { client, server } = connect()
    const atServer = record(server)
    const sentAt = rt.now
    client.write([bytes(1000)])
    rt.runUntil(sentAt + 29)
    expect(atServer.bytes.length).toBe(0)
    rt.runUntil(sentAt + 30)
    expect(atServer.bytes.length).toBe(1000)
  })

  it("destroy with unread bytes resets the peer; destroy with none ends it", () => {
    const { rt, connect } = setup()
    const first = connect()
    const atServer = record(first.server)
    first.server.pause()
    first.client.write([bytes(10)])
    rt.runFor(10)
    const atClient = record(first.client)
    first.server.destroy()
    rt.runFor(10)
    expect(atServer.events).toEqual(["close"])
    expect(atClient.events).toEqual(["close:Reset"])

    const second = connect()
    const atServer2 = record(second.server)
    const atClient2 = record(second.client)
    second.client.destroy()
    rt.runFor(10)
    expect(atClient2.events).toEqual(["close"])
    expect(atServer2.events).toEqual(["end"])
    // Writing to a side that is gone draws an RST.
    second.server.write([bytes(5)])
    rt.runFor(10)
    expect(atServer2.events).toEqual(["end", "close:Reset"])
  })

  it("refuses a dial to an address nobody listens on, and dials a script refuses", () => {
    const { rt, net, dial } = setup()
    net.refuseDials("server", 1)
    const refused = dial()
    expect(dialOutcome(refused)).toBe("Refused")
    expect(dialOutcome(dial())).toBe("ok")
    const nobody = rt.fork(net.host("client").dial({ host: "server", port: 2 }).pipe(Effect.scoped))
    rt.runFor(10)
    expect(dialOutcome(nobody.pollUnsafe())).toBe("Refused")
  })

  it("a partition stalls bytes and dials without closing anything; heal lets them through", () => {
    const { rt, net, connect, dial } = setup({ dialTimeoutMs: 5_000 })
    const { client, server } = connect()
    const atServer = record(server)
    const atClient = record(client)
    net.partition(["client"], ["server"])
    client.write([bytes(50)])
    const pendingDial = rt.fork(net.host("client").dial({ host: "server", port: 1 }).pipe(Effect.scoped))
    rt.runFor(3_000)
    expect(atServer.bytes.length).toBe(0)
    expect(atClient.events).toEqual([])
    expect(dialOutcome(pendingDial.pollUnsafe())).toBe("pending")
    net.heal()
    rt.runFor(10)
    expect(atServer.bytes.length).toBe(50)
    expect(dialOutcome(pendingDial.pollUnsafe())).toBe("ok")
    // A dial that the partition holds past the dial timeout fails as Unreachable.
    net.partition(["client"], ["server"])
    const late = rt.fork(net.host("client").dial({ host: "server", port: 1 }).pipe(Effect.scoped))
    rt.runFor(6_000)
    expect(dialOutcome(late.pollUnsafe())).toBe("Unreachable")
    void dial
  })

  it("killing a host resets its peers and removes its listeners; a reset between hosts closes both ends", () => {
    const { rt, net, connect, dial } = setup()
    const reset = connect()
    const atResetClient = record(reset.client)
    const atResetServer = record(reset.server)
    expect(net.resetBetween("client", "server")).toBe(2)
    rt.runFor(10)
    expect([atResetClient.events, atResetServer.events]).toEqual([["close:Reset"], ["close:Reset"]])

    const first = connect()
    const atClient = record(first.client)
    const atServer = record(first.server)
    net.kill("server")
    rt.runFor(10)
    expect(atClient.events).toEqual(["close:Reset"])
    // The dead process hears nothing.
    expect(atServer.events).toEqual([])
    expect(dialOutcome(dial())).toBe("Refused")
    expect(net.stats().openEnds).toBe(0)
  })
})
