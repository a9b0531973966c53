// Browser figures next to the Rust client's, on one room-server: round-trip p50/p99 of 1,000
// sequential calls (ChatService.ListMembers) and room-message events received per second while
// a Rust client floods the room (64 sends in flight), and what the page's main thread spent per
// event. Not a test: it prints a table.
//
//   cargo build --release -p room --bins --examples
//   STMP_BIN_DIR=../../target/release npm run bench

import { join } from "node:path";
import type { CDPSession, Page } from "playwright-core";
import { Child, binary, launchBrowser, startRoomServer, tempDir } from "../e2e/harness.js";

const CALLS = 1_000;
const EVENTS = 20_000;
const IN_FLIGHT = 64;
const STEP = 120_000;

interface Row {
  client: string;
  p50: number;
  p99: number;
  perSecond: number;
  /** The page's main thread per event received: all its tasks, and the JavaScript among them (µs). */
  mainThread?: { task: number; script: number };
}

async function main(): Promise<void> {
  process.env.STMP_BIN_DIR ??= join(process.cwd(), "..", "..", "target", "release");
  const dir = tempDir();
  const server = await startRoomServer(join(dir.path, "accounts.json"));
  const browser = await launchBrowser();
  const rows: Row[] = [];
  try {
    for (const format of ["binary", "text"] as const) {
      const page = await browser.context.newPage();
      await page.goto(`${server.web}?bench${format === "text" ? "&format=text" : ""}`);
      await page.fill("#name", `browser-${format}`);
      await page.fill("#password", "bench-secret");
      await page.check("#signup");
      await page.click("#signin-button");
      await page.locator("body[data-state=connected]").waitFor({ timeout: STEP });
      const calls = await browserCalls(page);
      const { perSecond, mainThread } = await browserEvents(page, server.ws, `events-${format}`);
      rows.push({ client: `browser, ws ${format}${format === "text" ? " (JSON)" : " (protobuf)"}`, ...calls, perSecond, mainThread });
      await page.close();
    }
    for (const [transport, url] of [["ws binary (protobuf)", server.ws], ["tcp (protobuf)", server.tcp]] as const) {
      const name = transport.split(" ")[0]!;
      const calls = await rustCalls(url, `rust-calls-${name}`);
      const perSecond = await rustEvents(url, server.ws, `rust-${name}`);
      rows.push({ client: `Rust room client, ${transport}`, ...calls, perSecond });
    }
  } finally {
    await browser.close();
    await server.child.stop();
    dir.remove();
  }
  console.log(`\n${CALLS} sequential calls (ListMembers) and ${EVENTS} room messages (${IN_FLIGHT} sends in flight), one room-server:\n`);
  console.log("| client | call p50 | call p99 | events/s received | main thread per event: tasks, of which script |");
  console.log("|---|---|---|---|---|");
  for (const row of rows) {
    const perEvent = row.mainThread ? `${row.mainThread.task.toFixed(1)} µs, ${row.mainThread.script.toFixed(1)} µs` : "–";
    console.log(
      `| ${row.client} | ${row.p50} µs | ${row.p99} µs | ${Math.round(row.perSecond).toLocaleString("en")} | ${perEvent} |`,
    );
  }
}

async function browserCalls(page: Page): Promise<{ p50: number; p99: number }> {
  return page.evaluate(async (count) => {
    const { chat } = (window as unknown as { roomApp: { chat: { joinRoom(i: object): Promise<unknown>; listMembers(i: object): Promise<unknown> } } }).roomApp;
    await chat.joinRoom({ room: "bench" });
    for (let i = 0; i < 100; i++) await chat.listMembers({ room: "bench" });
    const times: number[] = [];
    for (let i = 0; i < count; i++) {
      const start = performance.now();
      await chat.listMembers({ room: "bench" });
      times.push(performance.now() - start);
    }
    times.sort((a, b) => a - b);
    const at = (q: number) => Math.round(times[Math.floor((times.length - 1) * q)]! * 1000);
    return { p50: at(0.5), p99: at(0.99) };
  }, CALLS);
}

/**
 * Joins `room` in the page, floods it from Rust, and returns the page's events per second and
 * what its main thread spent per event, from Chromium's own counters (`Performance.getMetrics`).
 */
async function browserEvents(
  page: Page,
  url: string,
  room: string,
): Promise<{ perSecond: number; mainThread: { task: number; script: number } }> {
  await page.evaluate(
    async ({ room, count }) => {
      type App = { client: { listen(m: unknown, f: () => void): () => void }; chat: { joinRoom(i: object): Promise<unknown> }; events: { roomMessage: unknown } };
      const app = (window as unknown as { roomApp: App }).roomApp;
      await app.chat.joinRoom({ room });
      // Counts until `count` arrived or nothing came for a second (a server may drop events
      // for a slow consumer): the rate is over what arrived, first to last.
      (window as unknown as { received: Promise<{ n: number; perSecond: number }> }).received = new Promise((resolve) => {
        let first = 0;
        let last = 0;
        let n = 0;
        const finish = () => {
          stop();
          clearInterval(quiet);
          resolve({ n, perSecond: n < 2 ? 0 : (n - 1) / ((last - first) / 1000) });
        };
        const quiet = setInterval(() => n > 0 && performance.now() - last > 1_000 && finish(), 250);
        const stop = app.client.listen(app.events.roomMessage, () => {
          last = performance.now();
          if (n === 0) first = last;
          if (++n === count) finish();
        });
      });
    },
    { room, count: EVENTS },
  );
  const cdp = await page.context().newCDPSession(page);
  await cdp.send("Performance.enable");
  const before = await mainThreadSeconds(cdp);
  await flood(url, room);
  const received = await page.evaluate(() => (window as unknown as { received: Promise<{ n: number; perSecond: number }> }).received, undefined);
  const after = await mainThreadSeconds(cdp);
  await cdp.detach();
  const perEvent = (seconds: number) => (received.n === 0 ? 0 : (seconds * 1e6) / received.n);
  return {
    perSecond: received.perSecond,
    mainThread: { task: perEvent(after.task - before.task), script: perEvent(after.script - before.script) },
  };
}

/** The page's main-thread time so far, in seconds: all tasks, and script within them. */
async function mainThreadSeconds(cdp: CDPSession): Promise<{ task: number; script: number }> {
  const { metrics } = (await cdp.send("Performance.getMetrics")) as { metrics: { name: string; value: number }[] };
  const metric = (name: string) => metrics.find((m) => m.name === name)?.value ?? 0;
  return { task: metric("TaskDuration"), script: metric("ScriptDuration") };
}

async function flood(url: string, room: string): Promise<void> {
  const flooder = new Child("flooder", binary("examples/room-bench"), ["flood", url, `flood-${room}`, room, `${EVENTS}`, `${IN_FLIGHT}`]);
  await flooder.waitForLine(/^flood n=/, { timeout: STEP });
}

async function rustCalls(url: string, user: string): Promise<{ p50: number; p99: number }> {
  const child = new Child("room-bench", binary("examples/room-bench"), ["calls", url, user, `${CALLS}`]);
  const { match } = await child.waitForLine(/^calls .*p50_us=(\d+) p99_us=(\d+)/, { timeout: STEP });
  return { p50: Number(match[1]), p99: Number(match[2]) };
}

async function rustEvents(url: string, floodUrl: string, user: string): Promise<number> {
  const room = `events-${user}`;
  const child = new Child("room-bench", binary("examples/room-bench"), ["receive", url, user, room, `${EVENTS}`]);
  await child.waitForLine(/^ready/, { timeout: STEP });
  await flood(floodUrl, room);
  const { match } = await child.waitForLine(/^receive .*per_second=(\d+)/, { timeout: STEP });
  return Number(match[1]);
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
