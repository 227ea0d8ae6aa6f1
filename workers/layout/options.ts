// A layout's options with every default filled in: LoRA-Composer's code wherever we have a choice
// (the README's fidelity table says, option by option, what the code does and what ours does).
import type { GuidanceOptions, LayoutOptions, ResolvedLayoutOptions } from '../api/contract.ts';
import { BadArgumentError } from '../api/errors.ts';
import { GUIDANCE_MAX_SCALE, GUIDANCE_SCHEDULE_DEFAULTS } from './guidance.ts';
import { ISOLATION_SCOPES, MASK_RULES } from './masks.ts';

export const LAYOUT_DEFAULTS = {
  masks: 'covered',
  isolationScope: 'concepts',
  regionBase: 'model',
  regionNegative: 'concept',
  regionOutput: 'own',
} as const satisfies Partial<LayoutOptions>;

const CHOICES: Record<keyof typeof LAYOUT_DEFAULTS, readonly string[]> = {
  masks: MASK_RULES,
  isolationScope: ISOLATION_SCOPES,
  regionBase: ['model', 'frame'],
  regionNegative: ['concept', 'frame'],
  regionOutput: ['own', 'shared'],
};

export function resolveGuidance(g: GuidanceOptions | undefined): Required<GuidanceOptions> | null {
  if (!g || !(g.ce || g.fill || g.region)) return null;
  const given = Object.fromEntries(Object.entries(g).filter(([, v]) => v !== undefined));
  return { ...GUIDANCE_SCHEDULE_DEFAULTS, ...given } as Required<GuidanceOptions>;
}

export function resolveLayout(layout: LayoutOptions): ResolvedLayoutOptions {
  const out = { injection: layout.injection, isolation: layout.isolation, reinit: layout.reinit, guidance: resolveGuidance(layout.guidance) } as ResolvedLayoutOptions;
  for (const k of Object.keys(LAYOUT_DEFAULTS) as (keyof typeof LAYOUT_DEFAULTS)[]) {
    const v = layout[k] ?? LAYOUT_DEFAULTS[k];
    if (!CHOICES[k].includes(v)) throw new BadArgumentError(`layout.${k} must be one of ${CHOICES[k].join(', ')} (got ${JSON.stringify(v)?.slice(0, 30)}).`);
    (out as Record<string, unknown>)[k] = v;
  }
  return out;
}

/** The job's guidance settings checked; a sentence for each bad one. */
export function checkGuidance(g: unknown): void {
  const bad = (m: string) => new BadArgumentError(m);
  if (typeof g !== 'object' || g === null || !['ce', 'fill', 'region'].every((k) => typeof (g as Record<string, unknown>)[k] === 'boolean')) {
    throw bad('layout.guidance must be {ce, fill, region} switches with optional scale, share, earlyStop and lastStep.');
  }
  const o = g as GuidanceOptions;
  if (o.scale !== undefined && !(Number.isFinite(o.scale) && o.scale >= 0 && o.scale <= GUIDANCE_MAX_SCALE)) throw bad(`The guidance scale must be from 0 to ${GUIDANCE_MAX_SCALE} (got ${o.scale}).`);
  if (o.share !== undefined && !(Number.isFinite(o.share) && o.share >= 0 && o.share <= 1)) throw bad(`The guided share of steps must be from 0 to 1 (got ${o.share}).`);
  if (o.earlyStop !== undefined && typeof o.earlyStop !== 'boolean') throw bad('guidance.earlyStop must be true or false.');
  if (o.lastStep !== undefined && !(Number.isInteger(o.lastStep) && o.lastStep >= 0 && o.lastStep <= 200)) throw bad(`guidance.lastStep must be a whole number from 0 to 200 (got ${o.lastStep}).`);
}
