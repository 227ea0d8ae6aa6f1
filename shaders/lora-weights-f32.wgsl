// Weight storage for lora-merge.wgsl: one f32 per element.

alias WeightWord = f32;

fn basePair(b: u32, n: u32) -> vec2<f32> {
  var v = vec2<f32>(base[b], 0.0);
  if (n == 2u) {
    v.y = base[b + 1u];
  }
  return v;
}

fn mergePair(b: u32, o: u32, n: u32, delta: vec2<f32>, hasDelta: bool) {
  if (hasDelta) {
    merged[o] = base[b] + delta.x;
    if (n == 2u) {
      merged[o + 1u] = base[b + 1u] + delta.y;
    }
  } else {
    merged[o] = base[b];
    if (n == 2u) {
      merged[o + 1u] = base[b + 1u];
    }
  }
}
