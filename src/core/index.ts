/**
 * `offset-relay/core`: the pure machines and rules, one namespace per
 * module. The machines (`Connection.Connection`, `SecureChannel.SecureChannel`,
 * `Keepalive.Keepalive`, `RelayCore.RelayCore`, `ListenFlow.ListenFlow`,
 * `ConnectGate.ConnectGate`, `StreamState.StreamState`) change in place: feed
 * them calls or events, then drain what they queued. The reconnect schedule
 * (`Backoff.stepReconnect`) stays a reducer: its rare steps are the
 * listener's published status, which is a value. No I/O, no clock, no
 * randomness, no Effect runtime: drive them with calls and ticks and hand
 * them random bytes (each module's header says how).
 *
 *     import { RelayCore, Keepalive } from "offset-relay/core"
 */
export * as AllowList from "./allow-list.ts"
export * as Backoff from "./backoff.ts"
export * as ConnectGate from "./connect-gate.ts"
export * as ConnectOutcome from "./connect-outcome.ts"
export * as Connection from "./connection.ts"
export type { CryptoPrimitives } from "./crypto.ts"
export * as Ed25519Rules from "./ed25519-rules.ts"
export * as Keepalive from "./keepalive.ts"
export * as Keys from "./keys.ts"
export * as ListenFlow from "./listen-flow.ts"
export * as Random from "./random.ts"
export * as RelayAddress from "./relay-address.ts"
export * as RelayCore from "./relay-core.ts"
export * as SecureChannel from "./secure-channel.ts"
export * as StreamState from "./stream-state.ts"
export * as TokenBucket from "./token-bucket.ts"
