/**
 * A legitimate client for bench/attacks.ts, in its own process so that the
 * attackers' CPU does not slow it: a listener on 127.0.0.1 and, one after
 * another, tunnels to it that echo 1 KiB within 5 s each.
 *
 *   node bench/legit-client.ts <relay key hex> <port>
 *
 * Prints "ready" once listening; on SIGTERM prints "<succeeded> <tried>" and exits.
 */
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Scope from "effect/Scope"
import { nodeCryptoService } from "../src/adapters/crypto.ts"
import { hexToBytes } from "../src/core/keys.ts"
import { echo, listen, newIdentity, openTunnel, type PeerOptions } from "./peers.ts"

const [keyHex, portText] = process.argv.slice(2)
const publicKey = keyHex === undefined ? undefined : hexToBytes(keyHex)
if (publicKey === undefined || portText === undefined) throw new Error("usage: legit-client.ts <relay key hex> <port>")
const endpoint = { publicKey, host: "127.0.0.1", port: Number(portText) }
const options: PeerOptions = { crypto: nodeCryptoService, tickMs: 1000 }

const scope = Effect.runSync(Scope.make())
const service = await Effect.runPromise(Scope.provide(listen(endpoint, newIdentity(options.crypto), options, echo), scope))
let running = true
let ok = 0
let tried = 0
process.on("SIGTERM", () => {
  running = false
})
process.stdout.write("ready\n")
while (running) {
  tried++
  const exit = await Effect.runPromiseExit(
    Effect.scoped(
      Effect.gen(function*() {
        const channel = yield* openTunnel(endpoint, newIdentity(options.crypto), service.identity.publicKey, options)
        yield* channel.send(new Uint8Array(1024).fill(tried & 0xff))
        yield* channel.receive
      })
    ).pipe(Effect.timeout(5000))
  )
  if (Exit.isSuccess(exit)) ok++
  await new Promise((resolve) => setTimeout(resolve, 100))
}
process.stdout.write(`${ok} ${tried}\n`)
await Effect.runPromise(Scope.close(scope, Exit.void))
process.exit(0)
