// The client: a WebSocket connection to an STMP server that comes back by itself. Calls wait
// for the connection up to their deadline; served methods and listeners live in the client,
// not in a connection, so they survive reconnects; `onConnect` re-runs sign-in and re-joins.

import type { DescMessage, MessageInitShape, MessageShape } from "@bufbuild/protobuf";
import { type BackoffOptions, fullJitterDelay } from "./backoff.js";
import { Connection, type Transport } from "./connection.js";
import { Positions, type Recovery, type StreamPosition } from "./history.js";
import { type Agreement, type Offer, type PacketFormat, defaultAccept, handshakeUrl } from "./handshake.js";
import type { CallOptions, Caller, Handler, Listener, Method, Registrar } from "./method.js";
import { Registry } from "./registry.js";
import { Header, type HeaderInit } from "./wire/header.js";
import { DEFAULT_MAX_PACKET_SIZE } from "./wire/packet.js";
import { Code, StmpError } from "./wire/status.js";

/** The parts of the WebSocket API the client uses (the browser's, Node 22's, or the `ws` package's). */
export interface WebSocketLike {
  binaryType: string;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: unknown) => void) | null;
  onerror: ((event: unknown) => void) | null;
  send(data: Uint8Array | string): void;
  close(): void;
}

export type WebSocketConstructor = new (url: string) => WebSocketLike;

export interface ClientOptions {
  /**
   * Handshake header keys (auth tokens…), sent in the upgrade URL's query. A function is asked
   * again before every connection, so a token obtained later is used after a reconnect.
   */
  header?: HeaderInit | (() => HeaderInit | undefined);
  /** `binary` (default) or `text` packets. */
  packetFormat?: PacketFormat;
  /** Content types to accept, most wanted first. Default: protobuf then JSON (JSON only for text). */
  accept?: readonly string[];
  /** Deadline of calls without one, in ms. Default 30 000. */
  callTimeout?: number;
  /** Read timeout in ms: Ping after half of it without reading, reconnect after all of it. Default 60 000. */
  readTimeout?: number;
  /** Largest packet accepted or sent. Default 16 MiB. */
  maxPacketSize?: number;
  /** Reconnect with full-jitter exponential backoff (default), or not at all. */
  reconnect?: BackoffOptions | false;
  /**
   * Runs on every new connection before calls made through the client go out: sign in,
   * re-join rooms. Call through the connection it is given. When it throws, the connection
   * is closed and the client tries again after a backoff.
   */
  onConnect?: (connection: Caller, agreement: Agreement) => void | Promise<void>;
  /**
   * Track the position of every stream (room with history) heard and resume them after a
   * reconnect: the server replays missed events before live ones. Default true.
   */
  history?: boolean;
  /** The server's answer to a resume after a reconnect; on `recovered: false`, reload that stream. */
  onRecovery?: (recovery: Recovery) => void;
  /** The WebSocket class; default `globalThis.WebSocket`. */
  WebSocket?: WebSocketConstructor;
  /** Errors that concern no call (a listener threw…). Default: `console.error`. */
  onError?: (error: unknown) => void;
  /** For tests: a source of randomness in [0, 1) for the backoff. */
  random?: () => number;
}

export interface ClientEvents {
  /** A connection is ready (after `onConnect`); `reconnect` is false for the first one. */
  connect: { agreement: Agreement; reconnect: boolean };
  /** The connection ended. */
  disconnect: { reason: StmpError };
  /** The next attempt is in `delay` ms. */
  reconnecting: { attempt: number; delay: number };
  /** A stream resumed after a reconnect: whether every missed event was replayed (they came first). */
  recovery: Recovery;
}

type Waiter = { resolve: (connection: Connection) => void; reject: (error: StmpError) => void };

/**
 * An STMP client over WebSocket.
 *
 * ```ts
 * const client = new Client("ws://127.0.0.1:7002/room", {
 *   onConnect: (connection) => new AccountServiceClient(connection).signIn({ name, password }),
 * });
 * ChatEventsListener.listen(client, { roomMessage: (event) => show(event) });
 * await new ChatServiceClient(client).joinRoom({ room: "lobby" });
 * ```
 */
export class Client implements Caller, Registrar {
  private readonly registry = new Registry();
  private readonly options: Required<Omit<ClientOptions, "header" | "onConnect" | "WebSocket" | "reconnect" | "accept" | "onRecovery">> &
    ClientOptions;
  private readonly offer: Omit<Offer, "header">;
  private readonly positions?: Positions;
  private current?: Connection;
  private attempt = 0;
  private everConnected = false;
  private closed = false;
  private lastError?: StmpError;
  private reconnectTimer?: ReturnType<typeof setTimeout>;
  private heartbeatTimer?: ReturnType<typeof setInterval>;
  private waiters: Waiter[] = [];
  private readonly handlers: { [K in keyof ClientEvents]: Set<(event: ClientEvents[K]) => void> } = {
    connect: new Set(),
    disconnect: new Set(),
    reconnecting: new Set(),
    recovery: new Set(),
  };

  constructor(
    readonly url: string,
    options: ClientOptions = {},
  ) {
    this.options = {
      packetFormat: "binary",
      callTimeout: 30_000,
      readTimeout: 60_000,
      maxPacketSize: DEFAULT_MAX_PACKET_SIZE,
      onError: (error) => console.error("stmp:", error),
      random: Math.random,
      history: true,
      ...options,
    };
    if (this.options.history) {
      this.positions = new Positions((recovery) => {
        this.options.onRecovery?.(recovery);
        this.emit("recovery", recovery);
      });
    }
    const format = this.options.packetFormat;
    this.offer = { format, accept: options.accept ?? defaultAccept(format) };
    this.connect();
  }

  /** Whether a connection is ready now. */
  get isConnected(): boolean {
    return this.current !== undefined;
  }

  /** Subscribes to a client event; returns what unsubscribes. */
  on<K extends keyof ClientEvents>(event: K, handler: (event: ClientEvents[K]) => void): () => void {
    this.handlers[event].add(handler);
    return () => this.handlers[event].delete(handler);
  }

  /** The last position heard on `stream` (a room with history). */
  position(stream: string): StreamPosition | undefined {
    return this.positions?.get(stream);
  }

  /** Stops resuming `stream` after reconnects (after leaving the room, say). */
  forgetPosition(stream: string): boolean {
    return this.positions?.forget(stream) ?? false;
  }

  /** Resolves when a connection is ready; rejects after `timeout` ms or when the client closes. */
  async ready(timeout = this.options.callTimeout): Promise<void> {
    await this.connection(Date.now() + timeout);
  }

  call<I extends DescMessage, O extends DescMessage>(
    method: Method<I, O>,
    input: MessageInitShape<I>,
    options: CallOptions = {},
  ): Promise<MessageShape<O>> {
    const timeout = options.timeout ?? this.options.callTimeout;
    const deadline = Date.now() + timeout;
    const current = this.current;
    if (current) return current.call(method, input, { ...options, timeout });
    return this.connection(deadline).then((connection) =>
      connection.call(method, input, { ...options, timeout: Math.max(0, deadline - Date.now()) }),
    );
  }

  /** Sends a one-way message; while disconnected it waits for the connection up to the call timeout. */
  notify<I extends DescMessage>(method: Method<I>, input: MessageInitShape<I>, options: CallOptions = {}): void {
    const send = (connection: Connection) => connection.notify(method, input, options);
    if (this.current) return send(this.current);
    this.connection(Date.now() + (options.timeout ?? this.options.callTimeout))
      .then(send)
      .catch((error) => this.options.onError(error));
  }

  serve<I extends DescMessage, O extends DescMessage>(method: Method<I, O>, handler: Handler<I, O>): () => void {
    return this.registry.serve(method, handler);
  }

  listen<I extends DescMessage>(method: Method<I>, listener: Listener<I>): () => void {
    return this.registry.listen(method, listener);
  }

  /** Closes the connection for good (a Close with `Ok`); waiting calls fail. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.reconnectTimer);
    this.current?.close(Code.Ok, "client closed");
    this.current = undefined;
    const error = StmpError.network("the client is closed");
    for (const waiter of this.waiters.splice(0)) waiter.reject(error);
  }

  private emit<K extends keyof ClientEvents>(event: K, payload: ClientEvents[K]): void {
    for (const handler of [...this.handlers[event]]) {
      try {
        handler(payload);
      } catch (error) {
        this.options.onError(error);
      }
    }
  }

  /** The ready connection, waiting for it until `deadline`. */
  private connection(deadline: number): Promise<Connection> {
    if (this.current) return Promise.resolve(this.current);
    if (this.closed) return Promise.reject(StmpError.network("the client is closed"));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== waiter);
        const why = this.lastError ? `: ${this.lastError.message}` : "";
        reject(new StmpError(Code.RequestTimeout, `not connected to ${this.url} in time${why}`));
      }, Math.max(0, deadline - Date.now()));
      const waiter: Waiter = {
        resolve: (connection) => {
          clearTimeout(timer);
          resolve(connection);
        },
        reject: (error) => {
          clearTimeout(timer);
          reject(error);
        },
      };
      this.waiters.push(waiter);
    });
  }

  private connect(): void {
    if (this.closed) return;
    const init = typeof this.options.header === "function" ? this.options.header() : this.options.header;
    const header = Header.from(init);
    if (this.positions) {
      header.delete("stmp-resume");
      for (const [key, value] of this.positions.handshakeEntries()) header.append(key, value);
    }
    const offer: Offer = { ...this.offer, header };
    const WebSocketClass = this.options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!WebSocketClass) {
      throw new Error("no WebSocket here: pass options.WebSocket (Node 20: the `ws` package or --experimental-websocket)");
    }
    let socket: WebSocketLike;
    try {
      socket = new WebSocketClass(handshakeUrl(this.url, offer));
    } catch (error) {
      // A malformed URL fails every attempt the same way: report it as the reason and stop.
      this.lastError = StmpError.network(`cannot open ${this.url}: ${String(error)}`);
      this.closed = true;
      for (const waiter of this.waiters.splice(0)) waiter.reject(this.lastError);
      return;
    }
    socket.binaryType = "arraybuffer";
    const transport: Transport = { send: (message) => socket.send(message), close: () => socket.close() };
    const connection: Connection = new Connection(transport, {
      offer,
      registry: this.registry,
      maxPacketSize: this.options.maxPacketSize,
      callTimeout: this.options.callTimeout,
      readTimeout: this.options.readTimeout,
      closeGrace: 1_000,
      now: Date.now,
      onOpen: (agreement) => void this.opened(connection, agreement),
      onEnd: (reason) => this.ended(connection, reason),
      onError: this.options.onError,
      positions: this.positions,
    });
    socket.onmessage = (event) => {
      const data = event.data;
      connection.receive(typeof data === "string" ? data : new Uint8Array(data as ArrayBuffer));
    };
    socket.onclose = () => connection.transportClosed();
    socket.onerror = () => {
      // A close event follows; the connection ends there.
    };
  }

  private async opened(connection: Connection, agreement: Agreement): Promise<void> {
    clearInterval(this.heartbeatTimer);
    this.heartbeatTimer = setInterval(() => connection.tick(), this.options.readTimeout / 4);
    try {
      await this.options.onConnect?.(connection, agreement);
    } catch (error) {
      const status = error instanceof StmpError ? error : new StmpError(Code.Unknown, String(error));
      this.options.onError(new StmpError(status.code, `onConnect failed: ${status.message}`));
      connection.close(Code.Ok, "onConnect failed");
      return;
    }
    if (!connection.isOpen || this.closed) return;
    this.current = connection;
    this.attempt = 0;
    const reconnect = this.everConnected;
    this.everConnected = true;
    for (const waiter of this.waiters.splice(0)) waiter.resolve(connection);
    this.emit("connect", { agreement, reconnect });
  }

  private ended(connection: Connection, reason: StmpError): void {
    clearInterval(this.heartbeatTimer);
    this.lastError = reason;
    const wasCurrent = this.current === connection;
    if (wasCurrent) this.current = undefined;
    if (wasCurrent || !this.closed) this.emit("disconnect", { reason });
    if (this.closed || this.options.reconnect === false) {
      this.closed = true;
      for (const waiter of this.waiters.splice(0)) waiter.reject(StmpError.network(`disconnected: ${reason.message}`));
      return;
    }
    const attempt = this.attempt++;
    const delay = fullJitterDelay(attempt, this.options.reconnect ?? {}, this.options.random);
    this.emit("reconnecting", { attempt: attempt + 1, delay });
    this.reconnectTimer = setTimeout(() => this.connect(), delay);
  }
}
