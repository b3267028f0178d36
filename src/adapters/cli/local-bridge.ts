/**
 * Joining tunnels to local TCP connections, for `offset-relay listen` and
 * `offset-relay connect`: the identity file, the exit codes of a tunnel's
 * failures, and piping a tunnel to a local socket with TCP's half close.
 * This is the part that loads the client library (Effect, crypto, sockets);
 * the commands import it once their flags are checked.
 */
import type * as Net from "node:net"
import { ConnectError, readIdentity } from "../client/index.ts"
import type { PeerDuplex } from "../client/peer-duplex.ts"
import { PeerStreamError, StreamAbort } from "../client/tunnel-stream.ts"
import type { CryptoChoice } from "../crypto-service.ts"
import type { Identity } from "../identity.ts"
import { ExitCode, say } from "./client-common.ts"

export { connect, listen, type ListenerEvent, type PeerDuplex, type RelayStatus } from "../client/index.ts"

/** Reads the identity file, or prints why not; undefined means exit with ExitCode.Identity. */
export const loadIdentity = async (command: string, path: string, crypto: CryptoChoice = "auto"): Promise<Identity | undefined> => {
  try {
    return await readIdentity(path, crypto)
  } catch (error) {
    say(command, error instanceof Error ? error.message : String(error))
    return undefined
  }
}

/** The exit code of a tunnel that failed after it was established: the peer's error, or the relay's side. */
export const tunnelExitCode = (error: unknown): number =>
  error instanceof PeerStreamError && error.reason === "PeerError" ? ExitCode.PeerError : ExitCode.Failed

/** The exit code for a failed connect. */
export const connectExitCode = (error: unknown): number =>
  error instanceof ConnectError
    ? error.reason === "Authentication" ? ExitCode.Authentication : ExitCode.Unreachable
    : ExitCode.Failed

/** Byte counts of one piped connection. */
export interface PipeCounts {
  /** Bytes from the tunnel to the local socket. */
  fromPeer: number
  /** Bytes from the local socket to the tunnel. */
  toPeer: number
}

/**
 * Pipes a tunnel and a local TCP socket both ways with half close (each
 * side's end becomes the other's end) and resolves once both directions are
 * done, or rejects with the first error after destroying both. When the
 * local side fails, the peer is told so (a stream error: our local service
 * refused, or our local connection was reset), so it does not blame the
 * relay. The local socket must have been made with `allowHalfOpen: true`.
 */
export const pipeBothWays = (tunnel: PeerDuplex, local: Net.Socket): Promise<PipeCounts> =>
  new Promise((resolve, reject) => {
    const counts: PipeCounts = { fromPeer: 0, toPeer: 0 }
    let settled = false
    let localConnected = !local.connecting
    local.once("connect", () => (localConnected = true))
    const fail = (error: Error, tell?: StreamAbort) => {
      if (settled) return
      settled = true
      tunnel.destroy(tell)
      local.destroy()
      reject(error)
    }
    const localFailed = (error: NodeJS.ErrnoException) => {
      const code = error.code ?? "error"
      const tell = localConnected
        ? new StreamAbort("local-reset", code)
        : new StreamAbort("local-refused", code)
      fail(
        new Error(localConnected ? `the local connection failed: ${error.message}` : `the local service refused: ${error.message}`),
        tell
      )
    }
    tunnel.on("data", (chunk: Buffer) => (counts.fromPeer += chunk.length))
    local.on("data", (chunk: Buffer) => (counts.toPeer += chunk.length))
    tunnel.on("error", (error) => fail(error))
    local.on("error", localFailed)
    tunnel.pipe(local)
    local.pipe(tunnel)
    // A side that closes before its readable end was read ended early (a
    // reset, a destroy): the other side must not wait for it.
    let closed = 0
    const onClose = (stream: "tunnel" | "local", ended: boolean) => {
      if (!ended) {
        return stream === "tunnel"
          ? fail(new Error("the tunnel closed before the peer finished"))
          : fail(
            new Error("the local connection closed before it finished"),
            new StreamAbort("local-reset", "closed before it finished")
          )
      }
      if (++closed === 2 && !settled) {
        settled = true
        resolve(counts)
      }
    }
    tunnel.on("close", () => onClose("tunnel", tunnel.readableEnded))
    local.on("close", () => onClose("local", local.readableEnded))
  })
