/**
 * Throughput: bytes sent one way through relayed tunnels (one, then 8 at
 * once), for each crypto layer on the clients, beside the baseline proxy and
 * a direct connection carrying the same volume, and beside the crypto
 * ceiling (seal+open MB/s of that layer: what one relay hop's AEAD work
 * alone would allow on one core).
 */
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import { nobleCryptoService, nodeCryptoService, type CryptoService } from "../src/adapters/crypto.ts"
import type { MessageChannel } from "../src/adapters/message-channel.ts"
import { startProxyProcess, startSinkServer, tcpThroughput } from "./baseline.ts"
import type { CryptoBenchRow } from "./crypto.ts"
import { cliThroughput } from "./cli-throughput.ts"
import { listen, newIdentity, openTunnel, type PeerOptions } from "./peers.ts"
import type { RelayProcess } from "./relay-process.ts"
import { row, type BenchRow } from "./report.ts"

/** Message size the senders use: the client library's largest stream message. */
export const CHUNK_BYTES = 64 * 1024

/** One relayed transfer: MB/s end to end, and the relay's CPU time meanwhile (undefined without /proc). */
export interface RelayTransfer {
  readonly mbps: number
  readonly relayCpuMs: number | undefined
  readonly megabytes: number
}

/**
 * MB/s of `totalBytes` split over `tunnels` tunnels from fresh connectors to
 * one listener, from the first byte sent to the last byte received (tunnel
 * setup excluded).
 */
export const relayThroughput = (
  relay: RelayProcess,
  crypto: CryptoService,
  totalBytes: number,
  tunnels: number
): Promise<RelayTransfer> =>
  Effect.runPromise(
    Effect.scoped(
      Effect.gen(function*() {
        const options: PeerOptions = { crypto }
        const per = Math.floor(totalBytes / tunnels)
        let remaining = per * tunnels
        const allArrived = yield* Deferred.make<number>()
        const count = (channel: MessageChannel) =>
          Effect.gen(function*() {
            let got = 0
            while (got < per) {
              const n = (yield* channel.receive).length
              got += n
              remaining -= n
              if (remaining === 0) Deferred.doneUnsafe(allArrived, Exit.succeed(performance.now()))
            }
          })
        const listener = yield* listen(relay.endpoint, newIdentity(crypto), options, count)
        const channels = yield* Effect.forEach(
          Array.from({ length: tunnels }),
          () => openTunnel(relay.endpoint, newIdentity(crypto), listener.identity.publicKey, options),
          { concurrency: "unbounded" }
        )
        const chunk = crypto.randomBytes(CHUNK_BYTES)
        const cpuStart = relay.cpuMs()
        const start = performance.now()
        yield* Effect.forEach(
          channels,
          (channel) =>
            Effect.gen(function*() {
              for (let sent = 0; sent < per; sent += CHUNK_BYTES) {
                yield* channel.send(sent + CHUNK_BYTES <= per ? chunk : chunk.subarray(0, per - sent))
              }
            }),
          { concurrency: "unbounded", discard: true }
        )
        const end = yield* Deferred.await(allArrived)
        const cpuEnd = relay.cpuMs()
        const megabytes = (per * tunnels) / 1e6
        return {
          mbps: megabytes / ((end - start) / 1000),
          relayCpuMs: cpuStart === undefined || cpuEnd === undefined ? undefined : cpuEnd - cpuStart,
          megabytes
        }
      })
    )
  )

/** Runs the scenario; `ceiling` is the crypto bench of the same run. */
export const benchThroughput = async (
  relay: RelayProcess,
  quick: boolean,
  ceiling: ReadonlyArray<CryptoBenchRow>
): Promise<Array<BenchRow>> => {
  const mib = 1024 * 1024
  const volume = quick ? 16 * mib : 256 * mib
  const sink = await startSinkServer()
  const proxy = await startProxyProcess(sink.port)
  const chunk = nodeCryptoService.randomBytes(CHUNK_BYTES)
  const rows: Array<BenchRow> = []
  try {
    // The path users run: TCP → connect --local-port → relay → listen --forward → TCP.
    const proxiedOne = await tcpThroughput(proxy.port, sink, volume, 1, chunk)
    const cli = await cliThroughput(relay, sink, volume, chunk)
    rows.push(
      row("throughput", "1 tunnel through the CLI bridges", cli.mbps, "MB/s", [{ to: "proxy", baseline: proxiedOne }],
        `${volume / mib} MiB from a TCP client into connect --local-port, out of listen --forward to a TCP sink`)
    )
    const nodeSealOpen = ceiling.find((c) => c.layer === "node")?.sealOpenMBps ?? Number.NaN
    if (cli.relayCpuMs !== undefined) {
      rows.push(
        row("throughput", "relay MB per CPU second, CLI bridges", cli.megabytes / (cli.relayCpuMs / 1000), "MB/s", [
          { to: "node seal+open", baseline: nodeSealOpen }
        ])
      )
    }
    // Each bridge seals (connect) or opens (listen) twice per byte, end to end and on its hop.
    for (const [name, cpuMs] of [["connect --local-port", cli.connectCpuMs], ["listen --forward", cli.listenCpuMs]] as const) {
      if (cpuMs === undefined) continue
      rows.push(
        row("throughput", `${name} MB per CPU second, CLI bridges`, cli.megabytes / (cpuMs / 1000), "MB/s", [{ to: "node seal+open", baseline: nodeSealOpen }],
          name === "listen --forward" ? undefined : "bytes carried / the bridge process's CPU time (/proc): what one core of the bridge moves")
      )
    }
    for (const tunnels of [1, 8]) {
      const proxied = await tcpThroughput(proxy.port, sink, volume, tunnels, chunk)
      const direct = await tcpThroughput(sink.port, sink, volume, tunnels, chunk)
      for (const crypto of [nodeCryptoService, nobleCryptoService]) {
        const transfer = await relayThroughput(relay, crypto, volume, tunnels)
        const layerCeiling = ceiling.find((c) => c.layer === crypto.name)?.sealOpenMBps ?? Number.NaN
        rows.push(
          row(
            "throughput",
            `${tunnels === 1 ? "1 tunnel" : `${tunnels} tunnels`}, clients on ${crypto.name}`,
            transfer.mbps,
            "MB/s",
            [
              { to: "proxy", baseline: proxied },
              { to: `${crypto.name} seal+open`, baseline: layerCeiling },
              { to: "direct", baseline: direct }
            ],
            crypto === nodeCryptoService ? `${volume / mib} MiB one way in ${CHUNK_BYTES / 1024} KiB messages` : undefined
          )
        )
        // What the relay itself spends per byte, whatever the clients cost: its capacity per core.
        if (crypto === nodeCryptoService && transfer.relayCpuMs !== undefined) {
          const nodeCeiling = ceiling.find((c) => c.layer === "node")?.sealOpenMBps ?? Number.NaN
          rows.push(
            row(
              "throughput",
              `relay MB per CPU second, ${tunnels === 1 ? "1 tunnel" : `${tunnels} tunnels`}`,
              transfer.megabytes / (transfer.relayCpuMs / 1000),
              "MB/s",
              [{ to: "node seal+open", baseline: nodeCeiling }],
              "relayed bytes / relay process CPU time (/proc): one hop's open+seal per byte is all the crypto it needs"
            )
          )
        }
      }
    }
    return rows
  } finally {
    await proxy.stop()
    await sink.close()
  }
}
