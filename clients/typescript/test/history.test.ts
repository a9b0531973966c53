// Stream positions: the header values shared with the Rust side, and the tracker.

import assert from "node:assert/strict";
import { test } from "node:test";
import {
  POSITION,
  POSITION_METHOD,
  Positions,
  RECOVERED,
  type Recovery,
  formFields,
  parsePosition,
  positionToValue,
} from "../src/history.js";
import { Header } from "../src/wire/header.js";

test("position values are the bytes the Rust server writes and parses", () => {
  // The same vectors as the Rust `StreamPosition::to_value` (form-urlencoded).
  const vectors: [string, string, number, string][] = [
    ["room:lobby", "5f2a", 42, "s=room%3Alobby&e=5f2a&o=42"],
    ["a b", "ep", 1, "s=a+b&e=ep&o=1"],
    ["é;&=%", "ep", 0, "s=%C3%A9%3B%26%3D%25&e=ep&o=0"],
  ];
  for (const [stream, epoch, offset, value] of vectors) {
    assert.equal(positionToValue({ stream, epoch, offset }), value);
    assert.deepEqual(parsePosition(value), { stream, epoch, offset });
  }
});

test("form fields are read as URLSearchParams reads them, stray percent signs and broken UTF-8 too", () => {
  const names = ["s", "e", "o", ""];
  const alphabet = ["s", "e", "o", "=", "&", "+", "%", "2", "B", "C", "3", "A", "9", "F", "z", "é", " ", "%C3", "%A9", "%E2%82", "%26"];
  let seed = 11;
  const next = () => (seed = (seed * 1_103_515_245 + 12_345) % 2 ** 31);
  const values = ["", "&", "=", "s", "s=", "=s", "s=1&s=2", "s&e=&o=3", "s=%", "s=%zz&e=%C3&o=1", "s=a+b%2Bc", "o=%3", "%73=x"];
  for (let n = 0; n < 5_000; n++) {
    let value = "";
    for (let length = next() % 16; length > 0; length--) value += alphabet[next() % alphabet.length];
    values.push(value);
  }
  for (const value of values) {
    const params = new URLSearchParams(value);
    assert.deepEqual(
      formFields(value, names),
      names.map((name) => params.get(name) ?? undefined),
      JSON.stringify(value),
    );
  }
});

test("malformed positions are ignored", () => {
  for (const value of ["", "s=a&e=b", "s=a&e=b&o=-1", "s=a&e=b&o=1x", "s=a&e=b&o=99999999999999999", "o=1&e=b"]) {
    assert.equal(parsePosition(value), undefined, value);
  }
});

const withPosition = (stream: string, offset: number, recovered?: string) => {
  const header = Header.from([[POSITION, positionToValue({ stream, epoch: "e", offset })]]);
  if (recovered !== undefined) header.append(RECOVERED, recovered);
  return header;
};

test("events advance positions; the position notify is consumed and reports recovery", () => {
  const recoveries: Recovery[] = [];
  const positions = new Positions((recovery) => void recoveries.push(recovery));
  assert.equal(positions.observe(7, withPosition("a", 1)), false);
  assert.equal(positions.observe(7, withPosition("b", 3)), false);
  assert.equal(positions.observe(7, withPosition("a", 2)), false);
  assert.equal(positions.observe(7, new Header()), false);
  assert.deepEqual(positions.get("a"), { stream: "a", epoch: "e", offset: 2 });
  assert.equal(positions.observe(POSITION_METHOD, withPosition("c", 9, "false")), true);
  assert.equal(positions.observe(POSITION_METHOD, withPosition("d", 0)), true);
  assert.deepEqual(recoveries, [{ position: { stream: "c", epoch: "e", offset: 9 }, recovered: false }]);
  // Newest first, after the support entry.
  assert.deepEqual(
    positions.handshakeEntries().map(([key, value]) => `${key}=${value}`),
    ["stmp-history=1", "stmp-resume=s=d&e=e&o=0", "stmp-resume=s=c&e=e&o=9", "stmp-resume=s=a&e=e&o=2", "stmp-resume=s=b&e=e&o=3"],
  );
  assert.ok(positions.forget("a"));
  assert.equal(positions.get("a"), undefined);
});

test("the handshake entries stay within their budget", () => {
  const positions = new Positions();
  for (let n = 0; n < 500; n++) positions.observe(1, withPosition(`room-${n}`.padEnd(200, "x"), n));
  const entries = positions.handshakeEntries();
  const bytes = entries.slice(1).reduce((sum, [key, value]) => sum + key.length + value.length + 2, 0);
  assert.ok(bytes <= 4096, `${bytes}`);
  assert.ok(entries.length > 10);
  assert.equal(parsePosition(entries[1]?.[1])?.offset, 499);
});
