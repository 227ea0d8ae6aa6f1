// `npm run fuzz`: the fuzz properties at a large size. FUZZ_SECONDS (default 45) bounds the whole
// run, shared evenly between the targets; FUZZ_RUNS caps the cases per target; FUZZ_SEED fixes the
// first seed (by default a new one each run, printed so a failure can be replayed). Prints a JSON
// report: cases tried and outcomes per target.
import { exhaustiveLinkDamage, FUZZ_TARGETS, type FuzzReport } from '../tests/fuzz/properties.ts';

const seconds = Number(process.env.FUZZ_SECONDS ?? 45);
const maxRuns = Number(process.env.FUZZ_RUNS ?? Infinity);
const seed0 = Number(process.env.FUZZ_SEED ?? Math.floor(Math.random() * 2 ** 31));
const BATCH = 100;

const start = performance.now();
const targets = Object.entries(FUZZ_TARGETS);
// the exhaustive link pass takes a share like a target
const share = (seconds * 1000) / (targets.length + 1);
const reports: FuzzReport[] = [];
let failed = false;
for (const [i, [name, fuzz]] of targets.entries()) {
  const until = performance.now() + share;
  const total: FuzzReport = { target: name, cases: 0, outcomes: {}, reasons: 0, slowestMs: 0 };
  let batch = 0;
  while (performance.now() < until && total.cases < maxRuns) {
    const seed = seed0 + i * 1_000_003 + batch++;
    try {
      const r = await fuzz(Math.min(BATCH, maxRuns - total.cases), seed);
      total.cases += r.cases;
      for (const [k, v] of Object.entries(r.outcomes)) total.outcomes[k] = (total.outcomes[k] ?? 0) + v;
      total.reasons = Math.max(total.reasons, r.reasons);
      total.slowestMs = Math.max(total.slowestMs, r.slowestMs);
      if (r.largestReadShare !== undefined) total.largestReadShare = Math.max(total.largestReadShare ?? 0, r.largestReadShare);
    } catch (e) {
      failed = true;
      console.error(`fuzz ${name} failed (FUZZ_SEED=${seed0}, batch seed ${seed}):\n${(e as Error).message}`);
      break;
    }
  }
  total.slowestMs = Math.round(total.slowestMs);
  reports.push(total);
}
if (!failed) {
  const r = await exhaustiveLinkDamage(seed0, true);
  r.slowestMs = Math.round(r.slowestMs);
  reports.push(r);
}
const cases = reports.reduce((a, r) => a + r.cases, 0);
console.log(JSON.stringify({ seed: seed0, seconds: Math.round((performance.now() - start) / 100) / 10, cases, targets: reports }, null, 2));
process.exit(failed ? 1 : 0);
