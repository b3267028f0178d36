// A library client for test:runtimes: through the relay given as the
// argument (TCP, or ws://), listens with one identity, connects with
// another and echoes 1 MiB, then compares SHA-256 on both sides. Runs on
// Node, Deno and Bun (TypeScript sources directly); prints one line and
// exits 0 when equal.
//
//   node scripts/tunnel-check.ts <relay key>@127.0.0.1:<port>
//   node scripts/tunnel-check.ts <relay key>@ws://127.0.0.1:<port>
import { createHash } from "node:crypto"
import { connect, createIdentity, listen } from "../src/index.ts"

const relay = process.argv[2]
if (relay === undefined) throw new Error("usage: tunnel-check.ts <relay address>")
const runtime = "Bun" in globalThis ? "bun" : "Deno" in globalThis ? "deno" : "node"
const server = createIdentity()
const client = createIdentity()
const listener = listen({ identity: server, relays: [relay], allow: [client.publicKey] })
listener.on("connection", (socket) => socket.pipe(socket))
// Listening first: a connect to a key nobody listens on yet is refused.
await new Promise<void>((resolve) => {
  const check = () => listener.status().every((s) => s.state === "listening") && resolve()
  listener.on("status", check)
  check()
})
const socket = await connect({ identity: client, relays: [relay], to: listener.publicKey, timeoutMs: 15_000 })
const sent = new Uint8Array(1024 * 1024).map((_, i) => (i * 7919) & 0xff)
socket.end(sent)
const echo = createHash("sha256")
let received = 0
for await (const chunk of socket) {
  echo.update(chunk as Uint8Array)
  received += (chunk as Uint8Array).length
}
const expected = createHash("sha256").update(sent).digest("hex")
const got = echo.digest("hex")
await listener.close()
if (got !== expected) {
  console.log(`${runtime} client: echo differs (${received} bytes, sha256 ${got} != ${expected})`)
  process.exit(1)
}
console.log(`${runtime} client: echoed 1 MiB through ${relay.slice(0, 8)}…, sha256 ${got.slice(0, 16)}… equal`)
process.exit(0)
