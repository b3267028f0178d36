/**
 * A simulated in-memory link between two channel-like machines (the secure
 * channel or the connection: both take start / handleFrame / send / tick and
 * are drained with pollTransmit / pollEvent).
 *
 * Frames a side emits wait in the other side's inbox until the test delivers
 * them, so tests can drop, replay, reorder or tamper with frames in flight,
 * and can interleave ticks anywhere.
 */
import type { CryptoPrimitives } from "../../src/core/crypto.ts"
import { makeDeterministicRandom } from "../../src/core/random.ts"
import type { Identity } from "../../src/core/secure-channel.ts"

/** What a side did after one call, in the order the driver takes it: frames first, then events. */
export type LinkCommand<E> =
  | { readonly _tag: "SendFrame"; readonly frame: Uint8Array }
  | { readonly _tag: "Deliver"; readonly data: Uint8Array }
  | { readonly _tag: "Authenticated"; readonly remotePublicKey: Uint8Array }
  | { readonly _tag: "Close"; readonly error: E }

/** The calls both machines take, as values a test can list. */
export type LinkEvent =
  | { readonly _tag: "Start" }
  | { readonly _tag: "FrameReceived"; readonly frame: Uint8Array }
  | { readonly _tag: "Send"; readonly data: Uint8Array }
  | { readonly _tag: "Tick"; readonly receivePaused?: boolean }

/** The drain API both machines share (SecureChannel and Connection). */
export interface ChannelMachine<E> {
  start(): void
  handleFrame(frame: Uint8Array): void
  send(data: Uint8Array): void
  tick(receivePaused?: boolean): void
  pollTransmit(): Uint8Array | undefined
  pollEvent():
    | { readonly _tag: "Authenticated"; readonly remotePublicKey: Uint8Array }
    | { readonly _tag: "Deliver"; readonly data: Uint8Array }
    | { readonly _tag: "Closed"; readonly error: E }
    | undefined
}

/** Makes one call on a machine. */
export const feedMachine = <E>(machine: ChannelMachine<E>, event: LinkEvent): void => {
  switch (event._tag) {
    case "Start":
      return machine.start()
    case "FrameReceived":
      return machine.handleFrame(event.frame)
    case "Send":
      return machine.send(event.data)
    case "Tick":
      return machine.tick(event.receivePaused)
  }
}

/** Everything the machine queued, frames first, as commands. */
export const drainMachine = <E>(machine: ChannelMachine<E>): Array<LinkCommand<E>> => {
  const out: Array<LinkCommand<E>> = []
  for (let frame = machine.pollTransmit(); frame !== undefined; frame = machine.pollTransmit()) {
    out.push({ _tag: "SendFrame", frame })
  }
  for (let event = machine.pollEvent(); event !== undefined; event = machine.pollEvent()) {
    out.push(event._tag === "Closed" ? { _tag: "Close", error: event.error } : event)
  }
  return out
}

/** One call, then the drain: what the machine did in answer. */
export const stepMachine = <E>(machine: ChannelMachine<E>, event: LinkEvent): Array<LinkCommand<E>> => {
  feedMachine(machine, event)
  return drainMachine(machine)
}

/** One side of the link and everything it did. */
export class Side<M extends ChannelMachine<E>, E> {
  machine: M
  /** Frames sent by the other side, not yet delivered here. */
  inbox: Array<Uint8Array> = []
  /** Every frame this side emitted, in order. */
  readonly sentFrames: Array<Uint8Array> = []
  readonly delivered: Array<Uint8Array> = []
  authenticated: Uint8Array | undefined = undefined
  authenticatedCount = 0
  closed: E | undefined = undefined
  closeCount = 0
  peer!: Side<M, E>
  /** Called on every frame this side emits; returns the frames to put in flight instead. */
  onSend: (frame: Uint8Array, index: number) => ReadonlyArray<Uint8Array> = (frame) => [frame]
  readonly name: string

  constructor(name: string, machine: M) {
    this.name = name
    this.machine = machine
  }

  /** Makes one call and runs what the machine queued. */
  feed(event: LinkEvent): ReadonlyArray<LinkCommand<E>> {
    const commands = stepMachine(this.machine, event)
    for (const command of commands) {
      switch (command._tag) {
        case "SendFrame": {
          const index = this.sentFrames.length
          this.sentFrames.push(command.frame)
          this.peer.inbox.push(...this.onSend(command.frame, index))
          break
        }
        case "Deliver":
          this.delivered.push(command.data)
          break
        case "Authenticated":
          this.authenticated = command.remotePublicKey
          this.authenticatedCount++
          break
        case "Close":
          this.closed = command.error
          this.closeCount++
          break
      }
    }
    return commands
  }

  start(): void {
    this.feed({ _tag: "Start" })
  }

  send(data: Uint8Array): void {
    this.feed({ _tag: "Send", data })
  }

  tick(receivePaused?: boolean): void {
    this.feed(receivePaused === undefined ? { _tag: "Tick" } : { _tag: "Tick", receivePaused })
  }

  /** Delivers the oldest frame in this side's inbox; false when empty. */
  receiveOne(): boolean {
    const frame = this.inbox.shift()
    if (frame === undefined) return false
    this.feed({ _tag: "FrameReceived", frame })
    return true
  }
}

/** Two sides wired to each other. */
export interface Link<M extends ChannelMachine<E>, E> {
  readonly a: Side<M, E>
  readonly b: Side<M, E>
  /** Delivers frames both ways until both inboxes are empty. */
  readonly flush: () => void
}

/** Wires two machines into a link. */
export const makeLink = <M extends ChannelMachine<E>, E>(machineA: M, machineB: M): Link<M, E> => {
  const a = new Side<M, E>("a", machineA)
  const b = new Side<M, E>("b", machineB)
  a.peer = b
  b.peer = a
  const flush = (): void => {
    // Bounded: a correct machine answers a frame with at most one frame.
    for (let rounds = 0; rounds < 1_000_000; rounds++) {
      const moved = a.receiveOne() || b.receiveOne()
      if (!moved) return
    }
    throw new Error("link did not settle")
  }
  return { a, b, flush }
}

/** A deterministic identity from a seed number. */
export const makeIdentity = (crypto: CryptoPrimitives, seedNumber: number): Identity => {
  const seed = makeDeterministicRandom(seedNumber)(32)
  return { seed, publicKey: crypto.ed25519PublicKey(seed) }
}

export { concatBytes } from "../../src/core/bytes.ts"

/** A copy of `bytes` with bit `bit` (0 = lowest bit of byte 0) flipped. */
export const flipBit = (bytes: Uint8Array, bit: number): Uint8Array => {
  const out = bytes.slice()
  const index = bit >> 3
  out[index] = out[index]! ^ (1 << (bit & 7))
  return out
}
