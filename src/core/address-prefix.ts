/**
 * The address prefix a client counts under for admission limits (relay-core.ts):
 * by default one IPv4 address, or one IPv6 /64 (what one subscriber usually
 * holds, so rotating through its 2^64 addresses gains nothing).
 *
 * Pure text in, text out: `addressPrefix("2001:db8::1", 32, 64)` is
 * "2001:db8:0:0::/64". IPv4-mapped IPv6 addresses (`::ffff:192.0.2.1`, what a
 * dual-stack socket reports) count as the IPv4 address. Text that is not an
 * IP address is its own prefix, so nothing is lumped together by mistake.
 */

/** Prefix lengths: IPv4 0..32 and IPv6 0..128 bits. */
export interface PrefixLengths {
  readonly ipv4: number
  readonly ipv6: number
}

/** One IPv4 address, one IPv6 /64. */
export const defaultPrefixLengths: PrefixLengths = { ipv4: 32, ipv6: 64 }

/** The prefix `address` belongs to, as canonical text ("192.0.2.0/24", "2001:db8:0:0::/64"). */
export const addressPrefix = (address: string, lengths: PrefixLengths = defaultPrefixLengths): string => {
  const v4 = parseIpv4(address)
  if (v4 !== undefined) return ipv4Prefix(v4, lengths.ipv4)
  const v6 = parseIpv6(address)
  if (v6 === undefined) return address
  // ::ffff:a.b.c.d: an IPv4 client on a dual-stack socket.
  if (v6.slice(0, 5).every((group) => group === 0) && v6[5] === 0xffff) {
    return ipv4Prefix([v6[6]! >>> 8, v6[6]! & 0xff, v6[7]! >>> 8, v6[7]! & 0xff], lengths.ipv4)
  }
  const groups = v6.map((group, i) => {
    const kept = Math.max(0, Math.min(16, lengths.ipv6 - 16 * i))
    return kept === 0 ? 0 : group & ((0xffff << (16 - kept)) & 0xffff)
  })
  const significant = Math.ceil(lengths.ipv6 / 16)
  const head = groups.slice(0, significant).map((g) => g.toString(16)).join(":")
  return `${head}${significant < 8 ? "::" : ""}/${lengths.ipv6}`
}

/** Checks prefix lengths from user input; undefined when valid, else why not. */
export const checkPrefixLengths = (lengths: PrefixLengths): string | undefined => {
  if (!Number.isSafeInteger(lengths.ipv4) || lengths.ipv4 < 0 || lengths.ipv4 > 32) {
    return `the IPv4 prefix length must be 0..32, got ${lengths.ipv4}`
  }
  if (!Number.isSafeInteger(lengths.ipv6) || lengths.ipv6 < 0 || lengths.ipv6 > 128) {
    return `the IPv6 prefix length must be 0..128, got ${lengths.ipv6}`
  }
  return undefined
}

const ipv4Prefix = (bytes: ReadonlyArray<number>, length: number): string => {
  const kept = bytes.map((byte, i) => {
    const bits = Math.max(0, Math.min(8, length - 8 * i))
    return byte & ((0xff << (8 - bits)) & 0xff)
  })
  return `${kept.join(".")}/${length}`
}

const parseIpv4 = (text: string): Array<number> | undefined => {
  const parts = text.split(".")
  if (parts.length !== 4) return undefined
  const bytes: Array<number> = []
  for (const part of parts) {
    if (!/^\d{1,3}$/.test(part)) return undefined
    const n = Number(part)
    if (n > 255) return undefined
    bytes.push(n)
  }
  return bytes
}

// Eight 16-bit groups, or undefined. Accepts "::" once, a trailing dotted
// IPv4 part, and drops a zone ("%eth0").
const parseIpv6 = (text: string): Array<number> | undefined => {
  const address = text.split("%")[0]!
  const halves = address.split("::")
  if (halves.length > 2) return undefined
  const groupsOf = (part: string): Array<number> | undefined => {
    if (part === "") return []
    const out: Array<number> = []
    const pieces = part.split(":")
    for (let i = 0; i < pieces.length; i++) {
      const piece = pieces[i]!
      if (i === pieces.length - 1 && piece.includes(".")) {
        const v4 = parseIpv4(piece)
        if (v4 === undefined) return undefined
        out.push((v4[0]! << 8) | v4[1]!, (v4[2]! << 8) | v4[3]!)
      } else {
        if (!/^[0-9a-fA-F]{1,4}$/.test(piece)) return undefined
        out.push(parseInt(piece, 16))
      }
    }
    return out
  }
  const head = groupsOf(halves[0]!)
  const tail = halves.length === 2 ? groupsOf(halves[1]!) : []
  if (head === undefined || tail === undefined) return undefined
  if (halves.length === 1) return head.length === 8 ? head : undefined
  const missing = 8 - head.length - tail.length
  if (missing < 1) return undefined
  return [...head, ...new Array<number>(missing).fill(0), ...tail]
}
