// Prompt emphasis as artists write it for A1111's web UI: `(word)` weighs 1.1, `((word))` 1.21,
// `[word]` 1/1.1, `(word:1.4)` 1.4 (nesting multiplies), `\(` and `\)` are plain brackets, and an
// unclosed bracket weighs everything after it. The text encoder's output for each token is scaled by
// its weight, and then the whole context by the ratio of its mean before and after, so only the
// balance between tokens changes (A1111's "Original" emphasis).

export interface Weighted {
  text: string;
  weight: number;
}

/** A1111's `BREAK`: a chunk boundary (the studio reads one 77-token chunk, so it is dropped with a warning). */
export const BREAK = /\s*\bBREAK\b\s*/;

const TOKENS = /\\\(|\\\)|\\\[|\\\]|\\\\|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|\]|[^\\()[\]:]+|:/g;

/** The prompt as runs of text with their weights (runs of equal weight joined); `breaks`: how many BREAKs it had. */
export function parseEmphasis(prompt: string): { runs: Weighted[]; breaks: number } {
  const runs: Weighted[] = [];
  const round: number[] = [];
  const square: number[] = [];
  let breaks = 0;
  const scale = (from: number, by: number) => {
    for (let i = from; i < runs.length; i++) runs[i].weight *= by;
  };
  for (const m of prompt.matchAll(TOKENS)) {
    const [text, weight] = m;
    if (text.startsWith('\\')) runs.push({ text: text.length > 1 ? text.slice(1) : text, weight: 1 });
    else if (text === '(') round.push(runs.length);
    else if (text === '[') square.push(runs.length);
    else if (weight !== undefined && round.length) scale(round.pop()!, Number(weight));
    else if (text === ')' && round.length) scale(round.pop()!, 1.1);
    else if (text === ']' && square.length) scale(square.pop()!, 1 / 1.1);
    else {
      const parts = text.split(BREAK);
      breaks += parts.length - 1;
      // a run that opened with `:number)` but had no bracket to close stays as written
      runs.push({ text: parts.join(' '), weight: 1 });
    }
  }
  for (const at of round) scale(at, 1.1);
  for (const at of square) scale(at, 1 / 1.1);
  const joined: Weighted[] = [];
  for (const r of runs) {
    const last = joined[joined.length - 1];
    if (last && last.weight === r.weight) last.text += r.text;
    else joined.push({ ...r });
  }
  return { runs: joined.length ? joined : [{ text: '', weight: 1 }], breaks };
}

/** Does the prompt use emphasis at all (so its plain encoding can be kept when it does not)? */
export function hasEmphasis(prompt: string): boolean {
  return /[()[\]\\]|\bBREAK\b/.test(prompt);
}

/**
 * Scale each token's rows of a context [tokens, hidden] by its weight, then the whole by the ratio of
 * the context's mean before and after (A1111's "Original" emphasis), in place.
 */
export function applyEmphasis(context: Float32Array, weights: number[], hidden: number): void {
  if (weights.every((w) => w === 1)) return;
  let before = 0;
  for (const v of context) before += v;
  let after = 0;
  for (let t = 0; t < weights.length; t++) {
    for (let h = 0; h < hidden; h++) {
      const v = context[t * hidden + h] * weights[t];
      context[t * hidden + h] = v;
      after += v;
    }
  }
  const ratio = before / after;
  for (let i = 0; i < context.length; i++) context[i] *= ratio;
}
