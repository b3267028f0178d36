/**
 * A relay (or a flood of connectors through it) that sends IncomingConnection
 * after IncomingConnection: the listener works on at most
 * MAX_ACCEPTS_IN_PROGRESS of them at once and rejects the rest at once,
 * instead of opening connections without bound.
 */
import { afterEach, describe, expect, it } from "vitest"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Scope from "effect/Scope"
import { listen, type ListenerEvent } from "../src/adapters/client/index.ts"
import { MAX_ACCEPTS_IN_PROGRESS } from "../src/adapters/client/listener.ts"
import { nodeCryptoService } from "../src/adapters/crypto.ts"
import { exchangeVersion, type FrameLink } from "../src/adapters/frame-link.ts"
import { serveFrames } from "./support/frame-server.ts"
import { establishChannel } from "../src/adapters/message-channel.ts"
import { decodeInitConnection, decodeRejectConnection, encodeIncomingConnection } from "../src/core/messages.ts"
import { formatRelayAddress } from "../src/core/relay-address.ts"
import { newIdentity, TICK_MS, waitFor } from "./support/client-harness.ts"

const cleanups: Array<() => Promise<void>> = []
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup()
})

describe("a flood of IncomingConnection", () => {
  it("the listener accepts at most MAX_ACCEPTS_IN_PROGRESS at once and rejects the rest", async () => {
    const flood = MAX_ACCEPTS_IN_PROGRESS + 40
    const identity = newIdentity()
    const scope = Scope.makeUnsafe()
    let acceptsOpen = 0
    let mostAcceptsOpen = 0
    let rejects = 0
    // Takes every accept connection and then says nothing, so each accept
    // stays under way (in its end-to-end handshake) until the test ends.
    const handle = (link: FrameLink) =>
      Effect.gen(function*() {
        yield* exchangeVersion(link)
        const channel = yield* establishChannel(link, { crypto: nodeCryptoService, identity })
        const init = decodeInitConnection(yield* channel.receive)
        if (init._tag === "Err") return
        if (init.value._tag === "Listen") {
          for (let i = 0; i < flood; i++) {
            yield* channel.send(encodeIncomingConnection({ publicKey: newIdentity().publicKey }))
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
    const port = await Effect.runPromise(serveFrames(handle).pipe(Scope.provide(scope)))
    cleanups.push(() => Effect.runPromise(Scope.close(scope, Exit.void)))

    const busy: Array<ListenerEvent> = []
    const listener = listen({
      identity: newIdentity(),
      relays: [formatRelayAddress({ publicKey: identity.publicKey, host: "127.0.0.1", port })],
      allow: () => true,
      tickMs: TICK_MS
    })
    cleanups.push(() => listener.close())
    listener.on("event", (event: ListenerEvent) => {
      if (event._tag === "Busy") busy.push(event)
    })
    await waitFor(() => rejects >= flood - MAX_ACCEPTS_IN_PROGRESS, 10_000, "the excess to be rejected")
    await waitFor(() => mostAcceptsOpen === MAX_ACCEPTS_IN_PROGRESS, 10_000, "the allowed accepts to open")
    expect(busy).toHaveLength(flood - MAX_ACCEPTS_IN_PROGRESS)
    expect(mostAcceptsOpen).toBe(MAX_ACCEPTS_IN_PROGRESS)
  }, 30_000)
})
