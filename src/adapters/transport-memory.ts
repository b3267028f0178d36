/**
 * An in-memory network behind the transport interface (transport.ts): hosts
 * by name, listeners and dialers by `host:port`, byte streams with TCP-like
 * buffers, and faults a test can script. Library users can run their own
 * tests on it (`makeMemoryNetwork().host("me")` is a `Transport`); the
 * simulation (test/sim/) runs whole systems of relays and clients on it with
 * a virtual clock.
 *
 * Model, per direction of a stream (TCP's, simplified):
 * - `write` appends to the sender's buffer (`writableLength`); it returns
 *   false once that buffer holds `highWaterMark` bytes or more, and `drain`
 *   follows when it is empty again (as Node's sockets do).
 * - Bytes leave the sender's buffer in segments while the receiver's window
 *   has room: what is in flight plus what arrived and was not read stays
 *   under `receiveWindowBytes`. A paused or slow reader therefore backs the
 *   sender up, and nothing is ever buffered without bound.
 * - A segment takes its bytes / bandwidth to send (segments of a direction
 *   share the link) and then the link's latency to arrive; arrivals keep
 *   their order.
 * - FIN follows the last byte written before `end`; the receiver hears `end`
 *   after it has read every byte (not while paused); `close` comes once a
 *   side has heard `end` and its own FIN has left.
 * - `destroy` drops what was unsent; a side with nothing unread sends FIN,
 *   one with unread bytes sends RST (as Linux does on close), and bytes
 *   that arrive at a destroyed side are answered with RST. A side that gets
 *   an RST drops what it had not read and closes with a Reset error.
 *
 * Every event reaches a stream's handlers from a task of the network's clock
 * (`NetworkClock`), never from inside `write`/`end`/`destroy`, so a driver
 * sees the same reentrancy as on Node. With a virtual clock the network is
 * deterministic: the same calls in the same order give the same events.
 *
 * Faults (methods of `MemoryNetwork`): per-link latency and bandwidth; a
 * stalled path or a partition (bytes and dials stop, nothing closes, until
 * healed); a reset of one stream; refused dials; a host killed (every stream
 * of it resets at its peers, its listeners vanish) and later listening again.
 */
import * as Effect from "effect/Effect"
import type { ByteStream, StreamHandlers, Transport, TransportAddress } from "./transport.ts"
import { TransportError } from "./transport.ts"

/** Where the network's events run: a time, and tasks after a delay. */
export interface NetworkClock {
  /** Milliseconds, never going backwards. */
  readonly now: () => number
  /** Runs `task` after `delayMs` (≥ 0), always later than the current call; returns a cancel. */
  readonly schedule: (delayMs: number, task: () => void) => () => void
}

/** The wall clock and Node's timers: for tests that run in real time. */
export const realTimeNetworkClock: NetworkClock = {
  now: () => performance.now(),
  schedule: (delayMs, task) => {
    if (delayMs <= 0) {
      const immediate = setImmediate(task)
      return () => clearImmediate(immediate)
    }
    const timer = setTimeout(task, delayMs)
    return () => clearTimeout(timer)
  }
}

/** How bytes cross between two hosts. */
export interface LinkProfile {
  /** One-way delay in milliseconds. */
  readonly latencyMs: number
  /** Bytes per millisecond (Infinity: no bandwidth limit). */
  readonly bytesPerMs: number
}

/** Options of a memory network. */
export interface MemoryNetworkOptions {
  /** Default: the wall clock (`realTimeNetworkClock`). */
  readonly clock?: NetworkClock
  /** Links without their own profile (default: 0 ms, no bandwidth limit). */
  readonly defaultLink?: LinkProfile
  /** A receiver's window: bytes in flight plus unread (default 64 KiB). */
  readonly receiveWindowBytes?: number
  /** `write` returns false at this many buffered bytes (default 16 KiB, as Node). */
  readonly highWaterMark?: number
  /** Largest segment (default 16 KiB). */
  readonly segmentBytes?: number
  /** A dial that gets no answer (partition) fails as Unreachable after this long (default 20 s). */
  readonly dialTimeoutMs?: number
}

/** Counts for leak checks and tests. */
export interface MemoryNetworkStats {
  /** Stream ends not closed yet (two per connection). */
  readonly openEnds: number
  /** Bytes in sender buffers, in flight and unread, over all open ends. */
  readonly bufferedBytes: number
  /** Listening sockets. */
  readonly listeners: number
  /** Dials waiting for an answer. */
  readonly pendingDials: number
  /** Connections made so far. */
  readonly connections: number
  /** Ends that closed with a Reset error so far. */
  readonly resets: number
}

/** The network: a `Transport` per host, faults, and counts. */
export interface MemoryNetwork {
  readonly clock: NetworkClock
  /** The transport of `name`: it listens on `name:<port>`, and its dials come from `name`. */
  readonly host: (name: string) => Transport
  /** Sets the link between two hosts (both directions). */
  readonly setLink: (a: string, b: string, profile: LinkProfile) => void
  /** Stops every byte and dial between the two groups of hosts, without closing anything. */
  readonly partition: (a: ReadonlyArray<string>, b: ReadonlyArray<string>) => void
  /** Lifts every partition and stall: held bytes and dials go on. */
  readonly heal: () => void
  /** Resets every connection between `a` and `b`: both ends close with a Reset error. */
  readonly resetBetween: (a: string, b: string) => number
  /** The next `count` dials to `host` (any port) are refused. */
  readonly refuseDials: (host: string, count: number) => void
  /**
   * The host's process dies: its listeners vanish (dials are refused), its
   * ends close without telling their handlers anything, and every peer gets
   * an RST. Whatever ran on the host must be stopped by the caller.
   */
  readonly kill: (host: string) => void
  readonly stats: () => MemoryNetworkStats
  /** Connections made so far to listeners on `host` (accepted there). */
  readonly connectionsTo: (host: string) => number
}

type Segment =
  | { readonly _tag: "Data"; readonly at: number; readonly chunk: Uint8Array }
  | { readonly _tag: "Fin"; readonly at: number }
  | { readonly _tag: "Rst"; readonly at: number }

/** Makes an empty network. */
export const makeMemoryNetwork = (options: MemoryNetworkOptions = {}): MemoryNetwork => {
  const clock = options.clock ?? realTimeNetworkClock
  const defaultLink = options.defaultLink ?? { latencyMs: 0, bytesPerMs: Infinity }
  const windowBytes = options.receiveWindowBytes ?? 64 * 1024
  const highWaterMark = options.highWaterMark ?? 16 * 1024
  const segmentBytes = options.segmentBytes ?? 16 * 1024
  const dialTimeoutMs = options.dialTimeoutMs ?? 20_000

  const links = new Map<string, LinkProfile>()
  const blocked = new Set<string>()
  const listeners = new Map<string, (stream: ByteStream) => void>()
  const nextPort = new Map<string, number>()
  const refusals = new Map<string, number>()
  const ends = new Set<End>()
  const heldDials = new Set<() => void>()
  // Ends with segments in flight (open or closed), for `heal`.
  const sending = new Set<End>()
  let connections = 0
  const connectionsByHost = new Map<string, number>()
  let resets = 0

  const pairKey = (a: string, b: string) => (a < b ? `${a}\u0000${b}` : `${b}\u0000${a}`)
  const linkOf = (a: string, b: string) => links.get(pairKey(a, b)) ?? defaultLink
  const isBlocked = (a: string, b: string) => blocked.has(pairKey(a, b))

  // One side of a connection. Its fields are the direction that leaves it
  // (send buffer, segments in flight to the peer) and what arrived for it.
  class End implements ByteStream {
    readonly host: string
    readonly remoteAddress: string
    peer!: End
    handlers: StreamHandlers | undefined
    sendQueue: Array<Uint8Array> = []
    sendBytes = 0
    needDrain = false
    endRequested = false
    finSent = false
    /** Segments on their way to the peer, in order. */
    inFlight: Array<Segment> = []
    inFlightBytes = 0
    linkFreeAt = 0
    lastArrival = 0
    arrivalTimer: (() => void) | undefined
    recvQueue: Array<Uint8Array> = []
    recvBytes = 0
    finArrived = false
    endEmitted = false
    paused = false
    closed = false
    deliverScheduled = false

    constructor(host: string, remoteHost: string) {
      this.host = host
      this.remoteAddress = remoteHost
      ends.add(this)
    }

    start = (handlers: StreamHandlers): void => {
      if (this.handlers !== undefined) throw new Error("ByteStream.start called twice")
      this.handlers = handlers
      this.scheduleDeliver()
    }

    write = (chunks: ReadonlyArray<Uint8Array>): boolean => {
      if (this.closed || this.endRequested) return true
      for (const chunk of chunks) {
        if (chunk.length === 0) continue
        // Copied: the caller may reuse its buffer, as with Node's sockets.
        this.sendQueue.push(chunk.slice())
        this.sendBytes += chunk.length
      }
      pump(this)
      if (this.sendBytes >= highWaterMark) {
        this.needDrain = true
        return false
      }
      return true
    }

    writableLength = (): number => this.sendBytes

    pause = (): void => {
      this.paused = true
    }

    resume = (): void => {
      if (!this.paused) return
      this.paused = false
      this.scheduleDeliver()
    }

    end = (): void => {
      if (this.closed || this.endRequested) return
      this.endRequested = true
      pump(this)
    }

    destroy = (): void => {
      if (this.closed) return
      const unread = this.recvBytes > 0
      this.sendQueue = []
      this.sendBytes = 0
      this.closeNow(undefined)
      if (unread) send(this, { _tag: "Rst", at: 0 })
      else if (!this.finSent) {
        this.finSent = true
        send(this, { _tag: "Fin", at: 0 })
      }
    }

    scheduleDeliver(): void {
      if (this.deliverScheduled || this.closed) return
      this.deliverScheduled = true
      clock.schedule(0, () => {
        this.deliverScheduled = false
        deliver(this)
      })
    }

    /** Closes this end: its buffers go, `close` is reported (later), nothing after. */
    closeNow(error: TransportError | undefined): void {
      if (this.closed) return
      this.closed = true
      this.recvQueue = []
      this.recvBytes = 0
      this.sendQueue = []
      this.sendBytes = 0
      ends.delete(this)
      if (error !== undefined) resets++
      const handlers = this.handlers
      if (handlers !== undefined) clock.schedule(0, () => handlers.close(error))
      // A stream never started reports nothing; its owner destroys it.
    }

    /** Closes without telling the handlers: the process holding this end is gone. */
    vanish(): void {
      this.handlers = undefined
      const unsent = this.sendBytes > 0 || this.recvBytes > 0
      this.closeNow(undefined)
      send(this, unsent || !this.finSent ? { _tag: "Rst", at: 0 } : { _tag: "Fin", at: 0 })
    }
  }

  // Moves bytes from `from`'s send buffer onto the wire while the peer's window has room.
  const pump = (from: End): void => {
    const to = from.peer
    while (from.sendQueue.length > 0 && !from.closed) {
      const room = windowBytes - to.recvBytes - from.inFlightBytes
      if (room <= 0) break
      let chunk = from.sendQueue[0]!
      const size = Math.min(chunk.length, room, segmentBytes)
      if (size < chunk.length) {
        from.sendQueue[0] = chunk.subarray(size)
        chunk = chunk.subarray(0, size)
      } else {
        from.sendQueue.shift()
      }
      from.sendBytes -= size
      from.inFlightBytes += size
      send(from, { _tag: "Data", at: 0, chunk })
    }
    if (from.sendQueue.length === 0 && from.endRequested && !from.finSent && !from.closed) {
      from.finSent = true
      send(from, { _tag: "Fin", at: 0 })
      maybeClose(from)
    }
    if (from.needDrain && from.sendBytes === 0 && !from.closed) {
      from.needDrain = false
      const handlers = from.handlers
      if (handlers !== undefined) clock.schedule(0, () => from.closed || handlers.drain())
    }
  }

  // Puts a segment in flight from `from` to its peer, after the ones before it.
  const send = (from: End, segment: Segment): void => {
    const link = linkOf(from.host, from.peer.host)
    const now = clock.now()
    const size = segment._tag === "Data" ? segment.chunk.length : 0
    const departs = Math.max(now, from.linkFreeAt)
    const onWire = Number.isFinite(link.bytesPerMs) ? size / link.bytesPerMs : 0
    from.linkFreeAt = departs + onWire
    const at = Math.max(departs + onWire + link.latencyMs, from.lastArrival)
    from.lastArrival = at
    from.inFlight.push({ ...segment, at })
    sending.add(from)
    if (from.arrivalTimer === undefined) armArrivals(from)
  }

  // One timer per direction, for the segment at the head of the line.
  const armArrivals = (from: End): void => {
    const head = from.inFlight[0]
    if (head === undefined || isBlocked(from.host, from.peer.host)) return
    from.arrivalTimer = clock.schedule(Math.max(0, head.at - clock.now()), () => {
      from.arrivalTimer = undefined
      arrive(from)
    })
  }

  // Lands every due segment from `from` at its peer, in order.
  const arrive = (from: End): void => {
    if (isBlocked(from.host, from.peer.host)) return
    const to = from.peer
    const now = clock.now()
    while (from.inFlight.length > 0 && from.inFlight[0]!.at <= now) {
      const segment = from.inFlight.shift()!
      switch (segment._tag) {
        case "Data": {
          from.inFlightBytes -= segment.chunk.length
          if (to.closed) {
            // Bytes for a side that is gone: the peer's kernel answers RST.
            if (!from.closed) send(to, { _tag: "Rst", at: 0 })
            break
          }
          to.recvQueue.push(segment.chunk)
          to.recvBytes += segment.chunk.length
          break
        }
        case "Fin":
          to.finArrived = true
          break
        case "Rst":
          if (!to.closed) {
            to.closeNow(
              new TransportError({ reason: "Reset", message: "connection reset by peer", code: "ECONNRESET" })
            )
          }
          break
      }
    }
    if (from.inFlight.length === 0) sending.delete(from)
    if (!to.closed) deliver(to)
    armArrivals(from)
  }

  // Hands what arrived to the handlers while the end reads.
  const deliver = (end: End): void => {
    const handlers = end.handlers
    if (handlers === undefined || end.closed) return
    let read = false
    while (end.recvQueue.length > 0 && !end.paused && !end.closed) {
      const chunk = end.recvQueue.shift()!
      end.recvBytes -= chunk.length
      read = true
      handlers.data(chunk)
    }
    // The window opened: the peer may send more.
    if (read && !end.peer.closed) pump(end.peer)
    if (end.recvQueue.length === 0 && end.finArrived && !end.endEmitted && !end.paused && !end.closed) {
      end.endEmitted = true
      handlers.end()
      maybeClose(end)
    }
  }

  const maybeClose = (end: End): void => {
    if (end.endEmitted && end.finSent && !end.closed) {
      end.closed = true
      ends.delete(end)
      const handlers = end.handlers
      if (handlers !== undefined) clock.schedule(0, () => handlers.close(undefined))
    }
  }

  const addressKey = (address: TransportAddress) => `${address.host}:${address.port}`

  const connect = (from: string, address: TransportAddress): End | TransportError => {
    const key = addressKey(address)
    const refused = refusals.get(address.host) ?? 0
    const onStream = listeners.get(key)
    if (refused > 0 || onStream === undefined) {
      if (refused > 0) refusals.set(address.host, refused - 1)
      return new TransportError({
        reason: "Refused",
        message: `cannot connect to ${key}: connection refused`,
        code: "ECONNREFUSED"
      })
    }
    const local = new End(from, address.host)
    const remote = new End(address.host, from)
    local.peer = remote
    remote.peer = local
    connections++
    connectionsByHost.set(address.host, (connectionsByHost.get(address.host) ?? 0) + 1)
    onStream(remote)
    return local
  }

  const host = (name: string): Transport => ({
    name: "memory",
    listen: (address, onStream) =>
      Effect.acquireRelease(
        Effect.suspend(() => {
          let port = address.port
          if (port === 0) {
            port = nextPort.get(address.host) ?? 40000
            while (listeners.has(`${address.host}:${port}`)) port++
            nextPort.set(address.host, port + 1)
          }
          const bound = { host: address.host, port }
          const key = addressKey(bound)
          if (listeners.has(key)) {
            return Effect.fail(
              new TransportError({ reason: "AddressInUse", message: `cannot listen on ${key}: address in use`, code: "EADDRINUSE" })
            )
          }
          listeners.set(key, onStream)
          return Effect.succeed({ bound, onStream })
        }),
        ({ bound, onStream: installed }) =>
          Effect.sync(() => {
            // A killed host's listener may have been replaced by a new process's.
            if (listeners.get(addressKey(bound)) === installed) listeners.delete(addressKey(bound))
          })
      ).pipe(Effect.map(({ bound }) => bound)),
    dial: (address) =>
      Effect.acquireRelease(
        Effect.callback<ByteStream, TransportError>((resume) => {
          let cancelled = false
          let timeout: (() => void) | undefined
          const link = linkOf(name, address.host)
          // The SYN crosses, the listener accepts, the SYN-ACK crosses back.
          const attempt = () => {
            if (cancelled) return
            if (isBlocked(name, address.host)) {
              heldDials.add(attempt)
              return
            }
            heldDials.delete(attempt)
            const result = connect(name, address)
            clock.schedule(link.latencyMs, () => {
              timeout?.()
              if (result instanceof TransportError) return cancelled || resume(Effect.fail(result))
              if (cancelled) return result.destroy()
              resume(Effect.succeed(result))
            })
          }
          timeout = clock.schedule(dialTimeoutMs, () => {
            heldDials.delete(attempt)
            cancelled = true
            resume(Effect.fail(
              new TransportError({
                reason: "Unreachable",
                message: `cannot connect to ${address.host}:${address.port}: timed out`,
                code: "ETIMEDOUT"
              })
            ))
          })
          clock.schedule(link.latencyMs, attempt)
          return Effect.sync(() => {
            cancelled = true
            heldDials.delete(attempt)
            timeout?.()
          })
        }),
        (stream) => Effect.sync(stream.destroy)
      )
  })

  return {
    clock,
    host,
    setLink: (a, b, profile) => {
      links.set(pairKey(a, b), profile)
    },
    partition: (a, b) => {
      for (const x of a) for (const y of b) if (x !== y) blocked.add(pairKey(x, y))
    },
    heal: () => {
      blocked.clear()
      // Closed ends too: a FIN or an RST they sent may be held.
      for (const end of sending) if (end.arrivalTimer === undefined) armArrivals(end)
      for (const dial of [...heldDials]) clock.schedule(0, dial)
      heldDials.clear()
    },
    resetBetween: (a, b) => {
      let count = 0
      for (const end of [...ends]) {
        if (end.host === a && end.peer.host === b || end.host === b && end.peer.host === a) {
          count++
          end.closeNow(new TransportError({ reason: "Reset", message: "connection reset (fault)", code: "ECONNRESET" }))
        }
      }
      return count
    },
    refuseDials: (target, count) => {
      refusals.set(target, (refusals.get(target) ?? 0) + count)
    },
    kill: (target) => {
      for (const key of [...listeners.keys()]) if (key.startsWith(`${target}:`)) listeners.delete(key)
      for (const end of [...ends]) if (end.host === target) end.vanish()
    },
    connectionsTo: (target) => connectionsByHost.get(target) ?? 0,
    stats: () => {
      let bufferedBytes = 0
      for (const end of ends) bufferedBytes += end.sendBytes + end.inFlightBytes + end.recvBytes
      return {
        openEnds: ends.size,
        bufferedBytes,
        listeners: listeners.size,
        pendingDials: heldDials.size,
        connections,
        resets
      }
    }
  }
}
