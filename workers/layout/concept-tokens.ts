// Which tokens of a box's prompt name its concept: the tokens whose cross-attention maps the guidance
// losses and the latent re-initialisation read. LoRA-Composer's code uses the concept's own tokens
// (the two ED-LoRA tokens `<name1> <name2>`, multi_lora_sample.py ~531-538), each one a term of its
// own. We use the LoRA's trigger words found in the box prompt; for a LoRA without trigger words, the
// prompt's content tokens other than articles, prepositions, punctuation and quality tags, so that
// "masterpiece, best quality" does not count as the concept.

/** Token ids of a text, without the start and end tokens. */
export type TextIds = (text: string) => number[];

/** Words that never name a concept: articles, prepositions, punctuation, quality tags. */
export const NON_CONCEPT_WORDS = [
  'a', 'an', 'the', 'of', 'with', 'and', 'in', 'on', 'at', 'to', 'by', 'for', 'from', 'is', 'its', 'very',
  ',', '.', ':', ';', '(', ')', '[', ']', '!', '?', '-',
  'masterpiece', 'best', 'quality', 'high', 'highres', 'absurdres', 'detailed', 'highly', 'ultra', 'extremely',
  '4k', '8k', 'hd', 'uhd', 'hdr', 'resolution', 'sharp', 'focus', 'intricate', 'photorealistic',
];

export interface ConceptTokens {
  /** Positions in the 77-token context of the prompt encoded alone (1 = first content token). */
  positions: number[];
  /** Where they came from. */
  source: 'trigger' | 'content' | 'all-content';
  /** Trigger phrases that are not in the prompt. */
  missing: string[];
}

function find(haystack: number[], needle: number[], from: number, to: number): number {
  outer: for (let i = from; i + needle.length <= to; i++) {
    for (let j = 0; j < needle.length; j++) if (haystack[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}

/**
 * The concept tokens of a prompt with ids `ids` (77, start token first) and `tokenCount` tokens
 * (start and end included). `trigger`: comma-separated trigger phrases.
 */
export function conceptTokens(ids: number[], tokenCount: number, textIds: TextIds, trigger?: string): ConceptTokens {
  const end = Math.max(1, Math.min(ids.length - 1, tokenCount - 1));
  const phrases = (trigger ?? '').split(',').map((p) => p.trim()).filter(Boolean);
  const found = new Set<number>();
  const missing: string[] = [];
  for (const p of phrases) {
    const needle = textIds(p);
    const at = needle.length ? find(ids, needle, 1, end) : -1;
    if (at < 0) missing.push(p);
    else for (let j = 0; j < needle.length; j++) found.add(at + j);
  }
  if (found.size) return { positions: [...found].sort((a, b) => a - b), source: 'trigger', missing };
  const stop = new Set(NON_CONCEPT_WORDS.flatMap((w) => textIds(w)));
  const content = Array.from({ length: end - 1 }, (_, i) => i + 1);
  const kept = content.filter((p) => !stop.has(ids[p]));
  if (kept.length) return { positions: kept, source: 'content', missing };
  return { positions: content.length ? content : [1], source: 'all-content', missing };
}
