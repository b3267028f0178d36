/**
 * Choosing the crypto implementation: `auto` on Node 24 is node:crypto, the
 * CLI refuses an unknown `--crypto`, and a client on noble reaches a relay
 * and a listener on node:crypto (the layers interoperate on the wire).
 */
import { execFileSync } from "node:child_process"
import { join } from "node:path"
import * as Effect from "effect/Effect"
import { describe, expect, it } from "vitest"
import { autoCryptoService, cryptoServiceFor, nodeCryptoProblem, nodeCryptoService, nobleCryptoService } from "../src/adapters/crypto.ts"
import { connect, createIdentity, listen } from "../src/adapters/client/index.ts"
import { RelayClient } from "../src/adapters/client/effect.ts"
import { startRelay } from "../src/adapters/start-relay.ts"

const node = join(process.cwd(), "node_modules/.bin/node")
const bin = join(process.cwd(), "bin/offset-relay.js")

describe("crypto choice", () => {
  it("auto is node:crypto on Node 24 (ChaCha20-Poly1305 and raw keys present)", () => {
    expect(nodeCryptoProblem()).toBeUndefined()
    expect(autoCryptoService()).toBe(nodeCryptoService)
    expect(cryptoServiceFor("noble")).toBe(nobleCryptoService)
    expect(cryptoServiceFor("node")).toBe(nodeCryptoService)
  })

  it("the CLI refuses an unknown --crypto with a usage error", () => {
    for (const command of ["serve", "listen", "connect"]) {
      let status = 0
      let stderr = ""
      try {
        execFileSync(node, [bin, command, "--crypto", "rot13", "--identity", "/nonexistent"], { stdio: "pipe" })
      } catch (error) {
        const e = error as { status: number; stderr: Buffer }
        status = e.status
        stderr = e.stderr.toString()
      }
      expect(status, command).toBe(2)
      expect(stderr, command).toContain("--crypto must be one of auto, node, noble")
    }
    expect(execFileSync(node, [bin, "serve", "--help"]).toString()).toContain("--crypto IMPL")
  })

  it("a noble client tunnels through a node relay to a node listener", async () => {
    await using relay = await startRelay({ host: "127.0.0.1", port: 0, crypto: "node", logLevel: "None" })
    const server = createIdentity("node")
    const client = createIdentity("noble")
    await using listener = listen({ identity: server, relays: [relay.address], allow: [client.publicKey], crypto: "node" })
    listener.on("connection", (socket) => socket.pipe(socket))
    const socket = await connect({ identity: client, relays: [relay.address], to: listener.publicKey, crypto: "noble" })
    socket.end("hello across layers")
    const chunks: Array<Buffer> = []
    for await (const chunk of socket) chunks.push(chunk as Buffer)
    expect(Buffer.concat(chunks).toString()).toBe("hello across layers")
  })

  it("RelayClient.layer with a crypto choice needs no Crypto service", async () => {
    const identity = createIdentity("noble")
    const publicKey = await Effect.runPromise(
      Effect.map(RelayClient, (client) => client.publicKey).pipe(
        Effect.provide(RelayClient.layer({ identity, crypto: "noble" }))
      )
    )
    expect(publicKey).toEqual(identity.publicKey)
  })
})
