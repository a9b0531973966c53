// One connection's engine, from the server's handshake to its Close: call bookkeeping, served
// methods, events, heartbeat decisions. It reads and writes through a `Transport` and never
// touches a socket itself, so tests drive it with plain function calls.

import { type DescMessage, type MessageInitShape, type MessageShape, create } from "@bufbuild/protobuf";
import type { Codec } from "./codec.js";
import { type Agreement, type Offer, agree } from "./handshake.js";
import { heartbeat } from "./heartbeat.js";
import { type Positions, positionOf } from "./history.js";
import type { CallContext, CallOptions, Caller, Method } from "./method.js";
import type { Registry } from "./registry.js";
import { fromUtf8Lossy, utf8 } from "./wire/bytes.js";
import { decodeServerHandshakeMessage, decodeServerHandshakeText } from "./wire/handshake.js";
import { Header } from "./wire/header.js";
import { type Action, type Packet, decodeMessage, encodeMessage } from "./wire/packet.js";
import { Code, StmpError } from "./wire/status.js";
import { decodeText, encodeText } from "./wire/text.js";

/** Where a connection's messages go: a WebSocket, or a test's recorder. */
export interface Transport {
  /** Sends one message: binary (`Uint8Array`) or text (`string`). */
  send(message: Uint8Array | string): void;
  /** Closes the transport; the connection has ended. */
  close(): void;
}

export interface ConnectionOptions {
  offer: Offer;
  registry: Registry;
  maxPacketSize: number;
  /** Default deadline of calls, in ms. */
  callTimeout: number;
  /** Read timeout, in ms: Ping after half of it without reading, give up after all of it. */
  readTimeout: number;
  /** How long a Close waits for the peer's Close, in ms. */
  closeGrace: number;
  now: () => number;
  /** The handshake is done. */
  onOpen?: (agreement: Agreement) => void;
  /** The connection has ended, with why. Called once. */
  onEnd?: (reason: StmpError) => void;
  /** An error that concerns no call (a listener threw…). */
  onError?: (error: unknown) => void;
  /** Stream positions, fed every notify before its listeners. */
  positions?: Positions;
}

interface Pending {
  output: DescMessage;
  resolve: (output: MessageShape<DescMessage>) => void;
  reject: (error: StmpError) => void;
  timer: ReturnType<typeof setTimeout>;
}

type State = "handshaking" | "open" | "closing" | "ended";

const MAX_MID = 0xffff;

export class Connection implements Caller {
  private state: State = "handshaking";
  private agreement?: Agreement;
  private readonly pending = new Map<number, Pending>();
  private lastMid = 0;
  private lastRead: number;
  private lastPing: number;
  private closeTimer?: ReturnType<typeof setTimeout>;

  constructor(
    private readonly transport: Transport,
    private readonly options: ConnectionOptions,
  ) {
    this.lastRead = options.now();
    this.lastPing = this.lastRead;
  }

  /** Whether the handshake is done and no Close was sent or received. */
  get isOpen(): boolean {
    return this.state === "open";
  }

  /** The codec the server chose (after the handshake). */
  get codec(): Codec | undefined {
    return this.agreement?.codec;
  }

  /** The number of calls waiting for their response. */
  get pendingCalls(): number {
    return this.pending.size;
  }

  /** One message from the transport. Nothing a peer sends makes this throw. */
  receive(message: Uint8Array | string): void {
    if (this.state === "ended") return;
    this.lastRead = this.options.now();
    try {
      const bytes = typeof message === "string" ? utf8(message) : message;
      if (this.state === "handshaking") return this.handshake(bytes);
      const packet =
        this.agreement!.format === "text"
          ? decodeText(bytes, this.options.maxPacketSize)
          : typeof message === "string"
            ? failText()
            : decodeMessage(bytes, this.options.maxPacketSize);
      this.dispatch(packet);
    } catch (error) {
      const status = error instanceof StmpError ? error : StmpError.protocol(String(error));
      if (this.state === "handshaking") return this.end(status);
      this.send({ kind: "close", status: status.code, reason: status.message });
      this.end(status);
    }
  }

  /** The transport closed under us. */
  transportClosed(): void {
    if (this.state === "closing") return this.end(new StmpError(Code.Ok, "closed"));
    this.end(StmpError.network("connection lost"));
  }

  /** Runs the heartbeat; the glue calls it every quarter of the read timeout. */
  tick(): void {
    if (this.state !== "open") return;
    const now = this.options.now();
    switch (heartbeat(now, this.lastRead, this.lastPing, this.options.readTimeout)) {
      case "close": {
        const reason = `read nothing for ${this.options.readTimeout} ms`;
        this.send({ kind: "close", status: Code.NetworkError, reason });
        this.end(StmpError.network(reason));
        break;
      }
      case "ping":
        this.lastPing = now;
        this.send({ kind: "ping" });
        break;
      case "wait":
        break;
    }
  }

  /** Sends a Close and ends when the peer answers with its own (or after the grace period). */
  close(status: Code = Code.Ok, reason = ""): void {
    if (this.state === "ended" || this.state === "closing") return;
    if (this.state === "handshaking") return this.end(new StmpError(status, reason || "closed"));
    this.send({ kind: "close", status, reason });
    this.state = "closing";
    this.failPending(StmpError.network(reason ? `connection closed: ${reason}` : "connection closed"));
    this.closeTimer = setTimeout(() => this.end(new StmpError(status, reason || "closed")), this.options.closeGrace);
  }

  call<I extends DescMessage, O extends DescMessage>(
    method: Method<I, O>,
    input: MessageInitShape<I>,
    options: CallOptions = {},
  ): Promise<MessageShape<O>> {
    return new Promise((resolve, reject) => {
      if (this.state !== "open") return reject(StmpError.network("the connection is not open"));
      let payload: Uint8Array;
      try {
        payload = this.encode(method.input, input);
      } catch (error) {
        return reject(error);
      }
      const mid = this.nextMid();
      if (mid === undefined) {
        return reject(new StmpError(Code.TooManyRequests, `${MAX_MID} calls are already waiting`));
      }
      const timeout = options.timeout ?? this.options.callTimeout;
      const timer = setTimeout(() => {
        if (this.pending.get(mid) !== entry) return;
        this.pending.delete(mid);
        reject(new StmpError(Code.RequestTimeout, `${method.name}: no response within ${timeout} ms`));
      }, timeout);
      const entry: Pending = {
        output: method.output,
        resolve: resolve as (output: MessageShape<DescMessage>) => void,
        reject,
        timer,
      };
      this.pending.set(mid, entry);
      this.send({
        kind: "request",
        mid,
        action: options.byName ? method.name : method.action,
        header: Header.from(options.header),
        payload,
      });
    });
  }

  notify<I extends DescMessage>(method: Method<I>, input: MessageInitShape<I>, options: CallOptions = {}): void {
    if (this.state !== "open") throw StmpError.network("the connection is not open");
    const payload = this.encode(method.input, input);
    const action = options.byName ? method.name : method.action;
    this.send({ kind: "notify", action, header: Header.from(options.header), payload });
  }

  private encode<D extends DescMessage>(schema: D, init: MessageInitShape<D>): Uint8Array {
    const payload = this.agreement!.codec.encode(schema, create(schema, init));
    if (payload.length > this.options.maxPacketSize) {
      throw StmpError.tooLarge(`${schema.typeName} of ${payload.length} bytes is over the limit`);
    }
    return payload;
  }

  /** The next free message id: counts up, wraps after 0xFFFF, skips 0 and ids still waiting. */
  private nextMid(): number | undefined {
    for (let tries = 0; tries < MAX_MID; tries++) {
      this.lastMid = (this.lastMid % MAX_MID) + 1;
      if (!this.pending.has(this.lastMid)) return this.lastMid;
    }
    return undefined;
  }

  private handshake(bytes: Uint8Array): void {
    const { offer, maxPacketSize } = this.options;
    const handshake =
      offer.format === "text"
        ? decodeServerHandshakeText(bytes, maxPacketSize)
        : decodeServerHandshakeMessage(bytes, maxPacketSize);
    this.agreement = agree(handshake, offer);
    this.state = "open";
    this.options.onOpen?.(this.agreement);
  }

  private dispatch(packet: Packet): void {
    switch (packet.kind) {
      case "ping":
        return this.send({ kind: "pong" });
      case "pong":
        return;
      case "response": {
        // A response nobody waits for (late, or Go's answer to a notify) is dropped.
        const pending = this.pending.get(packet.mid);
        if (!pending) return;
        this.pending.delete(packet.mid);
        clearTimeout(pending.timer);
        if (packet.status !== Code.Ok) {
          return pending.reject(new StmpError(packet.status, fromUtf8Lossy(packet.payload)));
        }
        try {
          pending.resolve(this.agreement!.codec.decode(pending.output, packet.payload));
        } catch (error) {
          pending.reject(error instanceof StmpError ? error : StmpError.protocol(String(error)));
        }
        return;
      }
      case "request":
        void this.serve(packet.mid, packet.action, packet.header, packet.payload);
        return;
      case "notify":
        return this.deliver(packet.action, packet.header, packet.payload);
      case "close":
        if (this.state === "open") this.send({ kind: "close", status: Code.Ok, reason: "" });
        return this.end(new StmpError(packet.status, packet.reason || "closed by the server"));
    }
  }

  private async serve(mid: number, action: Action, header: Header, payload: Uint8Array): Promise<void> {
    const served = this.options.registry.handlerOf(action);
    let response: Packet;
    if (!served) {
      response = { kind: "response", mid, status: Code.NotFound, header: new Header(), payload: utf8(`no method ${describeAction(action)}`) };
    } else {
      try {
        const codec = this.agreement!.codec;
        const input = codec.decode(served.method.input, payload);
        const output = await served.handler(input, this.context(served.method, header));
        const bytes = codec.encode(served.method.output, create(served.method.output, output));
        response = { kind: "response", mid, status: Code.Ok, header: new Header(), payload: bytes };
      } catch (error) {
        const status = error instanceof StmpError ? error : new StmpError(Code.InternalServerError, describeError(error));
        response = { kind: "response", mid, status: status.code, header: new Header(), payload: utf8(status.message) };
      }
    }
    if (this.state === "open") this.send(response);
  }

  private deliver(action: Action, header: Header, payload: Uint8Array): void {
    // Read once: the tracker and the listeners' context both want it.
    const position = positionOf(header);
    if (this.options.positions?.observe(action, header, position)) return;
    const listening = this.options.registry.listenersOf(action);
    if (!listening || listening.listeners.size === 0) return;
    let event: MessageShape<DescMessage>;
    try {
      event = this.agreement!.codec.decode(listening.method.input, payload);
    } catch (error) {
      return this.options.onError?.(error);
    }
    const context = this.context(listening.method, header, position);
    for (const listener of [...listening.listeners]) {
      try {
        listener(event, context);
      } catch (error) {
        this.options.onError?.(error);
      }
    }
  }

  private context(method: Method, header: Header, position = positionOf(header)): CallContext {
    return { method, header, connection: this, position };
  }

  private send(packet: Packet): void {
    const format = this.agreement?.format ?? "binary";
    try {
      this.transport.send(format === "text" ? fromUtf8Lossy(encodeText(packet)) : encodeMessage(packet));
    } catch (error) {
      this.end(StmpError.network(`cannot send: ${describeError(error)}`));
    }
  }

  private failPending(error: StmpError): void {
    const pending = [...this.pending.values()];
    this.pending.clear();
    for (const call of pending) {
      clearTimeout(call.timer);
      call.reject(error);
    }
  }

  private end(reason: StmpError): void {
    if (this.state === "ended") return;
    this.state = "ended";
    clearTimeout(this.closeTimer);
    this.failPending(StmpError.network(`connection closed: ${reason.message}`));
    try {
      this.transport.close();
    } catch {
      // Already closed.
    }
    this.options.onEnd?.(reason);
  }
}

function failText(): never {
  throw StmpError.protocol("a text message on a connection of binary packets");
}

function describeAction(action: Action): string {
  return typeof action === "string" ? action : `0x${action.toString(16).toUpperCase()}`;
}

function describeError(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
