// The text form of packets, for WebSocket text messages:
//
//   Request   Q<mid>:<action>   or  Q<mid>:M:<escaped method>
//   Notify    N<action>         or  NM:<escaped method>
//   Response  S<mid>:<status>
//   Close     C<status>
//   Ping I, Pong O; then "\nH<header>" and "\nP<payload to the end>" when present.
//
// Numbers are upper-case hex without leading zeros. The codec of a text connection is a text
// one (JSON), so payloads are UTF-8 and the whole message is a string.

import { fromUtf8, utf8 } from "./bytes.js";
import { Header, escape, unescape } from "./header.js";
import { type Action, type Kind, type Packet, DEFAULT_MAX_PACKET_SIZE, allowsHeader, allowsPayload, partsOf } from "./packet.js";
import { type Code, StmpError, codeFromByte } from "./status.js";

const LETTERS: Record<Kind, string> = {
  ping: "I",
  pong: "O",
  request: "Q",
  notify: "N",
  response: "S",
  close: "C",
};

const KIND_OF_LETTER = new Map(Object.entries(LETTERS).map(([kind, letter]) => [letter, kind as Kind]));

function hex(value: number): string {
  return value.toString(16).toUpperCase();
}

/** Writes the text form as bytes (what goes in a text message, UTF-8 encoded). */
export function encodeText(packet: Packet): Uint8Array {
  const parts = partsOf(packet);
  let first = LETTERS[packet.kind];
  if (parts.mid !== undefined) first += `${hex(parts.mid)}:`;
  if (parts.status !== undefined) first += hex(parts.status);
  if (typeof parts.action === "string") first += `M:${escape(parts.action)}`;
  else if (parts.action !== undefined) first += hex(parts.action);
  let text = first;
  if (parts.header && parts.header.size > 0) text += `\nH${parts.header.toWireString()}`;
  const head = utf8(text);
  if (parts.payload.length === 0) return head;
  const out = new Uint8Array(head.length + 2 + parts.payload.length);
  out.set(head);
  out[head.length] = 0x0a;
  out[head.length + 1] = 0x50; // 'P'
  out.set(parts.payload, head.length + 2);
  return out;
}

/** Decodes one complete text message (as bytes); `maxSize` limits the whole message. */
export function decodeText(message: Uint8Array, maxSize = DEFAULT_MAX_PACKET_SIZE): Packet {
  if (message.length > maxSize) {
    throw StmpError.tooLarge(`text packet of ${message.length} bytes is over the limit of ${maxSize} bytes`);
  }
  const { first, header: headerBytes, payload: payloadBytes } = splitLines(message, "packet");
  const firstLine = decodeUtf8(first, "text packet");
  const kind = KIND_OF_LETTER.get(firstLine.charAt(0));
  if (!kind) {
    if (firstLine === "") throw StmpError.protocol("empty text packet");
    throw StmpError.protocol(`unknown text packet kind ${JSON.stringify(firstLine.charAt(0))}`);
  }
  const fields = firstLine.slice(1);
  if (headerBytes && !allowsHeader(kind)) throw StmpError.protocol(`${kind} cannot carry a header`);
  if (payloadBytes && !allowsPayload(kind)) throw StmpError.protocol(`${kind} cannot carry a payload`);
  const header = headerBytes ? Header.decode(headerBytes) : new Header();
  const payload = payloadBytes ?? new Uint8Array(0);
  switch (kind) {
    case "ping":
    case "pong":
      if (fields !== "") throw StmpError.protocol(`unexpected fields after ${kind}`);
      return { kind };
    case "request": {
      const [mid, action] = splitOnce(fields, "request id");
      return { kind, mid: parseMid(mid), action: parseAction(action), header, payload };
    }
    case "notify":
      return { kind, action: parseAction(fields), header, payload };
    case "response": {
      const [mid, status] = splitOnce(fields, "response id");
      return { kind, mid: parseMid(mid), status: parseStatus(status), header, payload };
    }
    case "close":
      return { kind, status: parseStatus(fields), reason: new TextDecoder().decode(payload) };
  }
}

function decodeUtf8(bytes: Uint8Array, what: string): string {
  try {
    return fromUtf8(bytes);
  } catch {
    throw StmpError.protocol(`${what} is not valid UTF-8`);
  }
}

/**
 * Splits a text message into its first line, its `H` line and its `P` part (which runs to the
 * end and may contain newlines); `what` names the message in errors.
 */
export function splitLines(
  message: Uint8Array,
  what: string,
  payloadTag = 0x50,
): { first: Uint8Array; header?: Uint8Array; payload?: Uint8Array } {
  const lineEnd = (from: number) => {
    const at = message.indexOf(0x0a, from);
    return at < 0 ? message.length : at;
  };
  let end = lineEnd(0);
  const first = message.subarray(0, end);
  let header: Uint8Array | undefined;
  while (end < message.length) {
    // `end` is at a newline; the next byte is the line's tag.
    const tag = message[end + 1];
    if (tag === undefined) break;
    const start = end + 2;
    if (tag === 0x48 && header === undefined) {
      end = lineEnd(start);
      header = message.subarray(Math.min(start, message.length), end);
    } else if (tag === payloadTag) {
      return { first, header, payload: message.subarray(Math.min(start, message.length)) };
    } else {
      throw StmpError.protocol(`unexpected line ${JSON.stringify(String.fromCharCode(tag))} in text ${what}`);
    }
  }
  return { first, header };
}

function splitOnce(fields: string, what: string): [string, string] {
  const at = fields.indexOf(":");
  if (at < 0) throw StmpError.protocol(`missing ':' after the ${what}`);
  return [fields.slice(0, at), fields.slice(at + 1)];
}

/** An upper- or lower-case hex number of 1 to 16 digits. */
export function parseHex(text: string, what: string): number {
  if (!/^[0-9a-fA-F]{1,16}$/.test(text)) {
    throw StmpError.protocol(`${what} ${JSON.stringify(text)} is not a hexadecimal number`);
  }
  return parseInt(text, 16);
}

function parseMid(text: string): number {
  const mid = parseHex(text, "message id");
  if (mid > 0xffff) throw StmpError.protocol(`message id 0x${mid.toString(16)} is over 0xFFFF`);
  return mid;
}

export function parseStatus(text: string): Code {
  const value = parseHex(text, "status");
  const code = value <= 0xff ? codeFromByte(value) : undefined;
  if (code === undefined) throw StmpError.protocol(`unknown status code 0x${value.toString(16)}`);
  return code;
}

function parseAction(text: string): Action {
  return text.startsWith("M:") ? unescape(text.slice(2)) : parseHex(text, "action");
}
