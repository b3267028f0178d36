/**
 * The allow-list file format: one client public key (64 hex digits) per
 * line; blank lines and `#` comments (whole-line or trailing) are ignored.
 */
import { parsePublicKeyHex, publicKeyHex } from "./keys.ts"

/** A line that is not a key. */
export interface AllowListProblem {
  readonly _tag: "AllowListProblem"
  readonly line: number
  readonly message: string
}

/** The keys (lower-case hex) in an allow-list text, or the first bad line. */
export const parseAllowList = (text: string): ReadonlySet<string> | AllowListProblem => {
  const keys = new Set<string>()
  const lines = text.split(/\r?\n/)
  for (let i = 0; i < lines.length; i++) {
    const content = lines[i]!.replace(/#.*$/, "").trim()
    if (content === "") continue
    const parsed = parsePublicKeyHex(content)
    if (parsed._tag !== "Ok") {
      return { _tag: "AllowListProblem", line: i + 1, message: `line ${i + 1}: ${parsed.error.message}` }
    }
    keys.add(publicKeyHex(parsed.value))
  }
  return keys
}
