// onnxruntime's WebGPU profile, read from a child process. onnxruntime prints its profile on the
// process's own stdout (not through anything JavaScript can catch), so whoever wants one runs the
// profiled work in a child and reads its output: `bench:gpu --ort-profile` and the attention-path
// test. On SwiftShader a child has been seen to stall at its profiled run (rarely here, every time in
// one landed CI run, after a UNet's other work in the same process), so a child past its time limit
// is stopped and run again.
import { spawnSync } from 'node:child_process';

/** One program onnxruntime dispatched: its node and kernel (`&`-joined), its buffers' shapes as printed, its GPU time. */
export interface ProfiledProgram {
  name: string;
  shapes: string;
  us: number;
}

/** The programs in a profile's printed entries ("cat" : "Api"), in the order they ran. */
export function profiledPrograms(stdout: string): ProfiledProgram[] {
  return stdout
    .split('\n')
    .filter((l) => l.includes('"cat" : "Api"'))
    .map((l) => ({ name: /"name" :"([^"]*)"/.exec(l)?.[1] ?? '', shapes: /"shapes" : "([^"]*)"/.exec(l)?.[1] ?? '', us: Number(/"dur" :(\d+)/.exec(l)?.[1] ?? 0) }));
}

/** A program's input or output shapes from its printed `shapes` (vectorised programs count vec4s in the last axis). */
export function programShapes(shapes: string, kind: 'inputs' | 'outputs'): number[][] {
  return [...shapes.matchAll(new RegExp(`${kind}\\[\\d+\\] = \\{([^}]*)\\}`, 'g'))].map((m) => m[1].split(',').map(Number));
}

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
