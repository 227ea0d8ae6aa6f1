// An inpainting mask as text for scenes and share links: one byte per pixel, run-length coded
// (a byte value, then its run as an unsigned LEB128 varint), deflated (raw) where the platform has
// CompressionStream, then base64url. `r` before the data marks runs only, `z` runs deflated. Round
// trips are byte-exact for any bytes, not only 0 and 255. Decoding trusts nothing: the size, the text,
// the inflated length and every run are bounded, and a bad mask gets a sentence (MaskCodecError).
import { readCapped } from '../checkpoint/source.ts';
import { fromBase64UrlChecked, toBase64Url } from '../api/base64url.ts';

/** The largest frame a scene has (parseScene's 2048 a side). */
export const MAX_MASK_SIDE = 2048;

/** A mask as scenes keep it. */
export interface EncodedMask {
  width: number;
  height: number;
  /** `r` or `z`, then base64url. */
  data: string;
}

export class MaskCodecError extends Error {
  constructor(readonly problem: string) {
    super(`The inpainting mask cannot be read: ${problem}`);
    this.name = 'MaskCodecError';
  }
}

/** Runs of equal bytes: value, then the run length as LEB128. */
export function runLengths(mask: Uint8Array): Uint8Array {
  const out: number[] = [];
  let i = 0;
  while (i < mask.length) {
    const v = mask[i];
    let j = i + 1;
    while (j < mask.length && mask[j] === v) j++;
    out.push(v);
    for (let run = j - i; ; ) {
      const low = run & 0x7f;
      run = Math.floor(run / 128);
      if (run === 0) {
        out.push(low);
        break;
      }
      out.push(low | 0x80);
    }
    i = j;
  }
  return Uint8Array.from(out);
}

/** The mask the runs stand for, exactly `pixels` bytes; a MaskCodecError for runs that do not add up. */
export function fromRunLengths(runs: Uint8Array, pixels: number): Uint8Array {
  const mask = new Uint8Array(pixels);
  let at = 0;
  let i = 0;
  while (i < runs.length) {
    const v = runs[i++];
    let run = 0;
    let shift = 1;
    for (let k = 0; ; k++) {
      if (i >= runs.length) throw new MaskCodecError('its data stops in the middle of a run.');
      // a run never needs more than 4 varint bytes (2048 x 2048 < 2^28)
      if (k >= 4) throw new MaskCodecError('a run length is too long to be real.');
      const b = runs[i++];
      run += (b & 0x7f) * shift;
      shift *= 128;
      if (!(b & 0x80)) break;
    }
    if (run === 0) throw new MaskCodecError('a run has length 0.');
    if (at + run > pixels) throw new MaskCodecError(`its runs cover more than the ${pixels} pixels of the frame.`);
    mask.fill(v, at, at + run);
    at += run;
  }
  if (at !== pixels) throw new MaskCodecError(`its runs cover ${at} of the ${pixels} pixels of the frame.`);
  return mask;
}

const canDeflate = () => typeof CompressionStream !== 'undefined' && typeof DecompressionStream !== 'undefined';

async function pump(stream: CompressionStream | DecompressionStream, input: Uint8Array, cap: number): Promise<Uint8Array> {
  const writer = stream.writable.getWriter();
  writer.write(input as Uint8Array<ArrayBuffer>).catch(() => {});
  writer.close().catch(() => {});
  return readCapped(stream.readable, cap, () => new MaskCodecError(`its data unpacks to more than ${cap} bytes, more than any mask of its size needs.`));
}

function checkSize(width: unknown, height: unknown) {
  const ok = (v: unknown) => typeof v === 'number' && Number.isInteger(v) && v >= 1 && v <= MAX_MASK_SIDE;
  if (!ok(width) || !ok(height)) throw new MaskCodecError(`its size must be whole numbers from 1 to ${MAX_MASK_SIDE} (it is ${String(width).slice(0, 20)}x${String(height).slice(0, 20)}).`);
}

/** The mask (width x height bytes, row by row) as scene text: deflated runs where that is shorter. */
export async function encodeMask(mask: Uint8Array, width: number, height: number): Promise<EncodedMask> {
  checkSize(width, height);
  if (mask.length !== width * height) throw new MaskCodecError(`it has ${mask.length} bytes for a ${width}x${height} frame.`);
  const runs = runLengths(mask);
  let data = `r${toBase64Url(runs)}`;
  if (canDeflate()) {
    const packed = await pump(new CompressionStream('deflate-raw'), runs, Number.MAX_SAFE_INTEGER);
    if (packed.length < runs.length) data = `z${toBase64Url(packed)}`;
  }
  return { width, height, data };
}

/**
 * The mask bytes of scene text. `expect`: the frame it must fit (a scene's width and height);
 * `maxText`: the longest data accepted.
 */
export async function decodeMask(encoded: EncodedMask, expect?: { width: number; height: number }, maxText = 4 * MAX_MASK_SIDE * MAX_MASK_SIDE): Promise<Uint8Array> {
  const { width, height, data } = (encoded ?? {}) as Partial<EncodedMask>;
  checkSize(width, height);
  if (expect && (width !== expect.width || height !== expect.height)) throw new MaskCodecError(`it is ${width}x${height} but the frame is ${expect.width}x${expect.height}.`);
  if (typeof data !== 'string' || data.length < 1) throw new MaskCodecError('it has no data.');
  if (data.length > maxText) throw new MaskCodecError(`its data is ${data.length} characters long; at most ${maxText} are read.`);
  const kind = data[0];
  if (kind !== 'r' && kind !== 'z') throw new MaskCodecError(`its data starts with ${JSON.stringify(kind)}, not a known packing (r or z).`);
  const bytes = fromBase64UrlChecked(data.slice(1));
  if (typeof bytes === 'string') throw new MaskCodecError(bytes.replace('no share link', 'no mask'));
  const pixels = width! * height!;
  // runs of one pixel each are the longest honest data: two bytes a pixel
  const cap = 2 * pixels;
  let runs = bytes;
  if (kind === 'z') {
    if (!canDeflate()) throw new MaskCodecError('this browser cannot unpack deflated data (no DecompressionStream).');
    try {
      runs = await pump(new DecompressionStream('deflate-raw'), bytes, cap);
    } catch (e) {
      if (e instanceof MaskCodecError) throw e;
      throw new MaskCodecError('its data is damaged (it does not unpack).');
    }
  } else if (runs.length > cap) throw new MaskCodecError(`its runs take ${runs.length} bytes, more than any ${width}x${height} mask needs.`);
  return fromRunLengths(runs, pixels);
}
