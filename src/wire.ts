/**
 * `offset-relay/wire`: the Offset relay protocol's bytes. Frames (u64
 * length prefix), the version prefix, the packed Cap'n Proto messages with
 * Offset's layouts, the wire JSON of `offset-relay wire`, and the packed
 * Cap'n Proto primitives under them (`Capnp`). All pure.
 *
 *     import { encodeFrame, decodeInitConnection, decodeWire } from "offset-relay/wire"
 */
export * from "./core/frame.ts"
export * from "./core/messages.ts"
export * from "./core/version.ts"
export * from "./core/wire-json.ts"
export * as Capnp from "./core/capnp.ts"
