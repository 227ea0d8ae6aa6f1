// Prompt emphasis as artists write it for A1111's web UI: `(word)` weighs 1.1, `((word))` 1.21,
// `[word]` 1/1.1, `(word:1.4)` 1.4 (nesting multiplies), `\(` and `\)` are plain brackets, and an
// unclosed bracket weighs everything after it. The text encoder's output for each token is scaled by
// its weight, and then the whole context by the ratio of its mean before and after, so only the
// balance between tokens changes (A1111's "Original" emphasis).

export interface Weighted {
  text: string;
  weight: number;
  /** A1111's `BREAK`: the tokens after it start a new 75-token chunk. */
  break?: true;
}

/** A1111's `BREAK`, with the spaces around it. */
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
      parts.forEach((part, i) => {
        if (i > 0) runs.push({ text: '', weight: 1, break: true });
        if (part) runs.push({ text: part, weight: 1 });
      });
    }
  }
  for (const at of round) scale(at, 1.1);
  for (const at of square) scale(at, 1 / 1.1);
  const joined: Weighted[] = [];
  for (const r of runs) {
    const last = joined[joined.length - 1];
    if (last && !last.break && !r.break && last.weight === r.weight) last.text += r.text;
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

/** One chunk's tokens (without begin and end), with their weights. */
export interface TokenChunk {
  ids: number[];
  weights: number[];
}

/**
 * Tokens into chunks of `size` (75: the 77 positions less begin and end), by A1111's rules: a `BREAK`
 * starts a new chunk; a chunk that fills up with a comma among its last `backtrack` tokens ends after
 * that comma, the rest moving on to the next; every chunk is padded with `pad` (weight 1) to `size`.
 */
export function chunkTokens(pieces: { ids: number[]; weight: number; break?: boolean }[], comma: number, pad: number, size = 75, backtrack = 20): TokenChunk[] {
  const chunks: TokenChunk[] = [];
  let ids: number[] = [];
  let weights: number[] = [];
  let lastComma = -1;
  const close = () => {
    while (ids.length < size) ids.push(pad), weights.push(1);
    chunks.push({ ids, weights });
    ids = [];
    weights = [];
    lastComma = -1;
  };
  for (const piece of pieces) {
    if (piece.break) {
      close();
      continue;
    }
    for (const id of piece.ids) {
      if (id === comma) lastComma = ids.length;
      else if (backtrack > 0 && ids.length === size && lastComma !== -1 && ids.length - lastComma <= backtrack) {
        const at = lastComma + 1;
        const [movedIds, movedWeights] = [ids.slice(at), weights.slice(at)];
        ids = ids.slice(0, at);
        weights = weights.slice(0, at);
        close();
        ids = movedIds;
        weights = movedWeights;
      }
      if (ids.length === size) close();
      ids.push(id);
      weights.push(piece.weight);
    }
  }
  if (ids.length || !chunks.length) close();
  return chunks;
}
