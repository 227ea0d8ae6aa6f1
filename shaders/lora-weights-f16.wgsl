// Weight storage for lora-merge.wgsl: two f16 values packed in each u32 word (core WGSL, so no
// shader-f16 feature is needed). The planner keeps every offset and every row length even, so a
// pair never straddles two words; arithmetic is f32, rounded to f16 once on the way out.

alias WeightWord = u32;

fn basePair(b: u32, n: u32) -> vec2<f32> {
  return unpack2x16float(base[b / 2u]);
}

fn mergePair(b: u32, o: u32, n: u32, delta: vec2<f32>, hasDelta: bool) {
  if (hasDelta) {
    merged[o / 2u] = pack2x16float(unpack2x16float(base[b / 2u]) + delta);
  } else {
    merged[o / 2u] = base[b / 2u];
  }
}
