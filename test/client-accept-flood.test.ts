/**
 * A relay (or a flood of connectors through it) that sends IncomingConnection
 * after IncomingConnection: the listener works on at most
 * MAX_ACCEPTS_IN_PROGRESS of them at once and rejects the rest at once,
 * instead of opening connections without bound. The relay is played by
 * hand on the in-memory network, on virtual time (test/sim/world.ts).
 */
import { describe, expect, it } from "vitest"
import * as Effect from "effect/Effect"
import { type ListenerEvent, makeListener, MAX_ACCEPTS_IN_PROGRESS } from "../src/adapters/client/listener.ts"
import type { FrameLink } from "../src/adapters/frame-link.ts"
import { establishChannel } from "../src/adapters/message-channel.ts"
import { decodeInitConnection, decodeRejectConnection, encodeIncomingConnection } from "../src/core/messages.ts"
import { serveFrames } from "./support/frame-server.ts"
import { TICK_MS } from "./support/client-harness.ts"
import { makeSimWorld } from "./sim/world.ts"

describe("a flood of IncomingConnection", () => {
  it("the listener accepts at most MAX_ACCEPTS_IN_PROGRESS at once and rejects the rest", () => {
    const flood = MAX_ACCEPTS_IN_PROGRESS + 40
    const world = makeSimWorld(47)
    const identity = world.identity()
    let acceptsOpen = 0
    let mostAcceptsOpen = 0
    let rejects = 0
    // Takes every accept connection and then says nothing, so each accept
    // stays under way (in its end-to-end handshake) until the test ends.
    const handle = (link: FrameLink) =>
      Effect.gen(function*() {
        const channel = yield* establishChannel(link, { crypto: world.crypto, identity })
        const init = decodeInitConnection(yield* channel.receive)
        if (init._tag === "Err") return
        if (init.value._tag === "Listen") {
          for (let i = 0; i < flood; i++) {
            yield* channel.send(encodeIncomingConnection({ publicKey: world.identity().publicKey }))
          }
          while (true) {
            if (decodeRejectConnection(yield* channel.receive)._tag === "Ok") rejects++
          }
        }
        if (init.value._tag === "Accept") {
          acceptsOpen++
          mostAcceptsOpen = Math.max(mostAcceptsOpen, acceptsOpen)
          yield* Effect.ensuring(channel.ended, Effect.sync(() => acceptsOpen--))
        }
      })
    world.spawn(serveFrames(handle, world.net.host("relay"), { host: "relay", port: 4747 }))

    const busy: Array<ListenerEvent> = []
    world.spawn(makeListener(world.settings("listener", world.identity(), TICK_MS), {
      relays: [{ publicKey: identity.publicKey, host: "relay", port: 4747 }],
      allow: () => true,
      onEvent: (event) => {
        if (event._tag === "Busy") busy.push(event)
      }
    }))
    world.runUntil(() => rejects >= flood - MAX_ACCEPTS_IN_PROGRESS, 10_000, "the excess to be rejected")
    world.runUntil(() => mostAcceptsOpen === MAX_ACCEPTS_IN_PROGRESS, 10_000, "the allowed accepts to open")
    expect(busy).toHaveLength(flood - MAX_ACCEPTS_IN_PROGRESS)
    expect(mostAcceptsOpen).toBe(MAX_ACCEPTS_IN_PROGRESS)
  })
})
