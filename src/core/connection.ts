/**
 * One authenticated, encrypted, kept-alive connection: the secure channel
 * (secure-channel.ts) with keepalive (keepalive.ts) on top, as one pure state
 * machine. The same machine serves a TCP hop to a relay (the adapter handles
 * frame lengths and the version prefix and feeds whole frames) and the end-to-
 * end channel inside a tunnel (one tunnel message = one frame).
 *
 * How to drive it (quinn-proto's shape: feed, then drain):
 * 1. `connection = new Connection(config)`; call `start()` first: it queues
 *    our first handshake frame.
 * 2. `handleFrame(frame)` for every frame from the peer, in arrival order.
 * 3. `tick(receivePaused?)` once per tick (1 s in Offset). Before
 *    `Authenticated` ticks count toward `handshakeTimeoutTicks`; after,
 *    toward rekeying and keepalive. Pass `receivePaused = true` for ticks
 *    during which the adapter deliberately did not read the socket (the
 *    application was not taking messages); those ticks do not count toward
 *    closing an idle peer.
 * 4. `send(data)` (or `sendPacked`, to forward a received message's packed
 *    KaMessage as is) only after the `Authenticated` event; before, it
 *    throws `ChannelMisuseError` (queue messages in the adapter instead).
 * 5. After each call, write every frame `pollTransmit()` gives (in order),
 *    then take every `pollEvent()`: `Authenticated { remotePublicKey }`
 *    (once), `Deliver` (a `Delivered` application message;
 *    keepalives are consumed here), `Closed { error }` (once; drop the
 *    transport after writing what was polled). After `Closed` every call
 *    does nothing. Peer misbehaviour and timeouts arrive only as `Closed`;
 *    only the caller's own misuse throws.
 * The machine changes in place and keeps its queues between calls, so a
 * relayed message costs no state copy and no command array.
 *
 * Data path: Send(data) → packed KaMessage → packed ChannelMessage →
 * ChaCha20-Poly1305 → nonce ‖ sealed; the frame is the only buffer the
 * adapter writes. Received frames are opened in place (subarray views).
 */
import { type Delivered, Keepalive, type KeepaliveError } from "./keepalive.ts"
import {
  ChannelMisuseError,
  SecureChannel,
  type SecureChannelConfig,
  type SecureChannelError
} from "./secure-channel.ts"
import { absurd } from "./absurd.ts"
import { CommandQueue } from "./command-queue.ts"

/** A secure channel's config plus keepalive timing; optional fields default to Offset's values. */
export interface ConnectionConfig extends SecureChannelConfig {
  /** Ticks of silence from the peer before closing (keepalive sent after half); default 32. */
  readonly keepaliveTicks?: number | undefined
}

/** Why a connection closed: the secure channel's or the keepalive layer's reason. */
export type ConnectionError = SecureChannelError | KeepaliveError

/** What the driver learns from a connection (`pollEvent`), in order. */
export type ConnectionEvent =
  | { readonly _tag: "Authenticated"; readonly remotePublicKey: Uint8Array }
  /** One application message; its payload is unpacked only when read (see keepalive.ts). */
  | Delivered
  | { readonly _tag: "Closed"; readonly error: ConnectionError }

export { ChannelMisuseError }

/** One connection: a secure channel with keepalive on top; see the module header. */
export class Connection {
  readonly channel: SecureChannel
  // Undefined until authenticated: keepalive starts with the channel (as in Offset).
  private keepalive: Keepalive | undefined = undefined
  private closeError: ConnectionError | undefined = undefined
  private readonly keepaliveTicks: number
  private readonly maxExpansion: number | undefined
  private readonly events = new CommandQueue<ConnectionEvent>()

  /** A connection that has not started; bad settings throw a RangeError here, not later. */
  constructor(config: ConnectionConfig) {
    this.keepaliveTicks = new Keepalive({ keepaliveTicks: config.keepaliveTicks }).keepaliveTicks
    this.maxExpansion = config.maxExpansion
    this.channel = new SecureChannel(config)
  }

  /** Why it closed, once it has. */
  get closed(): ConnectionError | undefined {
    return this.closeError
  }

  /** True once `send` is allowed: authenticated and not closed. */
  get isAuthenticated(): boolean {
    return this.closed === undefined && this.keepalive !== undefined
  }

  /** The next frame to write to the peer, in order; undefined when there is none. */
  pollTransmit(): Uint8Array | undefined {
    return this.channel.pollTransmit()
  }

  /** The next event, in order; undefined when there is none. */
  pollEvent(): ConnectionEvent | undefined {
    return this.events.poll()
  }

  start(): void {
    if (this.closed !== undefined) return
    this.channel.start()
  }

  handleFrame(frame: Uint8Array): void {
    if (this.closed !== undefined) return
    this.channel.handleFrame(frame)
    this.takeChannelEvents()
  }

  /** One application message; only after `Authenticated`. */
  send(data: Uint8Array): void {
    this.whenAuthenticated((keepalive) => keepalive.send(data))
  }

  /** One message already packed as a KaMessage, sent as is (a relay forwarding a `Delivered`'s `packed`). */
  sendPacked(packed: Uint8Array): void {
    this.whenAuthenticated((keepalive) => keepalive.sendPacked(packed))
  }

  private whenAuthenticated(send: (keepalive: Keepalive) => void): void {
    if (this.closed !== undefined) return
    const keepalive = this.keepalive
    if (keepalive === undefined) {
      throw new ChannelMisuseError("NotAuthenticated", "send before the connection is authenticated")
    }
    send(keepalive)
    this.takeKeepaliveOutput(keepalive)
  }

  tick(receivePaused = false): void {
    if (this.closed !== undefined) return
    this.channel.tick()
    this.takeChannelEvents()
    const keepalive = this.keepalive
    if (this.closed !== undefined || keepalive === undefined) return
    keepalive.tick(receivePaused)
    this.takeKeepaliveOutput(keepalive)
  }

  // The channel's events: Authenticated starts the keepalive layer, and a
  // Deliver (a packed KaMessage) goes up through it.
  private takeChannelEvents(): void {
    for (let event = this.channel.pollEvent(); event !== undefined; event = this.channel.pollEvent()) {
      if (this.closed !== undefined) return
      switch (event._tag) {
        case "Authenticated":
          this.keepalive = new Keepalive({ keepaliveTicks: this.keepaliveTicks, maxExpansion: this.maxExpansion })
          this.events.push(event)
          break
        case "Deliver": {
          // A channel Deliver follows Authenticated, so the keepalive layer exists.
          const keepalive = this.keepalive!
          keepalive.received(event.data)
          this.takeKeepaliveOutput(keepalive)
          break
        }
        case "Closed":
          this.close(event.error)
          break
        default:
          absurd(event)
      }
    }
  }

  // The keepalive layer's output: each transmit goes down through the channel
  // (which seals it, or closes), each event up to the driver.
  private takeKeepaliveOutput(keepalive: Keepalive): void {
    for (let data = keepalive.pollTransmit(); data !== undefined; data = keepalive.pollTransmit()) {
      this.channel.send(data)
      const event = this.channel.pollEvent()
      // Sealing only ever closes the channel (nonces used up).
      if (event !== undefined && event._tag === "Closed") return this.close(event.error)
    }
    for (let event = keepalive.pollEvent(); event !== undefined; event = keepalive.pollEvent()) {
      switch (event._tag) {
        case "Deliver":
          this.events.push(event)
          break
        case "Closed":
          return this.close(event.error)
        default:
          absurd(event)
      }
    }
  }

  private close(error: ConnectionError): void {
    if (this.closeError !== undefined) return
    this.closeError = error
    this.events.push({ _tag: "Closed", error })
  }
}
