// The engine's Web Worker: Comlink.expose and nothing else.
import * as Comlink from 'comlink';
import { installErrorTransfer } from './api/comlink-errors.ts';
import { createWorkerApi } from './engine/worker-api.ts';

installErrorTransfer();
Comlink.expose(createWorkerApi());
