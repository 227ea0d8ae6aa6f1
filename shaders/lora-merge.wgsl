// LoRA merge: for every weight segment of a pass,
//   merged[r, c] = base[r, c] + sum_t scale_t * delta_t[r, c]
// where delta_t = up_t @ down_t (LoRA, LoCon), or (up_t @ down_t) * (up2_t @ down2_t) elementwise
// (LoHa). A weight is a row-major [rows, cols] matrix (a convolution [out, in, kh, kw] is
// [out, in*kh*kw]). One workgroup computes a 16 x 32 tile of one segment, two adjacent columns
// per thread, staging 16-wide slices of the factors in workgroup memory. A pass may cover many
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
const K_STEP = 16u;

@group(0) @binding(0) var<uniform> pass_: Pass;
@group(0) @binding(1) var<storage, read> segments: array<Segment>;
@group(0) @binding(2) var<storage, read> terms: array<Term>;
@group(0) @binding(3) var<storage, read> factors: array<f32>;
@group(0) @binding(4) var<storage, read> base: array<WeightWord>;
@group(0) @binding(5) var<storage, read_write> merged: array<WeightWord>;

var<workgroup> upTile: array<array<f32, 16>, 16>; // [row][k]
var<workgroup> downTile: array<array<f32, 32>, 16>; // [k][col]

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

// (up @ down) at (row, col) and (row, col + 1); rows and columns past the edge read as zero.
fn lowRankProduct(up: u32, down: u32, rank: u32, rows: u32, cols: u32, row0: u32, col0: u32, ly: u32, lx: u32) -> vec2<f32> {
  var acc = vec2<f32>(0.0);
  for (var k0 = 0u; k0 < rank; k0 += K_STEP) {
    let r = row0 + ly;
    let k = k0 + lx;
    var a = 0.0;
    if (r < rows && k < rank) {
      a = factors[up + r * rank + k];
    }
    upTile[ly][lx] = a;
    let kd = k0 + ly;
    let c = col0 + 2u * lx;
    var b0 = 0.0;
    var b1 = 0.0;
    if (kd < rank) {
      if (c < cols) {
        b0 = factors[down + kd * cols + c];
      }
      if (c + 1u < cols) {
        b1 = factors[down + kd * cols + c + 1u];
      }
    }
    downTile[ly][2u * lx] = b0;
    downTile[ly][2u * lx + 1u] = b1;
    workgroupBarrier();
    for (var kk = 0u; kk < K_STEP; kk++) {
      let w = upTile[ly][kk];
      acc += w * vec2<f32>(downTile[kk][2u * lx], downTile[kk][2u * lx + 1u]);
    }
    workgroupBarrier();
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
  let lx = lid.x;
  let ly = lid.y;

  var delta = vec2<f32>(0.0);
  for (var i = 0u; i < seg.termCount; i++) {
    let term = terms[seg.termStart + i];
    var p = lowRankProduct(term.up, term.down, term.rank, seg.rows, seg.cols, row0, col0, ly, lx);
    if (term.hadamard == 1u) {
      p *= lowRankProduct(term.up2, term.down2, term.rank2, seg.rows, seg.cols, row0, col0, ly, lx);
    }
    delta += term.scale * p;
  }

  let row = row0 + ly;
  let col = col0 + 2u * lx;
  if (row >= seg.rows || col >= seg.cols) {
    return;
  }
  let n = min(2u, seg.cols - col);
  let e = row * seg.cols + col;
  mergePair(seg.baseOffset + e, seg.outOffset + e, n, delta, seg.termCount > 0u);
}
