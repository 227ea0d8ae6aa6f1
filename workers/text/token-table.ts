// CLIP's token embedding table, held in CPU memory. A prompt reads 77 of its 49,408 rows, so the
// engine looks them up here and the text encoder graph takes the rows as its `inputs_embeds` input.
// On the GPU the table would be one 145 MiB buffer in fp32: above the 128 MiB binding that WebGPU
// guarantees, and the adapters without shader-f16 (which must run fp32) are the ones most likely to
// stop there. In fp16 the rows are rounded to half precision exactly as a GPU copy of the table
// would be, so the graph's cast back to fp16 reads the same values.
import { floatsToHalf, halvesToFloat } from '../checkpoint/dtype.ts';

export class TokenTable {
  private constructor(
    /** Rows of the vocabulary. */
    readonly rows: number,
    readonly hidden: number,
    private readonly values: Float32Array | Uint16Array,
  ) {}

  /** The table from its float32 values ([rows, hidden]); in fp16 kept as half-precision bits. */
  static of(values: Float32Array, hidden: number, precision: 'fp32' | 'fp16'): TokenTable {
    if (!(hidden > 0) || values.length % hidden) throw new RangeError(`a token table of ${values.length} values is not a whole number of rows of ${hidden}`);
    return new TokenTable(values.length / hidden, hidden, precision === 'fp16' ? floatsToHalf(values) : values);
  }

  /** CPU memory the table takes. */
  get bytes(): number {
    return this.values.byteLength;
  }

  /**
   * The rows of `ids` ([ids.length, hidden], float32). An id from `rows` on is an added token
   * (textual inversion, ED-LoRA concept): it reads row `id - rows` of `added` ([n, hidden]), taken
   * as it is, as the graph casts it.
   */
  embed(ids: readonly number[], added?: Float32Array): Float32Array {
    const { rows, hidden, values } = this;
    if (added && added.length % hidden) throw new RangeError(`an added table of ${added.length} values is not a whole number of rows of ${hidden}`);
    const addedRows = added ? added.length / hidden : 0;
    const out = new Float32Array(ids.length * hidden);
    ids.forEach((id, i) => {
      if (!Number.isInteger(id) || id < 0 || id >= rows + addedRows) {
        throw new RangeError(`token id ${id} is outside the vocabulary (${rows} rows${addedRows ? ` and ${addedRows} added` : ''})`);
      }
      if (id >= rows) out.set(added!.subarray((id - rows) * hidden, (id - rows + 1) * hidden), i * hidden);
      else {
        const row = values.subarray(id * hidden, (id + 1) * hidden);
        out.set(row instanceof Float32Array ? row : halvesToFloat(row), i * hidden);
      }
    });
    return out;
  }
}
