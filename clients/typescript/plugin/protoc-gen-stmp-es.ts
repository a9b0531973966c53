#!/usr/bin/env node
// protoc-gen-stmp-es: the stmp layer of a .proto for stmp-client — per service, a typed
// `XxxClient` stub, an `XxxServer` registration (methods the page serves) and an
// `XxxListener` (events), with action ids computed exactly as the Rust generator does.
// Messages come from protoc-gen-es; `buf generate` runs both (see buf.gen.yaml).

import type { DescMethod, DescService } from "@bufbuild/protobuf";
import { BinaryReader, WireType } from "@bufbuild/protobuf/wire";
import { type GeneratedFile, type Schema, createEcmaScriptPlugin, runNodeJs } from "@bufbuild/protoplugin";
import { actionId, optionActionId } from "../src/wire/action.js";

/** The extension numbers of proto/stmp/options.proto (those of stmp-go). */
const SERVICE_ID = 0x554501;
const SERVICE_KIND = 0x554502;
const METHOD_ID = 0x554502;

const RUNTIME = "stmp-client";

function upperFirst(name: string): string {
  return name.charAt(0).toUpperCase() + name.slice(1);
}

function lowerFirst(name: string): string {
  return name.charAt(0).toLowerCase() + name.slice(1);
}

/** The value of an unknown varint option field, if it is set. */
function varintOption(unknown: readonly { no: number; wireType: WireType; data: Uint8Array }[] | undefined, no: number): bigint | undefined {
  const field = unknown?.findLast((f) => f.no === no && f.wireType === WireType.Varint);
  return field ? new BinaryReader(field.data).uint64() as bigint : undefined;
}

function unknownOf(options: object | undefined): { no: number; wireType: WireType; data: Uint8Array }[] | undefined {
  return (options as { $unknown?: { no: number; wireType: WireType; data: Uint8Array }[] } | undefined)?.$unknown;
}

/** `(stmp.kind)`, or the kind by the name's suffix, as the Rust generator and stmp-go decide. */
function kindOf(service: DescService): { service: boolean; events: boolean } {
  const field = unknownOf(service.proto.options)?.findLast(
    (f) => f.no === SERVICE_KIND && f.wireType === WireType.LengthDelimited,
  );
  if (field) {
    const reader = new BinaryReader(new BinaryReader(field.data).bytes());
    const kind = { service: false, events: false };
    while (reader.pos < reader.len) {
      const [no, wireType] = reader.tag();
      if (no === 1 && wireType === WireType.Varint) kind.service = reader.bool();
      else if (no === 2 && wireType === WireType.Varint) kind.events = reader.bool();
      else reader.skip(wireType, no);
    }
    return kind;
  }
  if (service.name.endsWith("Service")) return { service: true, events: false };
  if (service.name.endsWith("Events")) return { service: false, events: true };
  return { service: true, events: true };
}

/** The full name the wire uses: `package.Service.Method`, names with their first letter upper-cased. */
function fullName(method: DescMethod): string {
  const service = method.parent;
  const pkg = service.file.proto.package;
  const name = `${upperFirst(service.name)}.${upperFirst(method.name)}`;
  return pkg ? `${pkg}.${name}` : name;
}

function actionOf(method: DescMethod): number {
  const serviceId = varintOption(unknownOf(method.parent.proto.options), SERVICE_ID);
  const methodId = varintOption(unknownOf(method.proto.options), METHOD_ID);
  if (serviceId !== undefined && methodId !== undefined) {
    if (methodId > 255n) throw new Error(`${fullName(method)}: (stmp.method) ${methodId} is over 255`);
    return optionActionId(serviceId, Number(methodId));
  }
  return actionId(fullName(method));
}

function hex(id: number): string {
  return `0x${id.toString(16).toUpperCase().padStart(8, "0")}`;
}

function generateTs(schema: Schema): void {
  for (const file of schema.files) {
    if (file.services.length === 0) continue;
    const f = schema.generateFile(`${file.name}_stmp.ts`);
    f.preamble(file);
    for (const service of file.services) generateService(f, service);
  }
}

function generateService(f: GeneratedFile, service: DescService): void {
  const Method = f.import("Method", RUNTIME, true);
  const kind = kindOf(service);
  const methodsName = `${service.name}Methods`;
  // The method table every part below uses.
  f.print(f.jsDoc(`The methods of ${service.typeName}, with their action ids.`));
  f.print(f.export("const", methodsName), " = {");
  for (const method of service.methods) {
    if (method.methodKind !== "unary") {
      throw new Error(`${fullName(method)}: streaming methods are not supported by stmp`);
    }
    const input = f.importSchema(method.input);
    const output = f.importSchema(method.output);
    f.print("  ", lowerFirst(method.localName), ": {");
    f.print("    name: ", f.string(fullName(method)), ",");
    f.print("    action: ", hex(actionOf(method)), ",");
    f.print("    input: ", input, ",");
    f.print("    output: ", output, ",");
    f.print("  } satisfies ", Method, "<typeof ", input, ", typeof ", output, ">,");
  }
  f.print("} as const;");
  f.print();
  if (kind.service) {
    generateClient(f, service, methodsName);
    generateServer(f, service, methodsName);
  }
  if (kind.events) generateListener(f, service, methodsName);
}

function generateClient(f: GeneratedFile, service: DescService, methods: string): void {
  const Caller = f.import("Caller", RUNTIME, true);
  const CallOptions = f.import("CallOptions", RUNTIME, true);
  const MessageInitShape = f.import("MessageInitShape", "@bufbuild/protobuf", true);
  f.print(f.jsDoc(`Calls ${service.typeName} through a client or a connection.`));
  f.print(f.export("class", `${service.name}Client`), " {");
  f.print("  constructor(private readonly caller: ", Caller, ") {}");
  for (const method of service.methods) {
    const name = lowerFirst(method.localName);
    f.print();
    f.print(f.jsDoc(method, "  "));
    f.print("  ", name, "(input: ", MessageInitShape, "<typeof ", f.importSchema(method.input), ">, options?: ", CallOptions, "): Promise<", f.importShape(method.output), "> {");
    f.print("    return this.caller.call(", methods, ".", name, ", input, options);");
    f.print("  }");
  }
  f.print("}");
  f.print();
}

function generateServer(f: GeneratedFile, service: DescService, methods: string): void {
  const Registrar = f.import("Registrar", RUNTIME, true);
  const CallContext = f.import("CallContext", RUNTIME, true);
  const MessageInitShape = f.import("MessageInitShape", "@bufbuild/protobuf", true);
  const name = `${service.name}Server`;
  f.print(f.jsDoc(`${service.typeName} served by this side: implement it, then \`${name}.register(client, impl)\`.`));
  f.print(f.export("interface", name), " {");
  for (const method of service.methods) {
    f.print(f.jsDoc(method, "  "));
    f.print("  ", lowerFirst(method.localName), "(input: ", f.importShape(method.input), ", context: ", CallContext, "): ",
      MessageInitShape, "<typeof ", f.importSchema(method.output), "> | Promise<", MessageInitShape, "<typeof ", f.importSchema(method.output), ">>;");
  }
  f.print("}");
  f.print();
  f.print(f.export("const", name), " = {");
  f.print("  /** Serves every method of `impl` on every connection of `client`; returns what unregisters them. */");
  f.print("  register(client: ", Registrar, ", impl: ", name, "): () => void {");
  f.print("    const undo = [");
  for (const method of service.methods) {
    const m = lowerFirst(method.localName);
    f.print("      client.serve(", methods, ".", m, ", (input, context) => impl.", m, "(input, context)),");
  }
  f.print("    ];");
  f.print("    return () => undo.forEach((unregister) => unregister());");
  f.print("  },");
  f.print("};");
  f.print();
}

function generateListener(f: GeneratedFile, service: DescService, methods: string): void {
  const Registrar = f.import("Registrar", RUNTIME, true);
  const CallContext = f.import("CallContext", RUNTIME, true);
  const name = `${service.name}Listener`;
  f.print(f.jsDoc(`Events of ${service.typeName}: implement the ones you want, then \`${name}.listen(client, listener)\`.`));
  f.print(f.export("interface", name), " {");
  for (const method of service.methods) {
    f.print(f.jsDoc(method, "  "));
    f.print("  ", lowerFirst(method.localName), "?(event: ", f.importShape(method.input), ", context: ", CallContext, "): void;");
  }
  f.print("}");
  f.print();
  f.print(f.export("const", name), " = {");
  f.print("  /** Calls `listener` for the events it implements, on every connection of `client`; returns what unsubscribes. */");
  f.print("  listen(client: ", Registrar, ", listener: ", name, "): () => void {");
  f.print("    const undo: (() => void)[] = [];");
  for (const method of service.methods) {
    const m = lowerFirst(method.localName);
    f.print("    if (listener.", m, ") undo.push(client.listen(", methods, ".", m, ", (event, context) => listener.", m, "?.(event, context)));");
  }
  f.print("    return () => undo.forEach((unsubscribe) => unsubscribe());");
  f.print("  },");
  f.print("};");
  f.print();
}

runNodeJs(
  createEcmaScriptPlugin({
    name: "protoc-gen-stmp-es",
    version: "v0.1.0",
    generateTs,
  }),
);
