// onnxruntime's WebGPU profile, read from a child process's output. onnxruntime prints its profile
// on the process's own stdout (not through anything JavaScript can catch), so whoever wants one runs
// the profiled work in a child (`runChild`, child-run.ts) and reads its output: `bench:gpu
// --ort-profile` and the attention-path test.

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
