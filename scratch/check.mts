import { installNodeWebGpu } from '../workers/node/webgpu.ts';
import { createRuntime } from '../workers/engine/runtime.ts';
import { checkFusedAttention } from '../workers/engine/attention-check.ts';
await installNodeWebGpu();
const rt = await createRuntime('webgpu');
console.log(await checkFusedAttention(rt));
process.exit(0);
