// A Node child process run with a time limit, and run again when it stalls. On SwiftShader a
// child has been seen to stall inside the WebGPU stack (at onnxruntime's profiled run: rarely here,
// every time in one landed CI run), so `bench:gpu`'s measuring children and the attention-path test's
// profiled ones go through here; a child names its stages on stderr (`stageLine`) so a stall says where.
import { spawnSync } from 'node:child_process';

export interface ChildRun {
  code: number | null;
  stdout: string;
  stderr: string;
  /** Each time the child passed its limit: where it stood (its last `stage` line on stderr). */
  stalls: string[];
}

/** A child's progress line on stderr, which `runChild` reports where the child stalls. */
export function stageLine(name: string): string {
  return `stage ${new Date().toISOString().slice(11, 23)} ${name}\n`;
}

/**
 * Node with `args` in a child process, the caller waiting (as bench:gpu's measuring runs always have:
 * the parent holds its own device, idle, meanwhile); one past `limitMs` (0: no limit) is stopped and
 * run again, up to `attempts` runs in all, after which the stalls are an error naming each.
 */
export function runChild(args: string[], limitMs = 0, attempts = 2): ChildRun {
  const stalls: string[] = [];
  for (;;) {
    const r = spawnSync(process.execPath, args, { encoding: 'utf8', maxBuffer: 1 << 30, ...(limitMs > 0 ? { timeout: limitMs, killSignal: 'SIGKILL' as const } : {}) });
    const stalled = (r.error as NodeJS.ErrnoException | undefined)?.code === 'ETIMEDOUT';
    if (!stalled) {
      if (r.error) throw r.error;
      return { code: r.status, stdout: r.stdout, stderr: r.stderr, stalls };
    }
    const reached = (r.stderr ?? '').split('\n').filter((l) => l.startsWith('stage ')).at(-1) ?? 'before its first stage';
    stalls.push(`stopped after ${limitMs / 1000} s, at ${reached}`);
    if (stalls.length >= attempts) throw new Error(`the child stalled ${attempts} times: ${stalls.join('; ')}`);
  }
}
