// The protobuf and JSON codecs on generated messages, as the Rust server writes and reads them.

import assert from "node:assert/strict";
import { test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { EmptySchema } from "@bufbuild/protobuf/wkt";
import { codecFor, jsonCodec, protobufCodec } from "../src/codec.js";
import { Code, StmpError } from "../src/wire/status.js";
import { NoteSchema } from "../gen/stmp_test_pb.js";
import { PresenceStatusSchema, SendResultSchema, WhoListSchema } from "../gen/room_pb.js";

const text = (s: string) => new TextEncoder().encode(s);
const str = (b: Uint8Array) => new TextDecoder().decode(b);

const note = create(NoteSchema, {
  text: "héllo",
  big: -9_007_199_254_740_993n,
  idleSeconds: 18_446_744_073_709_551_615n,
  blob: Uint8Array.of(0, 1, 254, 255),
  tags: ["a", "b"],
  nested: { text: "inner" },
});

test("protobuf round-trips every field kind, and its bytes are protobuf's", () => {
  const bytes = protobufCodec.encode(NoteSchema, note);
  assert.deepEqual(protobufCodec.decode(NoteSchema, bytes), note);
  // Field 1 (text), length-delimited: tag 0x0a.
  assert.equal(bytes[0], 0x0a);
  assert.deepEqual(protobufCodec.decode(EmptySchema, new Uint8Array(0)), create(EmptySchema));
});

test("JSON writes the .proto's field names and reads lowerCamel, numbers and strings for 64-bit integers", () => {
  const json = JSON.parse(str(jsonCodec.encode(NoteSchema, note)));
  assert.equal(json.idle_seconds, "18446744073709551615");
  assert.equal(json.big, "-9007199254740993");
  assert.equal(json.blob, "AAH+/w==");
  assert.deepEqual(jsonCodec.decode(NoteSchema, jsonCodec.encode(NoteSchema, note)), note);
  // What the Rust server writes: proto names, 64-bit integers as numbers, absent messages as null.
  const fromRust = jsonCodec.decode(
    WhoListSchema,
    text('{"room":"lobby","entries":[{"user":"bob","address":"127.0.0.1:1","status":null,"error":"timeout"},' +
      '{"user":"amy","address":"127.0.0.1:2","status":{"state":"active","idle_seconds":3,"transport":"ws","agent":"x"},"error":""}]}'),
  );
  assert.equal(fromRust.entries[0]!.status, undefined);
  assert.equal(fromRust.entries[1]!.status!.idleSeconds, 3n);
  assert.equal(jsonCodec.decode(PresenceStatusSchema, text('{"idleSeconds":"7"}')).idleSeconds, 7n);
  assert.equal(jsonCodec.decode(SendResultSchema, text('{"timestamp":1764597000123,"delivered":2,"later":1}')).timestamp, 1764597000123n);
  assert.deepEqual(jsonCodec.decode(EmptySchema, new Uint8Array(0)), create(EmptySchema));
});

test("malformed payloads are BadRequest errors", () => {
  for (const [codec, payload] of [
    [jsonCodec, text("{not json")],
    [jsonCodec, text('{"text": 5}')],
    [protobufCodec, Uint8Array.of(0x0a, 0x05, 0x61)],
  ] as const) {
    assert.throws(() => codec.decode(NoteSchema, payload), (error: unknown) => {
      assert.ok(error instanceof StmpError);
      assert.equal(error.code, Code.BadRequest);
      assert.match(error.message, /stmp\.test\.Note/);
      return true;
    });
  }
});

test("codecs are found by content type, parameters and case aside", () => {
  assert.equal(codecFor("application/json"), jsonCodec);
  assert.equal(codecFor("Application/Protobuf; charset=x"), protobufCodec);
  assert.equal(codecFor("application/msgpack"), undefined);
});
