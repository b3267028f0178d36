@0xe0fc7bf7caba6ae5;
# Secure channel handshake and transport messages
# (Offset's components/proto/src/schema/dh.capnp).

using import "common.capnp".PublicKey;
using import "common.capnp".DhPublicKey;
using import "common.capnp".Salt;
using import "common.capnp".Signature;
using import "common.capnp".RandValue;

# First handshake message each way.
struct ExchangeRandNonce {
  randNonce @0 :RandValue;
  srcPublicKey @1 :PublicKey;
  # The identity key the sender expects the other side to have, if any.
  optDestPublicKey :union {
    empty @2 :Void;
    publicKey @3 :PublicKey;
  }
}

# Second handshake message each way; signature covers dhPublicKey || randNonce || keySalt.
struct ExchangeDh {
  dhPublicKey @0 :DhPublicKey;
  randNonce @1 :RandValue;
  keySalt @2 :Salt;
  signature @3 :Signature;
}

# Periodic rekeying, sent inside the encrypted channel.
struct Rekey {
  dhPublicKey @0 :DhPublicKey;
  keySalt @1 :Salt;
}

struct ChannelContent {
  union {
    rekey @0 :Rekey;
    user @1 :Data;
  }
}

# The plaintext of every encrypted frame.
struct ChannelMessage {
  randPadding @0 :Data;
  content @1 :ChannelContent;
}
