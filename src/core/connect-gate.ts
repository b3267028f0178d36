/**
 * Connects that must take turns. The relay closes a second pending connect
 * from the same client to the same peer as "duplicate" (src/core/relay-core.ts),
 * so a connector lets one connect per (our key, peer, relay) go at a time,
 * until its tunnel has formed or failed, and the next one waits. No I/O, no
 * clock: the adapter names each connect by a ticket and the key it waits on.
 *
 * How to drive it: feed `Requested` when a connect wants to start and `Left`
 * when it is done (formed, failed or given up, whether it had its turn or
 * was still waiting); drain `poll()` after each, and let each `Grant`ed
 * ticket start. Tickets are the adapter's, never reused.
 *
 * Rules (one line each; test/connect-gate.test.ts holds a case per line):
 * - `Requested` on a key nobody holds → `Grant` at once.
 * - `Requested` on a key held → the ticket waits, behind earlier waiters on that key.
 * - `Left` by the holder → the first waiter on its key gets `Grant`.
 * - `Left` by a waiter → it leaves the line; nothing else changes.
 * - A key nobody holds or waits for is forgotten (memory stays bounded by
 *   the connects under way).
 * - `Requested` with a ticket already in use, or `Left` with one not in use,
 *   is ignored.
 */
import { absurd } from "./absurd.ts"

/** One connect's place in the gate, chosen by the adapter, never reused. */
export type GateTicket = number & { readonly GateTicket: unique symbol }

/** Brands a number as a GateTicket (the adapter's counter). */
export const GateTicket = (n: number): GateTicket => n as GateTicket

/** A connect wants its turn, or is done. */
export type ConnectGateEvent =
  /** Connect `ticket` wants to start; `key` names what it must not overlap with. */
  | { readonly _tag: "Requested"; readonly ticket: GateTicket; readonly key: string }
  /** Connect `ticket` is done, or gave up waiting. */
  | { readonly _tag: "Left"; readonly ticket: GateTicket }

/** What the adapter is to do. */
export type ConnectGateCommand =
  /** Connect `ticket` may start now. */
  { readonly _tag: "Grant"; readonly ticket: GateTicket }

// One key's turn-taking: who goes, and who waits in order.
interface Line {
  holder: GateTicket
  readonly waiting: Array<GateTicket>
}

/** The gate (see the module header for how to drive it). */
export class ConnectGate {
  readonly #lines = new Map<string, Line>()
  readonly #keyOf = new Map<GateTicket, string>()
  // Commands not yet drained: a FIFO over one reused array.
  readonly #out: Array<ConnectGateCommand> = []
  #outHead = 0

  /** Keys someone holds (each has a line); for tests and metrics. */
  get keysHeld(): number {
    return this.#lines.size
  }

  /** Tickets holding or waiting. */
  get ticketsInUse(): number {
    return this.#keyOf.size
  }

  /** Feeds one event; drain `poll()` afterwards. */
  handle(event: ConnectGateEvent): void {
    switch (event._tag) {
      case "Requested": {
        if (this.#keyOf.has(event.ticket)) return
        this.#keyOf.set(event.ticket, event.key)
        const line = this.#lines.get(event.key)
        if (line !== undefined) return void line.waiting.push(event.ticket)
        this.#lines.set(event.key, { holder: event.ticket, waiting: [] })
        this.#out.push({ _tag: "Grant", ticket: event.ticket })
        return
      }
      case "Left": {
        const key = this.#keyOf.get(event.ticket)
        if (key === undefined) return
        this.#keyOf.delete(event.ticket)
        // A ticket in use always has its key's line.
        const line = this.#lines.get(key)!
        if (line.holder !== event.ticket) {
          line.waiting.splice(line.waiting.indexOf(event.ticket), 1)
          return
        }
        const next = line.waiting.shift()
        if (next === undefined) return void this.#lines.delete(key)
        line.holder = next
        this.#out.push({ _tag: "Grant", ticket: next })
        return
      }
      default:
        return absurd(event)
    }
  }

  /** The next command, or undefined when there is none. */
  poll(): ConnectGateCommand | undefined {
    if (this.#outHead < this.#out.length) {
      const command = this.#out[this.#outHead]!
      this.#out[this.#outHead++] = undefined! // let the command go; the slot is reused
      return command
    }
    this.#out.length = 0
    this.#outHead = 0
    return undefined
  }
}
