/**
 * Helpers for the client tests: real relays on 127.0.0.1 that a test can
 * stop and start again on the same port, identities, and byte helpers for
 * Node streams.
 */
import { createHash } from "node:crypto"
import type { Duplex, Readable } from "node:stream"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Logger from "effect/Logger"
import * as Scope from "effect/Scope"
// auto: node:crypto on Node (as before), noble where node:crypto lacks a primitive (Bun), so test:runtimes can run these.
import { autoCryptoService, layerAuto as layerNode } from "../../src/adapters/crypto.ts"
const nodeCryptoService = autoCryptoService()
import type { Identity } from "../../src/adapters/identity.ts"
import {
  makeRelayServer,
  testRelayOptions,
  type RelayServer,
  type RelayServerOptions
} from "../../src/adapters/relay-server.ts"

/** Milliseconds per tick for relays and clients in these tests. */
export const TICK_MS = 100

/** A fresh random identity. */
export const newIdentity = (): Identity => {
  const seed = nodeCryptoService.randomBytes(32)
  return { seed, publicKey: nodeCryptoService.ed25519PublicKey(seed) }
}

/** A relay started by a test; `stop` kills it (every connection closes), `restart` brings it back on the same port. */
export interface TestRelay {
  readonly identity: Identity
  readonly port: number
  /** `<key>@127.0.0.1:<port>` */
  readonly address: string
  readonly server: () => RelayServer
  readonly stop: () => Promise<void>
  readonly restart: () => Promise<void>
}

/** Starts a relay on 127.0.0.1 (port 0 unless given); relay logs are silenced. */
export const startRelay = async (
  overrides: Partial<RelayServerOptions> = {},
  identity: Identity = newIdentity()
): Promise<TestRelay> => {
  let scope = Scope.makeUnsafe()
  const start = (port: number) =>
    Effect.runPromise(
      makeRelayServer({ ...testRelayOptions(identity, TICK_MS), ...overrides, port }).pipe(
        Scope.provide(scope),
        Effect.provide(layerNode),
        Effect.provide(Logger.layer([]))
      )
    )
  let server = await start(overrides.port ?? 0)
  const port = server.port
  let running = true
  return {
    identity,
    port,
    address: server.address,
    server: () => server,
    stop: async () => {
      if (!running) return
      running = false
      await Effect.runPromise(Scope.close(scope, Exit.void))
    },
    restart: async () => {
      if (running) return
      scope = Scope.makeUnsafe()
      server = await start(port)
      running = true
    }
  }
}

/** SHA-256 hex of bytes. */
export const sha256 = (data: Uint8Array): string => createHash("sha256").update(data).digest("hex")

/** Reads a stream to its end. */
export const readAll = async (stream: Readable): Promise<Buffer> => {
  const chunks: Array<Buffer> = []
  for await (const chunk of stream) chunks.push(chunk as Buffer)
  return Buffer.concat(chunks)
}

/** Writes `data` in pieces of `piece` bytes with backpressure, then ends the writable side. */
export const writeAllAndEnd = async (stream: Duplex, data: Uint8Array, piece = 100_000): Promise<void> => {
  for (let offset = 0; offset < data.length; offset += piece) {
    if (!stream.write(data.subarray(offset, offset + piece))) {
      await new Promise<void>((resolve, reject) => {
        const onDrain = () => {
          stream.off("error", onError)
          resolve()
        }
        const onError = (error: Error) => {
          stream.off("drain", onDrain)
          reject(error)
        }
        stream.once("drain", onDrain)
        stream.once("error", onError)
      })
    }
  }
  await new Promise<void>((resolve, reject) => {
    stream.once("error", reject)
    stream.end(() => {
      stream.off("error", reject)
      resolve()
    })
  })
}

/** Random bytes (fast, not secret). */
export const randomData = (length: number): Uint8Array => {
  const out = new Uint8Array(length)
  for (let offset = 0; offset < length; offset += 65536) {
    globalThis.crypto.getRandomValues(out.subarray(offset, Math.min(offset + 65536, length)))
  }
  return out
}

/** Waits until `condition()` holds, polling every 20 ms; fails after `timeoutMs`. */
export const waitFor = async (condition: () => boolean, timeoutMs: number, what: string): Promise<void> => {
  const deadline = Date.now() + timeoutMs
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}
