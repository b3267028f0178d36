/**
 * Why a local port could not be opened, in one line that names the cause
 * and the flag that fixes it (`127.0.0.1:4747 is already in use
 * (EADDRINUSE); choose another --port`), instead of the transport's bare
 * "Open".
 */
import * as Net from "node:net"

/** The flags a message can point at. */
export interface ListenFlags {
  readonly port: string
  readonly host: string
}

/** The Node error code of a failure, if it has one (also looked for in `cause`). */
export const errorCode = (error: unknown): string | undefined => {
  for (let e = error, depth = 0; e !== undefined && e !== null && depth < 4; depth++) {
    const code = (e as { code?: unknown }).code
    if (typeof code === "string") return code
    e = (e as { cause?: unknown }).cause
  }
  return undefined
}

/** One line about a failed listen on host:port with Node error `code`. */
export const describeListenFailure = (
  code: string | undefined,
  host: string,
  port: number,
  flags: ListenFlags,
  fallback: string
): string => {
  const where = `${host}:${port}`
  switch (code) {
    case "EADDRINUSE":
      return `${where} is already in use (EADDRINUSE); choose another ${flags.port}`
    case "EACCES":
      return `not permitted to listen on ${where} (EACCES): ports below 1024 need privileges; choose another ${flags.port}`
    case "EADDRNOTAVAIL":
      return `cannot listen on ${where}: ${host} is not an address of this machine (EADDRNOTAVAIL); choose another ${flags.host}`
    case "ENOTFOUND":
    case "EAI_AGAIN":
    case "EAI_NONAME":
    case "EAI_FAIL":
      return `cannot listen on ${where}: the host name ${host} does not resolve (${code}); give an IP address in ${flags.host}`
    case "EINVAL":
      return `cannot listen on ${where} (EINVAL); check ${flags.host} and ${flags.port}`
    default:
      return code === undefined ? `cannot listen on ${where}: ${fallback}` : `cannot listen on ${where} (${code}): ${fallback}`
  }
}

/**
 * Tries to listen on host:port and closes at once: the error code a failed
 * listen had, for a server whose own error lost it. Undefined when the port
 * can be opened now (the failure was transient).
 */
export const probeListen = (host: string, port: number): Promise<NodeJS.ErrnoException | undefined> =>
  new Promise((resolve) => {
    const server = Net.createServer()
    server.once("error", (error: NodeJS.ErrnoException) => resolve(error))
    server.listen({ host, port, exclusive: true }, () => server.close(() => resolve(undefined)))
  })
