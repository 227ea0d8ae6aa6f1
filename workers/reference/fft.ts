// Float64 twins of the spectrum kernels: a plain 2D DFT and the band amplitudes.

/** [re, im] interleaved spectrum of one real image [height, width], by the DFT's definition. */
export function dft2d(image: ArrayLike<number>, height: number, width: number): Float64Array {
  const out = new Float64Array(height * width * 2);
  for (let u = 0; u < height; u++)
    for (let v = 0; v < width; v++) {
      let re = 0;
      let im = 0;
      for (let y = 0; y < height; y++)
        for (let x = 0; x < width; x++) {
          const a = -2 * Math.PI * ((u * y) / height + (v * x) / width);
          re += image[y * width + x] * Math.cos(a);
          im += image[y * width + x] * Math.sin(a);
        }
      out[(u * width + v) * 2] = re;
      out[(u * width + v) * 2 + 1] = im;
    }
  return out;
}

/** Mean |F| above the cutoff radius (cycles per sample) and over everything. */
export function bandAmplitudes64(spectrum: Float64Array, height: number, width: number, cutoff: number): { high: number; all: number } {
  let high = 0;
  let nHigh = 0;
  let all = 0;
  for (let u = 0; u < height; u++)
    for (let v = 0; v < width; v++) {
      const amp = Math.hypot(spectrum[(u * width + v) * 2], spectrum[(u * width + v) * 2 + 1]);
      const fu = Math.min(u, height - u) / height;
      const fv = Math.min(v, width - v) / width;
      all += amp;
      if (Math.hypot(fu, fv) > cutoff) {
        high += amp;
        nHigh++;
      }
    }
  return { high: nHigh ? high / nHigh : 0, all: all / (height * width) };
}
