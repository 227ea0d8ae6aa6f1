// Weight storage for lora-merge.wgsl: one f32 per element.

alias WeightWord = f32;

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
