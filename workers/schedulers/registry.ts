// Every sampler the engine offers, by the name the CLI and the page use.
import type { Scheduler } from './common.ts';
import { DdimScheduler } from './ddim.ts';
import { DpmSolverPP2MScheduler } from './dpmpp-2m.ts';
import { EulerAncestralScheduler } from './euler-ancestral.ts';
import { EulerScheduler } from './euler.ts';
import { HeunScheduler } from './heun.ts';
import { LcmScheduler } from './lcm.ts';
import { TcdScheduler } from './tcd.ts';

export const SCHEDULERS = {
  ddim: { label: 'DDIM', create: (steps: number) => new DdimScheduler(steps) },
  'euler-a': { label: 'Euler ancestral', create: (steps: number) => new EulerAncestralScheduler(steps) },
  'dpmpp-2m': { label: 'DPM++ 2M', create: (steps: number) => new DpmSolverPP2MScheduler(steps, false) },
  'dpmpp-2m-karras': { label: 'DPM++ 2M Karras', create: (steps: number) => new DpmSolverPP2MScheduler(steps, true) },
  euler: { label: 'Euler', create: (steps: number) => new EulerScheduler(steps) },
  lcm: { label: 'LCM', create: (steps: number) => new LcmScheduler(steps) },
  tcd: { label: 'TCD', create: (steps: number) => new TcdScheduler(steps) },
  heun: { label: 'Heun', create: (steps: number) => new HeunScheduler(steps) },
} as const satisfies Record<string, { label: string; create: (steps: number) => Scheduler }>;

export type SchedulerName = keyof typeof SCHEDULERS;

export function isSchedulerName(s: string): s is SchedulerName {
  return Object.prototype.hasOwnProperty.call(SCHEDULERS, s);
}

export function createScheduler(name: SchedulerName, steps: number): Scheduler {
  return SCHEDULERS[name].create(steps);
}
