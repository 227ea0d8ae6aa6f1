// The science while it works: per denoising step, the relative high-frequency amplitude of each
// LoRA's prediction (CMLoRA's profile signal) as lines, and which LoRA ran or was taken from the
// cache as a strip of cells. Drawn as SVG from the report (or the running job's steps).
import type { CompositionStep, GuidanceStep } from '../../workers/api/contract.ts';

const COLORS = ['#e4572e', '#17bebb', '#ffc914', '#76b041', '#7d5ba6', '#2e86ab', '#f18f01', '#c73e1d'];

export function StepPlots({ steps, loras }: { steps: CompositionStep[]; loras: string[] }) {
  if (!steps.length || !loras.length) return null;
  const W = 320;
  const H = 110;
  // margins for the axes' numbers
  const [L, R, T, B] = [38, 8, 8, 24];
  const n = steps.length;
  const x = (i: number) => L + (n === 1 ? (W - L - R) / 2 : (i / (n - 1)) * (W - L - R));
  const values = steps.flatMap((s) => s.amplitudes.filter((a): a is number => a !== null));
  const max = Math.max(1e-9, ...values);
  const y = (v: number) => T + (1 - v / max) * (H - T - B);
  const cell = (W - L - R) / n;
  return (
    <div className="plots" data-testid="plots">
      {!values.length && <p className="hint">No frequency measures: the latents stayed on the GPU (each LoRA is measured only when the CPU sees its prediction).</p>}
      <svg viewBox={`0 0 ${W} ${H}`} width={W} height={H} role="img" aria-label="high-frequency amplitude per LoRA per step" data-testid="plot-amplitude" style={values.length ? undefined : { display: 'none' }}>
        <rect x={0} y={0} width={W} height={H} style={{ fill: 'var(--panel)', stroke: 'var(--line)' }} />
        <g style={{ stroke: 'var(--muted)' }}>
          <line x1={L} y1={T} x2={L} y2={H - B} />
          <line x1={L} y1={H - B} x2={W - R} y2={H - B} />
        </g>
        <g style={{ fill: 'var(--muted)', fontSize: 10 }}>
          <text x={L - 4} y={T + 4} textAnchor="end" data-testid="plot-max">
            {max.toPrecision(3)}
          </text>
          <text x={L - 4} y={H - B} textAnchor="end">
            0
          </text>
          <text x={L} y={H - B + 12} textAnchor="middle">
            1
          </text>
          <text x={W - R} y={H - B + 12} textAnchor="end">
            {n}
          </text>
          <text x={(L + W - R) / 2} y={H - 3} textAnchor="middle">
            step · high-frequency amplitude of each LoRA's prediction
          </text>
        </g>
        {loras.map((name, k) => {
          const pts = steps.flatMap((s, i) => (s.amplitudes[k] == null ? [] : [{ i, cx: x(i), cy: y(s.amplitudes[k]!) }]));
          return (
            <g key={name}>
              <polyline fill="none" stroke={COLORS[k % COLORS.length]} strokeWidth={1.5} points={pts.map((p) => `${p.cx.toFixed(1)},${p.cy.toFixed(1)}`).join(' ')} />
              {pts.map((p) => (
                <circle key={p.i} cx={p.cx} cy={p.cy} r={1.8} fill={COLORS[k % COLORS.length]}>
                  <title>{`${name}, step ${p.i + 1}: ${steps[p.i].amplitudes[k]!.toPrecision(3)}`}</title>
                </circle>
              ))}
            </g>
          );
        })}
      </svg>
      <svg viewBox={`0 0 ${W} ${loras.length * 10 + 4}`} width={W} height={loras.length * 10 + 4} role="img" aria-label="active and cached LoRA per step" data-testid="plot-active">
        {loras.map((name, k) =>
          steps.map((s, i) => {
            const state = s.active.includes(k) ? 'active' : s.cached.includes(k) ? 'cached' : 'off';
            return (
              <rect key={`${k}-${i}`} x={L + i * cell} y={2 + k * 10} width={Math.max(1, cell - 1)} height={8} fill={state === 'active' ? COLORS[k % COLORS.length] : state === 'cached' ? '#bbb' : '#f0f0ee'} data-state={state}>
                <title>{`${name}, step ${i + 1}: ${state}`}</title>
              </rect>
            );
          }),
        )}
      </svg>
      <p className="hint legend">
        {loras.map((name, k) => (
          <span key={name} style={{ color: COLORS[k % COLORS.length] }}>
            ■ {name}{' '}
          </span>
        ))}
        — lines: high-frequency amplitude; cells: computed (colour) or cached (grey)
      </p>
    </div>
  );
}

const TERMS = [
  { key: 'loss', label: 'L', color: '#1d1f24', weight: 1 },
  { key: 'ce', label: 'in the box', color: '#e4572e', weight: 1 },
  { key: 'fill', label: 'filling the box', color: '#2e86ab', weight: 1 },
  { key: 'region', label: 'kept apart', color: '#76b041', weight: 1 },
] as const;

/** Gradient guidance per step: L and its weighted terms; a hollow point where early stop skipped the update. */
export function GuidancePlot({ steps, total }: { steps: GuidanceStep[]; total: number }) {
  if (!steps.length) return null;
  const W = 300;
  const H = 70;
  const x = (step: number) => (total <= 1 ? W / 2 : (step / (total - 1)) * (W - 10) + 5);
  const max = Math.max(1e-9, ...steps.map((s) => s.loss));
  const y = (v: number) => H - 5 - (v / max) * (H - 10);
  return (
    <div className="plots" data-testid="guidance-plot">
      <svg viewBox={`0 0 ${W} ${H}`} width={W} height={H} role="img" aria-label="guidance loss per step">
        <rect x={0} y={0} width={W} height={H} fill="#fff" stroke="#ddd" />
        {TERMS.map((t) => (
          <g key={t.key}>
            <polyline fill="none" stroke={t.color} strokeWidth={t.key === 'loss' ? 2 : 1} points={steps.map((s) => `${x(s.step).toFixed(1)},${y(s[t.key] * t.weight).toFixed(1)}`).join(' ')} />
            {t.key === 'loss' &&
              steps.map((s) => (
                <circle key={s.step} cx={x(s.step)} cy={y(s.loss)} r={2.2} fill={s.updated ? t.color : '#fff'} stroke={t.color} data-updated={s.updated}>
                  <title>{`step ${s.step + 1}: L ${s.loss.toFixed(3)} (ce ${s.ce.toFixed(3)}, fill ${s.fill.toFixed(3)}, region ${s.region.toFixed(4)})${s.updated ? `, phi ${s.stepSize.toFixed(1)}` : ', not moved'}`}</title>
                </circle>
              ))}
          </g>
        ))}
      </svg>
      <p className="hint legend">
        {TERMS.map((t) => (
          <span key={t.key} style={{ color: t.color }}>
            ■ {t.label}{' '}
          </span>
        ))}
        — guidance loss per step
      </p>
    </div>
  );
}
