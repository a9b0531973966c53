// Reconnect backoff (full jitter) and heartbeat decisions.

import assert from "node:assert/strict";
import { test } from "node:test";
import { fullJitterDelay } from "../src/backoff.js";
import { heartbeat } from "../src/heartbeat.js";

test("full jitter: uniform below a ceiling that doubles up to the cap", () => {
  const almostOne = () => 0.999_999;
  const ceilings = [0, 1, 2, 3, 4, 5, 6, 10, 100, 5000].map((n) => fullJitterDelay(n, { baseDelay: 100, maxDelay: 3_000 }, almostOne));
  assert.deepEqual(ceilings, [99, 199, 399, 799, 1599, 2999, 2999, 2999, 2999, 2999]);
  for (let attempt = 0; attempt < 20; attempt++) {
    assert.equal(fullJitterDelay(attempt, {}, () => 0), 0, "the floor is always 0");
  }
  assert.equal(fullJitterDelay(2, { baseDelay: 100 }, () => 0.5), 200);
  // Defaults: 250 ms base, 10 s cap.
  assert.equal(fullJitterDelay(0, {}, almostOne), 249);
  assert.equal(fullJitterDelay(30, {}, almostOne), 9_999);
});

test("full jitter spreads clients out", () => {
  let seed = 42;
  const random = () => {
    seed = (seed * 1_103_515_245 + 12_345) % 2 ** 31;
    return seed / 2 ** 31;
  };
  const delays = Array.from({ length: 1_000 }, () => fullJitterDelay(4, { baseDelay: 100, maxDelay: 10_000 }, random));
  assert.ok(delays.every((d) => d >= 0 && d < 1_600));
  const distinct = new Set(delays.map((d) => Math.floor(d / 100)));
  assert.equal(distinct.size, 16, "every tenth of the range is used");
});

test("heartbeat: ping after half the read timeout without reading, once; give up after all of it", () => {
  const timeout = 1_000;
  assert.equal(heartbeat(400, 0, 0, timeout), "wait");
  assert.equal(heartbeat(500, 0, 0, timeout), "ping");
  assert.equal(heartbeat(700, 0, 500, timeout), "wait", "one ping until something is read");
  assert.equal(heartbeat(999, 0, 500, timeout), "wait");
  assert.equal(heartbeat(1_000, 0, 500, timeout), "close");
  assert.equal(heartbeat(1_200, 800, 500, timeout), "wait", "the pong came");
  assert.equal(heartbeat(1_300, 800, 500, timeout), "ping");
});
