// Summaries of an evaluation: means with 95% intervals from Student's t (the runs of a method are few),
// grouped per method and per number of LoRAs, and pairwise comparisons against a baseline on the same
// scene and seed: CMLoRA's (analysis.py: scores rounded to one decimal, a tie within 0.1, reported as
// (wins + ties) / pairs; it ranks with ImageReward, we with CLIPScore where no reward model is loaded)
// and ours (wins + half the ties).

export interface Interval {
  n: number;
  mean: number;
  /** The 95% confidence interval of the mean (equal to the mean when n = 1). */
  lo: number;
  hi: number;
}

function logGamma(x: number): number {
  // Lanczos approximation, g = 7, nine terms (accurate to ~1e-15 for x > 0.5).
  const c = [0.99999999999980993, 676.5203681218851, -1259.1392167224028, 771.32342877765313, -176.61502916214059, 12.507343278686905, -0.13857109526572012, 9.9843695780195716e-6, 1.5056327351493116e-7];
  if (x < 0.5) return Math.log(Math.PI / Math.abs(Math.sin(Math.PI * x))) - logGamma(1 - x);
  x -= 1;
  let a = c[0];
  const t = x + 7.5;
  for (let i = 1; i < 9; i++) a += c[i] / (x + i);
  return 0.5 * Math.log(2 * Math.PI) + (x + 0.5) * Math.log(t) - t + Math.log(a);
}

/** The continued fraction of the incomplete beta function (modified Lentz). */
function betaFraction(x: number, a: number, b: number): number {
  const tiny = 1e-300;
  let c = 1;
  let d = 1 - ((a + b) * x) / (a + 1);
  d = 1 / (Math.abs(d) < tiny ? tiny : d);
  let f = d;
  for (let m = 1; m <= 300; m++) {
    for (const num of [(m * (b - m) * x) / ((a + 2 * m - 1) * (a + 2 * m)), (-(a + m) * (a + b + m) * x) / ((a + 2 * m) * (a + 2 * m + 1))]) {
      d = 1 + num * d;
      d = 1 / (Math.abs(d) < tiny ? tiny : d);
      c = 1 + num / c;
      if (Math.abs(c) < tiny) c = tiny;
      f *= c * d;
    }
    if (Math.abs(c * d - 1) < 1e-15) break;
  }
  return f;
}

/** The regularised incomplete beta function I_x(a, b). */
export function incompleteBeta(x: number, a: number, b: number): number {
  if (x <= 0) return 0;
  if (x >= 1) return 1;
  const front = Math.exp(logGamma(a + b) - logGamma(a) - logGamma(b) + a * Math.log(x) + b * Math.log(1 - x));
  return x < (a + 1) / (a + b + 2) ? (front * betaFraction(x, a, b)) / a : 1 - (front * betaFraction(1 - x, b, a)) / b;
}

/** P(T <= t) for Student's t with `df` degrees of freedom. */
export function studentTCdf(t: number, df: number): number {
  const tail = 0.5 * incompleteBeta(df / (df + t * t), df / 2, 0.5);
  return t >= 0 ? 1 - tail : tail;
}

/** The t with P(T <= t) = p (0.5 < p < 1), by bisection. */
export function studentTQuantile(p: number, df: number): number {
  let lo = 0;
  let hi = 1;
  while (studentTCdf(hi, df) < p) hi *= 2;
  for (let i = 0; i < 200 && hi - lo > 1e-12 * hi; i++) {
    const mid = (lo + hi) / 2;
    if (studentTCdf(mid, df) < p) lo = mid;
    else hi = mid;
  }
  return (lo + hi) / 2;
}

export const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;

export function interval(values: number[]): Interval {
  const n = values.length;
  const m = mean(values);
  if (n < 2) return { n, mean: m, lo: m, hi: m };
  const sd = Math.sqrt(values.reduce((a, v) => a + (v - m) ** 2, 0) / (n - 1));
  const half = (studentTQuantile(0.975, n - 1) * sd) / Math.sqrt(n);
  return { n, mean: m, lo: m - half, hi: m + half };
}

/** One generated and scored run: a row of results.csv. */
export interface ResultRow {
  scene: string;
  method: string;
  seed: number;
  loras: number;
  boxes: number;
  /** Against the trigger words (CMLoRA's scripts). */
  clipScore: number;
  /** Against the full prompt. */
  clipScorePrompt: number;
  global: number;
  /** LoRA-Composer's code (2.5 max(0, cos), "A photo depicts ...", no global term). */
  textSimilarity: number;
  /** Ours before (raw cosines, the global term averaged in). */
  textSimilarityRaw: number;
  /** Ours: the mean over every reference. Empty in the CSV when no concept of the scene has reference images. */
  imageSimilarity: number | null;
  /** LoRA-Composer's code: the first reference, clipped at 0. */
  imageSimilarityFirst: number | null;
  unetEvaluations: number;
  /** Multiply-adds of the run's UNet work, in billions. */
  unetGMacs: number;
  profileEvaluations: number;
  totalMs: number;
  denoiseMs: number;
  image: string;
  /** A hash of the run's settings (scene, method, LoRA files, model, scorer): resuming remakes a row whose settings changed. */
  config: string;
}

export const RESULT_COLUMNS: (keyof ResultRow)[] = [
  'scene', 'method', 'seed', 'loras', 'boxes', 'clipScore', 'clipScorePrompt', 'global', 'textSimilarity', 'textSimilarityRaw', 'imageSimilarity', 'imageSimilarityFirst',
  'unetEvaluations', 'unetGMacs', 'profileEvaluations', 'totalMs', 'denoiseMs', 'image', 'config',
];
const NULLABLE = new Set<keyof ResultRow>(['imageSimilarity', 'imageSimilarityFirst']);
const TEXT_COLUMNS = new Set<keyof ResultRow>(['scene', 'method', 'image', 'config']);

const quote = (s: string) => (/[",\n\r]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s);

export function csvHeader(): string {
  return `${RESULT_COLUMNS.join(',')}\n`;
}

export function csvLine(r: ResultRow): string {
  return `${RESULT_COLUMNS.map((k) => (r[k] === null ? '' : quote(String(r[k])))).join(',')}\n`;
}

function splitCsvLine(line: string): string[] {
  const out: string[] = [];
  let cur = '';
  let quoted = false;
  for (let i = 0; i < line.length; i++) {
    const ch = line[i];
    if (quoted) {
      if (ch === '"' && line[i + 1] === '"') {
        cur += '"';
        i++;
      } else if (ch === '"') quoted = false;
      else cur += ch;
    } else if (ch === '"') quoted = true;
    else if (ch === ',') {
      out.push(cur);
      cur = '';
    } else cur += ch;
  }
  out.push(cur);
  return out;
}

/** Rows of a results.csv; a last line cut short by an interrupted run is dropped. */
export function parseResultsCsv(text: string): ResultRow[] {
  const lines = text.split('\n');
  if (lines[0] !== RESULT_COLUMNS.join(',')) throw new Error('results.csv has other columns than this version writes');
  const rows: ResultRow[] = [];
  for (const line of lines.slice(1)) {
    if (!line) continue;
    const cells = splitCsvLine(line);
    if (cells.length !== RESULT_COLUMNS.length) continue;
    const row = {} as Record<string, unknown>;
    let ok = true;
    RESULT_COLUMNS.forEach((k, i) => {
      if (TEXT_COLUMNS.has(k)) row[k] = cells[i];
      else if (cells[i] === '' && NULLABLE.has(k)) row[k] = null;
      else {
        row[k] = Number(cells[i]);
        if (cells[i] === '' || !Number.isFinite(row[k])) ok = false;
      }
    });
    if (ok) rows.push(row as unknown as ResultRow);
  }
  return rows;
}

const METRICS = ['clipScore', 'clipScorePrompt', 'textSimilarity', 'textSimilarityRaw', 'imageSimilarity', 'imageSimilarityFirst', 'unetEvaluations', 'unetGMacs', 'totalMs'] as const;
type Metric = (typeof METRICS)[number];
export type MetricSummary = { runs: number } & Record<Metric, Interval | null>;

function summarise(rows: ResultRow[]): MetricSummary {
  const out = { runs: rows.length } as MetricSummary;
  for (const m of METRICS) {
    const values = rows.map((r) => r[m]).filter((v): v is number => v !== null);
    out[m] = values.length ? interval(values) : null;
  }
  return out;
}

export interface Pairwise {
  against: string;
  /** The score compared (CMLoRA ranks with ImageReward; we have CLIPScore). */
  metric: 'clipScore';
  /** CMLoRA's analysis.py: one-decimal scores within 0.1 of each other tie. */
  tolerance: number;
  wins: number;
  ties: number;
  losses: number;
  /** CMLoRA's number: (wins + ties) over the pairs. */
  winOrTie: number;
  /** Ours: wins plus half the ties, over the pairs. */
  winRate: number;
}

/** Python's round(x, 1): the nearest tenth of the exact double, ties (x = k/4, k odd) to the even tenth. */
export function pyRound1(x: number): number {
  const q = x * 4;
  if (Number.isInteger(q) && q % 2 !== 0) {
    const t = Math.floor(x * 10);
    return (t % 2 === 0 ? t : t + 1) / 10;
  }
  return Number(x.toFixed(1));
}

/** CMLoRA's comparison of two scores: rounded to a tenth, a tie within 0.1 (in the same double arithmetic). */
export function compareScores(a: number, b: number): 'win' | 'tie' | 'loss' {
  const [x, y] = [pyRound1(a), pyRound1(b)];
  if (Math.abs(x - y) <= 0.1) return 'tie';
  return x > y ? 'win' : 'loss';
}

export interface Summary {
  metrics: readonly string[];
  methods: Record<string, MetricSummary>;
  byLoraCount: Record<string, Record<string, MetricSummary>>;
  /** CLIPScore against the baseline on the same scene and seed. */
  pairwise: Record<string, Pairwise>;
  /** The columns the papers' tables report, per method (see the README's table in their format). */
  paper: Record<string, { clipScore: number | null; textSimilarity: number | null; imageSimilarity: number | null; winOrTie: number | null; unetGMacs: number | null }>;
}

export function summariseRows(rows: ResultRow[], baseline = 'composite'): Summary {
  const methods = [...new Set(rows.map((r) => r.method))];
  const out: Summary = { metrics: METRICS, methods: {}, byLoraCount: {}, pairwise: {}, paper: {} };
  const base = new Map(rows.filter((r) => r.method === baseline).map((r) => [`${r.scene}|${r.seed}`, r.clipScore]));
  for (const m of methods) {
    const mine = rows.filter((r) => r.method === m);
    out.methods[m] = summarise(mine);
    out.byLoraCount[m] = {};
    for (const k of [...new Set(mine.map((r) => r.loras))].sort((a, b) => a - b)) out.byLoraCount[m][String(k)] = summarise(mine.filter((r) => r.loras === k));
    const s = out.methods[m];
    out.paper[m] = { clipScore: s.clipScore?.mean ?? null, textSimilarity: s.textSimilarity?.mean ?? null, imageSimilarity: s.imageSimilarityFirst?.mean ?? null, winOrTie: null, unetGMacs: s.unetGMacs?.mean ?? null };
    if (m === baseline || !base.size) continue;
    const p: Pairwise = { against: baseline, metric: 'clipScore', tolerance: 0.1, wins: 0, ties: 0, losses: 0, winOrTie: 0, winRate: 0 };
    for (const r of mine) {
      const b = base.get(`${r.scene}|${r.seed}`);
      if (b === undefined) continue;
      const c = compareScores(r.clipScore, b);
      if (c === 'win') p.wins++;
      else if (c === 'loss') p.losses++;
      else p.ties++;
    }
    const n = p.wins + p.ties + p.losses;
    if (!n) continue;
    p.winOrTie = (p.wins + p.ties) / n;
    p.winRate = (p.wins + p.ties / 2) / n;
    out.pairwise[m] = p;
    out.paper[m].winOrTie = p.winOrTie;
  }
  return out;
}
