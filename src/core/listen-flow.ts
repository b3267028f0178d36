/**
 * The listener's decisions on one listen channel (PROTOCOL.md "Relay
 * messages"): which IncomingConnection is worked on and which is refused,
 * how an accept goes from the access policy through the accept connection
 * to the application, and what an accept that fails sends back. No I/O, no
 * clock, no randomness: the adapter asks the policy, opens connections and
 * hands streams over, and tells the flow how each step went.
 *
 * How to drive it: one `ListenFlow` per listen channel, made when the
 * channel is open. Feed each event with `handle`, then drain `poll()` until
 * it returns undefined, running each command. Commands are independent of
 * each other, so a drain that waits on one (a send) may leave the rest to
 * whoever drains next; each command is handed out once. Accept ids are the
 * flow's own (`CheckAccess` names a new one); the adapter names them back in
 * the events of that accept.
 *
 * Rules (one line each; test/listen-flow.test.ts holds a case per line):
 * - `Received` is a message on the listen channel: the relay sends nothing
 *   there but IncomingConnection(C).
 * - A message that does not decode as an IncomingConnection → `CloseChannel`
 *   (the relay broke the protocol; the adapter reconnects later); the channel
 *   counts as ended from then on.
 * - IncomingConnection(C) while `maxAcceptsInProgress` accepts are under way
 *   → `Refuse` C "Busy" at once, so a relay (or a flood through it) cannot
 *   make the listener open connections without bound.
 * - Otherwise it is a new accept, under way until it is refused or
 *   delivered: `CheckAccess` (ask the access policy about C).
 * - The same C twice is two accepts: each IncomingConnection stands for one
 *   connect waiting at the relay, and each needs its own accept.
 * - `AccessDecided` denied → `Refuse` C "Denied"; allowed → `OpenAccept`
 *   (a new relay connection saying accept(C), then the end-to-end handshake).
 * - `AcceptFailed` → `Refuse` C "AcceptFailed" with the adapter's message
 *   (harmless if the relay already dropped the half tunnel).
 * - `AcceptOpened` → `Deliver` (hand the stream to the application); the
 *   accept stays under way, and so counts toward the cap, until `Delivered`:
 *   an application that does not take streams slows the listener down.
 * - `Refuse` says to send RejectConnection(C) while the listen channel is
 *   up; after `ChannelEnded` (or `CloseChannel`) a refusal is only reported.
 * - `ChannelEnded`: the listen channel is gone (the relay closed it, or it
 *   failed). Accepts under way go on to their end (a dropped listen channel
 *   does not close tunnels, as on the relay); messages after it are ignored.
 * - An event naming an accept the flow does not know, or not at the step it
 *   is at (a late or repeated event), is ignored.
 */
import { decodeIncomingConnection } from "./messages.ts"
import { absurd } from "./absurd.ts"

/**
 * Accepts (policy check, accept connection, end-to-end handshake, hand-over)
 * under way at once per listen channel by default.
 */
export const MAX_ACCEPTS_IN_PROGRESS = 32

/** One accept's id, chosen by the flow, unique within it. */
export type AcceptId = number & { readonly AcceptId: unique symbol }

/** Something that happened on the listen channel or to one of its accepts. */
export type ListenFlowEvent =
  /** A message arrived on the listen channel. */
  | { readonly _tag: "Received"; readonly message: Uint8Array }
  /** The access policy answered for accept `id`. */
  | { readonly _tag: "AccessDecided"; readonly id: AcceptId; readonly allowed: boolean }
  /** Accept `id`'s tunnel formed: the peer proved its key end to end. */
  | { readonly _tag: "AcceptOpened"; readonly id: AcceptId }
  /** Accept `id`'s tunnel did not form (its connection is already closed). */
  | { readonly _tag: "AcceptFailed"; readonly id: AcceptId; readonly message: string }
  /** Accept `id`'s stream was taken by the application's accept queue. */
  | { readonly _tag: "Delivered"; readonly id: AcceptId }
  /** The listen channel ended. */
  | { readonly _tag: "ChannelEnded" }

/** Why an IncomingConnection was refused. */
export type Refusal =
  /** `maxAcceptsInProgress` accepts were already under way. */
  | { readonly _tag: "Busy" }
  /** The access policy said no. */
  | { readonly _tag: "Denied" }
  /** The accept connection or the end-to-end handshake failed. */
  | { readonly _tag: "AcceptFailed"; readonly message: string }

/** What the adapter is to do. */
export type ListenFlowCommand =
  /** Ask the access policy about `peerKey`; answer with `AccessDecided`. */
  | { readonly _tag: "CheckAccess"; readonly id: AcceptId; readonly peerKey: Uint8Array }
  /** Open a tunnel saying accept(peerKey); answer with `AcceptOpened` or `AcceptFailed`. */
  | { readonly _tag: "OpenAccept"; readonly id: AcceptId; readonly peerKey: Uint8Array }
  /** Hand accept `id`'s stream to the application; answer with `Delivered`. */
  | { readonly _tag: "Deliver"; readonly id: AcceptId; readonly peerKey: Uint8Array }
  /** Report the refusal, and send RejectConnection(peerKey) on the listen channel when `sendReject`. */
  | {
    readonly _tag: "Refuse"
    readonly peerKey: Uint8Array
    readonly refusal: Refusal
    readonly sendReject: boolean
  }
  /** Close the listen channel: the relay broke the protocol (`error` says how). */
  | { readonly _tag: "CloseChannel"; readonly error: string }

/** How a flow is set up. */
export interface ListenFlowConfig {
  /** Accepts under way at once; IncomingConnections beyond it are refused "Busy" (≥ 1). */
  readonly maxAcceptsInProgress: number
}

/** The defaults the listener uses. */
export const defaultListenFlowConfig: ListenFlowConfig = { maxAcceptsInProgress: MAX_ACCEPTS_IN_PROGRESS }

/** The step an accept under way is at: what it waits for. */
type AcceptStep = "awaiting-access" | "awaiting-tunnel" | "awaiting-delivery"

interface AcceptUnderWay {
  readonly peerKey: Uint8Array
  step: AcceptStep
}

/** One listen channel's flow (see the module header for how to drive it). */
export class ListenFlow {
  readonly #config: ListenFlowConfig
  readonly #accepts = new Map<AcceptId, AcceptUnderWay>()
  #nextId = 0
  #channelUp = true
  // Commands not yet drained: a FIFO over one reused array.
  readonly #out: Array<ListenFlowCommand> = []
  #outHead = 0

  constructor(config: ListenFlowConfig = defaultListenFlowConfig) {
    this.#config = config
  }

  /** Accepts under way (between their IncomingConnection and their refusal or delivery). */
  get acceptsInProgress(): number {
    return this.#accepts.size
  }

  /** Whether the listen channel is still up (neither ended nor closed by the flow). */
  get channelUp(): boolean {
    return this.#channelUp
  }

  /** Feeds one event; drain `poll()` afterwards. */
  handle(event: ListenFlowEvent): void {
    switch (event._tag) {
      case "Received":
        return this.#received(event.message)
      case "AccessDecided": {
        const accept = this.#at(event.id, "awaiting-access")
        if (accept === undefined) return
        if (!event.allowed) return this.#refuse(event.id, accept, { _tag: "Denied" })
        accept.step = "awaiting-tunnel"
        return this.#push({ _tag: "OpenAccept", id: event.id, peerKey: accept.peerKey })
      }
      case "AcceptOpened": {
        const accept = this.#at(event.id, "awaiting-tunnel")
        if (accept === undefined) return
        accept.step = "awaiting-delivery"
        return this.#push({ _tag: "Deliver", id: event.id, peerKey: accept.peerKey })
      }
      case "AcceptFailed": {
        const accept = this.#at(event.id, "awaiting-tunnel")
        if (accept === undefined) return
        return this.#refuse(event.id, accept, { _tag: "AcceptFailed", message: event.message })
      }
      case "Delivered": {
        if (this.#at(event.id, "awaiting-delivery") !== undefined) this.#accepts.delete(event.id)
        return
      }
      case "ChannelEnded":
        this.#channelUp = false
        return
      default:
        return absurd(event)
    }
  }

  /** The next command, or undefined when there is none. */
  poll(): ListenFlowCommand | undefined {
    if (this.#outHead < this.#out.length) {
      const command = this.#out[this.#outHead]!
      this.#out[this.#outHead++] = undefined! // let the command go; the slot is reused
      return command
    }
    this.#out.length = 0
    this.#outHead = 0
    return undefined
  }

  #received(message: Uint8Array): void {
    if (!this.#channelUp) return
    const decoded = decodeIncomingConnection(message)
    if (decoded._tag === "Err") {
      this.#channelUp = false
      return this.#push({
        _tag: "CloseChannel",
        error: `the relay sent a malformed IncomingConnection: ${decoded.error.message}`
      })
    }
    const peerKey = decoded.value.publicKey
    if (this.#accepts.size >= this.#config.maxAcceptsInProgress) {
      return this.#push({ _tag: "Refuse", peerKey, refusal: { _tag: "Busy" }, sendReject: true })
    }
    const id = this.#nextId++ as AcceptId
    this.#accepts.set(id, { peerKey, step: "awaiting-access" })
    this.#push({ _tag: "CheckAccess", id, peerKey })
  }

  #at(id: AcceptId, step: AcceptStep): AcceptUnderWay | undefined {
    const accept = this.#accepts.get(id)
    return accept?.step === step ? accept : undefined
  }

  #refuse(id: AcceptId, accept: AcceptUnderWay, refusal: Refusal): void {
    this.#accepts.delete(id)
    this.#push({ _tag: "Refuse", peerKey: accept.peerKey, refusal, sendReject: this.#channelUp })
  }

  #push(command: ListenFlowCommand): void {
    this.#out.push(command)
  }
}
