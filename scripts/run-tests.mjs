// Runs test files through node:test's run() in the order given (the CLI sorts them by name), two at
// a time by default; TAP on stdout; exits 1 if any test failed. Children inherit this process's flags.
import { run } from 'node:test';
import { tap } from 'node:test/reporters';

const files = process.argv.slice(2);
const stream = run({ files, concurrency: Number(process.env.TEST_CONCURRENCY ?? 2) });
stream.on('test:fail', () => {
  process.exitCode = 1;
});
stream.compose(tap).pipe(process.stdout);
