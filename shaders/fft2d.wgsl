// 2D FFT of a batch of real images [batch, height, width], both sides powers of two up to 512:
//   F[u, v] = sum_{y,x} f[y, x] exp(-2 pi i (u y / height + v x / width)).
// Two passes: `rows` transforms every row of the real input, `columns` every column of that
// complex result, in place. One workgroup per line: the line is loaded in bit-reversed order into
// workgroup memory and transformed by log2(n) radix-2 butterfly stages.

struct Params {
  width: u32,
  height: u32,
  batch: u32,
  pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> realIn: array<f32>;
@group(0) @binding(2) var<storage, read_write> spectrum: array<vec2<f32>>;
// exp(-2 pi i k / 512) for k < 256, computed in float64 on the CPU: WGSL's cos and sin only
// promise an absolute error of 2^-11, too coarse for a transform checked against float64.
@group(0) @binding(3) var<storage, read> twiddles: array<vec2<f32>>;

const THREADS = 64u;
const MAX_N = 512u;

var<workgroup> line: array<vec2<f32>, 512>;

fn log2u(n: u32) -> u32 {
  return 31u - countLeadingZeros(n);
}

// Radix-2 stages on line[0..n), which holds the input in bit-reversed order.
fn butterflies(n: u32, lid: u32) {
  let stages = log2u(n);
  for (var s = 1u; s <= stages; s++) {
    let m = 1u << s;
    let half = m >> 1u;
    for (var k = lid; k < n / 2u; k += THREADS) {
      let j = k % half;
      let g = (k / half) * m;
      let w = twiddles[j * (MAX_N / m)];
      let a = line[g + j];
      let b = line[g + j + half];
      let bw = vec2<f32>(b.x * w.x - b.y * w.y, b.x * w.y + b.y * w.x);
      line[g + j] = a + bw;
      line[g + j + half] = a - bw;
    }
    workgroupBarrier();
  }
}

@compute @workgroup_size(64)
fn rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let n = p.width;
  let bits = log2u(n);
  let start = (wid.x + wid.y * 65535u) * n; // row r of image b starts at (b * height + r) * width
  if (start >= p.batch * p.height * n) {
    return;
  }
  for (var i = lid; i < n; i += THREADS) {
    line[reverseBits(i) >> (32u - bits)] = vec2<f32>(realIn[start + i], 0.0);
  }
  workgroupBarrier();
  butterflies(n, lid);
  for (var i = lid; i < n; i += THREADS) {
    spectrum[start + i] = line[i];
  }
}

@compute @workgroup_size(64)
fn columns(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let n = p.height;
  let bits = log2u(n);
  let col = wid.x + wid.y * 65535u;
  if (col >= p.batch * p.width) {
    return;
  }
  let start = (col / p.width) * p.height * p.width + col % p.width;
  for (var i = lid; i < n; i += THREADS) {
    line[reverseBits(i) >> (32u - bits)] = spectrum[start + i * p.width];
  }
  workgroupBarrier();
  butterflies(n, lid);
  for (var i = lid; i < n; i += THREADS) {
    spectrum[start + i * p.width] = line[i];
  }
}
