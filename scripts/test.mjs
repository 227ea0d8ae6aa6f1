// `npm test`: unit and engine tests (Node, real WebGPU through Dawn), then the e2e tests in
// Debian's Chromium against the built app. `npm test -- unit` or `-- e2e` runs one part.
import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { ensureChromium } from './ensure-system.mjs';

const which = process.argv[2] ?? 'all';
ensureChromium();

// The files that take longest (minutes each on 2 cores, measured), started first so that no long file
// runs alone at the end while the other core idles; the rest follow in name order.
const LONGEST = [
  'tests/engine/faults.test.ts', 'tests/engine/picture.test.ts', 'tests/engine/lora-engine.test.ts', 'tests/engine/cli.test.ts', 'tests/engine/memory.test.ts', 'tests/engine/soak.test.ts',
  'e2e/faults.test.ts', 'e2e/layout.test.ts', 'e2e/lora.test.ts', 'e2e/generate.test.ts', 'e2e/picture.test.ts', 'e2e/evaluation.test.ts', 'e2e/studio.test.ts',
];
const rank = (f) => (LONGEST.includes(f) ? LONGEST.indexOf(f) : LONGEST.length);
const files = (dir) => readdirSync(dir).filter((f) => f.endsWith('.test.ts')).sort().map((f) => join(dir, f));
const longestFirst = (list) => [...list].sort((a, b) => rank(a) - rank(b));
/** Test files through scripts/run-tests.mjs (node --test would sort them by name), `concurrency` at a time. */
const tests = (list, concurrency) =>
  spawnSync(process.execPath, ['--liftoff-only', '--import', 'tsx', '--import', './scripts/wgsl.mjs', 'scripts/run-tests.mjs', ...longestFirst(list)], { stdio: 'inherit', env: { ...process.env, TEST_CONCURRENCY: String(concurrency) } }).status ?? 1;

let failed = 0;
if (which === 'all' || which === 'unit') {
  failed += spawnSync('npx', ['tsc', '--noEmit', '-p', 'tsconfig.json'], { stdio: 'inherit' }).status ? 1 : 0;
  // two test files at a time: much of an engine test is single-threaded JavaScript and shader
  // compilation, so a second file fills the other core (each file is its own process and device)
  failed += tests([...files('tests/unit'), ...files('tests/engine')], 2) ? 1 : 0;
}
if (which === 'all' || which === 'e2e') {
  const build = spawnSync('npm', ['run', 'build', '--silent'], { stdio: 'inherit' }).status;
  if (build !== 0) failed += 1;
  // two files at a time, each its own server, browser and profile: two at a time measured 17 min
  // against 20 one at a time (Chromium's SwiftShader leaves a core idle between dispatches)
  else failed += tests(files('e2e'), 2) ? 1 : 0;
}
process.exit(failed ? 1 : 0);
