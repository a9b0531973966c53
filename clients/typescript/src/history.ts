// Recovery of stream events after a reconnect, the client's half: the last position heard on
// each stream (a room with history), presented in the next handshake, and the server's answer.
// Pure bookkeeping over header entries; the connection feeds it every notify.

import type { Action } from "./wire/packet.js";
import type { Header } from "./wire/header.js";

/** The header key of an event's position (and of the position notify's). */
export const POSITION = "stmp-position";
/** The handshake key of a position to resume (one entry per stream). */
export const RESUME = "stmp-resume";
/** The handshake key by which the client says it tracks positions. */
export const SUPPORTS = "stmp-history";
/** The position notify's outcome: `true` or `false`. */
export const RECOVERED = "stmp-recovered";
/** The method of the position notify the server sends after a join. */
export const POSITION_METHOD = "stmp.History.Position";
/**
 * Resume entries sent at most. They ride in the upgrade URL's query, so the budget is half the
 * Rust client's (which sends HTTP headers): the request line stays well inside server limits.
 */
export const MAX_RESUME_ENTRIES = 64;
export const MAX_RESUME_BYTES = 4 * 1024;

/** A place in a stream: the offset of the last event seen, within an epoch. */
export interface StreamPosition {
  readonly stream: string;
  readonly epoch: string;
  readonly offset: number;
}

/** The server's answer to a resume: `recovered` is false when missed events are lost for good. */
export interface Recovery {
  readonly position: StreamPosition;
  readonly recovered: boolean;
}

/** `s=<stream>&e=<epoch>&o=<offset>`, form-urlencoded (the same bytes as the Rust side). */
export function positionToValue(position: StreamPosition): string {
  return new URLSearchParams([
    ["s", position.stream],
    ["e", position.epoch],
    ["o", String(position.offset)],
  ]).toString();
}

/** Reads a position value; undefined unless it has a stream, an epoch and a decimal offset. */
export function parsePosition(value: string | undefined): StreamPosition | undefined {
  if (value === undefined) return undefined;
  const [stream, epoch, offsetText] = formFields(value, ["s", "e", "o"]);
  if (stream === undefined || epoch === undefined || offsetText === undefined || !/^[0-9]{1,16}$/.test(offsetText)) {
    return undefined;
  }
  const offset = Number(offsetText);
  if (!Number.isSafeInteger(offset)) return undefined;
  return { stream, epoch, offset };
}

/**
 * The first value of each of `names` in a form-urlencoded string, as `URLSearchParams` reads
 * it (`+` is a space, `%XX` a byte of UTF-8). Every event of a room with history carries one
 * such value, and in a browser `URLSearchParams` is a call into the engine's C++: parsed here
 * in plain JavaScript, with `URLSearchParams` kept for what `decodeURIComponent` refuses (a
 * stray `%`, bytes that are not UTF-8), where the two read differently.
 */
export function formFields(value: string, names: readonly string[]): (string | undefined)[] {
  const found: (string | undefined)[] = names.map(() => undefined);
  let left = names.length;
  try {
    for (let start = 0; start <= value.length && left > 0; ) {
      let end = value.indexOf("&", start);
      if (end < 0) end = value.length;
      if (end > start) {
        const pair = value.slice(start, end);
        const equals = pair.indexOf("=");
        const name = formDecode(equals < 0 ? pair : pair.slice(0, equals));
        const index = names.indexOf(name);
        if (index >= 0 && found[index] === undefined) {
          found[index] = equals < 0 ? "" : formDecode(pair.slice(equals + 1));
          left--;
        }
      }
      start = end + 1;
    }
    return found;
  } catch {
    const params = new URLSearchParams(value);
    return names.map((name) => params.get(name) ?? undefined);
  }
}

/** One form-urlencoded name or value; throws (`URIError`) where `URLSearchParams` would read it otherwise. */
function formDecode(text: string): string {
  if (text.indexOf("+") >= 0) text = text.replaceAll("+", " ");
  return text.indexOf("%") < 0 ? text : decodeURIComponent(text);
}

/** The position a notify's header carries, if it comes from a stream. */
export function positionOf(header: Header): StreamPosition | undefined {
  return parsePosition(header.get(POSITION));
}

/** Positions by stream, the most recently updated last. */
export class Positions {
  private readonly byStream = new Map<string, StreamPosition>();

  constructor(private readonly onRecovery?: (recovery: Recovery) => void) {}

  /**
   * Records the position of an incoming notify; returns true when it was the position notify,
   * which is the tracker's and reaches no listener. `position` is the header's, when the
   * caller has read it already.
   */
  observe(action: Action, header: Header, position: StreamPosition | undefined = positionOf(header)): boolean {
    if (!position) return false;
    this.byStream.delete(position.stream);
    this.byStream.set(position.stream, position);
    if (action !== POSITION_METHOD) return false;
    const recovered = header.get(RECOVERED);
    if (recovered === "true" || recovered === "false") {
      this.onRecovery?.({ position, recovered: recovered === "true" });
    }
    return true;
  }

  get(stream: string): StreamPosition | undefined {
    return this.byStream.get(stream);
  }

  forget(stream: string): boolean {
    return this.byStream.delete(stream);
  }

  /** The handshake entries: support, then the newest positions within the budget. */
  handshakeEntries(): [string, string][] {
    const entries: [string, string][] = [[SUPPORTS, "1"]];
    let bytes = 0;
    for (const position of [...this.byStream.values()].reverse()) {
      if (entries.length > MAX_RESUME_ENTRIES) break;
      const value = positionToValue(position);
      bytes += RESUME.length + value.length + 2;
      if (bytes > MAX_RESUME_BYTES) break;
      entries.push([RESUME, value]);
    }
    return entries;
  }
}
