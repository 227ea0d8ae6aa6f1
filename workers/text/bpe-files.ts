// CLIP's byte-level BPE vocabulary files: building the `tokenizer.json` form that
// @huggingface/transformers reads from the `vocab.json` + `merges.txt` pair that diffusers folders
// and the CLIP ViT-L/14 repository ship, and generating a small vocabulary for the test model.

export const BOS = '<|startoftext|>';
export const EOS = '<|endoftext|>';

/** GPT-2/CLIP byte -> printable unicode character table. */
export function byteToUnicode(): string[] {
  const keep: number[] = [];
  for (let b = 33; b <= 126; b++) keep.push(b);
  for (let b = 161; b <= 172; b++) keep.push(b);
  for (let b = 174; b <= 255; b++) keep.push(b);
  const table: string[] = new Array(256);
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    table[b] = keep.includes(b) ? String.fromCharCode(b) : String.fromCharCode(256 + extra++);
  }
  return table;
}

export interface BpeFiles {
  vocab: Record<string, number>;
  merges: string[];
}

export function parseMergesTxt(text: string): string[] {
  return text
    .split('\n')
    .filter((line, i) => line.length > 0 && !(i === 0 && line.startsWith('#version')));
}

export function mergesTxt(merges: string[]): string {
  return `#version: 0.2\n${merges.join('\n')}\n`;
}

/** The tokenizer.json document of a CLIP tokenizer with the given vocabulary. */
export function clipTokenizerJson(files: BpeFiles): Record<string, unknown> {
  const special = (content: string) => ({
    id: files.vocab[content],
    content,
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: true,
    special: true,
  });
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: [special(BOS), special(EOS)],
    normalizer: {
      type: 'Sequence',
      normalizers: [{ type: 'NFC' }, { type: 'Replace', pattern: { Regex: '\\s+' }, content: ' ' }, { type: 'Lowercase' }],
    },
    pre_tokenizer: {
      type: 'Sequence',
      pretokenizers: [
        {
          type: 'Split',
          pattern: { Regex: "<\\|startoftext\\|>|<\\|endoftext\\|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+" },
          behavior: 'Removed',
          invert: true,
        },
        { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false },
      ],
    },
    post_processor: {
      type: 'RobertaProcessing',
      sep: [EOS, files.vocab[EOS]],
      cls: [BOS, files.vocab[BOS]],
      trim_offsets: false,
      add_prefix_space: false,
    },
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: EOS,
      continuing_subword_prefix: '',
      end_of_word_suffix: '</w>',
      fuse_unk: false,
      byte_fallback: false,
      vocab: files.vocab,
      merges: files.merges,
    },
  };
}

export const CLIP_TOKENIZER_CONFIG = {
  tokenizer_class: 'CLIPTokenizer',
  bos_token: BOS,
  eos_token: EOS,
  unk_token: EOS,
  pad_token: EOS,
  model_max_length: 77,
  do_lower_case: true,
  add_prefix_space: false,
  clean_up_tokenization_spaces: true,
};

/**
 * A small CLIP-format vocabulary: the 512 byte symbols (with and without the end-of-word mark),
 * merges that spell out each word of `words` whole, then the two special tokens.
 */
export function makeTinyVocabulary(words: string[]): BpeFiles {
  const bytes = byteToUnicode();
  const vocab: Record<string, number> = {};
  let next = 0;
  for (const ch of bytes) vocab[ch] = next++;
  for (const ch of bytes) vocab[`${ch}</w>`] = next++;
  const merges: string[] = [];
  for (const word of words) {
    const chars = [...new TextEncoder().encode(word.toLowerCase())].map((b) => bytes[b]);
    let symbols = chars.map((c, i) => (i === chars.length - 1 ? `${c}</w>` : c));
    while (symbols.length > 1) {
      const merged = symbols[0] + symbols[1];
      if (!(merged in vocab)) {
        merges.push(`${symbols[0]} ${symbols[1]}`);
        vocab[merged] = next++;
      }
      symbols = [merged, ...symbols.slice(2)];
    }
  }
  vocab[BOS] = next++;
  vocab[EOS] = next++;
  return { vocab, merges };
}

export const TINY_WORDS = [
  'a', 'an', 'the', 'of', 'in', 'on', 'with', 'and', 'photo', 'painting', 'portrait', 'cat', 'dog', 'girl', 'boy',
  'man', 'woman', 'red', 'blue', 'green', 'hat', 'dress', 'forest', 'city', 'night', 'sky', 'sun', 'style',
  'anime', 'watercolor', 'sword', 'castle', 'mountain', 'river', 'flower', 'blurry', 'lowres', 'ugly', 'best', 'quality',
];
