// Errors cross the worker boundary as plain data (code, name, message) and are rebuilt as
// EngineErrors on the page, so the page can show the sentence and react to the code.
import * as Comlink from 'comlink';
import { fromErrorInfo, toErrorInfo, type ErrorInfo } from './errors.ts';

export function installErrorTransfer(): void {
  Comlink.transferHandlers.set('throw', {
    // Comlink wraps a thrown value as { value, [Symbol("Comlink.thrown")]: 0 }; the symbol is private
    canHandle: (v: unknown): v is { value: unknown } =>
      typeof v === 'object' && v !== null && Object.getOwnPropertySymbols(v).some((s) => s.description === 'Comlink.thrown'),
    serialize: ({ value }: { value: unknown }) => [{ info: toErrorInfo(value) }, []],
    deserialize: (s: { info: ErrorInfo }) => {
      throw fromErrorInfo(s.info);
    },
  } as unknown as Comlink.TransferHandler<unknown, unknown>);
}
