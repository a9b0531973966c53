// The room chat in a real headless Chromium against a real room-server, with a Rust terminal
// client in the same room: sign in, join, messages both ways, an event, the server calling the
// page (`/who`), and a server restart the page survives by itself.

import assert from "node:assert/strict";
import { type Server, type Socket, createConnection, createServer } from "node:net";
import { join } from "node:path";
import { after, before, test } from "node:test";
import type { Page } from "playwright-core";
import { Child, type RoomServer, binary, launchBrowser, startRoomServer, tempDir } from "./harness.js";

const STEP = 20_000;

let dir: ReturnType<typeof tempDir>;
let server: RoomServer;
let browser: Awaited<ReturnType<typeof launchBrowser>>;
let page: Page;
let bob: Child;

before(async () => {
  dir = tempDir();
  server = await startRoomServer(join(dir.path, "accounts.json"));
  browser = await launchBrowser();
  page = await browser.context.newPage();
  page.on("pageerror", (error) => console.error("page error:", error));
});

after(async () => {
  await bob?.stop("SIGTERM").catch(() => {});
  await browser?.close().catch(() => {});
  await server?.child.stop().catch(() => {});
  dir?.remove();
});

/** Waits for a line in the page's log that contains `text`. */
async function pageShows(text: string): Promise<void> {
  await page.locator("#log > div", { hasText: text }).first().waitFor({ timeout: STEP });
}

async function pageSays(line: string): Promise<void> {
  await page.fill("#input", line);
  await page.press("#input", "Enter");
}

test("a browser user and a terminal user chat, and the page survives a server restart", async () => {
  await page.goto(server.web);
  await page.fill("#name", "alice");
  await page.fill("#password", "alice-secret");
  await page.check("#signup");
  await page.click("#signin-button");
  await page.locator("body[data-state=connected]").waitFor({ timeout: STEP });
  assert.match(await page.textContent("#status") ?? "", /connected \(application\/protobuf, binary\)/);
  await pageShows("signed in as alice");

  await pageSays("/join lobby");
  await pageShows("joined #lobby: alice");

  // The Rust client joins: the page receives the UserJoined event.
  bob = new Child("room-client", binary("room-client"), ["--url", server.tcp, "--user", "bob", "--password", "bob-secret", "--signup"]);
  await bob.waitForLine(/connected to .* as bob/);
  bob.write("/join lobby");
  await bob.waitForLine(/you joined #lobby; members: alice, bob/);
  await pageShows("bob joined #lobby");

  // Messages both ways.
  bob.write("hello from rust");
  await pageShows("#lobby <bob> hello from rust");
  await pageSays("hello from the browser");
  await bob.waitForLine(/#lobby <alice> hello from the browser/);

  // A server → client call: the server asks the page for its PresenceService.Status.
  const whoFrom = bob.lines.length;
  bob.write("/who lobby");
  await bob.waitForLine(/alice.*ws \(browser\)/, { from: whoFrom });
  // And the page asks about the terminal client.
  await pageSays("/who lobby");
  await pageShows("bob — active");

  // A direct message from the terminal.
  bob.write("/msg alice psst");
  await pageShows("(from bob) psst");

  // The server restarts on the same ports with the same accounts: both clients come back,
  // sign in again and re-join #lobby by themselves.
  const restartFrom = bob.lines.length;
  await server.child.stop();
  await page.locator("body[data-state=disconnected]").waitFor({ timeout: STEP });
  assert.match(await page.textContent("#status") ?? "", /disconnected|reconnecting/);
  server = await startRoomServer(join(dir.path, "accounts.json"), server);
  await pageShows("reconnected as alice; rooms re-joined: lobby");
  await bob.waitForLine(/signed in again as bob; re-joined #lobby/, { from: restartFrom });

  bob.write("after the restart");
  await pageShows("#lobby <bob> after the restart");
  await pageSays("still here");
  await bob.waitForLine(/#lobby <alice> still here/, { from: restartFrom });
});

test("text packets (JSON in WebSocket text messages) work the same", async () => {
  const other = await browser.context.newPage();
  await other.goto(`${server.web}?format=text`);
  await other.fill("#name", "carol");
  await other.fill("#password", "carol-secret");
  await other.check("#signup");
  await other.click("#signin-button");
  await other.locator("body[data-state=connected]").waitFor({ timeout: STEP });
  assert.match(await other.textContent("#status") ?? "", /connected \(application\/json, text\)/);
  await other.fill("#input", "/join lobby");
  await other.press("#input", "Enter");
  await other.locator("#log > div", { hasText: "joined #lobby" }).first().waitFor({ timeout: STEP });
  await pageShows("carol joined #lobby");
  await pageSays("hi carol");
  await other.locator("#log > div", { hasText: "#lobby <alice> hi carol" }).first().waitFor({ timeout: STEP });
  // A wrong password is reported on the sign-in form, not retried.
  const intruder = await browser.context.newPage();
  await intruder.goto(server.web);
  await intruder.fill("#name", "carol");
  await intruder.fill("#password", "wrong");
  await intruder.click("#signin-button");
  await intruder.locator("#signin-error", { hasText: "Unauthorized" }).waitFor({ timeout: STEP });
  await other.close();
  await intruder.close();
});

/** Bytes a proxy carried, each way. */
interface Carried {
  toServer: number;
  toClient: number;
}

/**
 * A TCP proxy whose connections can be cut under both peers (no Close), refusing new ones until
 * restored; it counts the bytes it carries.
 */
async function tcpProxy(target: URL): Promise<{ port: number; carried: Carried; cut(): void; restore(): void; close(): void }> {
  let up = true;
  const sockets = new Set<Socket>();
  const carried: Carried = { toServer: 0, toClient: 0 };
  const server: Server = createServer((client) => {
    if (!up) return client.destroy();
    const upstream = createConnection({ host: target.hostname, port: Number(target.port) });
    for (const [a, b] of [[client, upstream], [upstream, client]] as const) {
      sockets.add(a);
      a.on("data", (chunk) => {
        if (a === client) carried.toServer += chunk.length;
        else carried.toClient += chunk.length;
        b.write(chunk);
      });
      a.on("close", () => b.destroy());
      a.on("error", () => b.destroy());
    }
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as { port: number }).port;
  return {
    port,
    carried,
    cut() {
      up = false;
      for (const socket of sockets) socket.destroy();
      sockets.clear();
    },
    restore() {
      up = true;
    },
    close() {
      server.close();
    },
  };
}

/**
 * A new page whose WebSocket goes through a {@link tcpProxy}, signed up as `name` and in #lobby;
 * `shows` waits for a line of its log.
 */
async function pageThroughProxy(name: string) {
  const ws = new URL(server.ws);
  const proxy = await tcpProxy(ws);
  const page = await browser.context.newPage();
  const shows = (text: string) => page.locator("#log > div", { hasText: text }).first().waitFor({ timeout: STEP });
  await page.goto(`${server.web}?ws=${encodeURIComponent(`ws://127.0.0.1:${proxy.port}${ws.pathname}`)}`);
  await page.fill("#name", name);
  await page.fill("#password", `${name}-secret`);
  await page.check("#signup");
  await page.click("#signin-button");
  await page.locator("body[data-state=connected]").waitFor({ timeout: STEP });
  await page.fill("#input", "/join lobby");
  await page.press("#input", "Enter");
  await shows("joined #lobby");
  return { page, proxy, shows };
}

test("a page cut off the network shows the messages it missed, then live ones", async () => {
  const { page: dave, proxy, shows } = await pageThroughProxy("dave");
  try {
    bob.write("before the cut");
    await shows("#lobby <bob> before the cut");

    proxy.cut();
    await dave.locator("body[data-state=disconnected]").waitFor({ timeout: STEP });
    const from = bob.lines.length;
    for (const n of [1, 2, 3]) bob.write(`missed ${n}`);
    // bob sends one line at a time: the answer to /members means the three are published.
    bob.write("/members lobby");
    await bob.waitForLine(/#lobby members:/, { from });
    proxy.restore();

    await shows("#lobby: caught up on what was said while you were away");
    const log = await dave.locator("#log > div").allTextContents();
    const messages = log.filter((line) => /#lobby <bob> (missed \d|before the cut)/.test(line)).map((line) => line.replace(/^.*<bob> /, ""));
    assert.deepEqual(messages, ["before the cut", "missed 1", "missed 2", "missed 3"]);
    bob.write("after the cut");
    await shows("#lobby <bob> after the cut");
  } finally {
    await dave.close();
    proxy.close();
  }
});

test("long messages cross the browser's WebSocket deflated, both ways", async () => {
  const { page: erin, proxy, shows } = await pageThroughProxy("erin");
  try {
    // 1,600 characters each way; Chromium offers permessage-deflate and the room server takes
    // it. Under 2 KiB, the server's own deflater writes what Chromium inflates.
    const long = (who: string) => `${who} says: ${"all work and no play makes a long line; ".repeat(40)}end`;
    const before = { ...proxy.carried };
    bob.write(long("bob"));
    await shows("<bob> bob says:");
    const down = proxy.carried.toClient - before.toClient;
    assert.ok(down < 800, `${down} bytes to the page for a 1,600-character message`);

    const from = bob.lines.length;
    const sent = { ...proxy.carried };
    await erin.fill("#input", long("erin"));
    await erin.press("#input", "Enter");
    await bob.waitForLine(/<erin> erin says: .*end$/, { from });
    const up = proxy.carried.toServer - sent.toServer;
    assert.ok(up < 800, `${up} bytes from the page for a 1,600-character message`);
  } finally {
    await erin.close();
    proxy.close();
  }
});
