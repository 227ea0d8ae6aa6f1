// What CLIP sees of an image, as CLIPImageProcessor prepares it: the shortest side resized to the
// model's size with an antialiased bicubic filter (as Pillow resamples), the centre cropped, then
// scaled to 0..1 and normalised per channel. Done here rather than by transformers.js's processor,
// whose resize differs between Node (sharp) and the browser (canvas); this one is the same everywhere.
import type { ImageData8 } from '../api/contract.ts';
import { EngineError } from '../api/errors.ts';
import { parseJsonObject, type Obj } from '../api/json.ts';

export const CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073];
export const CLIP_STD = [0.26862954, 0.26130258, 0.27577711];

export interface Preprocessing {
  shortestEdge: number;
  crop: { height: number; width: number };
  rescale: number;
  mean: number[];
  std: number[];
}


/** Reads preprocessor_config.json (both the `size: 224` and the `size: {shortest_edge}` forms). */
export function parsePreprocessorConfig(json: string): Preprocessing {
  // (a file holding `null` or a list is refused here too, not met as a TypeError below)
  const o = parseJsonObject(json, () => new EngineError('scorer', "The CLIP scorer's preprocessor_config.json is not a JSON object."));
  const dim = (v: unknown, key: string): number | undefined => {
    if (typeof v === 'number') return v;
    if (v && typeof v === 'object') return (v as Obj)[key] as number | undefined;
    return undefined;
  };
  const edge = dim(o.size, 'shortest_edge') ?? dim(o.size, 'height');
  const cropH = dim(o.crop_size, 'height') ?? edge;
  const cropW = dim(o.crop_size, 'width') ?? edge;
  const triple = (v: unknown, fallback: number[]) => (Array.isArray(v) && v.length === 3 && v.every((x) => typeof x === 'number' && Number.isFinite(x)) ? (v as number[]) : fallback);
  const ok = (n: unknown): n is number => typeof n === 'number' && Number.isInteger(n) && n >= 1 && n <= 4096;
  if (!ok(edge) || !ok(cropH) || !ok(cropW)) throw new EngineError('scorer', "The CLIP scorer's preprocessor_config.json has no usable size and crop_size.");
  const std = triple(o.image_std, CLIP_STD);
  if (std.some((s) => s <= 0)) throw new EngineError('scorer', "The CLIP scorer's image_std must be positive.");
  return {
    shortestEdge: edge,
    crop: { height: cropH, width: cropW },
    rescale: typeof o.rescale_factor === 'number' ? o.rescale_factor : 1 / 255,
    mean: o.do_normalize === false ? [0, 0, 0] : triple(o.image_mean, CLIP_MEAN),
    std: o.do_normalize === false ? [1, 1, 1] : std,
  };
}

/** The part of an image inside a rectangle (clamped to the image; at least one pixel). */
export function cropImage(img: ImageData8, r: { x: number; y: number; width: number; height: number }): ImageData8 {
  const x0 = Math.min(Math.max(0, Math.round(r.x)), img.width - 1);
  const y0 = Math.min(Math.max(0, Math.round(r.y)), img.height - 1);
  const w = Math.max(1, Math.min(img.width - x0, Math.round(r.width)));
  const h = Math.max(1, Math.min(img.height - y0, Math.round(r.height)));
  const data = new Uint8ClampedArray(w * h * 4);
  for (let y = 0; y < h; y++) data.set(img.data.subarray(((y0 + y) * img.width + x0) * 4, ((y0 + y) * img.width + x0 + w) * 4), y * w * 4);
  return { width: w, height: h, data };
}

function cubic(x: number): number {
  const a = -0.5;
  x = Math.abs(x);
  if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
  if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
  return 0;
}

/** Per output index: the first input index and the normalised weights (the filter widens when shrinking); `span` input pixels from `from` fill the output. */
function resampleTable(inSize: number, outSize: number, from = 0, span = inSize): { first: number; w: Float64Array }[] {
  const scale = span / outSize;
  const filterScale = Math.max(scale, 1);
  const support = 2 * filterScale;
  const out: { first: number; w: Float64Array }[] = [];
  for (let i = 0; i < outSize; i++) {
    const center = from + (i + 0.5) * scale;
    const lo = Math.max(0, Math.trunc(center - support + 0.5));
    const hi = Math.min(inSize, Math.trunc(center + support + 0.5));
    const w = new Float64Array(hi - lo);
    let sum = 0;
    for (let x = lo; x < hi; x++) sum += w[x - lo] = cubic((x - center + 0.5) / filterScale);
    for (let k = 0; k < w.length; k++) w[k] /= sum;
    out.push({ first: lo, w });
  }
  return out;
}

/**
 * Antialiased bicubic resize (Keys a = -0.5), rows then columns, rounded to 8 bits at the end; of the
 * rectangle `region` when given (the hires fix's and "only masked"'s cut outs), else the whole picture.
 */
export function resizeBicubic(img: ImageData8, width: number, height: number, region?: { x: number; y: number; width: number; height: number }): ImageData8 {
  const rows = resampleTable(img.width, width, region?.x, region?.width);
  const cols = resampleTable(img.height, height, region?.y, region?.height);
  const mid = new Float64Array(width * img.height * 3);
  for (let y = 0; y < img.height; y++) {
    for (let x = 0; x < width; x++) {
      const { first, w } = rows[x];
      for (let c = 0; c < 3; c++) {
        let s = 0;
        for (let k = 0; k < w.length; k++) s += w[k] * img.data[(y * img.width + first + k) * 4 + c];
        mid[(y * width + x) * 3 + c] = s;
      }
    }
  }
  const data = new Uint8ClampedArray(width * height * 4);
  for (let y = 0; y < height; y++) {
    const { first, w } = cols[y];
    for (let x = 0; x < width; x++) {
      for (let c = 0; c < 3; c++) {
        let s = 0;
        for (let k = 0; k < w.length; k++) s += w[k] * mid[((first + k) * width + x) * 3 + c];
        data[(y * width + x) * 4 + c] = Math.round(s);
      }
      data[(y * width + x) * 4 + 3] = 255;
    }
  }
  return { width, height, data };
}

/** The model input [3, cropH, cropW] (channel planes) for one RGBA image. */
export function clipPixels(img: ImageData8, p: Preprocessing): Float32Array {
  const short = Math.min(img.width, img.height);
  const long = Math.max(img.width, img.height);
  const longOut = Math.max(p.shortestEdge, Math.trunc((p.shortestEdge * long) / short));
  const [w, h] = img.width <= img.height ? [p.shortestEdge, longOut] : [longOut, p.shortestEdge];
  const resized = w === img.width && h === img.height ? img : resizeBicubic(img, w, h);
  const { height: ch, width: cw } = p.crop;
  const top = Math.floor((h - ch) / 2);
  const left = Math.floor((w - cw) / 2);
  const out = new Float32Array(3 * ch * cw);
  for (let c = 0; c < 3; c++) {
    for (let y = 0; y < ch; y++) {
      for (let x = 0; x < cw; x++) {
        const sy = y + top;
        const sx = x + left;
        // A crop larger than the resized image is padded with zeros, as the processor pads.
        const v = sy >= 0 && sy < h && sx >= 0 && sx < w ? resized.data[(sy * w + sx) * 4 + c] : 0;
        out[(c * ch + y) * cw + x] = (v * p.rescale - p.mean[c]) / p.std[c];
      }
    }
  }
  return out;
}
