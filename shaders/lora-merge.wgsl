// LoRA merge: for every weight segment of a pass,
//   merged[r, c] = base[r, c] + sum_t scale_t * delta_t[r, c]
// where delta_t = up_t @ down_t (LoRA, LoCon), or (up_t @ down_t) * (up2_t @ down2_t) elementwise
// (LoHa). A weight is a row-major [rows, cols] matrix (a convolution [out, in, kh, kw] is
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
  up: u32, // f32 offset of up [rows, rank] in `factors`
  down: u32, // f32 offset of down [rank, cols]
  rank: u32,
  hadamard: u32, // 1: multiply elementwise by up2 @ down2
  up2: u32,
  down2: u32,
  rank2: u32,
  scale: f32,
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

  var delta = vec2<f32>(0.0);
  for (var i = 0u; i < seg.termCount; i++) {
    let term = terms[seg.termStart + i];
    var p = lowRankProduct(term.up, term.down, term.rank, seg.cols, row, col);
    if (term.hadamard == 1u) {
      p *= lowRankProduct(term.up2, term.down2, term.rank2, seg.cols, row, col);
    }
    delta += term.scale * p;
  }
  let n = min(2u, seg.cols - col);
  let e = row * seg.cols + col;
  mergePair(seg.baseOffset + e, seg.outOffset + e, n, delta, seg.termCount > 0u);
}
