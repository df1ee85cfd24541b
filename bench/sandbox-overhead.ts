// Per-action overhead of the Docker sandbox: time from run() to result for `true`, warm pool vs
// strict (fresh container per action). Needs Docker and the reapi-toolchain:bookworm image.
//   npm run build && node dist/bench/sandbox-overhead.js [warmRuns=200] [strictRuns=20] [image]
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createDockerSandbox, type Sandbox } from '../worker/sandbox/sandbox';

const warmRuns = Number(process.argv[2] ?? 200);
const strictRuns = Number(process.argv[3] ?? 20);
const image = process.argv[4] ?? 'docker://reapi-toolchain:bookworm';

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

async function measure(sandbox: Sandbox, execRoot: string, runs: number): Promise<{ total: number[]; inside: number[] }> {
  const dir = fs.mkdtempSync(path.join(execRoot, 'bench-'));
  fs.chmodSync(dir, 0o777);
  const req = {
    image,
    argv: ['true'],
    env: { PATH: '/usr/bin:/bin' },
    cwd: dir,
    stdoutPath: path.join(dir, 'stdout'),
    stderrPath: path.join(dir, 'stderr'),
    timeoutMs: 60_000,
  };
  const total: number[] = [];
  const inside: number[] = [];
  for (let i = 0; i < runs; i++) {
    const start = process.hrtime.bigint();
    const result = await sandbox.run(req);
    total.push(Number(process.hrtime.bigint() - start) / 1e6);
    inside.push(result.wallMicros / 1000);
    if (result.exitCode !== 0) throw new Error(`true exited ${result.exitCode}`);
  }
  return { total: total.sort((a, b) => a - b), inside: inside.sort((a, b) => a - b) };
}

function report(label: string, runs: number, m: { total: number[]; inside: number[] }): void {
  const f = (n: number) => n.toFixed(2);
  console.log(
    `${label.padEnd(7)} runs=${runs}  p50=${f(percentile(m.total, 50))} ms  p90=${f(percentile(m.total, 90))} ms  ` +
      `(fork..reap inside the container: p50=${f(percentile(m.inside, 50))} ms)`,
  );
}

async function main(): Promise<void> {
  const execRoot = fs.mkdtempSync(path.join(os.tmpdir(), 'reapi-sandbox-bench-'));
  fs.chmodSync(execRoot, 0o755);
  try {
    const warm = await createDockerSandbox({ execRoot, maxContainersPerImage: 1 });
    try {
      await measure(warm, execRoot, 10); // starts the container and warms caches
      report('warm', warmRuns, await measure(warm, execRoot, warmRuns));
    } finally {
      await warm.close();
    }
    const strict = await createDockerSandbox({ execRoot, strict: true });
    try {
      await measure(strict, execRoot, 2);
      report('strict', strictRuns, await measure(strict, execRoot, strictRuns));
    } finally {
      await strict.close();
    }
  } finally {
    fs.rmSync(execRoot, { recursive: true, force: true });
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
