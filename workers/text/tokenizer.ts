// The CLIP tokenizer for the text encoder, through @huggingface/transformers. Prompts are cut to
// 77-token windows (begin and end tokens included) and padded with the end token, as SD 1.5 expects.
import './transformers-ort.ts';
import { CLIPTokenizer } from '@huggingface/transformers';
import { EngineError } from '../api/errors.ts';
import { CLIP_TOKENIZER_CONFIG, clipTokenizerJson, parseMergesTxt, type BpeFiles } from './bpe-files.ts';

import { chunkTokens } from './emphasis.ts';

export interface TokenizerFiles {
  /** Either a tokenizer.json document ... */
  tokenizerJson?: string;
  /** ... or the vocab.json + merges.txt pair. */
  vocabJson?: string;
  mergesTxt?: string;
}

/** A name the prompt may use that the vocabulary lacks (an embedding), and the ids it stands for. */
export interface AddedToken {
  name: string;
  ids: number[];
}

export interface Encoded {
  ids: number[];
  /** Tokens of the prompt before truncation, begin/end included. */
  tokenCount: number;
  truncated: boolean;
}

export class ClipTextTokenizer {
  private constructor(private readonly tok: CLIPTokenizer, readonly vocabSize: number, readonly maxLength: number) {}

  static fromFiles(files: TokenizerFiles, maxLength = 77): ClipTextTokenizer {
    let json: Record<string, unknown>;
    try {
      if (files.tokenizerJson) json = JSON.parse(files.tokenizerJson);
      else if (files.vocabJson && files.mergesTxt) {
        const bpe: BpeFiles = { vocab: JSON.parse(files.vocabJson), merges: parseMergesTxt(files.mergesTxt) };
        json = clipTokenizerJson(bpe);
      } else throw new Error('no tokenizer.json and no vocab.json + merges.txt');
    } catch (e) {
      throw new EngineError('tokenizer', `The tokenizer files could not be read: ${(e as Error).message}.`);
    }
    const vocab = (json.model as { vocab: Record<string, number> }).vocab;
    const vocabSize = Math.max(...Object.values(vocab)) + 1;
    const tok = new CLIPTokenizer(json, CLIP_TOKENIZER_CONFIG);
    return new ClipTextTokenizer(tok, vocabSize, maxLength);
  }

  /**
   * `added`: names to keep whole (textual inversions by name, whole words, any case; ED-LoRA tokens
   * such as `<ai1>` as written); each becomes its ids, the text around them is tokenized as usual.
   */
  encode(text: string, added: AddedToken[] = []): Encoded {
    const eos = this.tok.eos_token_id;
    const all = added.length ? this.withAdded(text, added) : (this.tok.encode(text) as number[]);
    const truncated = all.length > this.maxLength;
    const ids = truncated ? [...all.slice(0, this.maxLength - 1), eos] : all.slice();
    while (ids.length < this.maxLength) ids.push(eos);
    return { ids, tokenCount: all.length, truncated };
  }

  /**
   * Runs of text with their weights (workers/text/emphasis.ts): each run tokenized on its own, as A1111
   * does, and every token given its run's weight (begin, end and padding weigh 1).
   */
  encodeWeighted(runs: { text: string; weight: number }[], added: AddedToken[] = []): Encoded & { weights: number[] } {
    const eos = this.tok.eos_token_id;
    const [bos] = this.tok.encode('') as number[];
    const all = [bos];
    const weights = [1];
    for (const r of runs) {
      const ids = added.length ? this.withAdded(r.text, added).slice(1, -1) : (this.tok.encode(r.text, { add_special_tokens: false }) as number[]);
      all.push(...ids);
      for (const _ of ids) weights.push(r.weight);
    }
    all.push(eos);
    weights.push(1);
    const truncated = all.length > this.maxLength;
    const ids = truncated ? [...all.slice(0, this.maxLength - 1), eos] : all.slice();
    const w = truncated ? [...weights.slice(0, this.maxLength - 1), 1] : weights.slice();
    while (ids.length < this.maxLength) ids.push(eos), w.push(1);
    return { ids, weights: w, tokenCount: all.length, truncated };
  }

  /**
   * A prompt longer than one chunk, or with `BREAK`, as A1111 reads it: chunks of 75 tokens
   * (workers/text/emphasis.ts `chunkTokens`), each with begin and end around it: 77 ids per chunk.
   */
  encodeChunks(runs: { text: string; weight: number; break?: true }[], added: AddedToken[] = []): { chunks: { ids: number[]; weights: number[] }[]; tokenCount: number } {
    const eos = this.tok.eos_token_id;
    const [bos] = this.tok.encode('') as number[];
    const [comma] = this.tok.encode(',', { add_special_tokens: false }) as number[];
    const pieces = runs.map((r) => ({ ids: r.break ? [] : added.length ? this.withAdded(r.text, added).slice(1, -1) : (this.tok.encode(r.text, { add_special_tokens: false }) as number[]), weight: r.weight, break: r.break }));
    const size = this.maxLength - 2;
    const chunks = chunkTokens(pieces, comma, eos, size).map((c) => ({ ids: [bos, ...c.ids, eos], weights: [1, ...c.weights, 1] }));
    return { chunks, tokenCount: pieces.reduce((a, p) => a + p.ids.length, 0) + 2 };
  }

  private withAdded(text: string, added: AddedToken[]): number[] {
    const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
    const names = [...added].sort((a, b) => b.name.length - a.name.length);
    const pattern = names.map((a) => (/^\w/.test(a.name) ? `(?<![\\w-])${escape(a.name)}(?![\\w-])` : escape(a.name))).join('|');
    const re = new RegExp(pattern, 'gi');
    const byName = new Map(added.map((a) => [a.name.toLowerCase(), a.ids]));
    const [bos] = this.tok.encode('') as number[];
    const out = [bos];
    let at = 0;
    for (const m of text.matchAll(re)) {
      out.push(...(this.tok.encode(text.slice(at, m.index), { add_special_tokens: false }) as number[]));
      out.push(...byName.get(m[0].toLowerCase())!);
      at = m.index! + m[0].length;
    }
    out.push(...(this.tok.encode(text.slice(at), { add_special_tokens: false }) as number[]));
    out.push(this.tok.eos_token_id);
    return out;
  }
}
