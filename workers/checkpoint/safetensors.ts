// The safetensors container: an 8-byte little-endian header length, a JSON header, then the tensor
// bytes. The reader validates the whole header before any tensor is read, so a hostile or cut-off
// file fails with a named error instead of a crash or a huge allocation.
import { SafetensorsFormatError, SafetensorsTruncatedError } from '../api/errors.ts';
import { DTYPE_BYTES, isStDtype, type StDtype } from './dtype.ts';
import type { ByteSource } from './source.ts';

/** Headers larger than this are refused: real ones are a few hundred KB. */
export const MAX_HEADER_BYTES = 100 * 1024 * 1024;

export interface TensorInfo {
  name: string;
  dtype: StDtype;
  shape: number[];
  /** Absolute byte offset in the file. */
  offset: number;
  byteLength: number;
}

export interface SafetensorsHeader {
  tensors: Map<string, TensorInfo>;
  metadata: Record<string, string>;
  /** Header length + 8: where tensor data starts. */
  dataStart: number;
}

export function parseHeaderLength(first8: Uint8Array, file: string, fileSize: number): number {
  if (first8.byteLength < 8) throw new SafetensorsFormatError(file, `the file is only ${fileSize} bytes long`);
  const view = new DataView(first8.buffer, first8.byteOffset, 8);
  const lo = view.getUint32(0, true);
  const hi = view.getUint32(4, true);
  const n = hi * 2 ** 32 + lo;
  if (n < 2 || n > MAX_HEADER_BYTES) {
    throw new SafetensorsFormatError(file, `the header length ${n} is outside 2..${MAX_HEADER_BYTES} bytes`);
  }
  if (8 + n > fileSize) {
    throw new SafetensorsFormatError(file, `the header length ${n} runs past the end of the ${fileSize}-byte file`);
  }
  return n;
}

/** Parse and validate the JSON header. `fileSize` is used to detect truncation. */
export function parseHeader(json: Uint8Array, file: string, fileSize: number): SafetensorsHeader {
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(json);
  } catch {
    throw new SafetensorsFormatError(file, 'the header is not valid UTF-8');
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    throw new SafetensorsFormatError(file, 'the header is not valid JSON');
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    throw new SafetensorsFormatError(file, 'the header is not a JSON object');
  }
  // JSON.parse keeps the last of two equal names; which tensor the file means is then a guess
  const twice = repeatedTopLevelKey(text);
  if (twice !== undefined) throw new SafetensorsFormatError(file, `the header describes the tensor ${JSON.stringify(twice.slice(0, 200))} twice`);
  const dataStart = 8 + json.byteLength;
  const dataSize = fileSize - dataStart;
  const tensors = new Map<string, TensorInfo>();
  let metadata: Record<string, string> = {};
  let needed = 0;
  let firstMissing = '';
  for (const [name, entry] of Object.entries(raw as Record<string, unknown>)) {
    if (name === '__metadata__') {
      metadata = parseMetadata(entry, file);
      continue;
    }
    const info = parseEntry(name, entry, file, dataStart);
    if (info.offset - dataStart + info.byteLength > dataSize && !firstMissing) firstMissing = name;
    needed = Math.max(needed, info.offset - dataStart + info.byteLength);
    tensors.set(name, info);
  }
  checkOverlaps(tensors, file);
  if (needed > dataSize) throw new SafetensorsTruncatedError(file, dataStart + needed, fileSize, firstMissing);
  return { tensors, metadata, dataStart };
}

/** The first name that appears twice among the top-level keys of valid JSON object text. */
export function repeatedTopLevelKey(text: string): string | undefined {
  const seen = new Set<string>();
  let depth = 0;
  let expectKey = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === '"') {
      let j = i + 1;
      while (text[j] !== '"') j += text[j] === '\\' ? 2 : 1;
      if (depth === 1 && expectKey) {
        const key = JSON.parse(text.slice(i, j + 1)) as string;
        if (seen.has(key)) return key;
        seen.add(key);
      }
      expectKey = false;
      i = j;
    } else if (c === '{' || c === '[') {
      depth++;
      expectKey = depth === 1;
    } else if (c === '}' || c === ']') depth--;
    else if (c === ',') expectKey = depth === 1;
  }
  return undefined;
}

function parseMetadata(entry: unknown, file: string): Record<string, string> {
  if (typeof entry !== 'object' || entry === null || Array.isArray(entry)) {
    throw new SafetensorsFormatError(file, '__metadata__ is not an object');
  }
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(entry)) {
    if (typeof v !== 'string') throw new SafetensorsFormatError(file, `metadata value "${k}" is not a string`);
    out[k] = v;
  }
  return out;
}

function parseEntry(name: string, entry: unknown, file: string, dataStart: number): TensorInfo {
  const e = entry as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
  if (typeof entry !== 'object' || entry === null) {
    throw new SafetensorsFormatError(file, `tensor "${name}" has no description`);
  }
  if (!isStDtype(e.dtype)) throw new SafetensorsFormatError(file, `tensor "${name}" has unknown dtype ${JSON.stringify(e.dtype)}`);
  const shape = e.shape;
  if (!Array.isArray(shape) || shape.length > 8 || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    throw new SafetensorsFormatError(file, `tensor "${name}" has an invalid shape ${JSON.stringify(shape)}`);
  }
  const offs = e.data_offsets;
  if (!Array.isArray(offs) || offs.length !== 2 || !offs.every((d) => Number.isSafeInteger(d) && d >= 0) || offs[1] < offs[0]) {
    throw new SafetensorsFormatError(file, `tensor "${name}" has invalid data_offsets ${JSON.stringify(offs)}`);
  }
  const elements = shape.reduce((a: number, b: number) => a * b, 1);
  const byteLength = offs[1] - offs[0];
  if (!Number.isSafeInteger(elements) || elements * DTYPE_BYTES[e.dtype] !== byteLength) {
    throw new SafetensorsFormatError(
      file,
      `tensor "${name}" of shape [${shape.join(', ')}] and dtype ${e.dtype} needs ${elements * DTYPE_BYTES[e.dtype]} bytes but its offsets span ${byteLength}`,
    );
  }
  return { name, dtype: e.dtype, shape: shape as number[], offset: dataStart + offs[0], byteLength };
}

function checkOverlaps(tensors: Map<string, TensorInfo>, file: string): void {
  const sorted = [...tensors.values()].filter((t) => t.byteLength > 0).sort((a, b) => a.offset - b.offset);
  for (let i = 1; i < sorted.length; i++) {
    const prev = sorted[i - 1];
    if (sorted[i].offset < prev.offset + prev.byteLength) {
      throw new SafetensorsFormatError(file, `tensors "${prev.name}" and "${sorted[i].name}" overlap`);
    }
  }
}

/** An open safetensors file: the header in memory, tensor bytes read on demand. */
export class SafetensorsFile {
  private constructor(readonly source: ByteSource, readonly header: SafetensorsHeader) {}

  static async open(source: ByteSource): Promise<SafetensorsFile> {
    const first8 = await source.read(0, 8);
    const n = parseHeaderLength(first8, source.name, source.size);
    const json = await source.read(8, n);
    return new SafetensorsFile(source, parseHeader(json, source.name, source.size));
  }

  get name(): string {
    return this.source.name;
  }
  get metadata(): Record<string, string> {
    return this.header.metadata;
  }
  keys(): string[] {
    return [...this.header.tensors.keys()];
  }
  info(key: string): TensorInfo | undefined {
    return this.header.tensors.get(key);
  }
  async bytes(key: string): Promise<Uint8Array> {
    const info = this.header.tensors.get(key);
    if (!info) throw new Error(`no tensor ${key} in ${this.name}`);
    const b = await this.source.read(info.offset, info.byteLength);
    if (b.byteLength !== info.byteLength) {
      throw new SafetensorsTruncatedError(this.name, info.offset + info.byteLength, this.source.size, key);
    }
    return b;
  }
}

export interface TensorToWrite {
  name: string;
  dtype: StDtype;
  shape: number[];
  data: Uint8Array;
}

/**
 * Encode tensors as safetensors. Returns the pieces in order (header, then each tensor's bytes) so a
 * writer can stream them without concatenating a large file in memory.
 */
export function encodeSafetensors(tensors: TensorToWrite[], metadata: Record<string, string> = {}): Uint8Array[] {
  const header: Record<string, unknown> = {};
  if (Object.keys(metadata).length) header.__metadata__ = metadata;
  let offset = 0;
  for (const t of tensors) {
    const expected = t.shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[t.dtype];
    if (expected !== t.data.byteLength) throw new Error(`tensor ${t.name}: ${t.data.byteLength} bytes, shape needs ${expected}`);
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + t.data.byteLength] };
    offset += t.data.byteLength;
  }
  let json = JSON.stringify(header);
  const enc = new TextEncoder();
  let jsonBytes = enc.encode(json);
  const pad = (8 - (jsonBytes.byteLength % 8)) % 8;
  if (pad) jsonBytes = enc.encode(json + ' '.repeat(pad));
  const head = new Uint8Array(8 + jsonBytes.byteLength);
  new DataView(head.buffer).setUint32(0, jsonBytes.byteLength, true);
  head.set(jsonBytes, 8);
  return [head, ...tensors.map((t) => t.data)];
}

export function concatBytes(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((a, p) => a + p.byteLength, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.byteLength;
  }
  return out;
}
