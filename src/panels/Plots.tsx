// The science while it works: per denoising step, the relative high-frequency amplitude of each
// LoRA's prediction (CMLoRA's profile signal) as lines, and which LoRA ran or was taken from the
// cache as a strip of cells. Drawn as SVG from the report (or the running job's steps).
import type { CompositionStep } from '../../workers/api/contract.ts';

const COLORS = ['#e4572e', '#17bebb', '#ffc914', '#76b041', '#7d5ba6', '#2e86ab', '#f18f01', '#c73e1d'];

export function StepPlots({ steps, loras }: { steps: CompositionStep[]; loras: string[] }) {
  if (!steps.length || !loras.length) return null;
  const W = 300;
  const H = 90;
  const n = steps.length;
  const x = (i: number) => (n === 1 ? W / 2 : (i / (n - 1)) * (W - 10) + 5);
  const values = steps.flatMap((s) => s.amplitudes.filter((a): a is number => a !== null));
  const max = Math.max(1e-9, ...values);
  const y = (v: number) => H - 5 - (v / max) * (H - 10);
  const cell = (W - 10) / n;
  return (
    <div className="plots" data-testid="plots">
      <svg viewBox={`0 0 ${W} ${H}`} width={W} height={H} role="img" aria-label="high-frequency amplitude per LoRA per step">
        <rect x={0} y={0} width={W} height={H} fill="#fff" stroke="#ddd" />
        {loras.map((name, k) => {
          const pts = steps.flatMap((s, i) => (s.amplitudes[k] == null ? [] : [{ i, cx: x(i), cy: y(s.amplitudes[k]!) }]));
          return (
            <g key={name}>
              <polyline fill="none" stroke={COLORS[k % COLORS.length]} strokeWidth={1.5} points={pts.map((p) => `${p.cx.toFixed(1)},${p.cy.toFixed(1)}`).join(' ')} />
              {pts.map((p) => (
                <circle key={p.i} cx={p.cx} cy={p.cy} r={1.8} fill={COLORS[k % COLORS.length]} />
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
              <rect key={`${k}-${i}`} x={5 + i * cell} y={2 + k * 10} width={Math.max(1, cell - 1)} height={8} fill={state === 'active' ? COLORS[k % COLORS.length] : state === 'cached' ? '#bbb' : '#f0f0ee'} data-state={state}>
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
