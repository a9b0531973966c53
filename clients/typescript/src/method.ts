// What generated code describes: methods with their action ids and message schemas, and the
// interfaces calls go through.

import type { DescMessage, MessageInitShape, MessageShape } from "@bufbuild/protobuf";
import type { StreamPosition } from "./history.js";
import type { Header, HeaderInit } from "./wire/header.js";

/** A method of a service: its full name, its action id, and its input and output schemas. */
export interface Method<I extends DescMessage = DescMessage, O extends DescMessage = DescMessage> {
  /** `package.Service.Method`. */
  readonly name: string;
  /** The numeric action (MurmurHash3 of the name, or `service << 8 | method`). */
  readonly action: number;
  readonly input: I;
  readonly output: O;
}

export interface CallOptions {
  /** The deadline, in ms from now; `RequestTimeout` after it. Default: the client's. */
  timeout?: number;
  /** Request metadata. */
  header?: HeaderInit;
  /** Send the method's name instead of its numeric action. */
  byName?: boolean;
}

/** Something calls can be made through: a {@link Client}, or one connection of it. */
export interface Caller {
  call<I extends DescMessage, O extends DescMessage>(
    method: Method<I, O>,
    input: MessageInitShape<I>,
    options?: CallOptions,
  ): Promise<MessageShape<O>>;
  /** Sends a one-way message; it is never answered. */
  notify<I extends DescMessage>(method: Method<I>, input: MessageInitShape<I>, options?: CallOptions): void;
}

/** What a served method or a listener is told about the call. */
export interface CallContext {
  /** The method called. */
  readonly method: Method;
  /** The request's (or notify's) header. */
  readonly header: Header;
  /** The connection it came on: call the server back through it. */
  readonly connection: Caller;
  /** Where an event is in its stream, when it comes from a room with history. */
  readonly position?: StreamPosition;
}

export type Handler<I extends DescMessage, O extends DescMessage> = (
  input: MessageShape<I>,
  context: CallContext,
) => MessageInitShape<O> | Promise<MessageInitShape<O>>;

export type Listener<I extends DescMessage> = (event: MessageShape<I>, context: CallContext) => void;

/** Where methods served by the client and event listeners are registered; kept across reconnects. */
export interface Registrar {
  /** Serves `method` on every connection; returns what unregisters it. */
  serve<I extends DescMessage, O extends DescMessage>(method: Method<I, O>, handler: Handler<I, O>): () => void;
  /** Calls `listener` for every notify of `method`; returns what unsubscribes it. */
  listen<I extends DescMessage>(method: Method<I>, listener: Listener<I>): () => void;
}
