import { describe, expect, it } from "vitest"
import { addressPrefix, checkPrefixLengths } from "../src/core/address-prefix.ts"

describe("addressPrefix", () => {
  it("one IPv4 address by default, or a shorter prefix", () => {
    expect(addressPrefix("127.0.0.2")).toBe("127.0.0.2/32")
    expect(addressPrefix("192.0.2.77", { ipv4: 24, ipv6: 64 })).toBe("192.0.2.0/24")
    expect(addressPrefix("192.0.2.77", { ipv4: 20, ipv6: 64 })).toBe("192.0.0.0/20")
    expect(addressPrefix("192.0.2.77", { ipv4: 0, ipv6: 64 })).toBe("0.0.0.0/0")
  })

  it("an IPv6 /64 by default: every address of a subscriber's /64 is one prefix", () => {
    expect(addressPrefix("2001:db8:1:2:aaaa::1")).toBe("2001:db8:1:2::/64")
    expect(addressPrefix("2001:db8:1:2:ffff:ffff:ffff:ffff")).toBe("2001:db8:1:2::/64")
    expect(addressPrefix("2001:db8:1:3::1")).toBe("2001:db8:1:3::/64")
    expect(addressPrefix("::1")).toBe("0:0:0:0::/64")
    expect(addressPrefix("2001:db8:1:2::1", { ipv4: 32, ipv6: 48 })).toBe("2001:db8:1::/48")
    expect(addressPrefix("2001:db8:1:2::1", { ipv4: 32, ipv6: 128 })).toBe("2001:db8:1:2:0:0:0:1/128")
    expect(addressPrefix("fe80::1%eth0")).toBe("fe80:0:0:0::/64")
  })

  it("IPv4-mapped IPv6 counts as the IPv4 address", () => {
    expect(addressPrefix("::ffff:127.0.0.3")).toBe("127.0.0.3/32")
    expect(addressPrefix("::ffff:7f00:3")).toBe("127.0.0.3/32")
  })

  it("text that is no IP address is its own prefix", () => {
    for (const text of ["unknown", "1.2.3", "1.2.3.256", "1::2::3", "12345::", "1:2:3:4:5:6:7:8:9", ""]) {
      expect(addressPrefix(text)).toBe(text)
    }
  })

  it("prefix lengths out of range are refused with the range", () => {
    expect(checkPrefixLengths({ ipv4: 32, ipv6: 64 })).toBeUndefined()
    expect(checkPrefixLengths({ ipv4: 33, ipv6: 64 })).toMatch(/0\.\.32/)
    expect(checkPrefixLengths({ ipv4: 32, ipv6: -1 })).toMatch(/0\.\.128/)
  })
})
