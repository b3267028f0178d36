/**
 * Baseline measurements on plain TCP: the same endpoints as the relay
 * scenarios (an echo server, a byte sink) reached directly or through the
 * minimal proxy of baseline-proxy.ts running as its own process.
 */
import * as Net from "node:net"
import * as Path from "node:path"
import { repoRoot, startChild, type Child } from "./relay-process.ts"

/** A TCP server in this process. */
export interface TcpServer {
  readonly port: number
  readonly close: () => Promise<void>
}

const listenOn = (server: Net.Server): Promise<TcpServer> =>
  new Promise((resolve) => {
    server.listen(0, "127.0.0.1", () =>
      resolve({
        port: (server.address() as Net.AddressInfo).port,
        close: () => new Promise((done) => server.close(() => done()))
      }))
  })

/** An echo server: writes back whatever arrives. */
export const startEchoServer = (): Promise<TcpServer> => {
  const sockets = new Set<Net.Socket>()
  const server = Net.createServer({ noDelay: true }, (socket) => {
    sockets.add(socket)
    socket.on("close", () => sockets.delete(socket))
    socket.on("error", () => socket.destroy())
    socket.pipe(socket)
  })
  return listenOn(server).then((s) => ({
    ...s,
    close: () => {
      for (const socket of sockets) socket.destroy()
      return s.close()
    }
  }))
}

/** A server that reads and drops bytes; `expect(n)` resolves when n more bytes have arrived, with the time. */
export interface SinkServer extends TcpServer {
  readonly expect: (bytes: number) => Promise<number>
}

/** Starts a sink server. */
export const startSinkServer = async (): Promise<SinkServer> => {
  let received = 0
  let target = Infinity
  let resolveTarget: ((at: number) => void) | undefined
  const sockets = new Set<Net.Socket>()
  const server = Net.createServer((socket) => {
    sockets.add(socket)
    socket.on("close", () => sockets.delete(socket))
    socket.on("error", () => socket.destroy())
    socket.on("data", (chunk: Buffer) => {
      received += chunk.length
      if (received >= target && resolveTarget !== undefined) {
        const resolve = resolveTarget
        resolveTarget = undefined
        resolve(performance.now())
      }
    })
  })
  const base = await listenOn(server)
  return {
    ...base,
    expect: (bytes) =>
      new Promise((resolve) => {
        target = received + bytes
        resolveTarget = resolve
      }),
    close: () => {
      for (const socket of sockets) socket.destroy()
      return base.close()
    }
  }
}

/** Starts the baseline proxy process forwarding to 127.0.0.1:`targetPort` (with the heap probe, for `memory`). */
export const startProxyProcess = async (targetPort: number): Promise<Child & { readonly port: number }> => {
  const child = await startChild(Path.join(repoRoot, "bench", "baseline-proxy.ts"), [String(targetPort)], { probe: true })
  return { ...child, port: Number(child.readyLine) }
}

/** The proxy's memory growth per unit of idle load (bytes). */
export interface IdleMemory {
  readonly rssPerUnit: number
  readonly heapPerUnit: number
}

/**
 * The baseline for idle-connection memory: the proxy process holding
 * `socketsPerUnit × level` idle sockets (half to the clients, half to the
 * echo server, each connection used once), measured after a full GC, per
 * unit of `level`. Levels are cumulative, in increasing order.
 */
export const proxyIdleMemory = async (
  levels: ReadonlyArray<number>,
  socketsPerUnit: number
): Promise<Map<number, IdleMemory>> => {
  const echoServer = await startEchoServer()
  const proxy = await startProxyProcess(echoServer.port)
  const held: Array<Net.Socket> = []
  const results = new Map<number, IdleMemory>()
  try {
    const base = await proxy.memory(true)
    for (const level of levels) {
      const connections = Math.round((level * socketsPerUnit) / 2)
      while (held.length < connections) {
        const batch = Math.min(256, connections - held.length)
        held.push(
          ...(await Promise.all(
            Array.from({ length: batch }, async () => {
              const socket = await tcpConnect(proxy.port)
              socket.write(Buffer.of(1))
              await new Promise((resolve) => socket.once("data", resolve))
              return socket
            })
          ))
        )
      }
      const memory = await proxy.memory(true)
      results.set(level, { rssPerUnit: (memory.rss - base.rss) / level, heapPerUnit: (memory.heapUsed - base.heapUsed) / level })
    }
    return results
  } finally {
    for (const socket of held) socket.destroy()
    await proxy.stop()
    await echoServer.close()
  }
}

/** Milliseconds from `connect()` to the first echoed byte, on a fresh connection to 127.0.0.1:`port`. */
export const tcpConnectToEcho = (port: number): Promise<number> =>
  new Promise((resolve, reject) => {
    const start = performance.now()
    const socket = Net.connect({ host: "127.0.0.1", port, noDelay: true })
    socket.once("connect", () => socket.write(Buffer.of(42)))
    socket.once("data", () => {
      const ms = performance.now() - start
      socket.destroy()
      resolve(ms)
    })
    socket.once("error", reject)
  })

/** Writes `bytes` of `chunk` repeatedly to a connected socket, honouring backpressure. */
export const writeVolume = (socket: Net.Socket, chunk: Uint8Array, bytes: number): Promise<void> =>
  new Promise((resolve, reject) => {
    let left = bytes
    socket.once("error", reject)
    const pump = () => {
      while (left > 0) {
        const piece = left >= chunk.length ? chunk : chunk.subarray(0, left)
        left -= piece.length
        if (!socket.write(piece)) {
          socket.once("drain", pump)
          return
        }
      }
      resolve()
    }
    pump()
  })

/** Opens a connection to 127.0.0.1:`port`. */
export const tcpConnect = (port: number): Promise<Net.Socket> =>
  new Promise((resolve, reject) => {
    const socket = Net.connect({ host: "127.0.0.1", port, noDelay: true })
    socket.once("connect", () => resolve(socket))
    socket.once("error", reject)
  })

/**
 * MB/s (10^6 bytes per second) of `totalBytes` sent over `streams`
 * connections to `port` at once, counted until `sink` has them all.
 */
export const tcpThroughput = async (
  port: number,
  sink: SinkServer,
  totalBytes: number,
  streams: number,
  chunk: Uint8Array
): Promise<number> => {
  const sockets = await Promise.all(Array.from({ length: streams }, () => tcpConnect(port)))
  const per = Math.floor(totalBytes / streams)
  const arrived = sink.expect(per * streams)
  const start = performance.now()
  await Promise.all(sockets.map((s) => writeVolume(s, chunk, per)))
  const end = await arrived
  for (const s of sockets) s.destroy()
  return (per * streams) / 1e6 / ((end - start) / 1000)
}
