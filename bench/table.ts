// The table `npm run bench` prints from bench/results.json: one line per figure, with the adapter
// and the date it was measured on (a BENCH_ONLY run replaces its own entry and keeps the others).

export interface BenchEntry {
  date: string;
  adapter: { vendor: string; architecture: string; description?: string; shaderF16: boolean; dawnFeatures?: string[] };
  result: Record<string, unknown>;
}

type Row = [string, string, string];
const f = (v: unknown, d = 2) => (typeof v === 'number' ? v.toFixed(d) : String(v));
type Any = any;

function figures(name: string, r: Any): Row[] {
  const out: Row[] = [];
  const add = (figure: string, value: string) => out.push([name, figure, value]);
  switch (name) {
    case 'stages':
      for (const x of r.rows) add(`${x.case}: text / step / decode / first sessions (ms)`, `${f(x.textEncodeMs, 0)} / ${f(x.perStepMs, 0)} / ${f(x.decodeMs, 0)} / ${f(x.firstSessionCreateMs, 0)}`);
      for (const x of r.rows) add(`${x.case}: peak GPU memory`, `${f(x.peakGpuMB, 1)} MB`);
      for (const x of r.rows) add(`${x.case}: CLIP scoring (tiny scorer)`, `${f(x.clipScoreMs, 0)} ms`);
      break;
    case 'unet-step-tiny':
      for (const x of r.rows) add(`UNet step, latent ${x.latent}: webgpu / wasm`, `${f(x.webgpuStepMs, 1)} / ${f(x.wasmStepMs, 1)} ms (x${f(x.webgpuOverWasm)})`);
      break;
    case 'lora-merge': {
      add('buffer copy bandwidth (the ceiling)', `${f(r.copyGBps)} GB/s`);
      for (const form of ['batched', 'direct', 'cpu']) if (r.rank8Single?.[form]) add(`rank-8 merge, ${form}: throughput`, `${f(r.rank8Single[form].gbps)} GB/s (${f(r.rank8Single[form].ms, 0)} ms)`);
      for (const g of r.switchGrid ?? []) if (g.mergeOverCopy !== undefined) add(`switch rank ${g.rank} x${g.loras}: merge speed / copy speed`, f(g.mergeOverCopy, 3));
      break;
    }
    case 'composition':
      for (const g of r.groups) for (const x of g.rows) add(`${g.loras} LoRAs, ${x.method}: runs / multiply-adds / wall vs composite`, `${f(x.evaluationsVsComposite)} / ${f(x.macsVsComposite)} / ${f(x.wallVsComposite)}`);
      for (const x of r.sd15?.rows ?? []) add(`SD 1.5 512, ${x.steps} steps, ${x.loras} LoRAs: cmlora multiply-adds vs composite`, f(x.vsComposite, 3));
      break;
    case 'layout':
      for (const x of r.rows) add(`${x.choices}, ${x.boxes} boxes: step time vs no layout`, f(x.perStepVsNoLayout));
      break;
    case 'guidance':
      for (const x of r.runs) add(`${x.arrangement}: guided step vs unguided (tiny, measured)`, f(x.perStepVsUnguided));
      add('guided step vs unguided (SD 1.5 512, multiply-adds)', f(r.sd15.recomputeAbove.guidedStepVsUnguided));
      add('SD 1.5 backward keeps (fp32 / fp16)', `${f(r.sd15.recomputeAbove.backwardKeepsMB.fp32, 0)} / ${f(r.sd15.recomputeAbove.backwardKeepsMB.fp16, 0)} MB`);
      break;
    case 'picture':
      for (const x of r.rows) add(`${x.case}: time per image vs text to image (tiny, ${r.steps} steps)`, `${f(x.vsTextToImage)} (${f(x.totalMs, 0)} ms, ${x.unetEvaluations} UNet runs)`);
      break;
    default:
      add('(no table form)', JSON.stringify(r).slice(0, 60));
  }
  return out;
}

export function benchTable(entries: Record<string, BenchEntry>): string {
  const rows: string[][] = [['benchmark', 'figure', 'value', 'adapter', 'measured']];
  for (const [name, e] of Object.entries(entries)) {
    const adapter = `${e.adapter.vendor}/${e.adapter.architecture}${e.adapter.shaderF16 ? ' f16' : ''}${e.adapter.dawnFeatures?.length ? ` (${e.adapter.dawnFeatures.join(', ')})` : ''}`;
    for (const [b, fig, v] of figures(name, e.result)) rows.push([b, fig, v, adapter, e.date.slice(0, 16).replace('T', ' ')]);
  }
  const widths = rows[0].map((_, c) => Math.min(70, Math.max(...rows.map((r) => r[c].length))));
  return rows.map((r, i) => {
    const line = r.map((cell, c) => cell.slice(0, widths[c]).padEnd(widths[c])).join('  ');
    return i === 0 ? `${line}\n${widths.map((w) => '-'.repeat(w)).join('  ')}` : line;
  }).join('\n');
}
