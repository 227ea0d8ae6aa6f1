// A GPU device lost in the middle of a generation (device.destroy(), as a driver reset or a
// browser reclaiming the GPU does it): the job ends with the named error, promptly, and every later
// call says the same instead of hanging or returning garbage. Its own file: the device stays lost
// for the rest of the process. (The studio's restart of its worker is in e2e/faults.test.ts.)
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import type { GenerateJob } from '../../workers/api/contract.ts';
import { DeviceLostError, type EngineError } from '../../workers/api/errors.ts';
import { openTinyEngine } from '../../workers/node/tiny.ts';
import { runtime, tinyModelDir } from '../helpers.ts';

after(() => setTimeout(() => process.exit(0), 10).unref());

const JOB: GenerateJob = { prompt: 'a lighthouse at dusk', negative: '', steps: 4, cfg: 5, seed: 3, width: 64, height: 64, scheduler: 'ddim' };

test('device.destroy() during a step ends the job with DeviceLostError, and later calls refuse the same way', async () => {
  const { dir } = await tinyModelDir();
  const rt = await runtime('webgpu');
  const { engine, loras } = await openTinyEngine(dir, rt, ['kohya']);
  const job = { ...JOB, loras: [{ lora: loras[0].id, scale: 1 }] };
  await engine.generate(job);
  const steps: number[] = [];
  const run = engine.generate(job, (e) => {
    if (e.phase !== 'denoise') return;
    steps.push(e.step);
    if (e.step === 2) rt.gpu!.device.destroy();
  });
  await assert.rejects(run, (e: Error) => e instanceof DeviceLostError && /GPU device was lost .*your scene is kept/.test(e.message));
  assert.ok(steps.length <= 3, `steps ran after the loss: ${steps}`);
  await assert.rejects(engine.generate(job), (e: EngineError) => e.code === 'device-lost');
  await assert.rejects(engine.applyLoras([]), (e: EngineError) => e.code === 'device-lost');
});
