/**
 * Typed values of every Offset protocol message and their packed Cap'n Proto
 * codecs (PROTOCOL.md). Layouts follow schema/*.capnp; fixed-size byte fields
 * (keys, nonces, salts, signatures) are Uint8Arrays of their exact length.
 *
 * Decoders never throw: bad bytes give a DecodeError value. Data fields of a
 * decoded message may be views into a buffer the decoder allocated (never
 * into the caller's input), so they stay valid after the input is reused.
 */
export type Bytes = Uint8Array

export type InitConnection =
  | { readonly _tag: "Listen" }
  | { readonly _tag: "Accept"; readonly publicKey: Bytes }
  | { readonly _tag: "Connect"; readonly publicKey: Bytes }

export interface RejectConnection {
  readonly publicKey: Bytes
}

export interface IncomingConnection {
  readonly publicKey: Bytes
}

export type KaMessage =
  | { readonly _tag: "KeepAlive" }
  | { readonly _tag: "Message"; readonly data: Bytes }

export interface ExchangeRandNonce {
  /** 16 bytes. */
  readonly randNonce: Bytes
  /** 32 bytes: the sender's identity key. */
  readonly srcPublicKey: Bytes
  /** 32 bytes, or undefined for the `empty` member. */
  readonly optDestPublicKey: Bytes | undefined
}

export interface ExchangeDh {
  /** 32 bytes. */
  readonly dhPublicKey: Bytes
  /** 16 bytes: the nonce the OTHER side sent. */
  readonly randNonce: Bytes
  /** 32 bytes. */
  readonly keySalt: Bytes
  /** 64 bytes. */
  readonly signature: Bytes
}

export interface Rekey {
  /** 32 bytes. */
  readonly dhPublicKey: Bytes
  /** 32 bytes. */
  readonly keySalt: Bytes
}

export type ChannelContent =
  | { readonly _tag: "Rekey"; readonly rekey: Rekey }
  | { readonly _tag: "User"; readonly data: Bytes }

export interface ChannelMessage {
  readonly randPadding: Bytes
  readonly content: ChannelContent
}

/** Why bytes could not be decoded as a message. */
export interface DecodeError {
  readonly _tag: "DecodeError"
  readonly reason:
    | "Truncated" // input ends inside a packed word, the segment table or a segment
    | "TooLarge" // unpacked size or segment count over the decoder's bound
    | "BadSegmentTable"
    | "BadPointer" // wrong pointer kind, or pointing outside its segment
    | "TraversalLimit" // too many words read: pointer loops, amplification
    | "UnknownUnionMember"
    | "BadLength" // a fixed-size field or list of the wrong size
  readonly message: string
}

export type DecodeResult<A> =
  | { readonly _tag: "Ok"; readonly value: A }
  | { readonly _tag: "Err"; readonly error: DecodeError }
