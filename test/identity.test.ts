/**
 * Identity key files on a real filesystem (a fresh temporary directory per
 * test): round trips, the on-disk mode, every error reason with the file
 * named in its message, and load-or-create.
 */
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import * as NodeFileSystem from "@effect/platform-node/NodeFileSystem"
import { expect, layer } from "@effect/vitest"
import { Effect, FileSystem, Layer } from "effect"
import { describe, it } from "vitest"
import { bytesToHex } from "../src/core/keys.ts"
import { makeDeterministicRandom } from "../src/core/random.ts"
import { Crypto, layerWith } from "../src/adapters/crypto.ts"
import { nodeCrypto } from "../src/adapters/crypto-node.ts"
import {
  formatIdentityFile,
  generateIdentity,
  type Identity,
  type IdentityFileError,
  type IdentityFileErrorReason,
  identityFileHeader,
  loadOrCreateIdentity,
  parseIdentityFile,
  readIdentityFile,
  writeIdentityFile
} from "../src/adapters/identity.ts"

const services = Layer.mergeAll(NodeFileSystem.layer, Crypto.layerNode)

const tempDirectory = FileSystem.FileSystem.use((fs) => fs.makeTempDirectoryScoped())

const modeOf = (path: string): number => NodeFs.statSync(path).mode & 0o777

const hexOf = (identity: Identity) => ({ seed: bytesToHex(identity.seed), publicKey: bytesToHex(identity.publicKey) })

const expectError = (error: IdentityFileError, reason: IdentityFileErrorReason, path: string): void => {
  expect(error._tag).toBe("IdentityFileError")
  expect(error.reason).toBe(reason)
  expect(error.path).toBe(path)
  expect(error.message).toContain(path)
}

const keyFileText = (publicHex: string, secretHex: string, header = identityFileHeader): string =>
  `${header}\npublic ${publicHex}\nsecret ${secretHex}\n`

/** Writes raw text as a key file with mode 0600, bypassing writeIdentityFile. */
const plant = (path: string, text: string): void => {
  NodeFs.writeFileSync(path, text, { mode: 0o600 })
  NodeFs.chmodSync(path, 0o600)
}

layer(services)("identity key files", (it) => {
  it.effect("round trip: what is written reads back, in the documented layout, with mode 0600", () =>
    Effect.gen(function*() {
      const directory = yield* tempDirectory
      const path = NodePath.join(directory, "relay.key")
      const identity = yield* generateIdentity
      yield* writeIdentityFile(path, identity)
      expect(modeOf(path)).toBe(0o600)
      const text = NodeFs.readFileSync(path, "utf8")
      expect(text).toBe(
        "# offset-relay identity (Ed25519). Keep this file secret.\n" +
          "offset-relay-identity v1\n" +
          `public ${bytesToHex(identity.publicKey)}\n` +
          `secret ${bytesToHex(identity.seed)}\n`
      )
      const read = yield* readIdentityFile(path)
      expect(hexOf(read)).toEqual(hexOf(identity))
      // No temporary copy of the secret is left next to the file.
      expect(NodeFs.readdirSync(directory)).toEqual(["relay.key"])
    }))

  it.effect("creates missing parent directories, 0700", () =>
    Effect.gen(function*() {
      const directory = yield* tempDirectory
      const path = NodePath.join(directory, "a", "b", "id.key")
      yield* writeIdentityFile(path, yield* generateIdentity)
      expect(modeOf(NodePath.join(directory, "a"))).toBe(0o700)
      expect(modeOf(NodePath.join(directory, "a", "b"))).toBe(0o700)
      expect(modeOf(path)).toBe(0o600)
    }))

  it.effect("Exists: refuses to overwrite unless asked; the old file stays intact", () =>
    Effect.gen(function*() {
      const directory = yield* tempDirectory
      const path = NodePath.join(directory, "id.key")
      const first = yield* generateIdentity
      const second = yield* generateIdentity
      yield* writeIdentityFile(path, first)
      const error = yield* Effect.flip(writeIdentityFile(path, second))
      expectError(error, "Exists", path)
      expect(hexOf(yield* readIdentityFile(path))).toEqual(hexOf(first))
      expect(NodeFs.readdirSync(directory)).toEqual(["id.key"])

      yield* writeIdentityFile(path, second, { overwrite: true })
      expect(hexOf(yield* readIdentityFile(path))).toEqual(hexOf(second))
      expect(modeOf(path)).toBe(0o600)
      expect(NodeFs.readdirSync(directory)).toEqual(["id.key"])
    }))

  it.effect("Unwritable: a parent path that is a file", () =>
    Effect.gen(function*() {
      const directory = yield* tempDirectory
      const blocker = NodePath.join(directory, "not-a-directory")
      NodeFs.writeFileSync(blocker, "x")
      const path = NodePath.join(blocker, "id.key")
      const error = yield* Effect.flip(writeIdentityFile(path, yield* generateIdentity))
      expectError(error, "Unwritable", path)
    }))

  it.effect("NotFound names the file and says how to create one", () =>
    Effect.gen(function*() {
      const directory = yield* tempDirectory
      const path = NodePath.join(directory, "missing.key")
      const error = yield* Effect.flip(readIdentityFile(path))
      expectError(error, "NotFound", path)
      expect(error.message).toContain("keygen")
    }))

  it.effect("Unreadable: a directory where the file should be", () =>
    Effect.gen(function*() {
      const directory = yield* tempDirectory
      const path = NodePath.join(directory, "dir.key")
      NodeFs.mkdirSync(path, { mode: 0o700 })
      const error = yield* Effect.flip(readIdentityFile(path))
      expectError(error, "Unreadable", path)
    }))

  it.effect("TooOpen: any group or other permission bit is refused, with the chmod to run", () =>
    Effect.gen(function*() {
      const directory = yield* tempDirectory
      const path = NodePath.join(directory, "open.key")
      yield* writeIdentityFile(path, yield* generateIdentity)
      for (const mode of [0o644, 0o640, 0o604, 0o620, 0o602, 0o610, 0o601, 0o666]) {
        NodeFs.chmodSync(path, mode)
        const error = yield* Effect.flip(readIdentityFile(path))
        expectError(error, "TooOpen", path)
        expect(error.message).toContain(`mode 0${mode.toString(8)}`)
        expect(error.message).toContain(`chmod 600 ${path}`)
      }
      // 0400 (read-only for the owner) is fine.
      NodeFs.chmodSync(path, 0o400)
      yield* readIdentityFile(path)
    }))

  it.effect("Malformed: each kind of bad text names the file", () =>
    Effect.gen(function*() {
      const directory = yield* tempDirectory
      const identity = yield* generateIdentity
      const publicHex = bytesToHex(identity.publicKey)
      const secretHex = bytesToHex(identity.seed)
      const cases: ReadonlyArray<readonly [string, string, string]> = [
        ["empty", "", "empty"],
        ["only comments", "# nothing here\n\n", "empty"],
        ["wrong header", keyFileText(publicHex, secretHex, "ssh-ed25519 v1"), "does not start with"],
        ["future version", keyFileText(publicHex, secretHex, "offset-relay-identity v2"), "\"v2\""],
        ["unknown field", `${keyFileText(publicHex, secretHex)}extra ${publicHex}\n`, "unexpected line 4"],
        ["field without value", `${identityFileHeader}\npublic\nsecret ${secretHex}\n`, "unexpected line 2"],
        ["duplicate field", `${keyFileText(publicHex, secretHex)}secret ${secretHex}\n`, "second \"secret\""],
        ["missing secret", `${identityFileHeader}\npublic ${publicHex}\n`, "no \"secret"],
        ["missing public", `${identityFileHeader}\nsecret ${secretHex}\n`, "no \"public"],
        ["non-hex", keyFileText(publicHex, `${secretHex.slice(0, 63)}g`), "non-hex"]
      ]
      for (const [name, text, detail] of cases) {
        const path = NodePath.join(directory, `${name.replaceAll(" ", "-")}.key`)
        plant(path, text)
        const error = yield* Effect.flip(readIdentityFile(path))
        expectError(error, "Malformed", path)
        expect(error.message, name).toContain(detail)
      }
    }))

  it.effect("Malformed: a huge file is refused without being parsed", () =>
    Effect.gen(function*() {
      const directory = yield* tempDirectory
      const path = NodePath.join(directory, "huge.key")
      plant(path, "#".repeat(100_000))
      const error = yield* Effect.flip(readIdentityFile(path))
      expectError(error, "Malformed", path)
      expect(error.message).toContain("too large")
    }))

  it.effect("WrongSize: a key of the wrong length says how long it is and should be", () =>
    Effect.gen(function*() {
      const directory = yield* tempDirectory
      const identity = yield* generateIdentity
      const publicHex = bytesToHex(identity.publicKey)
      const secretHex = bytesToHex(identity.seed)
      const cases = [
        ["short-secret", keyFileText(publicHex, secretHex.slice(0, 62)), "62 hex digits"],
        ["long-public", keyFileText(`${publicHex}00`, secretHex), "66 hex digits"],
        ["odd-secret", keyFileText(publicHex, secretHex.slice(0, 63)), "63 hex digits"]
      ] as const
      for (const [name, text, detail] of cases) {
        const path = NodePath.join(directory, `${name}.key`)
        plant(path, text)
        const error = yield* Effect.flip(readIdentityFile(path))
        expectError(error, "WrongSize", path)
        expect(error.message).toContain(detail)
      }
    }))

  it.effect("KeyMismatch: a public key that is not the seed's", () =>
    Effect.gen(function*() {
      const directory = yield* tempDirectory
      const path = NodePath.join(directory, "spliced.key")
      const mine = yield* generateIdentity
      const theirs = yield* generateIdentity
      plant(path, keyFileText(bytesToHex(theirs.publicKey), bytesToHex(mine.seed)))
      const error = yield* Effect.flip(readIdentityFile(path))
      expectError(error, "KeyMismatch", path)
      expect(error.message).toContain(bytesToHex(mine.publicKey))
    }))

  it.effect("reads hand-written variants: CRLF, comments, reordered fields, uppercase hex", () =>
    Effect.gen(function*() {
      const directory = yield* tempDirectory
      const path = NodePath.join(directory, "hand.key")
      const identity = yield* generateIdentity
      plant(
        path,
        [
          "# written by hand",
          "",
          `  ${identityFileHeader}  `,
          "# the secret first",
          `secret ${bytesToHex(identity.seed).toUpperCase()}`,
          `public\t${bytesToHex(identity.publicKey)}`,
          ""
        ].join("\r\n")
      )
      expect(hexOf(yield* readIdentityFile(path))).toEqual(hexOf(identity))
    }))

  it.effect("loadOrCreateIdentity creates the file once and reuses it afterwards", () =>
    Effect.gen(function*() {
      const directory = yield* tempDirectory
      const path = NodePath.join(directory, "state", "relay.key")
      const created = yield* loadOrCreateIdentity(path)
      expect(modeOf(path)).toBe(0o600)
      const contents = NodeFs.readFileSync(path, "utf8")
      const reused = yield* loadOrCreateIdentity(path)
      expect(hexOf(reused)).toEqual(hexOf(created))
      expect(NodeFs.readFileSync(path, "utf8")).toBe(contents)
    }))

  it.effect("loadOrCreateIdentity never replaces a damaged or too-open file", () =>
    Effect.gen(function*() {
      const directory = yield* tempDirectory
      const damaged = NodePath.join(directory, "damaged.key")
      plant(damaged, "garbage\n")
      expectError(yield* Effect.flip(loadOrCreateIdentity(damaged)), "Malformed", damaged)
      expect(NodeFs.readFileSync(damaged, "utf8")).toBe("garbage\n")

      const open = NodePath.join(directory, "open.key")
      yield* writeIdentityFile(open, yield* generateIdentity)
      const before = NodeFs.readFileSync(open, "utf8")
      NodeFs.chmodSync(open, 0o644)
      expectError(yield* Effect.flip(loadOrCreateIdentity(open)), "TooOpen", open)
      expect(NodeFs.readFileSync(open, "utf8")).toBe(before)
    }))
})

describe("identity without a filesystem", () => {
  it("generateIdentity is replayable with a deterministic random source", async () => {
    const generate = () =>
      Effect.runPromise(generateIdentity.pipe(Effect.provide(layerWith(nodeCrypto, makeDeterministicRandom(5)))))
    const a = await generate()
    const b = await generate()
    expect(hexOf(a)).toEqual(hexOf(b))
    expect(bytesToHex(a.publicKey)).toBe(bytesToHex(nodeCrypto.ed25519PublicKey(a.seed)))
  })

  it("parseIdentityFile reads what formatIdentityFile writes", () => {
    const seed = makeDeterministicRandom(9)(32)
    const identity = { seed, publicKey: nodeCrypto.ed25519PublicKey(seed) }
    const parsed = parseIdentityFile(formatIdentityFile(identity))
    expect(parsed._tag).toBe("ParsedIdentityFile")
    if (parsed._tag === "ParsedIdentityFile") expect(hexOf(parsed)).toEqual(hexOf(identity))
  })
})
