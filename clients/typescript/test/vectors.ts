// Loads the shared byte vectors (stmp/tests/vectors/wire.json, also read by the Rust tests).

import { readFileSync } from "node:fs";
import { Header } from "../src/wire/header.js";
import type { Packet } from "../src/wire/packet.js";
import { Code } from "../src/wire/status.js";

const path = new URL("../../../../stmp/tests/vectors/wire.json", import.meta.url);

export interface PacketJson {
  kind: Packet["kind"];
  mid?: number;
  action?: number | string;
  status?: keyof typeof Code;
  header?: [string, string][];
  payload?: string;
  payload_hex?: string;
  reason?: string;
}

export interface Named {
  name: string;
  hex: string;
}

export interface VectorsJson {
  action_ids: { method: string; id: number; uvarint: string }[];
  client_handshakes: (Named & { version: string; header: [string, string][]; message: string })[];
  server_handshakes: (Named & { status: keyof typeof Code; header: [string, string][]; message: string })[];
  server_handshakes_text: (Named & { status: keyof typeof Code; header: [string, string][]; message: string })[];
  invalid_client_handshakes: (Named & { code: keyof typeof Code; contains: string[] })[];
  stream: (Named & { packets: PacketJson[] })[];
  stream_chunks: { name: string; chunks: string[]; packets: PacketJson[] }[];
  invalid_packets: (Named & { forms: ("stream" | "message")[]; code: keyof typeof Code; contains: string[] })[];
  truncated_stream: Named[];
  large_request: {
    mid: number;
    action: number;
    payload_prefix: string;
    fill_byte: string;
    payload_len: number;
    stream_len: number;
    head: string;
    limit_prefix: string;
  };
  message: (Named & { packet: PacketJson })[];
  text: (Named & { packet: PacketJson })[];
}

export const vectors: VectorsJson = JSON.parse(readFileSync(path, "utf8"));

export function hex(text: string): Uint8Array {
  const bytes = text.split(/\s+/).filter((b) => b !== "");
  return Uint8Array.from(bytes.map((b) => {
    if (!/^[0-9a-f]{2}$/.test(b)) throw new Error(`not a hex byte: ${b}`);
    return parseInt(b, 16);
  }));
}

export function header(pairs: [string, string][] | undefined): Header {
  return Header.from(pairs ?? []);
}

function payload(json: PacketJson): Uint8Array {
  if (json.payload !== undefined) return new TextEncoder().encode(json.payload);
  if (json.payload_hex !== undefined) return hex(json.payload_hex);
  return new Uint8Array(0);
}

/** The packet a JSON description stands for. */
export function packet(json: PacketJson): Packet {
  switch (json.kind) {
    case "ping":
    case "pong":
      return { kind: json.kind };
    case "request":
      return { kind: "request", mid: json.mid!, action: json.action!, header: header(json.header), payload: payload(json) };
    case "notify":
      return { kind: "notify", action: json.action!, header: header(json.header), payload: payload(json) };
    case "response":
      return { kind: "response", mid: json.mid!, status: Code[json.status!], header: header(json.header), payload: payload(json) };
    case "close":
      return { kind: "close", status: Code[json.status!], reason: json.reason ?? "" };
  }
}

/** A packet as plain data, for deepStrictEqual (headers as their entries). */
export function plain(p: Packet): unknown {
  const out: Record<string, unknown> = { ...p };
  if ("header" in p) out.header = [...p.header];
  if ("payload" in p) out.payload = Array.from(p.payload);
  return out;
}
