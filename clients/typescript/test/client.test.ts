// The client over a fake WebSocket: reconnects with backoff, re-runs onConnect, keeps listeners
// and served methods, and lets calls made while disconnected wait for the connection.

import assert from "node:assert/strict";
import { test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { Client } from "../src/client.js";
import { protobufCodec } from "../src/codec.js";
import { type Recovery, positionToValue } from "../src/history.js";
import { encodeServerHandshake } from "../src/wire/handshake.js";
import { Header } from "../src/wire/header.js";
import { type Packet, decodeMessage, encodeMessage } from "../src/wire/packet.js";
import { Code, StmpError } from "../src/wire/status.js";
import { AnnouncementsListener, AnnouncementsMethods, BothMethods, BothServer, NumberedServiceClient } from "../gen/stmp_test_stmp.js";
import { NoteSchema } from "../gen/stmp_test_pb.js";

/** A WebSocket stand-in: the test opens it, answers its handshake and plays the server. */
class FakeSocket {
  static opened: FakeSocket[] = [];
  static waiting: ((socket: FakeSocket) => void)[] = [];
  binaryType = "blob";
  onopen: ((event: unknown) => void) | null = null;
  onmessage: ((event: { data: unknown }) => void) | null = null;
  onclose: ((event: unknown) => void) | null = null;
  onerror: ((event: unknown) => void) | null = null;
  readonly sent: Packet[] = [];
  private readonly sentWaiters: (() => void)[] = [];
  closed = false;

  constructor(readonly url: string) {
    FakeSocket.opened.push(this);
    FakeSocket.waiting.splice(0).forEach((w) => w(this));
  }

  static next(): Promise<FakeSocket> {
    return new Promise((resolve) => FakeSocket.waiting.push(resolve));
  }

  send(data: Uint8Array | string): void {
    this.sent.push(decodeMessage(data as Uint8Array));
    this.sentWaiters.splice(0).forEach((w) => w());
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    queueMicrotask(() => this.onclose?.({}));
  }

  /** The server side. */
  accept(): void {
    const hello = { status: Code.Ok, header: Header.from([["Content-Type", "application/protobuf"], ["Packet-Format", "binary"]]), message: "" };
    this.deliver(encodeServerHandshake(hello));
  }

  deliver(bytes: Uint8Array): void {
    this.onmessage?.({ data: bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) });
  }

  serverSends(packet: Packet): void {
    this.deliver(encodeMessage(packet));
  }

  /** The next packet the client sends (waits for it). */
  async nextSent(): Promise<Packet> {
    while (this.sent.length === 0) await new Promise<void>((resolve) => this.sentWaiters.push(resolve));
    return this.sent.shift()!;
  }

  /** The server goes away: a Close, then the socket closes. */
  shutdown(): void {
    this.serverSends({ kind: "close", status: Code.ServerShutdown, reason: "restart" });
    this.close();
  }
}

const note = (text: string) => protobufCodec.encode(NoteSchema, create(NoteSchema, { text }));

test("reconnects after a shutdown, re-runs onConnect, keeps listeners and served methods", async () => {
  const delays: number[] = [];
  const signIns: string[] = [];
  const heard: string[] = [];
  let first = true;
  const client = new Client("ws://127.0.0.1:1/test", {
    WebSocket: FakeSocket,
    header: () => ({ token: first ? "one" : "two" }),
    reconnect: { baseDelay: 10, maxDelay: 40 },
    random: () => 0.5,
    onConnect: async (connection) => {
      signIns.push("signing in");
      await new NumberedServiceClient(connection).echo({ text: "sign in" });
      first = false;
    },
  });
  client.on("reconnecting", ({ delay }) => void delays.push(delay));
  const connects: boolean[] = [];
  client.on("connect", ({ reconnect }) => void connects.push(reconnect));
  AnnouncementsListener.listen(client, { said: (event) => void heard.push(event.text) });
  BothServer.register(client, { ping: (input) => ({ text: `pong ${input.text}` }) });

  for (const [round, token] of [[0, "one"], [1, "two"]] as const) {
    const socket = round === 0 ? FakeSocket.opened.at(-1)! : await FakeSocket.next();
    assert.equal(new URL(socket.url).searchParams.get("token"), token);
    socket.accept();
    // onConnect's call goes out first; the user's call waits for it.
    const userCall = new NumberedServiceClient(client).hashed({ text: `user ${round}` });
    const signIn = await socket.nextSent();
    assert.ok(signIn.kind === "request" && signIn.action === 0x123403);
    assert.equal(socket.sent.length, 0, "the user's call waits until onConnect is done");
    socket.serverSends({ kind: "response", mid: signIn.mid, status: Code.Ok, header: new Header(), payload: EMPTY });
    const user = await socket.nextSent();
    assert.ok(user.kind === "request");
    socket.serverSends({ kind: "response", mid: user.mid, status: Code.Ok, header: new Header(), payload: note(`ok ${round}`) });
    assert.equal((await userCall).text, `ok ${round}`);
    // The listener and the served method work on this connection too.
    socket.serverSends({ kind: "notify", action: AnnouncementsMethods.said.action, header: new Header(), payload: note(`event ${round}`) });
    socket.serverSends({ kind: "request", mid: 40, action: BothMethods.ping.action, header: new Header(), payload: note(`${round}`) });
    const pong = await socket.nextSent();
    assert.ok(pong.kind === "response" && pong.status === Code.Ok);
    assert.equal(protobufCodec.decode(NoteSchema, pong.payload).text, `pong ${round}`);
    if (round === 0) socket.shutdown();
  }
  assert.deepEqual(signIns, ["signing in", "signing in"]);
  assert.deepEqual(heard, ["event 0", "event 1"]);
  assert.deepEqual(connects, [false, true]);
  assert.deepEqual(delays, [5], "full jitter: half of the first ceiling with random() = 0.5");
  client.close();
});

test("the backoff grows while the server stays away, and resets after a success", async () => {
  const delays: number[] = [];
  const client = new Client("ws://127.0.0.1:1/test", {
    WebSocket: FakeSocket,
    reconnect: { baseDelay: 4, maxDelay: 16 },
    random: () => 0.999,
  });
  client.on("reconnecting", ({ delay }) => void delays.push(delay));
  let socket = FakeSocket.opened.at(-1)!;
  for (let i = 0; i < 4; i++) {
    const next = FakeSocket.next();
    socket.close(); // refused before any handshake
    socket = await next;
  }
  assert.deepEqual(delays, [3, 7, 15, 15]);
  socket.accept();
  await client.ready(1_000);
  const next = FakeSocket.next();
  socket.shutdown();
  await next;
  assert.equal(delays.at(-1), 3, "back to the first ceiling");
  client.close();
});

test("a call made while disconnected fails with RequestTimeout at its deadline", async () => {
  const client = new Client("ws://127.0.0.1:1/test", { WebSocket: FakeSocket, reconnect: false });
  await assert.rejects(
    new NumberedServiceClient(client).echo({}, { timeout: 20 }),
    (error: unknown) => error instanceof StmpError && error.code === Code.RequestTimeout,
  );
  client.close();
  await assert.rejects(client.ready(10), (error: unknown) => error instanceof StmpError && error.code === Code.NetworkError);
});

const EMPTY = new Uint8Array(0);

test("stream positions: listeners see offsets, a reconnect resumes them, the outcome is an event", async () => {
  const recoveries: Recovery[] = [];
  const heard: [string, number | undefined][] = [];
  const client = new Client("ws://127.0.0.1:1/test", {
    WebSocket: FakeSocket,
    reconnect: { baseDelay: 1, maxDelay: 1 },
  });
  client.on("recovery", (recovery) => void recoveries.push(recovery));
  AnnouncementsListener.listen(client, { said: (event, context) => void heard.push([event.text, context.position?.offset]) });
  const first = FakeSocket.opened.at(-1)!;
  assert.equal(new URL(first.url).searchParams.get("stmp-history"), "1");
  assert.deepEqual(new URL(first.url).searchParams.getAll("stmp-resume"), []);
  first.accept();
  const event = (text: string, offset: number) =>
    first.serverSends({
      kind: "notify",
      action: AnnouncementsMethods.said.action,
      header: Header.from([["stmp-position", positionToValue({ stream: "lobby", epoch: "ep1", offset })]]),
      payload: note(text),
    });
  event("one", 1);
  event("two", 2);
  await client.ready();
  assert.deepEqual(client.position("lobby"), { stream: "lobby", epoch: "ep1", offset: 2 });

  const second = FakeSocket.next();
  first.close(); // the network goes, no Close
  const socket = await second;
  assert.deepEqual(new URL(socket.url).searchParams.getAll("stmp-resume"), ["s=lobby&e=ep1&o=2"]);
  socket.accept();
  // The server replays offset 3, then answers the resume; the answer reaches no listener.
  socket.serverSends({
    kind: "notify",
    action: AnnouncementsMethods.said.action,
    header: Header.from([["stmp-position", "s=lobby&e=ep1&o=3"]]),
    payload: note("three"),
  });
  socket.serverSends({
    kind: "notify",
    action: "stmp.History.Position",
    header: Header.from([["stmp-position", "s=lobby&e=ep1&o=3"], ["stmp-recovered", "true"]]),
    payload: EMPTY,
  });
  await client.ready();
  assert.deepEqual(heard, [["one", 1], ["two", 2], ["three", 3]]);
  assert.deepEqual(recoveries, [{ position: { stream: "lobby", epoch: "ep1", offset: 3 }, recovered: true }]);
  client.close();
});

test("with history off the handshake says nothing of it", () => {
  const client = new Client("ws://127.0.0.1:1/test", { WebSocket: FakeSocket, history: false });
  const socket = FakeSocket.opened.at(-1)!;
  assert.equal(new URL(socket.url).searchParams.get("stmp-history"), null);
  assert.equal(client.position("lobby"), undefined);
  client.close();
});
