// Draws the PWA icons (public/icons/icon-192.png, icon-512.png): three overlapping concept boxes on
// the canvas colour, the studio's own picture of what it does. Run once; the PNGs are committed.
import { writeFileSync } from 'node:fs';
import { deflateSync } from 'node:zlib';
import { encodePng } from '../workers/engine/png.ts';

const BOXES: [number, number, number, number, [number, number, number]][] = [
  [0.14, 0.18, 0.5, 0.46, [228, 87, 46]],
  [0.38, 0.34, 0.5, 0.46, [23, 190, 187]],
  [0.24, 0.52, 0.42, 0.32, [255, 201, 20]],
];

for (const size of [192, 512]) {
  const rgba = new Uint8Array(size * size * 4);
  for (let y = 0; y < size; y++) {
    for (let x = 0; x < size; x++) {
      let c: [number, number, number] = [29, 31, 36];
      const u = x / size;
      const v = y / size;
      for (const [bx, by, bw, bh, col] of BOXES) {
        const inside = u >= bx && u < bx + bw && v >= by && v < by + bh;
        const edge = inside && (u < bx + 0.02 || u >= bx + bw - 0.02 || v < by + 0.02 || v >= by + bh - 0.02);
        if (edge) c = col;
        else if (inside) c = [Math.round(c[0] * 0.55 + col[0] * 0.45), Math.round(c[1] * 0.55 + col[1] * 0.45), Math.round(c[2] * 0.55 + col[2] * 0.45)];
      }
      rgba.set([...c, 255], (y * size + x) * 4);
    }
  }
  writeFileSync(`public/icons/icon-${size}.png`, await encodePng(rgba, size, size, {}, (d) => new Uint8Array(deflateSync(d))));
}
