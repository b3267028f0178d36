@0x882a12895e0a360a;
# Fixed-size byte arrays and the key types built on them.
# Layouts match Offset's components/proto/src/schema/common.capnp: word i of a
# BufferN holds bytes [8i, 8i+8) read big-endian.

struct Buffer128 {
  x0 @0 :UInt64;
  x1 @1 :UInt64;
}

struct Buffer256 {
  x0 @0 :UInt64;
  x1 @1 :UInt64;
  x2 @2 :UInt64;
  x3 @3 :UInt64;
}

struct Buffer512 {
  x0 @0 :UInt64;
  x1 @1 :UInt64;
  x2 @2 :UInt64;
  x3 @3 :UInt64;
  x4 @4 :UInt64;
  x5 @5 :UInt64;
  x6 @6 :UInt64;
  x7 @7 :UInt64;
}

# Ed25519 public key (32 bytes): names a client or a relay.
struct PublicKey {
  inner @0 :Buffer256;
}

# X25519 ephemeral public key (32 bytes).
struct DhPublicKey {
  inner @0 :Buffer256;
}

# HKDF salt (32 bytes).
struct Salt {
  inner @0 :Buffer256;
}

# Random nonce (16 bytes).
struct RandValue {
  inner @0 :Buffer128;
}

# Ed25519 signature (64 bytes).
struct Signature {
  inner @0 :Buffer512;
}
