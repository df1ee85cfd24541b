// Counters like `ccache -s`. Every process appends its own totals as one JSON line (one small
// O_APPEND write, so concurrent processes need no lock); `reapi-cc --stats` adds them up.
import { promises as fs } from 'node:fs';
import * as path from 'node:path';

export interface Counters {
  /** Object pipelines answered from the action cache. */
  hits: number;
  /** Lookups that missed. */
  misses: number;
  /** Actions the server ran. */
  remoteRuns: number;
  /** Recipes run here because the server was unreachable or failed. */
  localFallbacks: number;
  /** Object pipelines that failed (compile errors), replayed as they happened. */
  failures: number;
  bytesUploaded: number;
  bytesDownloaded: number;
  /** Execution time of the cached results we reused, minus what the lookups took. */
  timeSavedMs: number;
}

export function emptyCounters(): Counters {
  return { hits: 0, misses: 0, remoteRuns: 0, localFallbacks: 0, failures: 0, bytesUploaded: 0, bytesDownloaded: 0, timeSavedMs: 0 };
}

export function addCounters(a: Counters, b: Partial<Counters>): Counters {
  const out = { ...a };
  for (const k of Object.keys(out) as (keyof Counters)[]) out[k] += Number(b[k] ?? 0);
  return out;
}

function statsFile(stateDir: string): string {
  return path.join(stateDir, 'stats.jsonl');
}

export async function recordCounters(stateDir: string, c: Counters): Promise<void> {
  if (Object.values(c).every((v) => v === 0)) return;
  await fs.mkdir(stateDir, { recursive: true });
  await fs.appendFile(statsFile(stateDir), JSON.stringify(c) + '\n');
}

export async function readCounters(stateDir: string): Promise<Counters> {
  let text = '';
  try {
    text = await fs.readFile(statsFile(stateDir), 'utf8');
  } catch {
    return emptyCounters();
  }
  let total = emptyCounters();
  for (const line of text.split('\n')) {
    if (!line.trim()) continue;
    try {
      total = addCounters(total, JSON.parse(line) as Partial<Counters>);
    } catch {
      // A torn line from a crashed process: skip it.
    }
  }
  return total;
}

export async function zeroCounters(stateDir: string): Promise<void> {
  await fs.rm(statsFile(stateDir), { force: true });
}

/** The `--stats` table. Pure. */
export function formatCounters(c: Counters): string {
  const lookups = c.hits + c.misses;
  const rate = lookups ? ` (${((100 * c.hits) / lookups).toFixed(1)} %)` : '';
  const rows: [string, string][] = [
    ['Cacheable calls', String(lookups)],
    ['  Hits', `${c.hits}${rate}`],
    ['  Misses', String(c.misses)],
    ['Remote runs', String(c.remoteRuns)],
    ['Local fallbacks', String(c.localFallbacks)],
    ['Failed (compile errors)', String(c.failures)],
    ['Bytes uploaded', formatBytes(c.bytesUploaded)],
    ['Bytes downloaded', formatBytes(c.bytesDownloaded)],
    ['Time saved', `${(c.timeSavedMs / 1000).toFixed(1)} s`],
  ];
  return rows.map(([k, v]) => `${k.padEnd(26)}${v}`).join('\n');
}

function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 ** 2) return `${(n / 1024).toFixed(1)} KiB`;
  if (n < 1024 ** 3) return `${(n / 1024 ** 2).toFixed(1)} MiB`;
  return `${(n / 1024 ** 3).toFixed(2)} GiB`;
}
