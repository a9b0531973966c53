// The header block: `key:value;key:value`, multi-valued, with %-escaping of `:` `\n` `;` `%`.

import { fromUtf8, utf8 } from "./bytes.js";
import { StmpError } from "./status.js";

/**
 * A multi-valued header: ordered entries; a key may appear several times. Keys are compared
 * exactly (case-sensitive), as every STMP peer does.
 */
export class Header {
  private readonly entries: [string, string][] = [];

  /** A header from `[key, value]` pairs or a record of keys to a value or a list of values. */
  static from(init?: HeaderInit): Header {
    if (init instanceof Header) return init.clone();
    const header = new Header();
    if (!init) return header;
    const pairs = Array.isArray(init) ? init : Object.entries(init);
    for (const [key, value] of pairs) {
      for (const one of Array.isArray(value) ? value : [value]) header.append(key, one);
    }
    return header;
  }

  get(key: string): string | undefined {
    return this.entries.find(([k]) => k === key)?.[1];
  }

  getAll(key: string): string[] {
    return this.entries.filter(([k]) => k === key).map(([, v]) => v);
  }

  has(key: string): boolean {
    return this.entries.some(([k]) => k === key);
  }

  append(key: string, value: string): this {
    this.entries.push([key, value]);
    return this;
  }

  /** Sets `key` to this one value, replacing the values it had. */
  set(key: string, value: string): this {
    this.delete(key);
    return this.append(key, value);
  }

  delete(key: string): boolean {
    const before = this.entries.length;
    for (let i = this.entries.length - 1; i >= 0; i--) {
      if (this.entries[i]![0] === key) this.entries.splice(i, 1);
    }
    return this.entries.length !== before;
  }

  get size(): number {
    return this.entries.length;
  }

  [Symbol.iterator](): IterableIterator<[string, string]> {
    return this.entries.map(([k, v]) => [k, v] as [string, string])[Symbol.iterator]();
  }

  clone(): Header {
    return Header.from(this.entries);
  }

  /** The wire form as text (without a length prefix). */
  toWireString(): string {
    return this.entries.map(([k, v]) => `${escape(k)}:${escape(v)}`).join(";");
  }

  toWire(): Uint8Array {
    return utf8(this.toWireString());
  }

  /**
   * Parses a wire form. Empty segments are skipped; a pair without `:` or bytes that are not
   * UTF-8 are a ProtocolError.
   */
  static decode(src: Uint8Array): Header {
    let text: string;
    try {
      text = fromUtf8(src);
    } catch {
      throw StmpError.protocol("header is not valid UTF-8");
    }
    const header = new Header();
    for (const pair of text.split(";")) {
      if (pair === "") continue;
      const colon = pair.indexOf(":");
      if (colon < 0) throw StmpError.protocol(`header entry ${JSON.stringify(pair)} has no ':'`);
      header.entries.push([unescape(pair.slice(0, colon)), unescape(pair.slice(colon + 1))]);
    }
    return header;
  }
}

/** What a header can be made from. */
export type HeaderInit = Header | Iterable<readonly [string, string]> | Record<string, string | readonly string[]>;

const ESCAPES: Record<string, string> = { ":": "%3A", "\n": "%0A", ";": "%3B", "%": "%25" };
const UNESCAPES = new Map([
  ["3A", ":"],
  ["0A", "\n"],
  ["3B", ";"],
  ["25", "%"],
]);

/** Escapes the four special characters (also used for method names in the text form). */
export function escape(text: string): string {
  return text.replace(/[:\n;%]/g, (c) => ESCAPES[c]!);
}

/**
 * Undoes {@link escape}; a `%` that starts none of the four escapes is kept as it is. Runs on
 * every header entry of every packet: most have no `%` at all, and the rest are read in one
 * pass rather than through a regular expression with a callback per escape.
 */
export function unescape(text: string): string {
  let percent = text.indexOf("%");
  if (percent < 0) return text;
  let out = "";
  let copied = 0;
  while (percent >= 0 && percent + 2 < text.length) {
    const unescaped = UNESCAPES.get(text.slice(percent + 1, percent + 3).toUpperCase());
    if (unescaped !== undefined) {
      out += text.slice(copied, percent) + unescaped;
      copied = percent + 3;
      percent = text.indexOf("%", copied);
    } else {
      percent = text.indexOf("%", percent + 1);
    }
  }
  return out + text.slice(copied);
}
