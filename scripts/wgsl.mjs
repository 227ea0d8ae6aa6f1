// `node --import ./scripts/wgsl.mjs`: registers the .wgsl?raw hooks (see wgsl-hooks.mjs).
import { register } from 'node:module';

register('./wgsl-hooks.mjs', import.meta.url);
