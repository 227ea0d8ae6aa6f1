// The page's handle on the engine worker. A lost device or a crashed worker is recovered by
// restart(): a fresh worker, and the caller reloads the model.
import * as Comlink from 'comlink';
import type { EngineApi } from '../../workers/api/contract.ts';
import { installErrorTransfer } from '../../workers/api/comlink-errors.ts';

installErrorTransfer();

export interface EngineClient {
  api: Comlink.Remote<EngineApi>;
  terminate(): void;
}

export function startEngine(): EngineClient {
  const worker = new Worker(new URL('../../workers/engine.worker.ts', import.meta.url), { type: 'module' });
  return { api: Comlink.wrap<EngineApi>(worker), terminate: () => worker.terminate() };
}
