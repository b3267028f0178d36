@0x82cf2c5f3552cbd8;
# Keepalive wrapper around every user message of a secure channel
# (Offset's components/proto/src/schema/keepalive.capnp).

struct KaMessage {
  union {
    keepAlive @0 :Void;
    message @1 :Data;
  }
}
