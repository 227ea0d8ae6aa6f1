// transformers.js runs its models on whichever onnxruntime it finds first. In the browser that is
// already our onnxruntime-web (one bundled copy); in Node it would load onnxruntime-node, so there
// the engine's onnxruntime-web is handed over before transformers.js is first imported: every module
// that imports transformers.js imports this one first.
import * as ort from 'onnxruntime-web/webgpu';

const ORT_SYMBOL = Symbol.for('onnxruntime');
export const IS_NODE = typeof process !== 'undefined' && !!process.versions?.node;
if (IS_NODE && !(ORT_SYMBOL in globalThis)) (globalThis as Record<symbol, unknown>)[ORT_SYMBOL] = ort;
