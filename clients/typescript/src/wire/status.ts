/** Status codes of STMP 1.0: one byte on the wire. */
export const Code = {
  Ok: 0x00,
  Unknown: 0x01,
  NetworkError: 0x02,
  ProtocolError: 0x03,
  BadRequest: 0x20,
  Unauthorized: 0x21,
  NotFound: 0x22,
  RequestTimeout: 0x23,
  RequestEntityTooLarge: 0x24,
  TooManyRequests: 0x25,
  InternalServerError: 0x40,
  ServerShutdown: 0x41,
} as const;

/** One of the {@link Code} values. */
export type Code = (typeof Code)[keyof typeof Code];

const names = new Map<number, string>(Object.entries(Code).map(([name, code]) => [code, name]));

/** The code of this byte, or `undefined` for a byte STMP 1.0 does not define. */
export function codeFromByte(byte: number): Code | undefined {
  return names.has(byte) ? (byte as Code) : undefined;
}

/** The name of a code: `NotFound` for `0x22`. */
export function codeName(code: Code): string {
  return names.get(code) ?? `0x${code.toString(16)}`;
}

/**
 * An error with an STMP status: what a failed call rejects with, what a served method throws to
 * answer with a status other than `InternalServerError`, and what a refused handshake reports.
 *
 * ```ts
 * throw new StmpError(Code.NotFound, "no room #dev");
 * ```
 */
export class StmpError extends Error {
  constructor(
    readonly code: Code,
    message: string,
  ) {
    super(message);
    this.name = "StmpError";
  }

  override toString(): string {
    return `${codeName(this.code)}: ${this.message}`;
  }

  static protocol(message: string): StmpError {
    return new StmpError(Code.ProtocolError, message);
  }

  static tooLarge(message: string): StmpError {
    return new StmpError(Code.RequestEntityTooLarge, message);
  }

  static network(message: string): StmpError {
    return new StmpError(Code.NetworkError, message);
  }
}
