/**
 * Relay addresses as people write them: `<relay public key hex>@<host>:<port>`
 * (what `offset-relay serve` prints), e.g.
 * `3b6a27bc…(64 hex digits)@relay.example.org:4747` or `…@[::1]:4747`, for
 * TCP; `<key>@ws://<host>:<port>` or `<key>@wss://<host>:<port>` for a
 * relay's WebSocket port (browsers can only use these). A trailing `/` after
 * the port is accepted; other paths are not (the relay serves at `/`).
 *
 * The key is part of the address on purpose: a client dialing a relay checks
 * in the handshake that the relay proves this key (optDestPublicKey), so a
 * hijacked DNS name or a man in the middle cannot pose as the relay.
 *
 * Pure and non-throwing: bad text gives an error value whose message quotes
 * the text and says what a valid address looks like.
 */
import { bytesToHex, parsePublicKeyHex } from "./keys.ts"

/** A relay: the key it must prove, and where it listens. */
export interface RelayAddress {
  /** 32-byte Ed25519 public key of the relay. */
  readonly publicKey: Uint8Array
  /** Host name, IPv4 address, or IPv6 address without brackets. */
  readonly host: string
  /** TCP port, 1..65535. */
  readonly port: number
  /** "ws" or "wss": the relay's WebSocket port; absent: plain TCP. */
  readonly scheme?: RelayScheme | undefined
}

/** How a relay is reached besides plain TCP: WebSocket, or WebSocket over TLS. */
export type RelayScheme = "ws" | "wss"


/** Why a relay address was refused. */
export interface RelayAddressError {
  readonly _tag: "RelayAddressError"
  readonly reason:
    | "MissingKey" // no "<key>@" in front
    | "BadKey" // the part before "@" is not 64 hex digits
    | "MissingPort" // no ":<port>" at the end
    | "BadPort" // the port is not a number in 1..65535
    | "BadHost" // empty host, stray brackets or characters no host name has
    | "BadScheme" // a scheme other than ws:// or wss://, or a path after the port
  readonly message: string
}

/** A parsed address, or why the text is not one. */
export type RelayAddressResult =
  | { readonly _tag: "Ok"; readonly value: RelayAddress }
  | { readonly _tag: "Err"; readonly error: RelayAddressError }

const expected =
  "expected <relay public key: 64 hex digits>@<host>:<port> (TCP) or <key>@ws://<host>:<port> / <key>@wss://<host>:<port> (WebSocket), as `offset-relay serve` prints it"

// Host names, IPv4 addresses and IPv6 literals (inside brackets) use only these.
const hostCharacters = /^[A-Za-z0-9._~%-]+$/
const ipv6Characters = /^[0-9A-Fa-f:.%A-Za-z_-]+$/

/** Parses `<key hex>@<host>:<port>` or `<key hex>@ws[s]://<host>:<port>`; surrounding whitespace is ignored. */
export const parseRelayAddress = (text: string): RelayAddressResult => {
  const trimmed = text.trim()
  const shown = trimmed.length > 120 ? `${trimmed.slice(0, 117)}...` : trimmed
  const fail = (reason: RelayAddressError["reason"], detail: string): RelayAddressResult => ({
    _tag: "Err",
    error: { _tag: "RelayAddressError", reason, message: `relay address "${shown}" ${detail}; ${expected}` }
  })
  const at = trimmed.indexOf("@")
  if (at < 0) return fail("MissingKey", "has no relay key (no '@')")
  const key = parsePublicKeyHex(trimmed.slice(0, at))
  if (key._tag === "Err") return fail("BadKey", `has a bad relay key: ${key.error.message}`)
  let rest = trimmed.slice(at + 1)
  let scheme: RelayScheme | undefined
  const schemeEnd = rest.indexOf("://")
  if (schemeEnd >= 0) {
    const name = rest.slice(0, schemeEnd).toLowerCase()
    if (name !== "ws" && name !== "wss") {
      return fail("BadScheme", `has scheme "${rest.slice(0, schemeEnd)}://", but a relay is reached over TCP (no scheme), ws:// or wss://`)
    }
    scheme = name
    rest = rest.slice(schemeEnd + 3)
    if (rest.endsWith("/")) rest = rest.slice(0, -1)
    if (rest.includes("/")) return fail("BadScheme", "has a path after the port; a relay's WebSocket is served at / only")
  }
  const location = splitHostPort(rest)
  if (location._tag === "Problem") return fail(location.reason, location.detail)
  const value: RelayAddress = scheme === undefined
    ? { publicKey: key.value, host: location.host, port: location.port }
    : { publicKey: key.value, host: location.host, port: location.port, scheme }
  return { _tag: "Ok", value }
}

/** Why `host:port` text was refused. */
export interface HostPortError {
  readonly _tag: "HostPortError"
  readonly reason: "MissingPort" | "BadPort" | "BadHost"
  readonly message: string
}

/** Parses `<host>:<port>` (IPv6 in brackets), e.g. a local service to forward to. */
export const parseHostPort = (
  text: string
):
  | { readonly _tag: "Ok"; readonly value: { readonly host: string; readonly port: number } }
  | { readonly _tag: "Err"; readonly error: HostPortError } =>
{
  const trimmed = text.trim()
  const location = splitHostPort(trimmed)
  if (location._tag === "Problem") {
    return {
      _tag: "Err",
      error: {
        _tag: "HostPortError",
        reason: location.reason,
        message: `"${trimmed}" ${location.detail}; expected <host>:<port>, e.g. 127.0.0.1:8080 or [::1]:8080`
      }
    }
  }
  return { _tag: "Ok", value: { host: location.host, port: location.port } }
}

type Located =
  | { readonly _tag: "Located"; readonly host: string; readonly port: number }
  | { readonly _tag: "Problem"; readonly reason: "MissingPort" | "BadPort" | "BadHost"; readonly detail: string }

const problem = (reason: "MissingPort" | "BadPort" | "BadHost", detail: string): Located => ({
  _tag: "Problem",
  reason,
  detail
})

const splitHostPort = (location: string): Located => {
  let host: string
  let portText: string
  if (location.startsWith("[")) {
    const close = location.indexOf("]")
    if (close < 0) return problem("BadHost", "has an IPv6 address without its closing ']'")
    host = location.slice(1, close)
    const rest = location.slice(close + 1)
    if (!rest.startsWith(":")) return problem("MissingPort", "has no ':<port>' after the IPv6 address")
    portText = rest.slice(1)
    if (host === "" || !ipv6Characters.test(host) || !host.includes(":")) {
      return problem("BadHost", `has "${host}" between brackets, which is not an IPv6 address`)
    }
  } else {
    const colon = location.lastIndexOf(":")
    if (colon < 0) return problem("MissingPort", "has no ':<port>' at the end")
    host = location.slice(0, colon)
    portText = location.slice(colon + 1)
    if (host.includes(":")) return problem("BadHost", "has an IPv6 address without brackets (write [addr]:port)")
    if (host === "") return problem("BadHost", "has an empty host")
    if (!hostCharacters.test(host)) return problem("BadHost", `has a host "${host}" with characters no host name has`)
  }
  if (!/^\d{1,5}$/.test(portText)) return problem("BadPort", `has port "${portText}", which is not a number`)
  const port = Number(portText)
  if (port < 1 || port > 65535) return problem("BadPort", `has port ${port}, outside 1..65535`)
  return { _tag: "Located", host, port }
}

/** The canonical text of an address (lowercase key; IPv6 hosts in brackets; the scheme, if any). */
export const formatRelayAddress = (address: RelayAddress): string =>
  `${bytesToHex(address.publicKey)}@${address.scheme === undefined ? "" : `${address.scheme}://`}${relayHostPort(address)}`

/** The WebSocket URL of a relay reached over ws:// or wss:// (`ws://host:port/`). */
export const relayWebSocketUrl = (address: Pick<RelayAddress, "host" | "port"> & { readonly scheme: RelayScheme }): string =>
  `${address.scheme}://${relayHostPort(address)}/`

/** `host:port` of an address, for messages where the key would only be noise. */
export const relayHostPort = (address: Pick<RelayAddress, "host" | "port">): string =>
  `${address.host.includes(":") ? `[${address.host}]` : address.host}:${address.port}`
