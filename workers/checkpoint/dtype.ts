// Element types of safetensors files and conversion of raw little-endian bytes to the engine's
// storage types (f32 everywhere; f16 where the adapter has shader-f16).

export type StDtype = 'F64' | 'F32' | 'F16' | 'BF16' | 'I64' | 'I32' | 'I16' | 'I8' | 'U8' | 'BOOL' | 'F8_E4M3' | 'F8_E5M2';

export const DTYPE_BYTES: Record<StDtype, number> = {
  F64: 8, F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4, I16: 2, I8: 1, U8: 1, BOOL: 1, F8_E4M3: 1, F8_E5M2: 1,
};

export const FLOAT_DTYPES: ReadonlySet<StDtype> = new Set(['F32', 'F16', 'BF16']);

export function isStDtype(s: unknown): s is StDtype {
  return typeof s === 'string' && Object.prototype.hasOwnProperty.call(DTYPE_BYTES, s);
}

const f32buf = new Float32Array(1);
const u32buf = new Uint32Array(f32buf.buffer);

export function halfToFloat(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

/** Round-to-nearest-even float32 -> float16 bits. */
export function floatToHalf(v: number): number {
  f32buf[0] = v;
  const x = u32buf[0];
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  let e = exp - 127 + 15;
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    let half = mant >> shift;
    const rem = mant & ((1 << shift) - 1);
    const mid = 1 << (shift - 1);
    if (rem > mid || (rem === mid && half & 1)) half++;
    return sign | half;
  }
  let half = (e << 10) | (mant >> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && half & 1)) half++;
  return sign | half;
}

/** float16 bits of every value (round to nearest even). */
export function floatsToHalf(values: ArrayLike<number>): Uint16Array {
  const out = new Uint16Array(values.length);
  for (let i = 0; i < values.length; i++) out[i] = floatToHalf(values[i]);
  return out;
}

/** float32 values of float16 bits. */
export function halvesToFloat(bits: ArrayLike<number>): Float32Array {
  const out = new Float32Array(bits.length);
  for (let i = 0; i < bits.length; i++) out[i] = halfToFloat(bits[i]);
  return out;
}

/** Decode raw tensor bytes (little-endian) of a float dtype into float32. */
export function toFloat32(bytes: Uint8Array, dtype: StDtype): Float32Array {
  const n = bytes.byteLength / DTYPE_BYTES[dtype];
  const aligned = bytes.byteOffset % 8 === 0 ? bytes : bytes.slice();
  switch (dtype) {
    case 'F32':
      return new Float32Array(aligned.buffer, aligned.byteOffset, n).slice();
    case 'F16':
      return halvesToFloat(new Uint16Array(aligned.buffer, aligned.byteOffset, n));
    case 'BF16': {
      const src = new Uint16Array(aligned.buffer, aligned.byteOffset, n);
      const out = new Float32Array(n);
      const bits = new Uint32Array(out.buffer);
      for (let i = 0; i < n; i++) bits[i] = src[i] << 16;
      return out;
    }
    case 'F64': {
      const src = new Float64Array(aligned.buffer, aligned.byteOffset, n);
      return Float32Array.from(src);
    }
    default:
      throw new Error(`dtype ${dtype} is not a float type`);
  }
}

/** Decode raw float bytes into float16 bits (for the shader-f16 path). */
export function toFloat16Bits(bytes: Uint8Array, dtype: StDtype): Uint16Array {
  if (dtype === 'F16') {
    const aligned = bytes.byteOffset % 2 === 0 ? bytes : bytes.slice();
    return new Uint16Array(aligned.buffer, aligned.byteOffset, bytes.byteLength / 2).slice();
  }
  return floatsToHalf(toFloat32(bytes, dtype));
}

/** How many values of a tensor are NaN or infinite (0 for a sound tensor). */
export function countNonFinite(values: Float32Array): number {
  let bad = 0;
  for (let i = 0; i < values.length; i++) if (values[i] - values[i] !== 0) bad++;
  return bad;
}
