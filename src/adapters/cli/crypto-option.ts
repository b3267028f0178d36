/**
 * The --crypto flag, checked without loading a crypto implementation: a
 * command's `--help` and its usage errors stay fast, and only `--crypto node`
 * needs the implementations (to say why this runtime's node:crypto cannot
 * serve, rather than fail inside a connection later).
 */
import type { CryptoChoice } from "../crypto-service.ts"
import { type OptionSpec, UsageError } from "./options.ts"

// Every CryptoChoice, in the order --help and errors list them (the type
// makes a choice added there a compile error here until it is listed).
const CHOICES = { auto: true, node: true, noble: true } as const satisfies Record<CryptoChoice, true>
const CHOICE_NAMES = Object.keys(CHOICES) as ReadonlyArray<CryptoChoice>

/** The --crypto flag of every command that does crypto. */
export const cryptoOption: OptionSpec = {
  type: "string",
  default: "auto",
  value: "IMPL",
  help: "crypto implementation: node (node:crypto), noble (portable JavaScript) or auto (node where it has everything)"
}

/** Checks that a --crypto value names an implementation (whether this runtime can run it is `refuseUnavailableCrypto`). */
export const cryptoChoiceOf = (value: string): CryptoChoice => {
  if (!Object.hasOwn(CHOICES, value)) throw new UsageError(`--crypto must be one of ${CHOICE_NAMES.join(", ")}; got '${value}'`)
  return value as CryptoChoice
}

/** The usage error for a --crypto choice this runtime cannot run (Bun: no ChaCha20-Poly1305); undefined when it can. */
export const unavailableCryptoError = (
  choice: CryptoChoice,
  nodeCryptoProblem: () => string | undefined
): UsageError | undefined => {
  const problem = choice === "node" ? nodeCryptoProblem() : undefined
  return problem === undefined ? undefined : new UsageError(`--crypto node: ${problem}; use noble or auto`)
}
