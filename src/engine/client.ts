// The page's handle on the engine worker. A lost device or a crashed worker is recovered by
// restart(): a fresh worker, and the caller reloads the model.
import * as Comlink from 'comlink';
import type { EngineApi } from '../../workers/api/contract.ts';
import { installErrorTransfer } from '../../workers/api/comlink-errors.ts';
import { EngineError } from '../../workers/api/errors.ts';

installErrorTransfer();

export interface EngineClient {
  api: Comlink.Remote<EngineApi>;
  terminate(): void;
  /** Settles with a sentence once the worker has died (an uncaught error in it) or lost its GPU device. */
  failed: Promise<EngineError>;
}

/** What the page is told when its worker dies; it restarts the engine and says so itself. */
export const workerCrashed = (why: string) => new EngineError('worker-crashed', `The engine stopped unexpectedly (${why}).`);

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

/**
 * A fresh engine worker. Its calls are raced against the worker's failure, so a call in flight when
 * the worker dies ends with the named error instead of waiting for an answer that never comes.
 */
export function startEngine(): EngineClient {
  const worker = new Worker(new URL('../../workers/engine.worker.ts', import.meta.url), { type: 'module' });
  let fail!: (e: EngineError) => void;
  const failed = new Promise<EngineError>((resolve) => (fail = resolve));
  // the calls waiting for an answer: each is rejected when the worker dies, and forgotten when it settles
  const waiting = new Set<(e: EngineError) => void>();
  let dead: EngineError | undefined;
  const die = (e: EngineError) => {
    if (dead) return;
    dead = e;
    for (const reject of waiting) reject(e);
    waiting.clear();
    fail(e);
  };
  worker.addEventListener('error', (e) => {
    e.preventDefault();
    die(workerCrashed(e.message || 'an error in its worker'));
  });
  worker.addEventListener('messageerror', () => die(workerCrashed('a message from it could not be read')));
  const remote = Comlink.wrap<EngineApi>(worker);
  void remote.watch(Comlink.proxy((reason: string) => die(new EngineError('device-lost', `The GPU device was lost (${reason}).`)))).catch(() => {});
  const api = new Proxy(remote, {
    get(target, prop) {
      // not a thenable: `await api` must not call into the worker
      if (prop === 'then') return undefined;
      const method = target[prop as keyof EngineApi] as unknown as (...args: unknown[]) => Promise<unknown>;
      return (...args: unknown[]) => {
        if (dead) return Promise.reject(dead);
        return new Promise((resolve, reject) => {
          waiting.add(reject);
          method(...args)
            .then(resolve, reject)
            .finally(() => waiting.delete(reject));
        });
      };
    },
  });
  return { api, terminate: () => worker.terminate(), failed };
}
