/**
 * Crypto layer benchmark: bulk AEAD throughput and the cost of one side of a
 * handshake, for each layer, over a fixed time budget per measurement.
 *
 * Run directly (`node bench/crypto.ts`, or `--quick`) for a table; the
 * noble layer is the baseline the node layer's ratio is measured against in
 * the same run. Each figure is the best of five rounds; on a shared machine
 * they still vary by 10-20%, so compare ratios.
 */
import type { CryptoService } from "../src/adapters/crypto.ts"
import { nobleCryptoService, nodeCryptoService } from "../src/adapters/crypto.ts"

/** One layer's results. */
export interface CryptoBenchRow {
  readonly layer: string
  /** Seal then open of 64 KiB messages: plaintext megabytes (10^6 bytes) per second through both. */
  readonly sealOpenMBps: number
  /**
   * One handshake side's crypto per second: ephemeral X25519 key pair,
   * Ed25519 sign, Ed25519 verify, X25519 agreement and two HKDF derivations.
   */
  readonly handshakeCryptoPerSec: number
}

const messageSize = 64 * 1024

/**
 * Iterations per second of `iteration`: a short warm-up, then `budgetMs`
 * split into rounds, reporting the best round, since on a shared machine the
 * slow rounds measure the neighbours rather than the code.
 */
const ratePerSecond = (budgetMs: number, iteration: () => void): number => {
  const rounds = 5
  const warmUpEnd = performance.now() + Math.min(50, budgetMs / 4)
  while (performance.now() < warmUpEnd) iteration()
  let best = 0
  for (let round = 0; round < rounds; round++) {
    let count = 0
    const start = performance.now()
    let now = start
    const end = start + budgetMs / rounds
    // Read the clock every few iterations only, so a cheap iteration does not time the clock.
    while (now < end) {
      for (let i = 0; i < 4; i++) iteration()
      count += 4
      now = performance.now()
    }
    best = Math.max(best, (count * 1000) / (now - start))
  }
  return best
}

const benchLayer = (crypto: CryptoService, budgetMs: number): CryptoBenchRow => {
  const key = crypto.randomBytes(32)
  const nonce = crypto.randomBytes(12)
  const plaintext = crypto.randomBytes(messageSize)
  const sealOpenPerSec = ratePerSecond(budgetMs, () => {
    // Bump the nonce as a channel's counter would, so nothing is cached across messages.
    nonce[0] = (nonce[0]! + 1) & 0xff
    const sealed = crypto.aeadSeal(key, nonce, plaintext)
    if (crypto.aeadOpen(key, nonce, sealed) === undefined) throw new Error("bench: open failed")
  })

  // The peer's side, prepared once: what we verify and agree with.
  const ourIdentity = crypto.randomBytes(32)
  const peerIdentity = crypto.randomBytes(32)
  const peerIdentityPublic = crypto.ed25519PublicKey(peerIdentity)
  const peerEphemeralPublic = crypto.x25519PublicKey(crypto.randomBytes(32))
  const peerSalt = crypto.randomBytes(32)
  const peerSigned = new Uint8Array(80) // dhPublicKey ‖ randNonce ‖ keySalt, as in PROTOCOL.md
  peerSigned.set(peerEphemeralPublic, 0)
  peerSigned.set(peerSalt, 48)
  const peerSignature = crypto.ed25519Sign(peerIdentity, peerSigned)
  const ourSigned = new Uint8Array(80)
  const empty = new Uint8Array(0)
  const handshakePerSec = ratePerSecond(budgetMs, () => {
    const ephemeral = crypto.randomBytes(32)
    const ourSalt = crypto.randomBytes(32)
    ourSigned.set(crypto.x25519PublicKey(ephemeral), 0)
    ourSigned.set(ourSalt, 48)
    crypto.ed25519Sign(ourIdentity, ourSigned)
    if (!crypto.ed25519Verify(peerIdentityPublic, peerSigned, peerSignature)) throw new Error("bench: verify failed")
    const shared = crypto.x25519(ephemeral, peerEphemeralPublic)
    if (shared === undefined) throw new Error("bench: x25519 failed")
    crypto.hkdfSha512_256(ourSalt, shared, empty, 32)
    crypto.hkdfSha512_256(peerSalt, shared, empty, 32)
  })

  return {
    layer: crypto.name,
    sealOpenMBps: (sealOpenPerSec * messageSize) / 1e6,
    handshakeCryptoPerSec: handshakePerSec
  }
}

/** Measures both layers; `quick` shortens the time budget (for smoke runs and CI). */
export const benchCrypto = (options: { readonly quick: boolean }): ReadonlyArray<CryptoBenchRow> => {
  const budgetMs = options.quick ? 200 : 1500
  return [nodeCryptoService, nobleCryptoService].map((crypto) => benchLayer(crypto, budgetMs))
}

/** Formats rows as a table, with each layer's ratio to the last row (the noble baseline). */
export const formatCryptoBench = (rows: ReadonlyArray<CryptoBenchRow>): string => {
  const baseline = rows[rows.length - 1]
  const lines = [
    "layer   seal+open 64KiB MB/s   ×base   handshake crypto/s   ×base"
  ]
  for (const row of rows) {
    const sealRatio = baseline ? row.sealOpenMBps / baseline.sealOpenMBps : Number.NaN
    const handshakeRatio = baseline ? row.handshakeCryptoPerSec / baseline.handshakeCryptoPerSec : Number.NaN
    lines.push(
      `${row.layer.padEnd(6)}  ${row.sealOpenMBps.toFixed(1).padStart(20)}  ${sealRatio.toFixed(2).padStart(6)}  ${
        row.handshakeCryptoPerSec.toFixed(0).padStart(19)
      }  ${handshakeRatio.toFixed(2).padStart(6)}`
    )
  }
  return lines.join("\n")
}

if (import.meta.main) {
  console.log(formatCryptoBench(benchCrypto({ quick: process.argv.includes("--quick") })))
}
