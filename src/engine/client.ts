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

/**
 * A worker call that reports progress through a callback. Comlink sends the callback's messages on a
 * channel of their own, so the last of them can arrive after the call's answer; those are dropped,
 * so a finished load or run is never put back into its "loading" or "running" state.
 */
export async function withProgress<A extends unknown[], T>(onProgress: (...args: A) => void, call: (progress: (...args: A) => void) => Promise<T>): Promise<T> {
  let open = true;
  try {
    return await call(
      Comlink.proxy((...args: A) => {
        if (open) onProgress(...args);
      }),
    );
  } finally {
    open = false;
  }
}

export function startEngine(): EngineClient {
  const worker = new Worker(new URL('../../workers/engine.worker.ts', import.meta.url), { type: 'module' });
  return { api: Comlink.wrap<EngineApi>(worker), terminate: () => worker.terminate() };
}
