// The connection engine driven by hand: the test plays the server, packet by packet.

import assert from "node:assert/strict";
import { test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { protobufCodec } from "../src/codec.js";
import { Connection } from "../src/connection.js";
import { type Offer, defaultAccept } from "../src/handshake.js";
import { POSITION, Positions, type StreamPosition, positionToValue } from "../src/history.js";
import { Registry } from "../src/registry.js";
import { encodeServerHandshake, encodeServerHandshakeText } from "../src/wire/handshake.js";
import { Header } from "../src/wire/header.js";
import { type Packet, decodeMessage, encodeMessage } from "../src/wire/packet.js";
import { Code, StmpError } from "../src/wire/status.js";
import { decodeText, encodeText } from "../src/wire/text.js";
import {
  AnnouncementsListener,
  AnnouncementsMethods,
  BothMethods,
  BothServer,
  NumberedServiceClient,
  NumberedServiceMethods,
} from "../gen/stmp_test_stmp.js";
import { NoteSchema } from "../gen/stmp_test_pb.js";

/** A connection wired to a recorder; `server` sends it packets. */
function setup(
  format: "binary" | "text" = "binary",
  options: { now?: () => number; registry?: Registry; positions?: Positions } = {},
) {
  const sent: (Uint8Array | string)[] = [];
  const ended: StmpError[] = [];
  let closed = 0;
  const registry = options.registry ?? new Registry();
  const offer: Offer = { accept: defaultAccept(format), format };
  const connection = new Connection(
    { send: (message) => void sent.push(message), close: () => void closed++ },
    {
      offer,
      registry,
      maxPacketSize: 1 << 16,
      callTimeout: 5_000,
      readTimeout: 1_000,
      closeGrace: 50,
      now: options.now ?? Date.now,
      onEnd: (reason) => void ended.push(reason),
      positions: options.positions,
    },
  );
  const contentType = format === "text" ? "application/json" : "application/protobuf";
  const hello = { status: Code.Ok, header: Header.from([["Content-Type", contentType], ["Packet-Format", format]]), message: "" };
  connection.receive(format === "text" ? encodeServerHandshakeText(hello) : encodeServerHandshake(hello));
  const decode = (message: Uint8Array | string): Packet =>
    typeof message === "string" ? decodeText(new TextEncoder().encode(message)) : decodeMessage(message);
  return {
    connection,
    registry,
    ended,
    closed: () => closed,
    /** Everything sent so far, decoded; clears the record. */
    take(): Packet[] {
      return sent.splice(0).map(decode);
    },
    server(packet: Packet): void {
      connection.receive(format === "text" ? new TextDecoder().decode(encodeText(packet)) : encodeMessage(packet));
    },
  };
}

/** The packet, which must be of this kind. */
function as<K extends Packet["kind"]>(packet: Packet | undefined, kind: K): Extract<Packet, { kind: K }> {
  assert.equal(packet?.kind, kind);
  return packet as Extract<Packet, { kind: K }>;
}

const note = (text: string) => protobufCodec.encode(NoteSchema, create(NoteSchema, { text }));
const EMPTY = new Uint8Array(0);

/** Waits for queued promise callbacks (served methods run asynchronously). */
const settle = () => new Promise((resolve) => setImmediate(resolve));

test("a call goes out with a fresh mid and the response resolves it", async () => {
  const s = setup();
  assert.ok(s.connection.isOpen);
  const stub = new NumberedServiceClient(s.connection);
  const answer = stub.echo({ text: "hi" });
  const request = as(s.take()[0], "request");
  assert.equal(request.mid, 1);
  assert.equal(request.action, 0x123403);
  assert.equal(protobufCodec.decode(NoteSchema, request.payload).text, "hi");
  // A response nobody waits for (Go answers notifies with mid 0) is ignored.
  s.server({ kind: "response", mid: 0, status: Code.Ok, header: new Header(), payload: note("stray") });
  s.server({ kind: "response", mid: 1, status: Code.Ok, header: new Header(), payload: note("hi back") });
  assert.equal((await answer).text, "hi back");
  assert.equal(s.connection.pendingCalls, 0);
});

test("an error status rejects with its code and message; byName sends the method name", async () => {
  const s = setup();
  const answer = s.connection.call(NumberedServiceMethods.hashed, { text: "x" }, { byName: true, header: { trace: "1" } });
  const request = as(s.take()[0], "request");
  assert.equal(request.action, "stmp.test.NumberedService.Hashed");
  assert.equal(request.header.get("trace"), "1");
  s.server({ kind: "response", mid: request.mid, status: Code.NotFound, header: new Header(), payload: new TextEncoder().encode("nope") });
  await assert.rejects(answer, (error: unknown) => error instanceof StmpError && error.code === Code.NotFound && error.message === "nope");
});

test("a call without an answer fails with RequestTimeout at its deadline, and its mid is freed", async () => {
  const s = setup();
  const answer = s.connection.call(NumberedServiceMethods.echo, {}, { timeout: 20 });
  await assert.rejects(answer, (error: unknown) => error instanceof StmpError && error.code === Code.RequestTimeout);
  assert.equal(s.connection.pendingCalls, 0);
});

test("mids wrap after 0xFFFF, skipping 0 and the ids still waiting", async () => {
  const s = setup();
  const first = s.connection.call(NumberedServiceMethods.echo, {});
  const mids: number[] = [];
  for (let i = 0; i < 0xffff; i++) {
    const call = s.connection.call(NumberedServiceMethods.echo, {});
    call.catch(() => {});
    const [request] = s.take().slice(-1);
    if (request?.kind === "request") {
      mids.push(request.mid);
      if (request.mid !== 1) s.server({ kind: "response", mid: request.mid, status: Code.Ok, header: new Header(), payload: EMPTY });
    }
  }
  assert.equal(mids[0], 2);
  assert.equal(mids[0xfffd], 0xffff);
  assert.equal(mids[0xfffe], 2, "after 0xFFFF comes 1, which is still waiting, then 2");
  s.server({ kind: "response", mid: 1, status: Code.Ok, header: new Header(), payload: note("first") });
  assert.equal((await first).text, "first");
  s.connection.close();
});

test("the server calls a method the client serves (server → client call)", async () => {
  const s = setup();
  BothServer.register(s.registry, {
    ping: (input, context) => {
      assert.equal(context.method.name, "stmp.test.Both.Ping");
      assert.equal(context.header.get("from"), "server");
      if (input.text === "fail") throw new StmpError(Code.TooManyRequests, "slow down");
      if (input.text === "crash") throw new Error("bug");
      return { text: `pong ${input.text}` };
    },
  });
  const action = BothMethods.ping.action;
  s.server({ kind: "request", mid: 7, action, header: Header.from({ from: "server" }), payload: note("a") });
  s.server({ kind: "request", mid: 8, action: "stmp.test.Both.Ping", header: Header.from({ from: "server" }), payload: note("fail") });
  s.server({ kind: "request", mid: 9, action, header: Header.from({ from: "server" }), payload: note("crash") });
  s.server({ kind: "request", mid: 10, action: 0x999, header: new Header(), payload: EMPTY });
  s.server({ kind: "request", mid: 11, action, header: new Header(), payload: Uint8Array.of(0x0a, 0x09) });
  await settle();
  const responses = new Map(s.take().map((p) => [as(p, "response").mid, as(p, "response")]));
  const text = (mid: number) => {
    const r = responses.get(mid)!;
    const body = r.status === Code.Ok ? protobufCodec.decode(NoteSchema, r.payload).text : new TextDecoder().decode(r.payload);
    return [r.status, body];
  };
  assert.deepEqual(text(7), [Code.Ok, "pong a"]);
  assert.deepEqual(text(8), [Code.TooManyRequests, "slow down"]);
  assert.deepEqual(text(9), [Code.InternalServerError, "bug"]);
  assert.deepEqual(text(10), [Code.NotFound, "no method 0x999"]);
  assert.equal(text(11)[0], Code.BadRequest);
  assert.ok(s.connection.isOpen, "a bad call disturbs nothing else");
});

test("events reach their listeners; unknown events and a throwing listener disturb nothing", () => {
  const registry = new Registry();
  const heard: string[] = [];
  const stop = AnnouncementsListener.listen(registry, { said: (event) => void heard.push(event.text) });
  registry.listen(AnnouncementsMethods.said, () => {
    throw new Error("listener bug");
  });
  const s = setup("binary", { registry });
  const action = AnnouncementsMethods.said.action;
  s.server({ kind: "notify", action, header: new Header(), payload: note("one") });
  s.server({ kind: "notify", action: 0x42, header: new Header(), payload: note("nobody") });
  stop();
  s.server({ kind: "notify", action, header: new Header(), payload: note("two") });
  assert.deepEqual(heard, ["one"]);
  assert.deepEqual(s.take(), [], "a notify is never answered");
  assert.ok(s.connection.isOpen);
});

test("an event's stream position is read once, and a well-formed one without URLSearchParams", () => {
  // Every event of a room with history carries its position: reading it twice, or through
  // URLSearchParams (a call into a browser's C++), cost a page a third of its script per event.
  const registry = new Registry();
  const heard: (StreamPosition | undefined)[] = [];
  registry.listen(AnnouncementsMethods.said, (_, context) => void heard.push(context.position));
  const positions = new Positions();
  const s = setup("binary", { registry, positions });
  const position = { stream: "room:lobby", epoch: "5f2a", offset: 7 };
  const header = Header.from([[POSITION, positionToValue(position)]]);
  const get = Header.prototype.get;
  const RealParams = globalThis.URLSearchParams;
  let reads = 0;
  let parsers = 0;
  Header.prototype.get = function (this: Header, key: string) {
    if (key === POSITION) reads++;
    return get.call(this, key);
  };
  globalThis.URLSearchParams = class extends RealParams {
    constructor(...init: ConstructorParameters<typeof URLSearchParams>) {
      parsers++;
      super(...init);
    }
  };
  try {
    s.server({ kind: "notify", action: AnnouncementsMethods.said.action, header, payload: note("hello") });
    assert.deepEqual(heard, [position]);
    assert.deepEqual(positions.get("room:lobby"), position);
    assert.equal(reads, 1, "the header's position is read once per event");
    assert.equal(parsers, 0, "a well-formed position needs no URLSearchParams");
  } finally {
    Header.prototype.get = get;
    globalThis.URLSearchParams = RealParams;
  }
});

test("Ping is answered with Pong; the heartbeat pings when idle and gives up after the read timeout", () => {
  let now = 0;
  const s = setup("binary", { now: () => now });
  s.server({ kind: "ping" });
  assert.deepEqual(s.take(), [{ kind: "pong" }]);
  now = 400;
  s.connection.tick();
  assert.deepEqual(s.take(), []);
  now = 500;
  s.connection.tick();
  assert.deepEqual(s.take(), [{ kind: "ping" }]);
  now = 1_000;
  s.connection.tick();
  as(s.take()[0], "close");
  assert.equal(s.ended[0]!.code, Code.NetworkError);
  assert.equal(s.closed(), 1);
});

test("malformed input gets a Close with ProtocolError, oversized input RequestEntityTooLarge, and pending calls fail", async () => {
  for (const [bad, code] of [
    [Uint8Array.of(0x00), Code.ProtocolError],
    [encodeMessage({ kind: "notify", action: 1, header: new Header(), payload: new Uint8Array(1 << 17) }), Code.RequestEntityTooLarge],
    ["Q1:1", Code.ProtocolError],
  ] as const) {
    const s = setup();
    const pending = s.connection.call(NumberedServiceMethods.echo, {});
    s.take();
    s.connection.receive(bad);
    const close = as(s.take()[0], "close");
    assert.equal(close.status, code);
    assert.equal(s.ended[0]!.code, code);
    await assert.rejects(pending, (error: unknown) => error instanceof StmpError && error.code === Code.NetworkError);
    assert.ok(!s.connection.isOpen);
  }
});

test("a Close from the server is answered, and ends the connection with its status", async () => {
  const s = setup();
  const pending = s.connection.call(NumberedServiceMethods.echo, {});
  s.take();
  s.server({ kind: "close", status: Code.ServerShutdown, reason: "restarting" });
  assert.deepEqual(s.take(), [{ kind: "close", status: Code.Ok, reason: "" }]);
  assert.equal(s.ended[0]!.code, Code.ServerShutdown);
  assert.equal(s.ended[0]!.message, "restarting");
  await assert.rejects(pending, /restarting/);
});

test("text packets: the same conversation as strings", async () => {
  const s = setup("text");
  const answer = new NumberedServiceClient(s.connection).echo({ text: "hi", big: 5n });
  const request = as(s.take()[0], "request");
  assert.equal(new TextDecoder().decode(request.payload), '{"text":"hi","big":"5"}');
  s.server({ kind: "response", mid: request.mid, status: Code.Ok, header: new Header(), payload: new TextEncoder().encode('{"text":"ok","idle_seconds":3}') });
  const output = await answer;
  assert.equal(output.text, "ok");
  assert.equal(output.idleSeconds, 3n);
  // A binary message on a text connection is still read (the Go server sends text that way).
  s.connection.receive(new TextEncoder().encode("I"));
  assert.deepEqual(s.take(), [{ kind: "pong" }]);
});

test("a refused handshake ends the connection with the server's status", () => {
  const ended: StmpError[] = [];
  const connection = new Connection(
    { send: () => assert.fail("nothing is sent"), close: () => {} },
    {
      offer: { accept: defaultAccept("binary"), format: "binary" },
      registry: new Registry(),
      maxPacketSize: 1024,
      callTimeout: 1000,
      readTimeout: 1000,
      closeGrace: 10,
      now: Date.now,
      onEnd: (reason) => void ended.push(reason),
    },
  );
  connection.receive(encodeServerHandshake({ status: Code.Unauthorized, header: new Header(), message: "bad token" }));
  assert.equal(ended[0]!.code, Code.Unauthorized);
  assert.equal(ended[0]!.message, "bad token");
  assert.ok(!connection.isOpen);
});
