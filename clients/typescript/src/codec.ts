// Codecs: how messages become payloads. The server picks one per connection from the client's
// `Accept` list and names it in its handshake's `Content-Type`.

import {
  type DescMessage,
  type MessageShape,
  create,
  fromBinary,
  fromJsonString,
  toBinary,
  toJsonString,
} from "@bufbuild/protobuf";
import { fromUtf8, utf8 } from "./wire/bytes.js";
import { StmpError } from "./wire/status.js";

export interface Codec {
  /** The content type it is negotiated by. */
  readonly contentType: string;
  /** Whether its output is UTF-8 text, so it can ride in text packets. */
  readonly text: boolean;
  encode<D extends DescMessage>(schema: D, message: MessageShape<D>): Uint8Array;
  /** Decodes a payload; malformed input throws a BadRequest {@link StmpError}. */
  decode<D extends DescMessage>(schema: D, payload: Uint8Array): MessageShape<D>;
}

/** Protocol Buffers binary, `application/protobuf`. */
export const protobufCodec: Codec = {
  contentType: "application/protobuf",
  text: false,
  encode: (schema, message) => toBinary(schema, message),
  decode: (schema, payload) => {
    try {
      return fromBinary(schema, payload);
    } catch (error) {
      throw new StmpError(0x20, `cannot decode ${schema.typeName}: ${describe(error)}`);
    }
  },
};

/**
 * Protobuf's JSON mapping, `application/json`. Field names are written as in the `.proto`
 * (what the Rust server writes; it reads lowerCamel too), unknown fields are ignored so older
 * clients keep working against newer servers, and an empty payload is the empty message.
 */
export const jsonCodec: Codec = {
  contentType: "application/json",
  text: true,
  encode: (schema, message) => utf8(toJsonString(schema, message, { useProtoFieldName: true })),
  decode: (schema, payload) => {
    if (payload.length === 0) return create(schema);
    try {
      return fromJsonString(schema, fromUtf8(payload), { ignoreUnknownFields: true });
    } catch (error) {
      throw new StmpError(0x20, `cannot decode ${schema.typeName}: ${describe(error)}`);
    }
  },
};

/** The codecs this client speaks, in its default order of preference. */
export const CODECS: readonly Codec[] = [protobufCodec, jsonCodec];

export function codecFor(contentType: string): Codec | undefined {
  const wanted = contentType.split(";")[0]!.trim().toLowerCase();
  return CODECS.find((codec) => codec.contentType === wanted);
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
