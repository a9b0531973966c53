// stmp-client: the STMP 1.0 client for browsers and Node.

export { Client, type ClientEvents, type ClientOptions, type WebSocketConstructor, type WebSocketLike } from "./client.js";
export type { CallContext, CallOptions, Caller, Handler, Listener, Method, Registrar } from "./method.js";
export { Connection, type ConnectionOptions, type Transport } from "./connection.js";
export { type Codec, jsonCodec, protobufCodec } from "./codec.js";
export { type BackoffOptions, fullJitterDelay } from "./backoff.js";
export { type Agreement, type Offer, type PacketFormat, agree, handshakeUrl } from "./handshake.js";
export { Code, StmpError, codeName } from "./wire/status.js";
export { Header, type HeaderInit } from "./wire/header.js";
export { actionId, murmur3X86_32, optionActionId } from "./wire/action.js";
export { negotiate } from "./wire/negotiate.js";
export * as wire from "./wire/index.js";
export {
  POSITION_METHOD,
  Positions,
  type Recovery,
  type StreamPosition,
  parsePosition,
  positionOf,
  positionToValue,
} from "./history.js";
