// Small statistics and printing helpers shared by the benchmarks.

export function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? NaN;
}

export function median(values: number[]): number {
  return percentile(values, 50);
}

/** Prints one aligned table row per entry: label, value and an optional note (goal, ratio). */
export function printTable(title: string, rows: Array<[string, string, string?]>): void {
  process.stdout.write(`\n${title}\n`);
  const width = Math.max(...rows.map(([label]) => label.length));
  for (const [label, value, note] of rows) process.stdout.write(`  ${label.padEnd(width)}  ${value.padStart(12)}${note ? `   ${note}` : ''}\n`);
}
