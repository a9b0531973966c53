// The client's side of the WebSocket handshake: what goes in the upgrade URL, and what to make
// of the server's answer. Pure functions; the connection glue calls them.

import { type Codec, codecFor } from "./codec.js";
import { type HeaderInit, Header } from "./wire/header.js";
import type { ServerHandshake } from "./wire/handshake.js";
import { Code, StmpError, codeName } from "./wire/status.js";

export type PacketFormat = "binary" | "text";

/** What the client offers. */
export interface Offer {
  /** Content types, most wanted first. */
  accept: readonly string[];
  format: PacketFormat;
  /** Application keys (auth tokens…). */
  header?: HeaderInit;
}

/**
 * The upgrade URL: the client's handshake rides on its query — the application keys, `Accept`,
 * `Packet-Format` and `Stmp-Version=1.0` (browsers cannot set WebSocket request headers).
 */
export function handshakeUrl(url: string, offer: Offer): string {
  const parsed = new URL(url);
  const header = Header.from(offer.header);
  header.set("Accept", offer.accept.join(","));
  header.set("Packet-Format", offer.format);
  header.set("Stmp-Version", "1.0");
  const query = parsed.searchParams;
  for (const key of new Set([...header].map(([key]) => key))) query.delete(key);
  for (const [key, value] of header) query.append(key, value);
  return parsed.toString();
}

/** What the connection agreed on. */
export interface Agreement {
  codec: Codec;
  format: PacketFormat;
  /** The server's handshake header. */
  header: Header;
}

/**
 * Checks the server's handshake against the offer: a refusal becomes its status as an error;
 * a content type or packet format the client did not offer is a ProtocolError.
 */
export function agree(handshake: ServerHandshake, offer: Offer): Agreement {
  if (handshake.status !== Code.Ok) {
    throw new StmpError(handshake.status, handshake.message || `handshake refused: ${codeName(handshake.status)}`);
  }
  const contentType = handshake.header.get("Content-Type");
  if (contentType === undefined) throw StmpError.protocol("the server's handshake has no Content-Type");
  const codec = codecFor(contentType);
  if (!codec || !offer.accept.some((type) => type.toLowerCase() === codec.contentType)) {
    throw StmpError.protocol(`the server chose content type ${contentType}, which was not offered`);
  }
  const format = (handshake.header.get("Packet-Format") ?? "binary").toLowerCase();
  if (format !== offer.format) {
    throw StmpError.protocol(`the server chose packet format ${format}, not ${offer.format}`);
  }
  if (format === "text" && !codec.text) {
    throw StmpError.protocol(`content type ${codec.contentType} cannot ride in text packets`);
  }
  return { codec, format, header: handshake.header };
}

/** The default `Accept` list for a packet format: text packets carry only text codecs. */
export function defaultAccept(format: PacketFormat): string[] {
  return format === "text" ? ["application/json"] : ["application/protobuf", "application/json"];
}
