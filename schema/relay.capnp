@0x83c8d603d9646475;
# Relay messages (Offset's components/proto/src/schema/relay.capnp).

using import "common.capnp".PublicKey;

# Client -> relay, the first message on a secure channel: what the connection is for.
struct InitConnection {
  union {
    listen @0 :Void;
    accept @1 :PublicKey;
    connect @2 :PublicKey;
  }
}

# Client -> relay on a listen channel: close that connector's pending connection.
struct RejectConnection {
  publicKey @0 :PublicKey;
}

# Relay -> client on a listen channel: a connector with this key is waiting.
struct IncomingConnection {
  publicKey @0 :PublicKey;
}
