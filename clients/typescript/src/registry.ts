// The methods a client serves and the listeners of its events, by action and by name. Owned by
// the client, so they survive reconnects.

import type { DescMessage } from "@bufbuild/protobuf";
import type { Handler, Listener, Method, Registrar } from "./method.js";
import type { Action } from "./wire/packet.js";

interface Served {
  method: Method;
  handler: Handler<DescMessage, DescMessage>;
}

interface Listening {
  method: Method;
  listeners: Set<Listener<DescMessage>>;
}

export class Registry implements Registrar {
  private readonly served = new Map<number | string, Served>();
  private readonly listening = new Map<number | string, Listening>();

  serve<I extends DescMessage, O extends DescMessage>(method: Method<I, O>, handler: Handler<I, O>): () => void {
    const entry: Served = { method, handler: handler as unknown as Handler<DescMessage, DescMessage> };
    this.served.set(method.action, entry);
    this.served.set(method.name, entry);
    return () => {
      if (this.served.get(method.action) === entry) this.served.delete(method.action);
      if (this.served.get(method.name) === entry) this.served.delete(method.name);
    };
  }

  listen<I extends DescMessage>(method: Method<I>, listener: Listener<I>): () => void {
    let entry = this.listening.get(method.action);
    if (!entry) {
      entry = { method, listeners: new Set() };
      this.listening.set(method.action, entry);
      this.listening.set(method.name, entry);
    }
    const added = listener as unknown as Listener<DescMessage>;
    entry.listeners.add(added);
    const owner = entry;
    return () => {
      owner.listeners.delete(added);
    };
  }

  handlerOf(action: Action): Served | undefined {
    return this.served.get(action);
  }

  listenersOf(action: Action): Listening | undefined {
    return this.listening.get(action);
  }
}
