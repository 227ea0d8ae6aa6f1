// Which attention form this adapter runs correctly. onnxruntime's fused MultiHeadAttention is checked
// once per runtime against the chunked form on the same EP, at shapes that take its tiled path (more
// than 32 queries, CLIP's 77 keys, with and without a bias broadcast over the batch); where they disagree, or the EP
// refuses the node, the engine builds the chunked form and says why in its report.
import type * as OrtNs from 'onnxruntime-web';
import { EngineError } from '../api/errors.ts';
import { GraphBuilder, type AttentionForm } from '../graph/builder.ts';
import { attention } from '../graph/layers.ts';
import { Rng } from './random.ts';
import { sessionOptions, type Runtime } from './runtime.ts';

export interface AttentionChoice {
  form: AttentionForm;
  /** Plain words: why this form (shown in the report and the studio's details). */
  reason: string;
  /** The largest difference the check measured between fused and chunked outputs. */
  checkedDiff?: number;
}

const CASES = [
  { b: 2, nq: 64, nk: 77, heads: 2, d: 8, bias: false },
  // a bias of one batch item broadcast over two, with fewer query rows than keys: what each query
  // chunk of an isolated self-attention takes
  { b: 2, nq: 64, nk: 96, heads: 2, d: 40, bias: true },
];

/** Relative tolerance between the two forms (both float32; far below any real disagreement). */
export const ATTENTION_CHECK_TOLERANCE = 1e-3;

const chosen = new WeakMap<object, Promise<AttentionChoice>>();

/** The attention form for graphs on this runtime (checked once per GPU device, once for the wasm EP). */
export function chooseAttention(rt: Runtime): Promise<AttentionChoice> {
  const key = rt.gpu?.device ?? rt.ort;
  let c = chosen.get(key);
  if (!c) {
    c = checkFusedAttention(rt);
    chosen.set(key, c);
  }
  return c;
}

async function runForm(rt: Runtime, form: AttentionForm, k: (typeof CASES)[number], data: Record<string, Float32Array>): Promise<Float32Array> {
  const c = k.heads * k.d;
  const g = new GraphBuilder('float32', { attention: form });
  const bias = k.bias ? g.input('bias', 'float32', [1, 1, k.nq, k.nk]) : undefined;
  const y = attention(g, g.input('q', 'float32', [k.b * k.nq, c]), g.input('k', 'float32', [k.b * k.nk, c]), g.input('v', 'float32', [k.b * k.nk, c]), { b: k.b, nq: k.nq, nk: k.nk, c, heads: k.heads }, { bias });
  g.output(y, 'y', 'float32', [k.b * k.nq, c]);
  const session = await rt.ort.InferenceSession.create(g.encode(), sessionOptions(rt));
  try {
    const feeds: Record<string, OrtNs.Tensor> = {
      q: new rt.ort.Tensor('float32', data.q, [k.b * k.nq, c]),
      k: new rt.ort.Tensor('float32', data.k, [k.b * k.nk, c]),
      v: new rt.ort.Tensor('float32', data.v, [k.b * k.nk, c]),
    };
    if (bias) feeds.bias = new rt.ort.Tensor('float32', data.bias, [1, 1, k.nq, k.nk]);
    const out = await session.run(feeds);
    return out.y.data as Float32Array;
  } finally {
    await session.release();
  }
}

export async function checkFusedAttention(rt: Runtime): Promise<AttentionChoice> {
  let worst = 0;
  for (const k of CASES) {
    const rng = new Rng(k.nq * 131 + k.nk);
    const c = k.heads * k.d;
    const data = { q: rng.normal(k.b * k.nq * c), k: rng.normal(k.b * k.nk * c), v: rng.normal(k.b * k.nk * c), bias: rng.normal(k.nq * k.nk) };
    let fused: Float32Array;
    try {
      fused = await runForm(rt, 'fused', k, data);
    } catch (e) {
      return { form: 'chunked', reason: `the ${rt.backend} backend refused MultiHeadAttention (${(e as Error).message.slice(0, 120)}); attention runs in query chunks` };
    }
    const chunked = await runForm(rt, 'chunked', k, data);
    let diff = 0;
    let scale = 0;
    for (let i = 0; i < fused.length; i++) {
      diff = Math.max(diff, Math.abs(fused[i] - chunked[i]));
      scale = Math.max(scale, Math.abs(chunked[i]));
    }
    worst = Math.max(worst, diff / Math.max(1, scale));
    if (!(diff <= ATTENTION_CHECK_TOLERANCE * Math.max(1, scale))) {
      return {
        form: 'chunked',
        reason: `fused attention on this ${rt.backend} adapter disagrees with the explicit form (max difference ${diff.toExponential(2)} at ${k.nq} queries x ${k.nk} keys); attention runs in query chunks`,
        checkedDiff: diff,
      };
    }
  }
  return { form: 'fused', reason: `fused attention (MultiHeadAttention) checked against the explicit form on this ${rt.backend} adapter`, checkedDiff: worst };
}

/**
 * An error onnxruntime raised for a MultiHeadAttention node, creating a session ("... in
 * 'n_MultiHeadAttention_3 ...'") or running one ("... while running MultiHeadAttention node"); not
 * one of the engine's own errors (a cancel, the device lost or out of memory), which say what they are.
 */
export function refusedFusedAttention(e: unknown): boolean {
  return e instanceof Error && !(e instanceof EngineError) && /MultiHeadAttention/.test(e.message);
}

/** The form after the EP refused a fused node at a shape the check did not try, and why. */
export function chunkedAfterRefusal(backend: Runtime['backend'], e: Error): AttentionChoice {
  return { form: 'chunked', reason: `the ${backend} backend refused fused attention at a shape of this job (${e.message.slice(0, 160)}); attention runs in query chunks` };
}
