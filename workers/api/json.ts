// Reading untrusted JSON (scene files and links, testbeds, model configs): text that does not parse
// becomes the caller's named error with the parser's reason, never a bare SyntaxError.

export type Obj = Record<string, unknown>;

export const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);

/** `fail(problem)` makes the caller's error from a phrase such as "it is not JSON (...)". */
export function parseJson(text: string, fail: (problem: string) => Error): unknown {
  try {
    return JSON.parse(text);
  } catch (e) {
    throw fail(`it is not JSON (${(e as Error).message.slice(0, 120)})`);
  }
}

/** JSON text that must hold an object. */
export function parseJsonObject(text: string, fail: (problem: string) => Error): Obj {
  const v = parseJson(text, fail);
  if (!isObj(v)) throw fail('it is not a JSON object');
  return v;
}
