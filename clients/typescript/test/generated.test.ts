// The generated stubs: action ids as the Rust generator computes them, and the parts each kind
// of service gets.

import assert from "node:assert/strict";
import { test } from "node:test";
import { actionId } from "../src/wire/action.js";
import * as room from "../gen/room_stmp.js";
import * as kinds from "../gen/stmp_test_stmp.js";

test("ids are MurmurHash3 of package.Service.Method, or service << 8 | method from the options", () => {
  const tables = Object.entries({ ...room, ...kinds }).filter(([name]) => name.endsWith("Methods"));
  assert.equal(tables.length, 7);
  let hashed = 0;
  for (const [, table] of tables) {
    for (const method of Object.values(table as Record<string, { name: string; action: number }>)) {
      assert.match(method.name, /^stmp\.(examples\.room|test)\.[A-Z]\w*\.[A-Z]\w*$/);
      if (method.name === "stmp.test.NumberedService.Echo") continue;
      assert.equal(method.action, actionId(method.name), method.name);
      hashed++;
    }
  }
  assert.ok(hashed >= 18, `${hashed} hashed ids`);
  assert.equal(kinds.NumberedServiceMethods.echo.action, (0x1234 << 8) | 0x03);
  // The id the Rust side computes for the room's JoinRoom (stmp::wire::action_id).
  assert.equal(room.ChatServiceMethods.joinRoom.action, actionId("stmp.examples.room.ChatService.JoinRoom"));
});

test("services get a client and a server, events a listener, and a service named neither gets all", () => {
  assert.equal(typeof kinds.NumberedServiceClient, "function");
  assert.equal(typeof kinds.NumberedServiceServer.register, "function");
  assert.ok(!("NumberedServiceListener" in kinds));
  assert.equal(typeof kinds.AnnouncementsListener.listen, "function");
  assert.ok(!("AnnouncementsClient" in kinds) && !("AnnouncementsServer" in kinds), "(stmp.kind) says events only");
  for (const part of ["BothClient", "BothServer", "BothListener"]) assert.ok(part in kinds, part);
  assert.ok("ChatEventsListener" in room && !("ChatEventsClient" in room));
  assert.ok("PresenceServiceServer" in room && "ChatServiceClient" in room);
});
