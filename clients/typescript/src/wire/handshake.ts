// The handshakes that open a connection: the client's, then the server's.
//
//   client:  "STMP"  (major<<4 | minor)  uvarint(len) header  uvarint(len) message
//   server:  "STMP"  status               uvarint(len) header  uvarint(len) message
//   server, text form (WebSocket):  "STMP<status hex>\nH<header>\nM<message>"
//
// On WebSocket the client's handshake rides on the upgrade URL's query instead (see
// `handshakeQuery`); the binary client form is here for completeness and the byte vectors.

import { ByteWriter, fromUtf8Lossy, utf8 } from "./bytes.js";
import { Header } from "./header.js";
import { Code, StmpError, codeFromByte } from "./status.js";
import { parseStatus, splitLines } from "./text.js";
import { getUvarint, putUvarint } from "./varint.js";

const MAGIC = [0x53, 0x54, 0x4d, 0x50]; // "STMP"

/** A protocol version; STMP 1.0 is the byte 0x10. */
export interface Version {
  major: number;
  minor: number;
}

export const V1_0: Version = { major: 1, minor: 0 };

export interface ClientHandshake {
  version: Version;
  header: Header;
  message: string;
}

export interface ServerHandshake {
  /** `Ok`, or why the connection is refused (the reason is in `message`). */
  status: Code;
  header: Header;
  message: string;
}

function encodeBinary(byte: number, header: Header, message: string): Uint8Array {
  const headerBytes = header.toWire();
  const messageBytes = utf8(message);
  const out = new ByteWriter(headerBytes.length + messageBytes.length + 16);
  for (const b of MAGIC) out.byte(b);
  out.byte(byte);
  putUvarint(out, headerBytes.length);
  out.bytes(headerBytes);
  putUvarint(out, messageBytes.length);
  out.bytes(messageBytes);
  return out.finish();
}

export function encodeClientHandshake(handshake: ClientHandshake): Uint8Array {
  const { major, minor } = handshake.version;
  return encodeBinary((major << 4) | (minor & 0x0f), handshake.header, handshake.message);
}

export function encodeServerHandshake(handshake: ServerHandshake): Uint8Array {
  return encodeBinary(handshake.status, handshake.header, handshake.message);
}

/** Writes the text form; the `H` and `M` lines are present only when not empty. */
export function encodeServerHandshakeText(handshake: ServerHandshake): string {
  let text = `STMP${handshake.status.toString(16).toUpperCase()}`;
  if (handshake.header.size > 0) text += `\nH${handshake.header.toWireString()}`;
  if (handshake.message !== "") text += `\nM${handshake.message}`;
  return text;
}

function badMagic(src: Uint8Array): StmpError {
  const shown = fromUtf8Lossy(src.subarray(0, 4));
  return StmpError.protocol(`handshake magic ${JSON.stringify(shown)} is not STMP`);
}

/** The parts of a binary handshake at the start of `src`, or `undefined` while incomplete. */
function scanBinary(
  src: Uint8Array,
  maxSize: number,
): { byte: number; header: Header; message: string; length: number } | undefined {
  for (let i = 0; i < Math.min(4, src.length); i++) {
    if (src[i] !== MAGIC[i]) throw badMagic(src);
  }
  if (src.length < 5) return undefined;
  const byte = src[4]!;
  let at = 5;
  let budget = maxSize;
  const field = (what: string): Uint8Array | undefined => {
    const length = getUvarint(src, at);
    if (length === undefined) return undefined;
    if (length === "overflow") throw StmpError.protocol(`${what} length varint is longer than 64 bits`);
    if (length.value > budget) {
      throw StmpError.tooLarge(`${what} of ${length.value} bytes is over the limit of ${maxSize} bytes`);
    }
    budget -= length.value;
    const start = at + length.length;
    if (src.length - start < length.value) return undefined;
    at = start + length.value;
    return src.subarray(start, at);
  };
  const header = field("handshake header");
  if (!header) return undefined;
  const message = field("handshake message");
  if (!message) return undefined;
  return { byte, header: Header.decode(header), message: fromUtf8Lossy(message), length: at };
}

function statusFromByte(byte: number): Code {
  const code = codeFromByte(byte);
  if (code === undefined) throw StmpError.protocol(`unknown handshake status 0x${byte.toString(16)}`);
  return code;
}

/** Decodes a client handshake at the start of a byte stream; `undefined` while incomplete. */
export function decodeClientHandshake(
  src: Uint8Array,
  maxSize: number,
): { handshake: ClientHandshake; length: number } | undefined {
  const scanned = scanBinary(src, maxSize);
  if (!scanned) return undefined;
  const version = { major: scanned.byte >> 4, minor: scanned.byte & 0x0f };
  return { handshake: { version, header: scanned.header, message: scanned.message }, length: scanned.length };
}

/** Decodes a server handshake at the start of a byte stream; `undefined` while incomplete. */
export function decodeServerHandshake(
  src: Uint8Array,
  maxSize: number,
): { handshake: ServerHandshake; length: number } | undefined {
  const scanned = scanBinary(src, maxSize);
  if (!scanned) return undefined;
  const handshake = { status: statusFromByte(scanned.byte), header: scanned.header, message: scanned.message };
  return { handshake, length: scanned.length };
}

/** Decodes a complete binary handshake message (WebSocket). */
export function decodeServerHandshakeMessage(message: Uint8Array, maxSize: number): ServerHandshake {
  const scanned = decodeServerHandshake(message, maxSize);
  if (!scanned) throw StmpError.protocol("truncated handshake");
  if (scanned.length !== message.length) throw StmpError.protocol("trailing bytes after the handshake");
  return scanned.handshake;
}

/** Decodes the text form `STMP<status hex>\nH<header>\nM<message>`. */
export function decodeServerHandshakeText(message: Uint8Array, maxSize: number): ServerHandshake {
  if (message.length > maxSize) {
    throw StmpError.tooLarge(`handshake of ${message.length} bytes is over the limit of ${maxSize} bytes`);
  }
  for (let i = 0; i < 4; i++) {
    if (message[i] !== MAGIC[i]) throw badMagic(message);
  }
  // The message line runs to the end like a text packet's payload does.
  const { first, header, payload } = splitLines(message.subarray(4), "handshake", 0x4d);
  return {
    status: parseStatus(fromUtf8Lossy(first)),
    header: header ? Header.decode(header) : new Header(),
    message: payload ? fromUtf8Lossy(payload) : "",
  };
}
