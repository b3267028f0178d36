/**
 * The client's argument checks, shared by the Node client (index.ts) and
 * the browser client (browser-client.ts): relay addresses and public keys
 * given as text or as values, refused at once with InvalidArgumentError.
 */
import { parsePublicKeyHex } from "../../core/keys.ts"
import { parseRelayAddress, type RelayAddress } from "../../core/relay-address.ts"

/** A bad argument (relay address, key): the caller's mistake, thrown at once. */
export class InvalidArgumentError extends Error {
  override readonly name = "InvalidArgumentError"
}

/** A relay: `<key hex>@<host>:<port>` text, or parsed. */
export type RelayInput = string | RelayAddress

/** A public key: 64 hex digits, or 32 bytes. */
export type KeyInput = string | Uint8Array

/** The relay address `relay` names; throws InvalidArgumentError. */
export const relayOf = (relay: RelayInput): RelayAddress => {
  if (typeof relay !== "string") return relay
  const parsed = parseRelayAddress(relay)
  if (parsed._tag === "Err") throw new InvalidArgumentError(parsed.error.message)
  return parsed.value
}

/** The 32-byte public key `key` names; throws InvalidArgumentError. */
export const keyOf = (key: KeyInput): Uint8Array => {
  if (typeof key !== "string") {
    if (key.length !== 32) throw new InvalidArgumentError(`a public key has 32 bytes, got ${key.length}`)
    return key
  }
  const parsed = parsePublicKeyHex(key)
  if (parsed._tag === "Err") throw new InvalidArgumentError(parsed.error.message)
  return parsed.value
}
