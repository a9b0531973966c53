// Packets and their binary forms: on a byte stream (payload length-prefixed) and in a
// WebSocket binary message (payload runs to the end of the message).

import { ByteWriter, fromUtf8, fromUtf8Lossy, utf8 } from "./bytes.js";
import { Header } from "./header.js";
import { Code, StmpError, codeFromByte } from "./status.js";
import { getUvarint, putUvarint } from "./varint.js";

/** The default limit on method + header + payload of one packet: 16 MiB, as in stmp-go. */
export const DEFAULT_MAX_PACKET_SIZE = 16 << 20;

/** A numeric action id, or a method's full name (`package.Service.Method`). */
export type Action = number | string;

export type Packet =
  | { kind: "ping" }
  | { kind: "pong" }
  | { kind: "request"; mid: number; action: Action; header: Header; payload: Uint8Array }
  | { kind: "notify"; action: Action; header: Header; payload: Uint8Array }
  | { kind: "response"; mid: number; status: Code; header: Header; payload: Uint8Array }
  | { kind: "close"; status: Code; reason: string };

export type Kind = Packet["kind"];

const KINDS: readonly Kind[] = ["ping", "pong", "request", "notify", "response", "close"];

const FIN = 0x80;
const WP = 0x08;
const WH = 0x04;
const SA = 0x02;
const RESERVED = 0x01;

export function allowsHeader(kind: Kind): boolean {
  return kind === "request" || kind === "notify" || kind === "response";
}

export function allowsPayload(kind: Kind): boolean {
  return kind !== "ping" && kind !== "pong";
}

/** The fields of a packet, whatever its kind. */
export interface Parts {
  mid?: number;
  status?: Code;
  action?: Action;
  header?: Header;
  payload: Uint8Array;
}

const EMPTY: Uint8Array = new Uint8Array(0);

export function partsOf(packet: Packet): Parts {
  switch (packet.kind) {
    case "ping":
    case "pong":
      return { payload: EMPTY };
    case "request":
      return { mid: packet.mid, action: packet.action, header: packet.header, payload: packet.payload };
    case "notify":
      return { action: packet.action, header: packet.header, payload: packet.payload };
    case "response":
      return { mid: packet.mid, status: packet.status, header: packet.header, payload: packet.payload };
    case "close":
      return { status: packet.status, payload: utf8(packet.reason) };
  }
}

/** Writes the WebSocket binary-message form: the payload runs to the end. */
export function encodeMessage(packet: Packet): Uint8Array {
  return encodeBinary(packet, false);
}

/** Writes the byte-stream form (TCP, TLS, QUIC): the payload carries a varint length. */
export function encodeStream(packet: Packet): Uint8Array {
  return encodeBinary(packet, true);
}

function encodeBinary(packet: Packet, stream: boolean): Uint8Array {
  const parts = partsOf(packet);
  const header = parts.header && parts.header.size > 0 ? parts.header.toWire() : undefined;
  let head = FIN | (KINDS.indexOf(packet.kind) << 4);
  if (parts.payload.length > 0) head |= WP;
  if (header) head |= WH;
  if (typeof parts.action === "string") head |= SA;
  const out = new ByteWriter(16 + parts.payload.length + (header?.length ?? 0));
  out.byte(head);
  if (parts.mid !== undefined) out.byte(parts.mid & 0xff).byte(parts.mid >> 8);
  if (parts.status !== undefined) out.byte(parts.status);
  if (typeof parts.action === "string") {
    const name = utf8(parts.action);
    putUvarint(out, name.length);
    out.bytes(name);
  } else if (parts.action !== undefined) {
    putUvarint(out, parts.action);
  }
  if (header) {
    putUvarint(out, header.length);
    out.bytes(header);
  }
  if (parts.payload.length > 0) {
    if (stream) putUvarint(out, parts.payload.length);
    out.bytes(parts.payload);
  }
  return out.finish();
}

/** Thrown inside the scanner when the bytes end before the packet does. */
class Incomplete {}

/** Reads fields off a byte array, charging announced lengths against a size budget. */
class Cursor {
  position = 0;
  private budget: number;

  constructor(
    private readonly src: Uint8Array,
    private readonly maxSize: number,
  ) {
    this.budget = maxSize;
  }

  u8(): number {
    if (this.position >= this.src.length) throw new Incomplete();
    return this.src[this.position++]!;
  }

  uvarint(what: string): number {
    const got = getUvarint(this.src, this.position);
    if (got === undefined) throw new Incomplete();
    if (got === "overflow") throw StmpError.protocol(`${what} varint is longer than 64 bits`);
    this.position += got.length;
    return got.value;
  }

  charge(what: string, length: number): void {
    if (length > this.budget) {
      throw StmpError.tooLarge(
        `${what} of ${length} bytes makes the packet larger than the limit of ${this.maxSize} bytes`,
      );
    }
    this.budget -= length;
  }

  /** A length-prefixed field, its length checked against the budget before it is awaited. */
  prefixed(what: string): Uint8Array {
    const length = this.uvarint(`${what} length`);
    this.charge(what, length);
    return this.take(length);
  }

  take(length: number): Uint8Array {
    if (this.src.length - this.position < length) throw new Incomplete();
    const slice = this.src.subarray(this.position, this.position + length);
    this.position += length;
    return slice;
  }

  rest(): Uint8Array {
    return this.take(this.src.length - this.position);
  }
}

function parseHead(head: number): Kind {
  const bad = (why: string) =>
    StmpError.protocol(`invalid packet head 0x${head.toString(16).padStart(2, "0")}: ${why}`);
  if ((head & FIN) === 0) throw bad("FIN bit is not set");
  if ((head & RESERVED) !== 0) throw bad("reserved bit is set");
  const kind = KINDS[(head >> 4) & 0x07];
  if (!kind) throw bad("unknown kind");
  if ((head & WP) !== 0 && !allowsPayload(kind)) throw bad(`${kind} cannot carry a payload`);
  if ((head & WH) !== 0 && !allowsHeader(kind)) throw bad(`${kind} cannot carry a header`);
  if ((head & SA) !== 0 && kind !== "request" && kind !== "notify") {
    throw bad(`${kind} cannot carry a method name`);
  }
  return kind;
}

function statusFrom(byte: number): Code {
  const code = codeFromByte(byte);
  if (code === undefined) throw StmpError.protocol(`unknown status code 0x${byte.toString(16)}`);
  return code;
}

function scan(src: Uint8Array, stream: boolean, maxSize: number): { packet: Packet; length: number } {
  const cursor = new Cursor(src, maxSize);
  const head = cursor.u8();
  const kind = parseHead(head);
  let mid = 0;
  if (kind === "request" || kind === "response") mid = cursor.u8() | (cursor.u8() << 8);
  const statusByte = kind === "response" || kind === "close" ? cursor.u8() : 0;
  let action: Action = 0;
  if (kind === "request" || kind === "notify") {
    if ((head & SA) !== 0) {
      const name = cursor.prefixed("method name");
      try {
        action = fromUtf8(name);
      } catch {
        throw StmpError.protocol("method name is not valid UTF-8");
      }
    } else {
      action = cursor.uvarint("action");
    }
  }
  const headerBytes = (head & WH) !== 0 ? cursor.prefixed("header") : undefined;
  let payload: Uint8Array = EMPTY;
  if ((head & WP) !== 0) {
    if (stream) {
      payload = cursor.prefixed("payload");
    } else {
      cursor.charge("payload", src.length - cursor.position);
      payload = cursor.rest();
    }
  }
  if (!stream && cursor.position < src.length) {
    throw StmpError.protocol(`${src.length - cursor.position} trailing bytes after the ${kind} packet`);
  }
  const header = headerBytes ? Header.decode(headerBytes) : new Header();
  let packet: Packet;
  switch (kind) {
    case "ping":
    case "pong":
      packet = { kind };
      break;
    case "request":
      packet = { kind, mid, action, header, payload };
      break;
    case "notify":
      packet = { kind, action, header, payload };
      break;
    case "response":
      packet = { kind, mid, status: statusFrom(statusByte), header, payload };
      break;
    case "close":
      packet = { kind, status: statusFrom(statusByte), reason: fromUtf8Lossy(payload) };
      break;
  }
  return { packet, length: cursor.position };
}

/**
 * Decodes one complete WebSocket binary message. `maxSize` limits method + header + payload.
 * Malformed input throws a ProtocolError, oversized input a RequestEntityTooLarge.
 */
export function decodeMessage(message: Uint8Array, maxSize = DEFAULT_MAX_PACKET_SIZE): Packet {
  let scanned: { packet: Packet; length: number };
  try {
    scanned = scan(message, false, maxSize);
  } catch (error) {
    if (error instanceof Incomplete) throw StmpError.protocol("truncated packet");
    throw error;
  }
  return scanned.packet;
}

/**
 * Decodes the packet at the start of a byte-stream buffer: the packet and how many bytes it
 * took, or `undefined` while it is incomplete. The size limit is checked as soon as a length
 * is announced, before the bytes behind it arrive.
 */
export function decodeStream(
  src: Uint8Array,
  maxSize = DEFAULT_MAX_PACKET_SIZE,
): { packet: Packet; length: number } | undefined {
  try {
    return scan(src, true, maxSize);
  } catch (error) {
    if (error instanceof Incomplete) return undefined;
    throw error;
  }
}
