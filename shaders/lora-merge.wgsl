// LoRA merge: for every weight segment of a pass,
//   merged[r, c] = base[r, c] + sum_t scale_t * delta_t[r, c]
// where delta_t = up_t @ down_t (LoRA, LoCon), or (up_t @ down_t) * (up2_t @ down2_t) elementwise
// (LoHa), or kron(w1_t, up_t @ down_t) (LoKr). A DoRA term replaces delta_t by its difference
// g * (base + alpha_t * delta_t) - base, g the per-channel gain m / ||base + alpha_t * delta_t||
// worked out once on the CPU (the norm needs the whole channel; the gain does not change with the
// strength). A weight is a row-major [rows, cols] matrix (a convolution [out, in, kh, kw] is
// [out, in*kh*kw]). One workgroup computes a 16 x 32 tile of one segment, two adjacent columns
// per thread; the 16 threads of a tile row read the same `up` value and neighbouring `down` values,
// so the factors come from cache. (Staging them through workgroup memory measured 3 to 12 times
// slower here: the barriers cost more than the loads they save at LoRA ranks.) A pass may cover many
// segments (the batched form) or one (the direct form); workgroups find their segment by binary
// search over the segments' first-tile indices. A segment with no terms is copied bit for bit.
// The weight storage type (f32, or f16 packed in pairs) comes from lora-weights-*.wgsl, appended.

struct Pass {
  segFirst: u32,
  segCount: u32,
  tilesX: u32,
  tiles: u32,
}

struct Segment {
  baseOffset: u32, // elements into `base`
  outOffset: u32, // elements into `merged`
  rows: u32,
  cols: u32,
  termStart: u32,
  termCount: u32,
  tileStart: u32, // first tile of this segment, counted from the pass's first tile
  tileCols: u32, // tiles across one row of tiles
}

struct Term {
  up: u32, // f32 offset of up [rows, rank] in `factors` (LoKr: of the second factor's up)
  down: u32, // f32 offset of down [rank, cols]
  rank: u32, // LoKr: 0 when the second factor is stored whole at `up`
  kind: u32, // 0: up @ down; 1: LoHa, times up2 @ down2 elementwise; 2: LoKr, kron(w1, up @ down)
  a: u32, // LoHa: up2; LoKr: f32 offset of w1 [w1Rows, w1Cols]
  b: u32, // LoHa: down2; LoKr: w1Rows
  c: u32, // LoHa: rank2; LoKr: w1Cols
  scale: f32,
  gains: u32, // DoRA: f32 offset of the gains
  dora: u32, // 0: not DoRA; 1: a gain per row (output channel); 2: a gain per input channel
  kernel: u32, // DoRA per input channel: the columns of one channel (kh * kw)
  alpha: f32, // DoRA: alpha / rank inside the norm (`scale` is then the multiplier alone)
}

const TILE_ROWS = 16u;
const TILE_COLS = 32u;

@group(0) @binding(0) var<uniform> pass_: Pass;
@group(0) @binding(1) var<storage, read> segments: array<Segment>;
@group(0) @binding(2) var<storage, read> terms: array<Term>;
@group(0) @binding(3) var<storage, read> factors: array<f32>;
@group(0) @binding(4) var<storage, read> base: array<WeightWord>;
@group(0) @binding(5) var<storage, read_write> merged: array<WeightWord>;

fn findSegment(tile: u32) -> u32 {
  var lo = pass_.segFirst;
  var hi = pass_.segFirst + pass_.segCount - 1u;
  while (lo < hi) {
    let mid = (lo + hi + 1u) / 2u;
    if (segments[mid].tileStart <= tile) {
      lo = mid;
    } else {
      hi = mid - 1u;
    }
  }
  return lo;
}

// (up @ down) at (row, col) and (row, col + 1); a column past the edge reads as zero.
fn lowRankProduct(up: u32, down: u32, rank: u32, cols: u32, row: u32, col: u32) -> vec2<f32> {
  var acc = vec2<f32>(0.0);
  let upRow = up + row * rank;
  let second = col + 1u < cols;
  for (var k = 0u; k < rank; k++) {
    let a = factors[upRow + k];
    let d = down + k * cols + col;
    acc += a * vec2<f32>(factors[d], select(0.0, factors[d + 1u], second));
  }
  return acc;
}

// The LoKr second factor at (j, l), [rows / w1Rows, w2Cols].
fn kronSecond(term: Term, w2Cols: u32, j: u32, l: u32) -> f32 {
  if (term.rank == 0u) {
    return factors[term.up + j * w2Cols + l];
  }
  var acc = 0.0;
  for (var k = 0u; k < term.rank; k++) {
    acc += factors[term.up + j * term.rank + k] * factors[term.down + k * w2Cols + l];
  }
  return acc;
}

// kron(w1, w2) at (row, col): row = i * w2Rows + j, col = k * w2Cols + l gives w1[i, k] * w2[j, l].
// (A convolution's kernel positions are the fastest part of l, which is torch.kron's order too.)
fn kronElement(term: Term, rows: u32, cols: u32, row: u32, col: u32) -> f32 {
  let w2Rows = rows / term.b;
  let w2Cols = cols / term.c;
  let w1 = factors[term.a + (row / w2Rows) * term.c + col / w2Cols];
  return w1 * kronSecond(term, w2Cols, row % w2Rows, col % w2Cols);
}

fn termDelta(term: Term, rows: u32, cols: u32, row: u32, col: u32) -> vec2<f32> {
  let second = col + 1u < cols;
  if (term.kind == 2u) {
    var p = vec2<f32>(kronElement(term, rows, cols, row, col), 0.0);
    if (second) {
      p.y = kronElement(term, rows, cols, row, col + 1u);
    }
    return p;
  }
  var p = lowRankProduct(term.up, term.down, term.rank, cols, row, col);
  if (term.kind == 1u) {
    p *= lowRankProduct(term.a, term.b, term.c, cols, row, col);
  }
  return p;
}

fn doraGains(term: Term, cols: u32, row: u32, col: u32) -> vec2<f32> {
  if (term.dora == 1u) {
    return vec2<f32>(factors[term.gains + row]);
  }
  var g = vec2<f32>(factors[term.gains + col / term.kernel], 1.0);
  if (col + 1u < cols) {
    g.y = factors[term.gains + (col + 1u) / term.kernel];
  }
  return g;
}

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let tile = wid.x + wid.y * pass_.tilesX;
  if (tile >= pass_.tiles) {
    return;
  }
  let s = findSegment(tile);
  let seg = segments[s];
  let t = tile - seg.tileStart;
  let row0 = (t / seg.tileCols) * TILE_ROWS;
  let col0 = (t % seg.tileCols) * TILE_COLS;
  let row = row0 + lid.y;
  let col = col0 + 2u * lid.x;
  if (row >= seg.rows || col >= seg.cols) {
    return;
  }

  let n = min(2u, seg.cols - col);
  let e = row * seg.cols + col;
  var delta = vec2<f32>(0.0);
  for (var i = 0u; i < seg.termCount; i++) {
    let term = terms[seg.termStart + i];
    var p = termDelta(term, seg.rows, seg.cols, row, col);
    if (term.dora != 0u) {
      let g = doraGains(term, seg.cols, row, col);
      p = (g - 1.0) * basePair(seg.baseOffset + e, n) + g * (term.alpha * p);
    }
    delta += term.scale * p;
  }
  mergePair(seg.baseOffset + e, seg.outOffset + e, n, delta, seg.termCount > 0u);
}
