// The files of a CLIP scorer in the Hugging Face ONNX layout, per weight type: what the engine opens,
// the CLI fetches and the studio stores. (No transformers.js here: the page imports this.)

/** CLIP ViT-B/16 exported to ONNX: the model CMLoRA's and ComposLoRA's CLIPScore use (torchmetrics, openai/clip-vit-base-patch16), unless told otherwise. */
export const DEFAULT_SCORER = 'Xenova/clip-vit-base-patch16';

export const SCORER_DTYPE_SUFFIX = { fp32: '', fp16: '_fp16', q8: '_quantized' } as const;
export type ScorerDtype = keyof typeof SCORER_DTYPE_SUFFIX;
export const SCORER_DTYPES = Object.keys(SCORER_DTYPE_SUFFIX) as ScorerDtype[];

export const scorerModelFiles = (dtype: ScorerDtype) => ['text_model', 'vision_model'].map((m) => `onnx/${m}${SCORER_DTYPE_SUFFIX[dtype]}.onnx`);

/** Every file a scorer of this weight type needs. */
export const scorerFileList = (dtype: ScorerDtype) => ['config.json', 'preprocessor_config.json', 'tokenizer.json', 'tokenizer_config.json', ...scorerModelFiles(dtype)];
