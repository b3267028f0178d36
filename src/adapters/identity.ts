/**
 * Ed25519 identities and the key file that keeps one on disk.
 *
 * Key file format, version 1 (UTF-8 text):
 *
 *     # offset-relay identity (Ed25519). Keep this file secret.
 *     offset-relay-identity v1
 *     public <64 hex digits: the 32-byte public key>
 *     secret <64 hex digits: the 32-byte secret seed (RFC 8032)>
 *
 * - Blank lines and lines starting with "#" are ignored anywhere; whitespace
 *   around a line is ignored; LF or CRLF line ends.
 * - The first other line is the header. A later format gets a new version
 *   ("v2"), and a reader refuses versions it does not know rather than guess.
 * - `public` and `secret` appear exactly once each, in any order, hex in
 *   either case. Writers emit the exact layout above, lowercase.
 * - The public key is redundant on purpose: a person can read the identity
 *   with `cat`, and the reader checks it against the key derived from the
 *   seed, which catches hand edits and files spliced from two identities.
 * - Like ssh private keys, the file must not be accessible to group or others
 *   (no bits of 0o077 set); writers create it 0600, atomically (temporary
 *   file, fsync, then link or rename into place), in a directory created 0700
 *   when missing.
 *
 * Every failure is an IdentityFileError whose message names the file and
 * says what to do about it.
 */
import * as NodePath from "node:path"
import * as Data from "effect/Data"
import * as Effect from "effect/Effect"
import * as FileSystem from "effect/FileSystem"
import type { PlatformError } from "effect/PlatformError"
import { bytesToHex, hexToBytes, type Identity } from "../core/keys.ts"
import { Crypto } from "./crypto.ts"

export type { Identity } from "../core/keys.ts"

/** Why an identity file could not be read or written. */
export type IdentityFileErrorReason =
  | "NotFound" // no file at the path
  | "Unreadable" // exists but cannot be read (permissions, a directory, I/O error)
  | "Malformed" // not in the key file format
  | "WrongSize" // a key field has the wrong number of hex digits
  | "TooOpen" // group or others have access: refused, like ssh
  | "KeyMismatch" // the public key is not the seed's
  | "Exists" // refusing to overwrite an existing file
  | "Unwritable" // the file or its directory could not be created

/** A key file problem, with a message that names the file and says what to do. */
export class IdentityFileError extends Data.TaggedError("IdentityFileError")<{
  readonly path: string
  readonly reason: IdentityFileErrorReason
  readonly message: string
  readonly cause?: unknown
}> {}

/** A path as one shell word, so a suggested command can be pasted as it is. */
export const shellQuote = (text: string): string =>
  /^[\w@%+=:,./-]+$/.test(text) ? text : `'${text.replace(/'/g, `'\\''`)}'`

/** Version line of the current key file format. */
export const identityFileHeader = "offset-relay-identity v1"

const headerPrefix = "offset-relay-identity "
const keyHexLength = 64
// Real key files are ~200 bytes; refusing big files keeps a wrong path (a log,
// a disk image) from being read into memory whole.
const maxFileSize = 64 * 1024

/** The key file text of an identity (format in the module header). */
export const formatIdentityFile = (identity: Identity): string =>
  [
    "# offset-relay identity (Ed25519). Keep this file secret.",
    identityFileHeader,
    `public ${bytesToHex(identity.publicKey)}`,
    `secret ${bytesToHex(identity.seed)}`,
    ""
  ].join("\n")

/** Why key file text did not parse; `detail` completes "the file ...". */
export interface IdentityFileProblem {
  readonly _tag: "IdentityFileProblem"
  readonly reason: "Malformed" | "WrongSize"
  readonly detail: string
}

/** The parsed fields of a key file, before the public key is checked against the seed. */
export interface ParsedIdentityFile {
  readonly _tag: "ParsedIdentityFile"
  readonly seed: Uint8Array
  readonly publicKey: Uint8Array
}

const problem = (reason: IdentityFileProblem["reason"], detail: string): IdentityFileProblem => ({
  _tag: "IdentityFileProblem",
  reason,
  detail
})

/**
 * Parses key file text (format in the module header). Pure; does NOT check
 * that the public key belongs to the seed (that needs the crypto service).
 */
export const parseIdentityFile = (text: string): ParsedIdentityFile | IdentityFileProblem => {
  const lines = text
    .split("\n")
    .map((line, index) => ({ number: index + 1, text: line.trim() }))
    .filter((line) => line.text !== "" && !line.text.startsWith("#"))
  const [header, ...fields] = lines
  if (header === undefined) return problem("Malformed", "is empty")
  if (header.text !== identityFileHeader) {
    return header.text.startsWith(headerPrefix)
      ? problem(
        "Malformed",
        `has format version "${header.text.slice(headerPrefix.length)}" (line ${header.number}), but this program reads only v1; use a newer offset-relay`
      )
      : problem("Malformed", `does not start with "${identityFileHeader}" (line ${header.number})`)
  }
  const values = new Map<"public" | "secret", Uint8Array>()
  for (const line of fields) {
    const match = /^(\S+)\s+(\S+)$/.exec(line.text)
    const name = match?.[1]
    const value = match?.[2]
    if (name === undefined || value === undefined || (name !== "public" && name !== "secret")) {
      return problem("Malformed", `has an unexpected line ${line.number}; expected "public <hex>" or "secret <hex>"`)
    }
    if (values.has(name)) return problem("Malformed", `has a second "${name}" line (line ${line.number})`)
    const bytes = hexToBytes(value)
    if (bytes === undefined && !/^[0-9a-fA-F]*$/.test(value)) {
      return problem("Malformed", `has a non-hex character in the ${name} key (line ${line.number})`)
    }
    if (value.length !== keyHexLength) {
      return problem(
        "WrongSize",
        `has a ${name} key of ${value.length} hex digits (line ${line.number}); it must be ${keyHexLength} (32 bytes)`
      )
    }
    // 64 hex digits always decode: hexToBytes only fails on odd lengths and non-hex characters.
    values.set(name, bytes!)
  }
  const seed = values.get("secret")
  const publicKey = values.get("public")
  if (seed === undefined) return problem("Malformed", `has no "secret <hex>" line`)
  if (publicKey === undefined) return problem("Malformed", `has no "public <hex>" line`)
  return { _tag: "ParsedIdentityFile", seed, publicKey }
}

// ---------------------------------------------------------------------------
// Effects

const systemTag = (error: PlatformError): string | undefined =>
  error.reason._tag === "BadArgument" ? undefined : error.reason._tag

const formatMode = (mode: number): string => (mode & 0o7777).toString(8).padStart(4, "0")

/** A new random identity from the Crypto service's secure randomness. */
export const generateIdentity: Effect.Effect<Identity, never, Crypto> = Effect.gen(function*() {
  const crypto = yield* Crypto
  const seed = crypto.randomBytes(32)
  return { seed, publicKey: crypto.ed25519PublicKey(seed) }
})

/**
 * Reads and checks a key file: format, key sizes, permissions (no access
 * for group or others) and that the public key is the seed's.
 */
export const readIdentityFile = (
  path: string
): Effect.Effect<Identity, IdentityFileError, FileSystem.FileSystem | Crypto> =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const crypto = yield* Crypto
    const fail = (reason: IdentityFileErrorReason, message: string, cause?: unknown) =>
      Effect.fail(new IdentityFileError({ path, reason, message, cause }))

    const info = yield* fs.stat(path).pipe(
      Effect.catch((error) =>
        systemTag(error) === "NotFound"
          ? fail(
            "NotFound",
            `identity file ${path} does not exist; create it with: offset-relay keygen --out ${shellQuote(path)}`,
            error
          )
          : fail("Unreadable", `cannot read identity file ${path} (${error.message}); check the path and its permissions`, error)
      )
    )
    if (info.type !== "File") {
      return yield* fail(
        "Unreadable",
        `identity file ${path} is a ${info.type.toLowerCase()}, not a regular file; check the path`
      )
    }
    // Windows has no POSIX mode bits to check: its ACLs are not visible here.
    if (process.platform !== "win32" && (info.mode & 0o077) !== 0) {
      return yield* fail(
        "TooOpen",
        `identity file ${path} is accessible by group or others (mode ${formatMode(info.mode)}); run chmod 600 ${path}`
      )
    }
    if (info.size > BigInt(maxFileSize)) {
      return yield* fail(
        "Malformed",
        `identity file ${path} is ${info.size} bytes, far too large for an identity file; check the path`
      )
    }
    const text = yield* fs.readFileString(path).pipe(
      Effect.catch((error) =>
        fail("Unreadable", `cannot read identity file ${path} (${error.message}); check its permissions`, error)
      )
    )
    const parsed = parseIdentityFile(text)
    if (parsed._tag === "IdentityFileProblem") {
      return yield* fail(
        parsed.reason,
        `identity file ${path} ${parsed.detail}. It is not a valid offset-relay identity file: restore it from a backup, or move it away and generate a new identity (peers will see a new key)`
      )
    }
    const derived = crypto.ed25519PublicKey(parsed.seed)
    if (bytesToHex(derived) !== bytesToHex(parsed.publicKey)) {
      return yield* fail(
        "KeyMismatch",
        `identity file ${path} has a public key that does not belong to its secret seed (the seed's key is ${bytesToHex(derived)}); the file was edited or damaged: restore it from a backup, or move it away and generate a new identity`
      )
    }
    return { seed: parsed.seed, publicKey: parsed.publicKey }
  })

/**
 * Writes a key file with mode 0600, creating missing parent directories
 * (0700). Atomic: the file appears complete or not at all. Refuses to
 * replace an existing file unless `overwrite` is set.
 */
export const writeIdentityFile = (
  path: string,
  identity: Identity,
  options?: { readonly overwrite?: boolean }
): Effect.Effect<void, IdentityFileError, FileSystem.FileSystem> =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const overwrite = options?.overwrite === true
    const unwritable = (error: PlatformError) =>
      new IdentityFileError({
        path,
        reason: "Unwritable",
        message:
          `cannot write identity file ${path} (${error.message}); check that its directory can be created and that this user may write there`,
        cause: error
      })
    const exists = () =>
      new IdentityFileError({
        path,
        reason: "Exists",
        message:
          `identity file ${path} already exists; refusing to overwrite it, since peers may know its key. Move it away first if you really want a new identity`
      })

    const directory = NodePath.dirname(path)
    yield* fs.makeDirectory(directory, { recursive: true, mode: 0o700 }).pipe(Effect.mapError(unwritable))
    // Checked early only for a clear error; the link below is what enforces it.
    if (!overwrite && (yield* fs.exists(path).pipe(Effect.mapError(unwritable)))) return yield* Effect.fail(exists())

    // Same directory as the target, so rename/link stay on one filesystem.
    const temporary = NodePath.join(directory, `.${NodePath.basename(path)}.${globalThis.crypto.randomUUID()}.tmp`)
    const install = Effect.gen(function*() {
      yield* Effect.scoped(
        Effect.gen(function*() {
          // "wx": never follow or reuse something already at the temporary path.
          const file = yield* fs.open(temporary, { flag: "wx", mode: 0o600 })
          yield* file.writeAll(new TextEncoder().encode(formatIdentityFile(identity)))
          yield* file.sync
        })
      ).pipe(Effect.mapError(unwritable))
      // The mode given to open is reduced by the umask; make it exactly 0600.
      yield* fs.chmod(temporary, 0o600).pipe(Effect.mapError(unwritable))
      if (overwrite) {
        yield* fs.rename(temporary, path).pipe(Effect.mapError(unwritable))
        return
      }
      // link fails if the target exists, so two writers cannot both win.
      yield* fs.link(temporary, path).pipe(
        Effect.catch((error) =>
          systemTag(error) === "AlreadyExists"
            ? Effect.fail(exists())
            // A filesystem without hard links: fall back to rename after one more check.
            : Effect.flatMap(fs.exists(path).pipe(Effect.mapError(unwritable)), (taken) =>
              taken ? Effect.fail(exists()) : fs.rename(temporary, path).pipe(Effect.mapError(unwritable)))
        )
      )
    })
    // Whatever happened, no temporary copy of the secret stays behind (after a
    // rename there is nothing left to remove, and the error is ignored).
    yield* install.pipe(Effect.ensuring(fs.remove(temporary).pipe(Effect.ignore)))
  })

/**
 * The identity in the key file at `path`, creating the file with a new
 * identity when there is none (a server's first start). Any other problem
 * with an existing file is an error: a damaged identity is never replaced.
 */
export const loadOrCreateIdentity = (
  path: string
): Effect.Effect<Identity, IdentityFileError, FileSystem.FileSystem | Crypto> =>
  readIdentityFile(path).pipe(
    Effect.catchIf(
      (error) => error.reason === "NotFound",
      () =>
        Effect.gen(function*() {
          const identity = yield* generateIdentity
          const written = yield* writeIdentityFile(path, identity).pipe(
            Effect.as(true),
            // Another process created it meanwhile: use theirs.
            Effect.catchIf((error) => error.reason === "Exists", () => Effect.succeed(false))
          )
          if (!written) return yield* readIdentityFile(path)
          yield* Effect.logInfo(`created a new identity in ${path}; public key ${bytesToHex(identity.publicKey)}`)
          return identity
        })
    )
  )
