/**
 * A simulated in-memory link between two channel-like state machines (the
 * secure channel or the connection: both take Start / FrameReceived / Send /
 * Tick and emit SendFrame / Deliver / Authenticated / Close).
 *
 * Frames a side emits wait in the other side's inbox until the test delivers
 * them, so tests can drop, replay, reorder or tamper with frames in flight,
 * and can interleave ticks anywhere.
 */
import type { CryptoPrimitives } from "../../src/core/crypto.ts"
import { makeDeterministicRandom } from "../../src/core/random.ts"
import type { Identity } from "../../src/core/secure-channel.ts"

/** The command shapes both machines share. */
export type LinkCommand<E> =
  | { readonly _tag: "SendFrame"; readonly frame: Uint8Array }
  | { readonly _tag: "Deliver"; readonly data: Uint8Array }
  | { readonly _tag: "Authenticated"; readonly remotePublicKey: Uint8Array }
  | { readonly _tag: "Close"; readonly error: E }

/** The event shapes both machines share. */
export type LinkEvent =
  | { readonly _tag: "Start" }
  | { readonly _tag: "FrameReceived"; readonly frame: Uint8Array }
  | { readonly _tag: "Send"; readonly data: Uint8Array }
  | { readonly _tag: "Tick"; readonly receivePaused?: boolean }

/** A step function of either machine. */
export type StepFn<S, E> = (state: S, event: never) => readonly [S, ReadonlyArray<LinkCommand<E>>]

/** One side of the link and everything it did. */
export class Side<S, E> {
  state: S
  /** Frames sent by the other side, not yet delivered here. */
  inbox: Array<Uint8Array> = []
  /** Every frame this side emitted, in order. */
  readonly sentFrames: Array<Uint8Array> = []
  readonly delivered: Array<Uint8Array> = []
  authenticated: Uint8Array | undefined = undefined
  authenticatedCount = 0
  closed: E | undefined = undefined
  closeCount = 0
  peer!: Side<S, E>
  /** Called on every frame this side emits; returns the frames to put in flight instead. */
  onSend: (frame: Uint8Array, index: number) => ReadonlyArray<Uint8Array> = (frame) => [frame]
  readonly name: string
  private readonly stepFn: StepFn<S, E>

  constructor(name: string, state: S, stepFn: StepFn<S, E>) {
    this.name = name
    this.state = state
    this.stepFn = stepFn
  }

  /** Feeds one event and runs its commands. */
  feed(event: LinkEvent): ReadonlyArray<LinkCommand<E>> {
    const [next, commands] = this.stepFn(this.state, event as never)
    this.state = next
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
export interface Link<S, E> {
  readonly a: Side<S, E>
  readonly b: Side<S, E>
  /** Delivers frames both ways until both inboxes are empty. */
  readonly flush: () => void
}

/** Wires two states into a link. */
export const makeLink = <S, E>(stepFn: StepFn<S, E>, stateA: S, stateB: S): Link<S, E> => {
  const a = new Side<S, E>("a", stateA, stepFn)
  const b = new Side<S, E>("b", stateB, stepFn)
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
