// The chat room in a browser: the same service the terminal client uses, through stmp-client.
// Signs in, joins rooms, sends messages and direct messages, shows events, and answers the
// server's `PresenceService.Status` calls (what `/who` shows). After a server restart the
// client reconnects by itself and `onConnect` signs in and re-joins again.

import { Client, type Caller, StmpError, codeName } from "stmp-client";
import {
  AccountServiceClient,
  ChatEventsListener,
  ChatEventsMethods,
  ChatServiceClient,
  PresenceServiceServer,
} from "../../gen/room_stmp.js";
import type { WhoList } from "../../gen/room_pb.js";

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;

const params = new URLSearchParams(location.search);
const textPackets = params.get("format") === "text";
// `?bench`: room messages are counted by the benchmark, not written to the page.
const quiet = params.has("bench");
const rooms = new Set<string>();
let current = "";
let lastActivity = Date.now();
let me = "";

function log(kind: string, text: string): void {
  const line = document.createElement("div");
  line.className = kind;
  line.dataset.kind = kind;
  line.textContent = `${new Date().toLocaleTimeString()} ${text}`;
  const box = $("log");
  box.append(line);
  box.scrollTop = box.scrollHeight;
}

function showRooms(): void {
  $("joined").textContent = rooms.size ? [...rooms].map((r) => (r === current ? `#${r}*` : `#${r}`)).join(" ") : "none";
}

function describe(error: unknown): string {
  return error instanceof StmpError ? `${codeName(error.code)}: ${error.message}` : String(error);
}

/** Where the server's WebSocket is: `?ws=` or what the page's server says in config.json. */
async function serverUrl(): Promise<string> {
  const given = params.get("ws");
  if (given) return given;
  const config = (await (await fetch("config.json")).json()) as { ws_port: number; ws_path: string };
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  return `${scheme}://${location.hostname}:${config.ws_port}${config.ws_path}`;
}

async function start(name: string, password: string, signUp: boolean): Promise<void> {
  let needsAccount = signUp;
  let signedInOnce = false;
  let signInError: unknown;
  const client = new Client(await serverUrl(), {
    packetFormat: textPackets ? "text" : "binary",
    callTimeout: 10_000,
    reconnect: { baseDelay: 200, maxDelay: 5_000 },
    // Every connection, the first and each one after a reconnect: sign in, then re-join.
    onConnect: async (connection: Caller) => {
      try {
        const accounts = new AccountServiceClient(connection);
        const credentials = { name, password };
        const session = needsAccount ? await accounts.signUp(credentials) : await accounts.signIn(credentials);
        needsAccount = false;
        signedInOnce = true;
        me = session.user;
      } catch (error) {
        // A refused first sign-in is the user's to fix, not something to retry.
        if (!signedInOnce) {
          signInError = error;
          queueMicrotask(() => client.close());
        }
        throw error;
      }
      const chat = new ChatServiceClient(connection);
      for (const room of rooms) await chat.joinRoom({ room });
    },
  });
  // A handle for the benchmark and for poking around in the console.
  (window as unknown as { roomApp: unknown }).roomApp = { client, chat: new ChatServiceClient(client), events: ChatEventsMethods };

  ChatEventsListener.listen(client, {
    userJoined: (e) => log("event", `${e.user} joined #${e.room}`),
    userLeft: (e) => log("event", `${e.user} left #${e.room} (${e.reason})`),
    roomMessage: (e) => quiet || log("message", `#${e.room} <${e.sender}> ${e.text}`),
    directMessage: (e) => log("dm", e.sender === me ? `(to ${e.recipient}) ${e.text}` : `(from ${e.sender}) ${e.text}`),
  });
  PresenceServiceServer.register(client, {
    status: () => {
      const idle = Math.floor((Date.now() - lastActivity) / 1000);
      return {
        state: idle < 60 ? "active" : "idle",
        idleSeconds: BigInt(idle),
        transport: textPackets ? "ws (text, browser)" : "ws (browser)",
        agent: `stmp-client/${navigator.userAgent.includes("Headless") ? "headless " : ""}browser`,
      };
    },
  });
  client.on("connect", ({ reconnect, agreement }) => {
    $("status").textContent = `connected (${agreement.codec.contentType}, ${agreement.format})`;
    $("me").textContent = me;
    log("event", reconnect ? `reconnected as ${me}; rooms re-joined: ${[...rooms].join(", ") || "none"}` : `signed in as ${me}`);
    $("signin").style.display = "none";
    $("chat").classList.add("on");
    document.body.dataset.state = "connected";
  });
  client.on("disconnect", ({ reason }) => {
    $("status").textContent = `disconnected: ${describe(reason)}`;
    document.body.dataset.state = "disconnected";
    if (me) log("error", `disconnected: ${describe(reason)}`);
  });
  // After a reconnect the server replays what each room missed (it shows as messages) and
  // says whether it could.
  client.on("recovery", ({ position, recovered }) => {
    log(
      recovered ? "event" : "error",
      recovered
        ? `#${position.stream}: caught up on what was said while you were away`
        : `#${position.stream}: some messages from while you were away are lost`,
    );
  });
  client.on("reconnecting", ({ attempt, delay }) => {
    $("status").textContent = `reconnecting (attempt ${attempt}, in ${delay} ms)`;
  });

  try {
    await client.ready(10_000);
  } catch (error) {
    client.close();
    throw signInError ?? error;
  }
  const chat = new ChatServiceClient(client);
  $("line").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $<HTMLInputElement>("input");
    const line = input.value.trim();
    input.value = "";
    lastActivity = Date.now();
    if (line) run(chat, line).catch((error) => log("error", describe(error)));
  });
}

async function run(chat: ChatServiceClient, line: string): Promise<void> {
  const [command, ...rest] = line.split(/\s+/);
  const arg = rest[0] ?? "";
  switch (line.startsWith("/") ? command : "") {
    case "/join": {
      const info = await chat.joinRoom({ room: arg });
      rooms.add(info.room);
      current = info.room;
      log("event", `joined #${info.room}: ${info.members.join(", ")}`);
      break;
    }
    case "/leave": {
      const room = arg || current;
      await chat.leaveRoom({ room });
      rooms.delete(room);
      if (current === room) current = [...rooms][0] ?? "";
      log("event", `left #${room}`);
      break;
    }
    case "/rooms": {
      const list = await chat.listRooms({});
      log("event", list.rooms.map((r) => `#${r.room} (${r.members.join(", ")})`).join("  ") || "no rooms");
      break;
    }
    case "/msg": {
      await chat.sendDirect({ user: arg, text: rest.slice(1).join(" ") });
      log("dm", `(to ${arg}) ${rest.slice(1).join(" ")}`);
      break;
    }
    case "/who":
      showWho(await chat.who({ room: arg }));
      break;
    case "":
      if (!current) throw new Error("join a room first: /join ROOM");
      await chat.sendMessage({ room: current, text: line });
      log("message", `#${current} <${me}> ${line}`);
      break;
    default:
      throw new Error(`unknown command ${command}`);
  }
  showRooms();
}

function showWho(list: WhoList): void {
  log("who", `who ${list.room ? `#${list.room}` : "(everyone)"}:`);
  for (const entry of list.entries) {
    const status = entry.status
      ? `${entry.status.state}, idle ${entry.status.idleSeconds}s, ${entry.status.transport}, ${entry.status.agent}`
      : `no answer: ${entry.error}`;
    log("who", `  ${entry.user} — ${status}`);
  }
}

$("signin").addEventListener("submit", (event) => {
  event.preventDefault();
  $("signin-error").textContent = "";
  const name = $<HTMLInputElement>("name").value.trim();
  const password = $<HTMLInputElement>("password").value;
  start(name, password, $<HTMLInputElement>("signup").checked).catch((error) => {
    $("signin-error").textContent = describe(error);
  });
});
document.addEventListener("keydown", () => (lastActivity = Date.now()));
