// The client's side of the WebSocket handshake: the upgrade URL and what the server's answer means.

import assert from "node:assert/strict";
import { test } from "node:test";
import { jsonCodec, protobufCodec } from "../src/codec.js";
import { type Offer, agree, defaultAccept, handshakeUrl } from "../src/handshake.js";
import { Header } from "../src/wire/header.js";
import { Code, StmpError } from "../src/wire/status.js";

test("the upgrade URL carries the header, Accept, Packet-Format and Stmp-Version", () => {
  const url = new URL(
    handshakeUrl("ws://127.0.0.1:7002/room?keep=1&Accept=old", {
      accept: ["application/json", "application/protobuf"],
      format: "text",
      header: { token: "a b;c", "x-k": ["v1", "v2"] },
    }),
  );
  assert.equal(url.pathname, "/room");
  assert.equal(url.searchParams.get("keep"), "1");
  assert.deepEqual(url.searchParams.getAll("Accept"), ["application/json,application/protobuf"]);
  assert.equal(url.searchParams.get("Packet-Format"), "text");
  assert.equal(url.searchParams.get("Stmp-Version"), "1.0");
  assert.equal(url.searchParams.get("token"), "a b;c");
  assert.deepEqual(url.searchParams.getAll("x-k"), ["v1", "v2"]);
});

const offer: Offer = { accept: defaultAccept("binary"), format: "binary" };
const ok = (pairs: [string, string][]) => ({ status: Code.Ok, header: Header.from(pairs), message: "" });

function rejects(run: () => unknown, code: Code, pattern: RegExp): void {
  assert.throws(run, (error: unknown) => {
    assert.ok(error instanceof StmpError);
    assert.equal(error.code, code);
    assert.match(error.message, pattern);
    return true;
  });
}

test("the server's choice of codec and format is taken when it was offered", () => {
  const binary = agree(ok([["Content-Type", "application/protobuf"], ["Packet-Format", "binary"]]), offer);
  assert.equal(binary.codec, protobufCodec);
  assert.equal(binary.format, "binary");
  const json = agree(ok([["Content-Type", "application/json"]]), offer);
  assert.equal(json.codec, jsonCodec);
  const textOffer: Offer = { accept: defaultAccept("text"), format: "text" };
  assert.deepEqual(defaultAccept("text"), ["application/json"]);
  const text = agree(ok([["Content-Type", "application/json"], ["Packet-Format", "text"]]), textOffer);
  assert.equal(text.format, "text");
});

test("a refusal is the server's status and reason", () => {
  rejects(
    () => agree({ status: Code.Unauthorized, header: new Header(), message: "token expired" }, offer),
    Code.Unauthorized,
    /token expired/,
  );
  rejects(() => agree({ status: Code.BadRequest, header: new Header(), message: "" }, offer), Code.BadRequest, /BadRequest/);
});

test("what was not offered is a protocol error", () => {
  rejects(() => agree(ok([]), offer), Code.ProtocolError, /no Content-Type/);
  rejects(() => agree(ok([["Content-Type", "application/msgpack"]]), offer), Code.ProtocolError, /not offered/);
  const jsonOnly: Offer = { accept: ["application/json"], format: "binary" };
  rejects(() => agree(ok([["Content-Type", "application/protobuf"]]), jsonOnly), Code.ProtocolError, /not offered/);
  rejects(
    () => agree(ok([["Content-Type", "application/protobuf"], ["Packet-Format", "text"]]), offer),
    Code.ProtocolError,
    /packet format text/,
  );
  rejects(
    () => agree(ok([["Content-Type", "application/protobuf"], ["Packet-Format", "text"]]), { accept: ["application/protobuf"], format: "text" }),
    Code.ProtocolError,
    /cannot ride in text packets/,
  );
});
