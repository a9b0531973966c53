// The wire format against the shared byte vectors: what we encode is byte for byte what stmp-go
// sent, and what it sent decodes field by field.

import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { actionId, murmur3X86_32, optionActionId } from "../src/wire/action.js";
import {
  decodeClientHandshake,
  decodeServerHandshake,
  decodeServerHandshakeMessage,
  decodeServerHandshakeText,
  encodeClientHandshake,
  encodeServerHandshake,
  encodeServerHandshakeText,
} from "../src/wire/handshake.js";
import { Header } from "../src/wire/header.js";
import { negotiate } from "../src/wire/negotiate.js";
import { type Packet, decodeMessage, decodeStream, encodeMessage, encodeStream } from "../src/wire/packet.js";
import { Code, StmpError } from "../src/wire/status.js";
import { decodeText, encodeText } from "../src/wire/text.js";
import { header, hex, packet, plain, vectors } from "./vectors.js";

const LIMIT = 1 << 20;

/** Decodes every packet of a byte stream fed in `chunks`, as a reader that buffers would. */
function decodeChunks(chunks: Uint8Array[], limit = LIMIT): Packet[] {
  let buffer = new Uint8Array(0);
  const packets: Packet[] = [];
  for (const chunk of chunks) {
    const grown = new Uint8Array(buffer.length + chunk.length);
    grown.set(buffer);
    grown.set(chunk, buffer.length);
    buffer = grown;
    for (;;) {
      const decoded = decodeStream(buffer, limit);
      if (!decoded) break;
      packets.push(decoded.packet);
      buffer = buffer.subarray(decoded.length);
    }
  }
  assert.equal(buffer.length, 0, `${buffer.length} bytes left over`);
  return packets;
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

function assertError(run: () => unknown, code: Code, contains: string[] = []): void {
  assert.throws(run, (error: unknown) => {
    assert.ok(error instanceof StmpError, `not an StmpError: ${error}`);
    assert.equal(error.code, code, error.message);
    for (const part of contains) assert.ok(error.message.includes(part), `${error.message} lacks ${part}`);
    return true;
  });
}

describe("action ids", () => {
  test("MurmurHash3 of the full names, and their uvarints", () => {
    assert.ok(vectors.action_ids.length >= 4);
    for (const { method, id, uvarint } of vectors.action_ids) {
      assert.equal(actionId(method), id, method);
      const wire = encodeStream({ kind: "notify", action: id, header: new Header(), payload: new Uint8Array(0) });
      assert.equal(wire[0], 0xb0);
      assert.deepEqual(wire.subarray(1), hex(uvarint), method);
    }
  });

  test("published MurmurHash3 x86_32 values, every tail length", () => {
    const bytes = (s: string) => new TextEncoder().encode(s);
    assert.equal(murmur3X86_32(bytes(""), 0), 0);
    assert.equal(murmur3X86_32(bytes(""), 1), 0x514e28b7);
    assert.equal(murmur3X86_32(bytes("a"), 0x9747b28c), 0x7fa09ea6);
    assert.equal(murmur3X86_32(bytes("aa"), 0x9747b28c), 0x5d211726);
    assert.equal(murmur3X86_32(bytes("aaa"), 0x9747b28c), 0x283e0130);
    assert.equal(murmur3X86_32(bytes("aaaa"), 0x9747b28c), 0x5a97808a);
    assert.equal(murmur3X86_32(bytes("Hello, world!"), 0x9747b28c), 0x24884cba);
  });

  test("option ids are service << 8 | method, and refuse what a number cannot hold", () => {
    assert.equal(optionActionId(0x12, 0x03), 0x1203);
    assert.equal(optionActionId(0xffffffffffn, 0xff), 0xffffffffffff);
    assert.throws(() => optionActionId(0xffffffffffffffn, 1), RangeError);
  });
});

describe("byte-stream packets", () => {
  test("every stream vector encodes to its bytes and decodes, whole, split anywhere and byte by byte", () => {
    assert.ok(vectors.stream.length > 20);
    for (const vector of vectors.stream) {
      const wire = hex(vector.hex);
      const packets = vector.packets.map(packet);
      assert.deepEqual(concat(packets.map(encodeStream)), wire, `${vector.name}: encoding`);
      const expected = packets.map(plain);
      assert.deepEqual(decodeChunks([wire]).map(plain), expected, vector.name);
      for (let at = 1; at < wire.length; at++) {
        const parts = [wire.subarray(0, at), wire.subarray(at)];
        assert.deepEqual(decodeChunks(parts).map(plain), expected, `${vector.name} split at ${at}`);
      }
      const bytes = Array.from(wire, (b) => Uint8Array.of(b));
      assert.deepEqual(decodeChunks(bytes).map(plain), expected, `${vector.name} byte by byte`);
    }
  });

  test("packets the Go peer wrote in two pieces", () => {
    for (const vector of vectors.stream_chunks) {
      const chunks = vector.chunks.map(hex);
      const packets = vector.packets.map(packet);
      assert.equal(decodeStream(chunks[0]!, LIMIT), undefined, `${vector.name}: the first piece is incomplete`);
      assert.deepEqual(decodeChunks(chunks).map(plain), packets.map(plain), vector.name);
      assert.deepEqual(concat(packets.map(encodeStream)), concat(chunks), vector.name);
    }
  });

  test("invalid heads are protocol errors; a truncated packet is merely incomplete", () => {
    for (const vector of vectors.invalid_packets) {
      const code = Code[vector.code];
      for (const form of vector.forms) {
        const run = form === "stream" ? () => decodeStream(hex(vector.hex), LIMIT) : () => decodeMessage(hex(vector.hex), LIMIT);
        assertError(run, code, vector.contains);
      }
    }
    for (const vector of vectors.truncated_stream) {
      assert.equal(decodeStream(hex(vector.hex), LIMIT), undefined, vector.name);
    }
  });

  test("a 300 kB request, and a limit checked before the payload arrives", () => {
    const large = vectors.large_request;
    const payload = new Uint8Array(large.payload_len).fill(parseInt(large.fill_byte, 16));
    payload.set(hex(large.payload_prefix));
    const request: Packet = { kind: "request", mid: large.mid, action: large.action, header: new Header(), payload };
    const wire = encodeStream(request);
    assert.equal(wire.length, large.stream_len);
    assert.deepEqual(wire.subarray(0, 14), hex(large.head));
    const chunks: Uint8Array[] = [];
    for (let at = 0, size = 1; at < wire.length; at += size, size = (size * 7 + 3) % 65_536 || 1) {
      chunks.push(wire.subarray(at, Math.min(wire.length, at + size)));
    }
    assert.ok(chunks.length > 4);
    const [decoded] = decodeChunks(chunks);
    assert.deepEqual(plain(decoded!), plain(request));

    const prefix = hex(large.limit_prefix);
    assertError(() => decodeStream(prefix, 300_003), Code.RequestEntityTooLarge);
    assert.equal(decodeStream(prefix, 300_004), undefined);
  });
});

describe("WebSocket messages", () => {
  test("binary messages: the payload runs to the end", () => {
    for (const vector of vectors.message) {
      const wire = hex(vector.hex);
      const expected = packet(vector.packet);
      assert.deepEqual(encodeMessage(expected), wire, vector.name);
      assert.deepEqual(plain(decodeMessage(wire, LIMIT)), plain(expected), vector.name);
    }
  });

  test("trailing bytes and oversized messages are refused", () => {
    assertError(() => decodeMessage(Uint8Array.of(0x80, 0x00), LIMIT), Code.ProtocolError, ["trailing"]);
    assertError(() => decodeMessage(Uint8Array.of(0xa8, 0x01), LIMIT), Code.ProtocolError, ["truncated"]);
    const big = encodeMessage({ kind: "notify", action: 1, header: new Header(), payload: new Uint8Array(100) });
    assertError(() => decodeMessage(big, 99), Code.RequestEntityTooLarge);
    assert.equal(decodeMessage(big, 100).kind, "notify");
  });

  test("text packets of every kind", () => {
    assert.ok(vectors.text.length >= 8);
    for (const vector of vectors.text) {
      const wire = hex(vector.hex);
      const expected = packet(vector.packet);
      assert.deepEqual(encodeText(expected), wire, vector.name);
      assert.deepEqual(plain(decodeText(wire, LIMIT)), plain(expected), vector.name);
    }
  });

  test("malformed text packets are protocol errors, never crashes", () => {
    const text = (s: string) => new TextEncoder().encode(s);
    for (const bad of ["", "X", "Q1", "Qzz:1", "Q10000:1", "S1:99", "I1", "I\nPx", "C0\nHa:b", "N\nZ", "Q1:M:a\nHnocolon"]) {
      assertError(() => decodeText(text(bad), LIMIT), Code.ProtocolError);
    }
    assertError(() => decodeText(text("N1\nP" + "x".repeat(100)), 50), Code.RequestEntityTooLarge);
  });
});

describe("handshakes", () => {
  test("client handshakes encode to their bytes and decode from any split", () => {
    for (const vector of vectors.client_handshakes) {
      const wire = hex(vector.hex);
      const [major, minor] = vector.version.split(".").map(Number);
      const handshake = { version: { major: major!, minor: minor! }, header: header(vector.header), message: vector.message };
      assert.deepEqual(encodeClientHandshake(handshake), wire, vector.name);
      for (let at = 0; at < wire.length; at++) {
        assert.equal(decodeClientHandshake(wire.subarray(0, at), LIMIT), undefined, `${vector.name} prefix ${at}`);
      }
      const decoded = decodeClientHandshake(concat([wire, Uint8Array.of(0x80)]), LIMIT)!;
      assert.equal(decoded.length, wire.length, "the following Ping is left");
      assert.deepEqual(decoded.handshake.version, handshake.version);
      assert.deepEqual([...decoded.handshake.header], vector.header);
      assert.equal(decoded.handshake.message, vector.message);
    }
    for (const vector of vectors.invalid_client_handshakes) {
      assertError(() => decodeClientHandshake(hex(vector.hex), LIMIT), Code[vector.code], vector.contains);
    }
    assertError(() => decodeClientHandshake(new TextEncoder().encode("SX"), LIMIT), Code.ProtocolError, ["magic"]);
  });

  test("server handshakes: binary on streams and in messages, text in text messages", () => {
    for (const vector of vectors.server_handshakes) {
      const wire = hex(vector.hex);
      const handshake = { status: Code[vector.status], header: header(vector.header), message: vector.message };
      assert.deepEqual(encodeServerHandshake(handshake), wire, vector.name);
      for (let at = 0; at < wire.length; at++) {
        assert.equal(decodeServerHandshake(wire.subarray(0, at), LIMIT), undefined, `${vector.name} prefix ${at}`);
      }
      const decoded = decodeServerHandshakeMessage(wire, LIMIT);
      assert.equal(decoded.status, handshake.status, vector.name);
      assert.deepEqual([...decoded.header], vector.header, vector.name);
      assert.equal(decoded.message, vector.message, vector.name);
    }
    for (const vector of vectors.server_handshakes_text) {
      const wire = hex(vector.hex);
      const handshake = { status: Code[vector.status], header: header(vector.header), message: vector.message };
      assert.deepEqual(new TextEncoder().encode(encodeServerHandshakeText(handshake)), wire, vector.name);
      const decoded = decodeServerHandshakeText(wire, LIMIT);
      assert.equal(decoded.status, handshake.status);
      assert.deepEqual([...decoded.header], vector.header);
    }
    const refusal = { status: Code.Unauthorized, header: new Header(), message: "bad token\nreally" };
    const text = new TextEncoder().encode(encodeServerHandshakeText(refusal));
    assert.deepEqual(decodeServerHandshakeText(text, LIMIT), refusal);
  });

  test("Accept negotiation: the client's order wins, parameters and case are ignored", () => {
    const supported = ["application/protobuf", "application/json", "application/msgpack"];
    const t13 = vectors.client_handshakes.find((v) => v.name === "t13.client")!;
    assert.equal(negotiate(header(t13.header).get("Accept")!, supported), "application/json");
    assert.equal(negotiate("application/xml", supported), undefined);
    assert.equal(negotiate("APPLICATION/MSGPACK", supported), "application/msgpack");
    assert.equal(negotiate("*/*", supported), "application/protobuf");
    assert.equal(negotiate("b/b, a/a", ["a/a", "b/b"]), "b/b");
    assert.equal(negotiate(" , ;q=1", supported), undefined);
  });
});

describe("header", () => {
  test("multi-valued, escaped, and tolerant of stray percent signs", () => {
    const h = Header.from([["x-k", "v1"], ["x-k", "v2"], ["Accept", "application/json;q=0.9"]]);
    assert.deepEqual(h.getAll("x-k"), ["v1", "v2"]);
    assert.equal(h.toWireString(), "x-k:v1;x-k:v2;Accept:application/json%3Bq=0.9");
    assert.deepEqual([...Header.decode(h.toWire())], [...h]);
    assert.equal(Header.from([["a:b", "c\nd;e%f"]]).toWireString(), "a%3Ab:c%0Ad%3Be%25f");
    assert.equal(Header.decode(new TextEncoder().encode("k:%3a%zz%")).get("k"), ":%zz%");
    assert.deepEqual([...Header.decode(new TextEncoder().encode(";k:;;:v;"))], [["k", ""], ["", "v"]]);
    assertError(() => Header.decode(Uint8Array.of(0x6b, 0x3a, 0xff)), Code.ProtocolError, ["UTF-8"]);
  });

  test("unescaping reads every text as the regular expression it replaced did", () => {
    const byRegex = (text: string) =>
      text.replace(/%(3[aAbB]|0[aA]|25)/g, (_, hex: string) => ({ "3A": ":", "0A": "\n", "3B": ";", "25": "%" })[hex.toUpperCase()]!);
    const alphabet = ["%", "3", "a", "A", "b", "B", "0", "2", "5", "z", ":", "é", "x"];
    let seed = 7;
    const next = () => (seed = (seed * 1_103_515_245 + 12_345) % 2 ** 31);
    const texts = ["", "%", "%3", "%3a", "%%3A", "%253A", "a%3Bb%0a%25%", "%zz%3"];
    for (let n = 0; n < 5_000; n++) {
      let text = "";
      for (let length = next() % 12; length > 0; length--) text += alphabet[next() % alphabet.length];
      texts.push(text);
    }
    for (const text of texts) {
      const decoded = Header.decode(new TextEncoder().encode(`k:${text.replaceAll(";", "")}`)).get("k");
      assert.equal(decoded, byRegex(text.replaceAll(";", "")), JSON.stringify(text));
    }
  });
});
