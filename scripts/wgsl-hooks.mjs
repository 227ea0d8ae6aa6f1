// Node module hooks: `import text from './x.wgsl?raw'` gives the file's text, as Vite does, so the
// engine's kernels load the same way in the browser build and under Node (CLI, tests, bench).
import { readFile } from 'node:fs/promises';

const RAW = /\.wgsl\?raw$/;

export async function resolve(specifier, context, next) {
  if (RAW.test(specifier)) return { url: new URL(specifier, context.parentURL).href, format: 'module', shortCircuit: true };
  return next(specifier, context);
}

export async function load(url, context, next) {
  if (!RAW.test(url)) return next(url, context);
  const text = await readFile(new URL(url.replace(/\?raw$/, '')), 'utf8');
  return { format: 'module', source: `export default ${JSON.stringify(text)};`, shortCircuit: true };
}
