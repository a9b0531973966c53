// What the end-to-end tests and the browser benchmark run: a real room-server and room-client
// (the Rust binaries), and headless Chromium driven by playwright-core. Every wait is on a
// condition with a deadline; nothing sleeps.

import { type ChildProcessWithoutNullStreams, spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { type BrowserContext, chromium } from "playwright-core";

const repo = fileURLToPath(new URL("../../../../", import.meta.url));

/** The Rust binaries: `cargo build -p room --bins` (or STMP_BIN_DIR) puts them there. */
export function binary(name: string): string {
  const dir = process.env.STMP_BIN_DIR ?? join(repo, "target", "debug");
  const path = join(dir, name);
  if (!existsSync(path)) throw new Error(`${path} is missing: run \`cargo build -p room --bins\` first`);
  return path;
}

const ANSI = /\x1b\[[0-9;]*m/g;

/** A child process whose output is kept, line by line, to wait on. */
export class Child {
  readonly lines: string[] = [];
  private readonly waiters = new Set<() => void>();
  private exited?: number | null;
  readonly process: ChildProcessWithoutNullStreams;

  constructor(
    readonly name: string,
    command: string,
    args: string[],
    env: Record<string, string> = {},
  ) {
    this.process = spawn(command, args, { env: { ...process.env, NO_COLOR: "1", ...env } });
    let partial = "";
    const read = (chunk: Buffer) => {
      const text = partial + chunk.toString("utf8");
      const parts = text.split("\n");
      partial = parts.pop() ?? "";
      for (const line of parts) this.lines.push(line.replace(ANSI, ""));
      this.wake();
    };
    this.process.stdout.on("data", read);
    this.process.stderr.on("data", read);
    this.process.on("exit", (code) => {
      this.exited = code;
      this.wake();
    });
  }

  private wake(): void {
    for (const waiter of [...this.waiters]) waiter();
  }

  /** The first line from `from` on that matches, waiting up to `timeout` ms. */
  waitForLine(pattern: RegExp, { from = 0, timeout = 20_000 } = {}): Promise<{ line: string; index: number; match: RegExpMatchArray }> {
    return new Promise((resolve, reject) => {
      const check = () => {
        for (let index = from; index < this.lines.length; index++) {
          const match = this.lines[index]!.match(pattern);
          if (match) {
            done();
            return resolve({ line: this.lines[index]!, index, match });
          }
        }
        if (this.exited !== undefined) {
          done();
          reject(new Error(`${this.name} exited (${this.exited}) before printing ${pattern}:\n${this.tail()}`));
        }
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`${this.name} printed no ${pattern} in ${timeout} ms:\n${this.tail()}`));
      }, timeout);
      const done = () => {
        clearTimeout(timer);
        this.waiters.delete(check);
      };
      this.waiters.add(check);
      check();
    });
  }

  tail(lines = 30): string {
    return this.lines.slice(-lines).join("\n");
  }

  write(line: string): void {
    this.process.stdin.write(`${line}\n`);
  }

  /** Stops it (SIGINT: the server shuts down gracefully) and waits for the exit. */
  stop(signal: NodeJS.Signals = "SIGINT", timeout = 20_000): Promise<void> {
    if (this.exited !== undefined) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.process.kill("SIGKILL");
        reject(new Error(`${this.name} did not stop in ${timeout} ms`));
      }, timeout);
      this.process.once("exit", () => {
        clearTimeout(timer);
        resolve();
      });
      this.process.kill(signal);
    });
  }
}

export interface RoomServer {
  child: Child;
  tcp: string;
  ws: string;
  web: string;
}

/** Starts room-server; `ports` pins the listeners (a restart), else port 0 everywhere. */
export async function startRoomServer(data: string, ports?: { tcp: string; ws: string; web: string }): Promise<RoomServer> {
  const addr = (url: string | undefined) => (url ? new URL(url).host : "127.0.0.1:0");
  const child = new Child("room-server", binary("room-server"), [
    "--tcp", addr(ports?.tcp),
    "--ws", addr(ports?.ws),
    "--web", addr(ports?.web),
    "--data", data,
  ], { RUST_LOG: "info,room=info" });
  const ready = await child.waitForLine(/chat server ready.*urls=(.*)$/);
  const urls = ready.match[1]!.split(/\s+/);
  const web = await child.waitForLine(/browser client.*url=(http:\/\/\S+)/);
  return {
    child,
    tcp: urls.find((u) => u.startsWith("tcp://"))!,
    ws: urls.find((u) => u.startsWith("ws://"))!,
    web: web.match[1]!,
  };
}

/** Headless Chromium from the system (Debian's `chromium`), with a fresh profile. */
export async function launchBrowser(): Promise<{ context: BrowserContext; close: () => Promise<void> }> {
  const profile = mkdtempSync(join(tmpdir(), "stmp-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    headless: true,
    args: [
      "--no-sandbox",
      "--headless",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
    timeout: 60_000,
  });
  return {
    context,
    close: async () => {
      await context.close();
      rmSync(profile, { recursive: true, force: true });
    },
  };
}

export function tempDir(): { path: string; remove: () => void } {
  const path = mkdtempSync(join(tmpdir(), "stmp-e2e-"));
  return { path, remove: () => rmSync(path, { recursive: true, force: true }) };
}
