/**
 * A JSON form of the protocol messages, for the `offset-relay wire` debugging
 * command: pure mappings between packed bytes (as hex) and JSON text.
 *
 * Conventions: field names as in schema/*.capnp; a union (anonymous or a
 * named group such as optDestPublicKey) is an object with exactly one key
 * naming its member; Void is null; PublicKey, DhPublicKey, Salt, RandValue,
 * Signature and Data are lowercase hex strings of their bytes. Input is
 * checked strictly (no missing or extra keys) and every error is a value with
 * a one-line message.
 */
import { bytesToHex, hexToBytes } from "./keys.ts"
import * as M from "./messages.ts"
import { absurd } from "./absurd.ts"

/** The message types the wire command knows, in the order help lists them. */
export const wireTypes = [
  "InitConnection",
  "RejectConnection",
  "IncomingConnection",
  "KaMessage",
  "ExchangeRandNonce",
  "ExchangeDh",
  "ChannelMessage"
] as const

/** One of wireTypes. */
export type WireType = (typeof wireTypes)[number]

/** The JSON shape of each type, for help text. */
export const wireShapes: Readonly<Record<WireType, string>> = {
  InitConnection: `{"listen":null} | {"accept":PublicKey} | {"connect":PublicKey}`,
  RejectConnection: `{"publicKey":PublicKey}`,
  IncomingConnection: `{"publicKey":PublicKey}`,
  KaMessage: `{"keepAlive":null} | {"message":Data}`,
  ExchangeRandNonce: `{"randNonce":RandValue,"srcPublicKey":PublicKey,"optDestPublicKey":{"empty":null} | {"publicKey":PublicKey}}`,
  ExchangeDh: `{"dhPublicKey":DhPublicKey,"randNonce":RandValue,"keySalt":Salt,"signature":Signature}`,
  ChannelMessage: `{"randPadding":Data,"content":{"rekey":{"dhPublicKey":DhPublicKey,"keySalt":Salt}} | {"user":Data}}`
}

/** Text out (JSON or hex), or a one-line reason. */
export type WireResult = { readonly _tag: "Ok"; readonly value: string } | { readonly _tag: "Err"; readonly message: string }

/** A JSON value as JSON.parse returns it. */
export type Json = null | boolean | number | string | ReadonlyArray<Json> | { readonly [key: string]: Json }

// Parsing JSON into message values: a value or the first problem found.
type Parsed<A> = { readonly ok: true; readonly value: A } | { readonly ok: false; readonly message: string }

const ok = <A>(value: A): Parsed<A> => ({ ok: true, value })
const bad = (path: string, message: string): Parsed<never> => ({ ok: false, message: `${path}: ${message}` })

const describe = (json: unknown): string =>
  json === null ? "null" : Array.isArray(json) ? "an array" : typeof json === "object" ? "an object" : `a ${typeof json}`

const quoteKeys = (keys: ReadonlyArray<string>): string => keys.map((k) => JSON.stringify(k)).join(", ")

const isObject = (json: unknown): json is Readonly<Record<string, unknown>> =>
  typeof json === "object" && json !== null && !Array.isArray(json)

// An object with exactly these keys; the values in the keys' order.
const fields = (json: unknown, path: string, keys: ReadonlyArray<string>): Parsed<ReadonlyArray<unknown>> => {
  if (!isObject(json)) return bad(path, `expected an object with keys ${quoteKeys(keys)}, got ${describe(json)}`)
  for (const key of Object.keys(json)) {
    if (!keys.includes(key)) return bad(path, `unexpected key ${JSON.stringify(key)}; expected keys ${quoteKeys(keys)}`)
  }
  const values: Array<unknown> = []
  for (const key of keys) {
    if (!Object.hasOwn(json, key)) return bad(path, `missing key ${JSON.stringify(key)}`)
    values.push(json[key])
  }
  return ok(values)
}

// A union: an object with exactly one key, one of `members`.
const member = (
  json: unknown,
  path: string,
  members: ReadonlyArray<string>
): Parsed<{ readonly name: string; readonly value: unknown }> => {
  const expected = `an object with exactly one of the keys ${quoteKeys(members)}`
  if (!isObject(json)) return bad(path, `expected ${expected}, got ${describe(json)}`)
  const keys = Object.keys(json)
  if (keys.length !== 1) return bad(path, `expected ${expected}, got ${keys.length === 0 ? "no keys" : `keys ${quoteKeys(keys)}`}`)
  // keys has exactly one element.
  const name = keys[0]!
  if (!members.includes(name)) return bad(path, `unknown member ${JSON.stringify(name)}; expected ${expected}`)
  return ok({ name, value: json[name] })
}

const voidValue = (json: unknown, path: string): Parsed<null> =>
  json === null ? ok(null) : bad(path, `expected null (Void), got ${describe(json)}`)

const hexBytes = (json: unknown, path: string, length: number | undefined): Parsed<Uint8Array> => {
  const what = length === undefined ? "a hex string" : `${2 * length} hex digits (${length} bytes)`
  if (typeof json !== "string") return bad(path, `expected ${what}, got ${describe(json)}`)
  if (json.length % 2 !== 0) return bad(path, `odd number of hex digits (${json.length}); expected ${what}`)
  if (length !== undefined && json.length !== 2 * length) {
    return bad(path, `expected ${what}, got ${json.length} hex digits`)
  }
  const bytes = hexToBytes(json)
  if (bytes === undefined) {
    const at = json.search(/[^0-9a-fA-F]/)
    return bad(path, `non-hex character ${JSON.stringify(json[at] ?? "")} at position ${at + 1}`)
  }
  return ok(bytes)
}

const fixed = (length: number) => (json: unknown, path: string) => hexBytes(json, path, length)
const publicKey = fixed(M.fixedLengths.publicKey)
const dhPublicKey = fixed(M.fixedLengths.dhPublicKey)
const salt = fixed(M.fixedLengths.salt)
const randValue = fixed(M.fixedLengths.randValue)
const signature = fixed(M.fixedLengths.signature)
const data = (json: unknown, path: string) => hexBytes(json, path, undefined)

// Runs field parsers over the values of `fields`, stopping at the first error.
const all = <const T extends ReadonlyArray<unknown>>(
  parsed: { readonly [K in keyof T]: Parsed<T[K]> }
): Parsed<T> => {
  const values: Array<unknown> = []
  for (const p of parsed as ReadonlyArray<Parsed<unknown>>) {
    if (!p.ok) return p
    values.push(p.value)
  }
  return ok(values as unknown as T)
}

const parseRekey = (json: unknown, path: string): Parsed<M.Rekey> => {
  const f = fields(json, path, ["dhPublicKey", "keySalt"])
  if (!f.ok) return f
  const [dh, ks] = f.value
  const v = all([dhPublicKey(dh, `${path}.dhPublicKey`), salt(ks, `${path}.keySalt`)] as const)
  return v.ok ? ok({ dhPublicKey: v.value[0], keySalt: v.value[1] }) : v
}

// A union member as JSON: an object whose only key names the member.
const unionJson = (member: string, value: Json): Json => ({ [member]: value })

/** Per type: JSON ↔ value and value ↔ packed bytes. */
interface WireCodec<A> {
  readonly fromJson: (json: unknown) => Parsed<A>
  readonly toJson: (value: A) => Json
  readonly encode: (value: A) => Uint8Array
  readonly decode: (bytes: Uint8Array) => M.DecodeResult<A>
}

const keyOnly = (
  type: "RejectConnection" | "IncomingConnection",
  encode: (value: { readonly publicKey: Uint8Array }) => Uint8Array,
  decode: (bytes: Uint8Array) => M.DecodeResult<{ readonly publicKey: Uint8Array }>
): WireCodec<{ readonly publicKey: Uint8Array }> => ({
  fromJson: (json) => {
    const f = fields(json, type, ["publicKey"])
    if (!f.ok) return f
    const key = publicKey(f.value[0], `${type}.publicKey`)
    return key.ok ? ok({ publicKey: key.value }) : key
  },
  toJson: (value) => ({ publicKey: bytesToHex(value.publicKey) }),
  encode,
  decode
})

const initConnection: WireCodec<M.InitConnection> = {
  fromJson: (json) => {
    const m = member(json, "InitConnection", ["listen", "accept", "connect"])
    if (!m.ok) return m
    const path = `InitConnection.${m.value.name}`
    if (m.value.name === "listen") {
      const v = voidValue(m.value.value, path)
      return v.ok ? ok({ _tag: "Listen" }) : v
    }
    const key = publicKey(m.value.value, path)
    if (!key.ok) return key
    return ok(m.value.name === "accept" ? { _tag: "Accept", publicKey: key.value } : { _tag: "Connect", publicKey: key.value })
  },
  toJson: (value) => {
    switch (value._tag) {
      case "Listen":
        return unionJson("listen", null)
      case "Accept":
        return unionJson("accept", bytesToHex(value.publicKey))
      case "Connect":
        return unionJson("connect", bytesToHex(value.publicKey))
      default:
        return absurd(value)
    }
  },
  encode: M.encodeInitConnection,
  decode: (bytes) => M.decodeInitConnection(bytes)
}

const kaMessage: WireCodec<M.KaMessage> = {
  fromJson: (json) => {
    const m = member(json, "KaMessage", ["keepAlive", "message"])
    if (!m.ok) return m
    if (m.value.name === "keepAlive") {
      const v = voidValue(m.value.value, "KaMessage.keepAlive")
      return v.ok ? ok({ _tag: "KeepAlive" }) : v
    }
    const d = data(m.value.value, "KaMessage.message")
    return d.ok ? ok({ _tag: "Message", data: d.value }) : d
  },
  toJson: (value) =>
    value._tag === "KeepAlive" ? unionJson("keepAlive", null) : unionJson("message", bytesToHex(value.data)),
  encode: M.encodeKaMessage,
  decode: (bytes) => M.decodeKaMessage(bytes)
}

const exchangeRandNonce: WireCodec<M.ExchangeRandNonce> = {
  fromJson: (json) => {
    const path = "ExchangeRandNonce"
    const f = fields(json, path, ["randNonce", "srcPublicKey", "optDestPublicKey"])
    if (!f.ok) return f
    const [nonce, src, dest] = f.value
    const v = all([randValue(nonce, `${path}.randNonce`), publicKey(src, `${path}.srcPublicKey`)] as const)
    if (!v.ok) return v
    const m = member(dest, `${path}.optDestPublicKey`, ["empty", "publicKey"])
    if (!m.ok) return m
    const memberPath = `${path}.optDestPublicKey.${m.value.name}`
    if (m.value.name === "empty") {
      const e = voidValue(m.value.value, memberPath)
      return e.ok ? ok({ randNonce: v.value[0], srcPublicKey: v.value[1], optDestPublicKey: undefined }) : e
    }
    const key = publicKey(m.value.value, memberPath)
    return key.ok ? ok({ randNonce: v.value[0], srcPublicKey: v.value[1], optDestPublicKey: key.value }) : key
  },
  toJson: (value) => ({
    randNonce: bytesToHex(value.randNonce),
    srcPublicKey: bytesToHex(value.srcPublicKey),
    optDestPublicKey:
      value.optDestPublicKey === undefined
        ? unionJson("empty", null)
        : unionJson("publicKey", bytesToHex(value.optDestPublicKey))
  }),
  encode: M.encodeExchangeRandNonce,
  decode: (bytes) => M.decodeExchangeRandNonce(bytes)
}

const exchangeDh: WireCodec<M.ExchangeDh> = {
  fromJson: (json) => {
    const path = "ExchangeDh"
    const f = fields(json, path, ["dhPublicKey", "randNonce", "keySalt", "signature"])
    if (!f.ok) return f
    const [dh, nonce, ks, sig] = f.value
    const v = all([
      dhPublicKey(dh, `${path}.dhPublicKey`),
      randValue(nonce, `${path}.randNonce`),
      salt(ks, `${path}.keySalt`),
      signature(sig, `${path}.signature`)
    ] as const)
    return v.ok ? ok({ dhPublicKey: v.value[0], randNonce: v.value[1], keySalt: v.value[2], signature: v.value[3] }) : v
  },
  toJson: (value) => ({
    dhPublicKey: bytesToHex(value.dhPublicKey),
    randNonce: bytesToHex(value.randNonce),
    keySalt: bytesToHex(value.keySalt),
    signature: bytesToHex(value.signature)
  }),
  encode: M.encodeExchangeDh,
  decode: (bytes) => M.decodeExchangeDh(bytes)
}

const channelMessage: WireCodec<M.ChannelMessage> = {
  fromJson: (json) => {
    const path = "ChannelMessage"
    const f = fields(json, path, ["randPadding", "content"])
    if (!f.ok) return f
    const [padding, content] = f.value
    const p = data(padding, `${path}.randPadding`)
    if (!p.ok) return p
    const m = member(content, `${path}.content`, ["rekey", "user"])
    if (!m.ok) return m
    const memberPath = `${path}.content.${m.value.name}`
    if (m.value.name === "rekey") {
      const r = parseRekey(m.value.value, memberPath)
      return r.ok ? ok({ randPadding: p.value, content: { _tag: "Rekey", rekey: r.value } }) : r
    }
    const d = data(m.value.value, memberPath)
    return d.ok ? ok({ randPadding: p.value, content: { _tag: "User", data: d.value } }) : d
  },
  toJson: (value) => ({
    randPadding: bytesToHex(value.randPadding),
    content:
      value.content._tag === "Rekey"
        ? unionJson("rekey", {
            dhPublicKey: bytesToHex(value.content.rekey.dhPublicKey),
            keySalt: bytesToHex(value.content.rekey.keySalt)
          })
        : unionJson("user", bytesToHex(value.content.data))
  }),
  encode: M.encodeChannelMessage,
  decode: (bytes) => M.decodeChannelMessage(bytes)
}


const codecs: { readonly [T in WireType]: WireCodec<any> } = {
  InitConnection: initConnection,
  RejectConnection: keyOnly("RejectConnection", M.encodeRejectConnection, (b) => M.decodeRejectConnection(b)),
  IncomingConnection: keyOnly("IncomingConnection", M.encodeIncomingConnection, (b) => M.decodeIncomingConnection(b)),
  KaMessage: kaMessage,
  ExchangeRandNonce: exchangeRandNonce,
  ExchangeDh: exchangeDh,
  ChannelMessage: channelMessage
}

/** True when `name` is one of wireTypes. */
export const isWireType = (name: string): name is WireType => (wireTypes as ReadonlyArray<string>).includes(name)

const oneLine = (text: string): string => text.replace(/\s*[\r\n]+\s*/g, " ")

const fail = (message: string): WireResult => ({ _tag: "Err", message: oneLine(message) })

const lookup = (type: string): WireCodec<unknown> | WireResult =>
  isWireType(type) ? codecs[type] : fail(`unknown type ${JSON.stringify(type)}; expected one of ${wireTypes.join(", ")}`)

/** Packed bytes, as lowercase hex, of the message of `type` written as JSON text. */
export const encodeWire = (type: string, jsonText: string): WireResult => {
  const codec = lookup(type)
  if ("_tag" in codec) return codec
  let json: unknown
  try {
    json = JSON.parse(jsonText)
  } catch (cause) {
    // JSON.parse reports bad syntax only by throwing; its message says where.
    return fail(`bad JSON: ${cause instanceof Error ? cause.message : String(cause)}`)
  }
  const parsed = codec.fromJson(json)
  if (!parsed.ok) return fail(parsed.message)
  return { _tag: "Ok", value: bytesToHex(codec.encode(parsed.value)) }
}

/** The compact JSON text of the message of `type` in packed bytes written as hex (whitespace ignored, either case). */
export const decodeWire = (type: string, hexText: string): WireResult => {
  const codec = lookup(type)
  if ("_tag" in codec) return codec
  const digits = hexText.replace(/\s+/g, "")
  if (digits.length % 2 !== 0) return fail(`odd number of hex digits (${digits.length}) in the input`)
  const bytes = hexToBytes(digits)
  if (bytes === undefined) {
    const at = digits.search(/[^0-9a-fA-F]/)
    return fail(`non-hex character ${JSON.stringify(digits[at] ?? "")} at digit ${at + 1} of the input`)
  }
  const decoded = codec.decode(bytes)
  if (decoded._tag === "Err") return fail(`cannot decode ${type} (${decoded.error.reason}): ${decoded.error.message}`)
  return { _tag: "Ok", value: JSON.stringify(codec.toJson(decoded.value)) }
}
