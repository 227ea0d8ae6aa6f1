// `npm test`: unit and engine tests (Node, real WebGPU through Dawn), then the e2e tests in
// Debian's Chromium against the built app. `npm test -- unit` or `-- e2e` runs one part.
import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { ensureChromium } from './ensure-system.mjs';

const which = process.argv[2] ?? 'all';

// Dawn's disable_workgroup_init for every test process, the CLIs they start and the e2e Chromium:
// SwiftShader pays for WGSL's zero-fill of workgroup memory in every workgroup and every compile.
// Why it is sound and what it saves: the README, "Two commands on a fresh machine".
// LORA_STUDIO_DAWN_FEATURES= (empty) runs the tests with Dawn's defaults, as a user's browser does.
process.env.LORA_STUDIO_DAWN_FEATURES ??= 'disable_workgroup_init';
ensureChromium();

const files = (dir) => readdirSync(dir).filter((f) => f.endsWith('.test.ts')).sort().map((f) => join(dir, f));
const node = (args) => spawnSync(process.execPath, ['--liftoff-only', '--import', 'tsx', '--import', './scripts/wgsl.mjs', ...args], { stdio: 'inherit' }).status ?? 1;

let failed = 0;
if (which === 'all' || which === 'unit') {
  failed += spawnSync('npx', ['tsc', '--noEmit', '-p', 'tsconfig.json'], { stdio: 'inherit' }).status ? 1 : 0;
  // two test files at a time, each its own process and device: two engine files measured 59 s side
  // by side against 72 s one after the other (and 75 s pinned to one core each)
  failed += node(['--test', '--test-concurrency=2', ...files('tests/unit'), ...files('tests/engine')]) ? 1 : 0;
}
if (which === 'all' || which === 'e2e') {
  const build = spawnSync('npm', ['run', 'build', '--silent'], { stdio: 'inherit' }).status;
  if (build !== 0) failed += 1;
  // two files at a time, each its own server, browser and profile: measured 17 min against 20 one
  // at a time
  else failed += node(['--test', '--test-concurrency=2', ...files('e2e')]) ? 1 : 0;
}
process.exit(failed ? 1 : 0);
