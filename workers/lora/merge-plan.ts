// Planning a LoRA merge (pure, no GPU): which weight segments each dispatch of
// shaders/lora-merge.wgsl covers, the segment and term tables it reads, and the copies that follow.
//
// Batched form: segments from one pristine chunk are packed into a scratch buffer, many per
// dispatch, then copied into the weights' own buffers (the session reads those; a dispatch cannot
// bind hundreds of them). Direct form: one dispatch per weight, written in place.
// Weights whose LoRAs were all switched off are restored by a plain copy from the pristine chunk.

export type MergeMode = 'batched' | 'direct';

export interface MergeTermSpec {
  /** f32 offsets of the factors in the factor arena. */
  up: number;
  down: number;
  rank: number;
  scale: number;
  hadamard?: { up: number; down: number; rank: number };
  /** LoKr: kron(w1, up @ down); w1 [rows, cols] at f32 offset `w1`; rank 0: up is the second factor whole. */
  kron?: { w1: number; rows: number; cols: number };
  /** DoRA: the gains' f32 offset, one per row or per input channel (`kernel` columns each); `scale`
   * is the multiplier and `alpha` the alpha / rank inside the norm. */
  dora?: { gains: number; perInput: boolean; kernel: number; alpha: number };
}

export interface MergeSegmentSpec {
  target: string;
  rows: number;
  cols: number;
  /** Where the pristine values live: chunk index and element offset. */
  chunk: number;
  baseOffset: number;
  terms: MergeTermSpec[];
}

export interface MergeCopy {
  target: string;
  /** Byte offsets and size, multiples of 4. */
  srcByte: number;
  bytes: number;
}

export interface MergePass {
  chunk: number;
  /** 'scratch' for the batched form, else the target written in place. */
  into: string;
  segFirst: number;
  segCount: number;
  tiles: number;
  tilesX: number;
  tilesY: number;
  copies: MergeCopy[];
}

export interface MergePlan {
  segments: Uint32Array;
  terms: ArrayBuffer;
  passes: MergePass[];
  /** Targets with no active term: copy the pristine bytes back. */
  restores: { target: string; chunk: number; copy: MergeCopy }[];
  scratchBytes: number;
}

export const TILE_ROWS = 16;
export const TILE_COLS = 32;
export const SEGMENT_WORDS = 8;
export const TERM_WORDS = 12;
/** Uniform entries are bound with a dynamic offset, which must be a multiple of 256 bytes. */
export const PASS_STRIDE_WORDS = 64;
/** Element alignment of everything packed (keeps f16 pairs whole and copies 4-byte aligned). */
export const PACK_ALIGN = 8;
const MAX_GROUPS_PER_DIM = 65535;

export const alignUp = (n: number, a: number) => Math.ceil(n / a) * a;

export function segmentTiles(rows: number, cols: number): { tileCols: number; tiles: number } {
  const tileCols = Math.ceil(cols / TILE_COLS);
  return { tileCols, tiles: tileCols * Math.ceil(rows / TILE_ROWS) };
}

export function planMerge(specs: MergeSegmentSpec[], opts: { mode: MergeMode; elementBytes: 2 | 4; scratchElements: number }): MergePlan {
  const { mode, elementBytes } = opts;
  const bytesOf = (elements: number) => alignUp(elements * elementBytes, 4);
  const active = specs.filter((s) => s.terms.length > 0);
  const restores = specs
    .filter((s) => s.terms.length === 0)
    .map((s) => ({ target: s.target, chunk: s.chunk, copy: { target: s.target, srcByte: s.baseOffset * elementBytes, bytes: bytesOf(s.rows * s.cols) } }));
  for (const s of specs) {
    if (elementBytes === 2 && (s.cols % 2 || s.baseOffset % 2)) throw new Error(`f16 merge needs even row lengths and offsets (${s.target}: ${s.rows}x${s.cols})`);
    if (s.baseOffset % PACK_ALIGN) throw new Error(`pristine offset of ${s.target} is not aligned`);
  }

  const segments = new Uint32Array(active.length * SEGMENT_WORDS);
  const termCount = active.reduce((a, s) => a + s.terms.length, 0);
  const terms = new ArrayBuffer(termCount * TERM_WORDS * 4);
  const termU32 = new Uint32Array(terms);
  const termF32 = new Float32Array(terms);
  const passes: MergePass[] = [];
  let scratchElements = 0;
  let termAt = 0;
  let pass: MergePass | undefined;
  let outAt = 0;

  // Batched passes group segments of one chunk until the scratch buffer is full.
  const order = mode === 'batched' ? [...active].sort((a, b) => a.chunk - b.chunk || a.baseOffset - b.baseOffset) : active;
  order.forEach((s, i) => {
    const size = alignUp(s.rows * s.cols, PACK_ALIGN);
    const { tileCols, tiles } = segmentTiles(s.rows, s.cols);
    const fits = pass && mode === 'batched' && pass.chunk === s.chunk && outAt + size <= opts.scratchElements;
    if (!fits) {
      pass = { chunk: s.chunk, into: mode === 'batched' ? 'scratch' : s.target, segFirst: i, segCount: 0, tiles: 0, tilesX: 0, tilesY: 0, copies: [] };
      passes.push(pass);
      outAt = 0;
    }
    const p = pass!;
    const w = i * SEGMENT_WORDS;
    segments.set([s.baseOffset, outAt, s.rows, s.cols, termAt, s.terms.length, p.tiles, tileCols], w);
    for (const t of s.terms) {
      const o = termAt * TERM_WORDS;
      const kind = t.kron ? [2, t.kron.w1, t.kron.rows, t.kron.cols] : t.hadamard ? [1, t.hadamard.up, t.hadamard.down, t.hadamard.rank] : [0, 0, 0, 0];
      termU32.set([t.up, t.down, t.rank, ...kind], o);
      termF32[o + 7] = t.scale;
      if (t.dora) {
        termU32.set([t.dora.gains, t.dora.perInput ? 2 : 1, t.dora.kernel], o + 8);
        termF32[o + 11] = t.dora.alpha;
      }
      termAt++;
    }
    if (mode === 'batched') p.copies.push({ target: s.target, srcByte: outAt * elementBytes, bytes: bytesOf(s.rows * s.cols) });
    p.segCount++;
    p.tiles += tiles;
    outAt += size;
    scratchElements = Math.max(scratchElements, outAt);
  });
  for (const p of passes) {
    p.tilesX = Math.min(p.tiles, MAX_GROUPS_PER_DIM);
    p.tilesY = Math.ceil(p.tiles / p.tilesX);
  }
  return { segments, terms, passes, restores, scratchBytes: mode === 'batched' ? scratchElements * elementBytes : 0 };
}

/** The uniform block of every pass, PASS_STRIDE_WORDS apart for dynamic offsets. */
export function passUniforms(plan: MergePlan): Uint32Array {
  const u = new Uint32Array(Math.max(1, plan.passes.length) * PASS_STRIDE_WORDS);
  plan.passes.forEach((p, i) => u.set([p.segFirst, p.segCount, p.tilesX, p.tiles], i * PASS_STRIDE_WORDS));
  return u;
}
