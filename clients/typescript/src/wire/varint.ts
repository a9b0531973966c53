// Unsigned LEB128 varints, as Go's binary.PutUvarint and protobuf write them.
//
// Values are JavaScript numbers: exact up to 2^53. Every id this client sends is within that
// (generated code refuses larger action ids); a larger value read from a peer is kept inexact,
// which can only make it an unknown action, never a registered one.

import type { ByteWriter } from "./bytes.js";

export const MAX_VARINT_LEN = 10;

export function putUvarint(out: ByteWriter, value: number): void {
  if (!Number.isSafeInteger(value) || value < 0) {
    throw new RangeError(`varint value ${value} is not a safe unsigned integer`);
  }
  while (value >= 0x80) {
    out.byte((value % 0x80) | 0x80);
    value = Math.floor(value / 0x80);
  }
  out.byte(value);
}

export function uvarintLength(value: number): number {
  let length = 1;
  while (value >= 0x80) {
    value = Math.floor(value / 0x80);
    length++;
  }
  return length;
}

/** The varint at `src[at]`: its value and length; `undefined` while incomplete; "overflow". */
export function getUvarint(
  src: Uint8Array,
  at: number,
): { value: number; length: number } | undefined | "overflow" {
  let value = 0;
  let scale = 1;
  for (let index = 0; index < MAX_VARINT_LEN; index++) {
    if (at + index >= src.length) return undefined;
    const byte = src[at + index]!;
    if (index === MAX_VARINT_LEN - 1 && byte > 1) return "overflow";
    value += (byte & 0x7f) * scale;
    scale *= 0x80;
    if (byte < 0x80) return { value, length: index + 1 };
  }
  return "overflow";
}
