// PNG encoding of RGBA images (8-bit, no filter), with optional tEXt chunks. Deflate is the
// browser's CompressionStream by default; Node passes zlib's (its CompressionStream stalls for
// tens of seconds while V8 optimises onnxruntime's wasm on its background threads).

import { concatBytes } from '../checkpoint/safetensors.ts';

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

export function crc32(bytes: Uint8Array, crc = 0xffffffff): number {
  for (let i = 0; i < bytes.length; i++) crc = CRC_TABLE[(crc ^ bytes[i]) & 0xff] ^ (crc >>> 8);
  return crc >>> 0;
}

/** zlib deflate through the platform's CompressionStream (browsers). */
export async function streamDeflate(data: Uint8Array): Promise<Uint8Array> {
  const cs = new CompressionStream('deflate');
  const writer = cs.writable.getWriter();
  void writer.write(data as Uint8Array<ArrayBuffer>);
  void writer.close();
  const reader = cs.readable.getReader();
  const chunks: Uint8Array[] = [];
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
  }
  return concatBytes(chunks);
}

function chunk(type: string, data: Uint8Array): Uint8Array {
  const out = new Uint8Array(12 + data.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, data.length);
  for (let i = 0; i < 4; i++) out[4 + i] = type.charCodeAt(i);
  out.set(data, 8);
  view.setUint32(8 + data.length, (crc32(out.subarray(4, 8 + data.length)) ^ 0xffffffff) >>> 0);
  return out;
}

/** The text chunks a studio result carries: its scene (what a dropped PNG restores) and its report. */
export const SCENE_CHUNK = 'lorastudio.scene';
export const REPORT_CHUNK = 'lorastudio.report';

export type Deflate = (data: Uint8Array) => Promise<Uint8Array> | Uint8Array;

export async function encodePng(
  rgba: Uint8ClampedArray | Uint8Array,
  width: number,
  height: number,
  text: Record<string, string> = {},
  deflate: Deflate = streamDeflate,
): Promise<Uint8Array> {
  const ihdr = new Uint8Array(13);
  const v = new DataView(ihdr.buffer);
  v.setUint32(0, width);
  v.setUint32(4, height);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 6; // RGBA
  const raw = new Uint8Array(height * (width * 4 + 1));
  for (let y = 0; y < height; y++) {
    raw[y * (width * 4 + 1)] = 0;
    raw.set(rgba.subarray(y * width * 4, (y + 1) * width * 4), y * (width * 4 + 1) + 1);
  }
  const parts = [new Uint8Array([137, 80, 78, 71, 13, 10, 26, 10]), chunk('IHDR', ihdr)];
  for (const [k, val] of Object.entries(text)) {
    if (!/^[\x20-\x7e]{1,79}$/.test(k)) throw new Error(`PNG text keys are 1 to 79 printable ASCII characters; got ${JSON.stringify(k)}`);
    // tEXt is Latin-1; anything beyond ASCII goes in an (uncompressed) UTF-8 iTXt chunk
    if (/^[\x00-\x7f]*$/.test(val)) parts.push(chunk('tEXt', new TextEncoder().encode(`${k}\0${val}`)));
    else parts.push(chunk('iTXt', new TextEncoder().encode(`${k}\0\0\0\0\0${val}`)));
  }
  parts.push(chunk('IDAT', await deflate(raw)), chunk('IEND', new Uint8Array(0)));
  return concatBytes(parts);
}

export class PngError extends Error {
  /** What is wrong, without the opening words. */
  readonly problem: string;
  constructor(problem: string) {
    super(`This PNG cannot be read: ${problem}.`);
    this.name = 'PngError';
    this.problem = problem;
  }
}

const SIGNATURE = [137, 80, 78, 71, 13, 10, 26, 10];

/**
 * The text chunks of a PNG (tEXt, and uncompressed iTXt), checked: the signature, every chunk's
 * length against the file and its CRC. Only text chunks up to `maxText` bytes are decoded; image data
 * is skipped, never inflated. Compressed text (zTXt, compressed iTXt) is ignored.
 */
export function readPngText(bytes: Uint8Array, maxText = 1 << 20): Record<string, string> {
  if (bytes.length < 8 || SIGNATURE.some((b, i) => bytes[i] !== b)) throw new PngError('it is not a PNG file');
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out: Record<string, string> = {};
  const latin1 = new TextDecoder('latin1');
  const utf8 = new TextDecoder('utf-8', { fatal: true });
  let at = 8;
  let sawEnd = false;
  while (at < bytes.length) {
    if (at + 12 > bytes.length) throw new PngError('it is cut short inside a chunk header');
    const length = view.getUint32(at);
    const type = String.fromCharCode(...bytes.subarray(at + 4, at + 8));
    if (!/^[A-Za-z]{4}$/.test(type)) throw new PngError(`chunk type ${JSON.stringify(type)} at byte ${at} is damaged`);
    if (length > bytes.length - at - 12) throw new PngError(`its ${type} chunk claims ${length} bytes, past the end of the file`);
    const body = bytes.subarray(at + 8, at + 8 + length);
    const isText = type === 'tEXt' || type === 'iTXt';
    if (isText || type === 'IHDR' || type === 'IEND') {
      const crc = (crc32(bytes.subarray(at + 4, at + 8 + length)) ^ 0xffffffff) >>> 0;
      if (crc !== view.getUint32(at + 8 + length)) throw new PngError(`its ${type} chunk is damaged (checksum mismatch)`);
    }
    if (isText && length <= maxText) {
      const nul = body.indexOf(0);
      if (nul < 1 || nul > 79) throw new PngError(`a ${type} chunk has no valid keyword`);
      const key = latin1.decode(body.subarray(0, nul));
      if (type === 'tEXt') out[key] = latin1.decode(body.subarray(nul + 1));
      else if (body[nul + 1] === 0) {
        // iTXt: compression flag, method, language tag\0, translated keyword\0, then UTF-8 text
        const lang = body.indexOf(0, nul + 3);
        const translated = lang < 0 ? -1 : body.indexOf(0, lang + 1);
        if (translated < 0) throw new PngError('an iTXt chunk is damaged');
        try {
          out[key] = utf8.decode(body.subarray(translated + 1));
        } catch {
          throw new PngError('an iTXt chunk is not valid UTF-8');
        }
      }
    }
    at += 12 + length;
    if (type === 'IEND') {
      sawEnd = true;
      break;
    }
  }
  if (!sawEnd) throw new PngError('it is cut short (no end chunk)');
  return out;
}

export type Inflate = (data: Uint8Array, maxOutput: number) => Uint8Array;

const CHANNELS: Record<number, number> = { 0: 1, 2: 3, 4: 2, 6: 4 };

/**
 * The pixels of an 8-bit, non-interlaced PNG (grey, grey+alpha, RGB or RGBA) as RGBA: what reference
 * images in a testbed are. Sizes are checked before anything is allocated.
 */
export function decodePng(bytes: Uint8Array, inflate: Inflate, maxPixels = 4096 * 4096): { width: number; height: number; data: Uint8ClampedArray } {
  if (bytes.length < 8 || SIGNATURE.some((b, i) => bytes[i] !== b)) throw new PngError('it is not a PNG file');
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let at = 8;
  let header: { width: number; height: number; depth: number; color: number; interlace: number } | undefined;
  const idat: Uint8Array[] = [];
  for (;;) {
    if (at + 12 > bytes.length) throw new PngError('it is cut short inside a chunk header');
    const length = view.getUint32(at);
    const type = String.fromCharCode(...bytes.subarray(at + 4, at + 8));
    if (length > bytes.length - at - 12) throw new PngError(`its ${type} chunk claims ${length} bytes, past the end of the file`);
    const body = bytes.subarray(at + 8, at + 8 + length);
    if (type === 'IHDR') {
      const v = new DataView(body.buffer, body.byteOffset, body.byteLength);
      if (length !== 13) throw new PngError('its header chunk is damaged');
      header = { width: v.getUint32(0), height: v.getUint32(4), depth: body[8], color: body[9], interlace: body[12] };
    } else if (type === 'IDAT') idat.push(body);
    at += 12 + length;
    if (type === 'IEND') break;
  }
  if (!header) throw new PngError('it has no header chunk');
  const { width, height, depth, color, interlace } = header;
  const channels = CHANNELS[color];
  if (depth !== 8 || channels === undefined) throw new PngError(`it is a ${depth}-bit PNG of colour type ${color}; reference images must be 8-bit grey, RGB or RGBA (save it again as such)`);
  if (interlace) throw new PngError('it is interlaced; save it again without interlacing');
  if (width < 1 || height < 1 || width * height > maxPixels) throw new PngError(`it is ${width}x${height}; at most ${maxPixels} pixels are read`);
  const stride = width * channels;
  const raw = inflate(concatBytes(idat), height * (stride + 1));
  if (raw.length !== height * (stride + 1)) throw new PngError('its image data is cut short');
  const out = new Uint8ClampedArray(width * height * 4);
  let prev = new Uint8Array(stride);
  for (let y = 0; y < height; y++) {
    const filter = raw[y * (stride + 1)];
    const line = raw.slice(y * (stride + 1) + 1, (y + 1) * (stride + 1));
    for (let i = 0; i < stride; i++) {
      const a = i >= channels ? line[i - channels] : 0;
      const b = prev[i];
      const c = i >= channels ? prev[i - channels] : 0;
      let add: number;
      if (filter === 0) add = 0;
      else if (filter === 1) add = a;
      else if (filter === 2) add = b;
      else if (filter === 3) add = (a + b) >> 1;
      else if (filter === 4) {
        const p = a + b - c;
        const pa = Math.abs(p - a);
        const pb = Math.abs(p - b);
        const pc = Math.abs(p - c);
        add = pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
      } else throw new PngError(`row ${y} has the unknown filter ${filter}`);
      line[i] = (line[i] + add) & 0xff;
    }
    for (let x = 0; x < width; x++) {
      const o = (y * width + x) * 4;
      const s = x * channels;
      if (channels <= 2) {
        out[o] = out[o + 1] = out[o + 2] = line[s];
        out[o + 3] = channels === 2 ? line[s + 1] : 255;
      } else {
        out[o] = line[s];
        out[o + 1] = line[s + 1];
        out[o + 2] = line[s + 2];
        out[o + 3] = channels === 4 ? line[s + 3] : 255;
      }
    }
    prev = line;
  }
  return { width, height, data: out };
}
