/**
 * The one place a `switch` over a tagged union ends: TypeScript proves the
 * value cannot exist, so reaching this at run time is a bug (a case added
 * to a union and forgotten in a handler), made loud.
 */
export const absurd = (value: never): never => {
  throw new Error(`unhandled case: ${JSON.stringify(value)}`)
}
