// The STMP 1.0 wire format, sans IO: bytes to protocol values and back.

export * from "./packet.js";
export { decodeText, encodeText } from "./text.js";
export * from "./handshake.js";
export { Header, type HeaderInit } from "./header.js";
export { Code, StmpError, codeFromByte, codeName } from "./status.js";
export { actionId, murmur3X86_32, optionActionId } from "./action.js";
export { negotiate } from "./negotiate.js";
