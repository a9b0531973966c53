// Method metadata: from a full method name to its numeric action id, exactly as the Rust and
// Go peers compute it.

import { utf8 } from "./bytes.js";

/**
 * The numeric action of a method that sets neither `(stmp.service)` nor `(stmp.method)`:
 * MurmurHash3 x86 32-bit, seed 0, of its full name `package.Service.Method`.
 *
 * ```ts
 * actionId("stmp.examples.quick_start.RoomService.JoinRoom") === 0x033648f7
 * ```
 */
export function actionId(fullMethodName: string): number {
  return murmur3X86_32(utf8(fullMethodName), 0);
}

/**
 * The numeric action of a method whose proto sets both `(stmp.service)` and `(stmp.method)`:
 * `service << 8 | method`. Ids beyond 2^53 are refused: a JavaScript number cannot hold them.
 */
export function optionActionId(serviceId: number | bigint, methodId: number): number {
  const id = (BigInt(serviceId) << 8n) | BigInt(methodId & 0xff);
  if (id > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new RangeError(`action id 0x${id.toString(16)} is larger than 2^53`);
  }
  return Number(id);
}

/** MurmurHash3, x86 32-bit variant. */
export function murmur3X86_32(data: Uint8Array, seed: number): number {
  const c1 = 0xcc9e2d51;
  const c2 = 0x1b873593;
  const mix = (k: number) => Math.imul(rotl(Math.imul(k, c1), 15), c2);
  let hash = seed >>> 0;
  const blocks = data.length >>> 2;
  for (let i = 0; i < blocks; i++) {
    const at = i * 4;
    const k = data[at]! | (data[at + 1]! << 8) | (data[at + 2]! << 16) | (data[at + 3]! << 24);
    hash ^= mix(k);
    hash = (Math.imul(rotl(hash, 13), 5) + 0xe6546b64) | 0;
  }
  const tail = blocks * 4;
  const rest = data.length - tail;
  let k = 0;
  if (rest >= 3) k ^= data[tail + 2]! << 16;
  if (rest >= 2) k ^= data[tail + 1]! << 8;
  if (rest >= 1) {
    k ^= data[tail]!;
    hash ^= mix(k);
  }
  hash ^= data.length;
  hash ^= hash >>> 16;
  hash = Math.imul(hash, 0x85ebca6b);
  hash ^= hash >>> 13;
  hash = Math.imul(hash, 0xc2b2ae35);
  hash ^= hash >>> 16;
  return hash >>> 0;
}

function rotl(x: number, r: number): number {
  return (x << r) | (x >>> (32 - r));
}
