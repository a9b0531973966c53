// What the client's JavaScript spends on one incoming event, from the WebSocket message to the
// listener holding the decoded message: the part of an event's cost that runs on the page's
// main thread in a browser. No socket: the connection is fed the messages a room server sends
// (`ChatEvents.RoomMessage` with its stream position, as a room with history sends them).
// Not a test: it prints a table.
//
//   npm run bench:receive

import { create } from "@bufbuild/protobuf";
import { jsonCodec, protobufCodec } from "../src/codec.js";
import { Connection } from "../src/connection.js";
import { type Offer, defaultAccept } from "../src/handshake.js";
import { POSITION, Positions, positionToValue } from "../src/history.js";
import { Registry } from "../src/registry.js";
import { encodeServerHandshake, encodeServerHandshakeText } from "../src/wire/handshake.js";
import { Header } from "../src/wire/header.js";
import { type Packet, encodeMessage } from "../src/wire/packet.js";
import { Code } from "../src/wire/status.js";
import { encodeText } from "../src/wire/text.js";
import { RoomMessageEventSchema } from "../gen/room_pb.js";
import { ChatEventsMethods } from "../gen/room_stmp.js";

const EVENTS = 200_000;
const ROUNDS = 5;

type Format = "binary" | "text";

/** A connection past its handshake, whose listener counts the room messages it decodes. */
function connection(format: Format, counter: { n: number; bytes: number }): Connection {
  const registry = new Registry();
  registry.listen(ChatEventsMethods.roomMessage, (event) => {
    counter.n++;
    counter.bytes += event.text.length;
  });
  const offer: Offer = { accept: defaultAccept(format), format };
  const connection = new Connection(
    { send: () => {}, close: () => {} },
    {
      offer,
      registry,
      maxPacketSize: 1 << 16,
      callTimeout: 5_000,
      readTimeout: 60_000,
      closeGrace: 50,
      now: Date.now,
      positions: new Positions(),
    },
  );
  const contentType = format === "text" ? "application/json" : "application/protobuf";
  const hello = { status: Code.Ok, header: Header.from([["Content-Type", contentType], ["Packet-Format", format]]), message: "" };
  connection.receive(format === "text" ? encodeServerHandshakeText(hello) : encodeServerHandshake(hello));
  if (!connection.isOpen) throw new Error("the handshake failed");
  return connection;
}

/** The messages of `count` consecutive room events, as the server puts them on the wire. */
function events(format: Format, count: number, withPosition: boolean): (Uint8Array | string)[] {
  const codec = format === "text" ? jsonCodec : protobufCodec;
  const messages: (Uint8Array | string)[] = [];
  for (let offset = 1; offset <= count; offset++) {
    const event = create(RoomMessageEventSchema, {
      room: "lobby",
      sender: "alice",
      text: `message number ${offset} in the lobby`,
      timestamp: BigInt(1_760_000_000_000 + offset),
    });
    const header = withPosition
      ? Header.from([[POSITION, positionToValue({ stream: "room:lobby", epoch: "5f2a9c3e", offset })]])
      : new Header();
    const packet: Packet = {
      kind: "notify",
      action: ChatEventsMethods.roomMessage.action,
      header,
      payload: codec.encode(RoomMessageEventSchema, event),
    };
    messages.push(format === "text" ? new TextDecoder().decode(encodeText(packet)) : encodeMessage(packet));
  }
  return messages;
}

/** Nanoseconds per event over one pass of `messages`; the median of `ROUNDS` passes. */
function measure(format: Format, messages: (Uint8Array | string)[]): number {
  const passes: number[] = [];
  for (let round = 0; round < ROUNDS; round++) {
    const counter = { n: 0, bytes: 0 };
    const conn = connection(format, counter);
    const start = process.hrtime.bigint();
    for (const message of messages) conn.receive(message);
    const elapsed = Number(process.hrtime.bigint() - start);
    if (counter.n !== messages.length) throw new Error(`${counter.n} of ${messages.length} events reached the listener`);
    passes.push(elapsed / messages.length);
  }
  passes.sort((a, b) => a - b);
  return passes[Math.floor(passes.length / 2)]!;
}

function main(): void {
  console.log(`\n${EVENTS.toLocaleString("en")} room messages into one connection, median of ${ROUNDS} passes (Node ${process.version}):\n`);
  console.log("| packets | position header | ns per event | events/s on one thread |");
  console.log("|---|---|---|---|");
  for (const format of ["binary", "text"] as const) {
    for (const withPosition of [false, true]) {
      const ns = measure(format, events(format, EVENTS, withPosition));
      const label = format === "binary" ? "binary (protobuf)" : "text (JSON)";
      console.log(`| ${label} | ${withPosition ? "yes" : "no"} | ${ns.toFixed(0)} | ${Math.round(1e9 / ns).toLocaleString("en")} |`);
    }
  }
}

main();
