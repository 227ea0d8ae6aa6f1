// Band amplitudes of a batch of 2D spectra [batch, height, width] (from fft2d.wgsl): for each image,
// the mean |F[u, v]| over the frequencies whose radius, in cycles per sample,
//   r = sqrt(fu^2 + fv^2), fu = min(u, height - u) / height, fv = min(v, width - v) / width,
// is above `cutoff` (the high band), and the mean over all frequencies. One workgroup per image.

struct Params {
  width: u32,
  height: u32,
  batch: u32,
  cutoff: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> spectrum: array<vec2<f32>>;
@group(0) @binding(2) var<storage, read_write> bands: array<vec4<f32>>; // (high sum, high count, all sum, all count)

const THREADS = 64u;

var<workgroup> partial: array<vec4<f32>, 64>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let image = wid.x;
  let size = p.width * p.height;
  var acc = vec4<f32>(0.0);
  for (var i = lid; i < size; i += THREADS) {
    let u = i / p.width;
    let v = i % p.width;
    let fu = f32(min(u, p.height - u)) / f32(p.height);
    let fv = f32(min(v, p.width - v)) / f32(p.width);
    let amp = length(spectrum[image * size + i]);
    acc += vec4<f32>(0.0, 0.0, amp, 1.0);
    if (sqrt(fu * fu + fv * fv) > p.cutoff) {
      acc += vec4<f32>(amp, 1.0, 0.0, 0.0);
    }
  }
  partial[lid] = acc;
  workgroupBarrier();
  for (var stride = THREADS / 2u; stride > 0u; stride >>= 1u) {
    if (lid < stride) {
      partial[lid] += partial[lid + stride];
    }
    workgroupBarrier();
  }
  if (lid == 0u) {
    bands[image] = partial[0];
  }
}
