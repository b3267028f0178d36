// Loads the browser bundle with no permissions at all (Deno, as a browser
// would: no file, network or environment access) and uses it: noble keys
// and signatures with randomness from crypto.getRandomValues, a frame, a
// Cap'n Proto message, a relay core. Prints one line; throws on a mismatch.
import * as OffsetRelay from "../dist/browser/offset-relay.js"

const { nobleCryptoService: crypto, encodeFrame, encodeInitConnection, decodeInitConnection, RelayCore } = OffsetRelay
const seed = crypto.randomBytes(32)
const publicKey = crypto.ed25519PublicKey(seed)
const message = new TextEncoder().encode("hello from the browser bundle")
if (!crypto.ed25519Verify(publicKey, message, crypto.ed25519Sign(seed, message))) throw new Error("signature did not verify")
const init = encodeInitConnection({ _tag: "Connect", publicKey })
const decoded = decodeInitConnection(init)
if (decoded._tag !== "Ok" || decoded.value._tag !== "Connect") throw new Error(`InitConnection did not round-trip: ${JSON.stringify(decoded)}`)
const frame = encodeFrame(init)
const core = new RelayCore.RelayCore(RelayCore.defaultRelayConfig)
console.log(`browser bundle: keys, signature, ${frame.length}-byte frame, relay core (${JSON.stringify(core.stats())}) ok`)
