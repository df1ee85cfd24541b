// What the S3 storage costs a warm Bazel build, measured in one run against the filesystem store:
// Bazel 4.2.3 with --remote_cache (actions run locally on a miss) builds the fixture
// (//... //naps:naps //naps:tree, 12 MiB of gen/big.bin included) once into each store, then
// times `bazel build` after `bazel clean` (every action a remote cache hit, every output
// downloaded) against
//   (a) reapi serve --storage file:DIR
//   (b) reapi serve --storage s3://...?tier=DIR  with a fresh, empty tier (everything from S3)
//   (c) the same server again: a warm tier (S3 only asked FindMissing/HEAD for what it lacks)
// and prints the medians and the ratios b/a and c/a. S3 is s3rver (test/helpers/s3.ts) in this
// process, on loopback: it shows the S3 code path's overhead, not a network's.
// Every server listens on the same address, so Bazel's flags (and its in-memory state) are the
// same for every build; the server is started before and stopped after each timed build.
// Run: npm run build && node dist/bench/s3-tier.js   (BENCH_REPS=N, default 3)
import { spawnSync } from 'node:child_process';
import { performance } from 'node:perf_hooks';
import { rmSync } from 'node:fs';
import { BAZEL, BazelResult, cleanupBazel, copyWorkspace, makeOutputBase, parseProcessSummary, runBazel } from '../test/helpers/bazel';
import { startS3 } from '../test/helpers/s3';
import { ServerProcess, startServerProcess, tempDir } from '../test/helpers/server-process';
import { median, printTable } from './helpers/stats';
import { freePort } from '../test/helpers/ports';

const TARGETS = ['//...', '//naps:naps', '//naps:tree'];
const REPS = Number(process.env.BENCH_REPS ?? 3);
const PREFIX = 'bench';


async function main(): Promise<void> {
  if (spawnSync(BAZEL, ['--version'], { stdio: 'ignore' }).status !== 0) throw new Error(`no ${BAZEL} on PATH`);
  const s3 = await startS3();
  const port = await freePort();
  const listen = `127.0.0.1:${port}`;
  const fileData = tempDir('bench-file');
  const scratchDirs: string[] = [fileData];
  const scratch = (prefix: string) => {
    const dir = tempDir(prefix);
    scratchDirs.push(dir);
    return dir;
  };
  const workspace = await copyWorkspace();
  const outputBase = await makeOutputBase();
  const flags = [`--remote_cache=grpc://${listen}`, '--spawn_strategy=local', '--jobs=24'];

  const bazel = async (args: string[]): Promise<BazelResult> => {
    const r = await runBazel({ workspace, outputBase, args, timeoutMs: 10 * 60_000 });
    if (r.code !== 0) throw new Error(`bazel ${args.join(' ')}: exit ${r.code}\n${r.stderr.slice(-4000)}`);
    return r;
  };
  const serve = (storage: string, data: string) => startServerProcess({ dataDir: data, args: ['--listen', listen, '--storage', storage, '--worker', 'off'] });
  const fileStorage = () => serve(`file:${fileData}`, fileData);
  const s3Storage = (tier: string) => serve(s3.storageUrl(PREFIX, { tier, tierBytes: '1G' }), scratch('bench-s3-data'));
  const withServer = async <T>(start: () => Promise<ServerProcess>, fn: () => Promise<T>): Promise<T> => {
    const server = await start();
    try {
      return await fn();
    } finally {
      await server.stop();
    }
  };
  /** clean (untimed), then the timed build, which must be all remote cache hits. */
  const warmBuild = async (what: string): Promise<number> => {
    await bazel(['clean']);
    const t0 = performance.now();
    const r = await bazel(['build', ...flags, ...TARGETS]);
    const ms = performance.now() - t0;
    const s = parseProcessSummary(r.stderr);
    if (s.remoteCacheHit === 0 || s.remoteCacheHit !== s.total - s.internal) {
      throw new Error(`${what}: not all remote cache hits: ${JSON.stringify(s)}`);
    }
    return ms;
  };

  try {
    // Fill both stores the same way: a cold build, actions run locally, results uploaded.
    for (const [what, start] of [
      ['file', fileStorage],
      ['s3', () => s3Storage(scratch('bench-tier-fill'))],
    ] as const) {
      await withServer(start, async () => {
        await bazel(['clean']);
        const r = await bazel(['build', ...flags, ...TARGETS]);
        const s = parseProcessSummary(r.stderr);
        if (s.local === 0) throw new Error(`filling the ${what} store ran nothing locally: ${JSON.stringify(s)}`);
      });
    }

    // One untimed round, so that the first timed build does not pay for a cold Bazel server.
    await withServer(fileStorage, () => warmBuild('file, warm-up'));

    const a: number[] = [];
    const b: number[] = [];
    const c: number[] = [];
    for (let rep = 0; rep < REPS; rep++) {
      a.push(await withServer(fileStorage, () => warmBuild('file')));
      const tier = scratch('bench-tier');
      await withServer(
        () => s3Storage(tier),
        async () => {
          b.push(await warmBuild('s3, empty tier'));
          c.push(await warmBuild('s3, warm tier'));
        },
      );
      rmSync(tier, { recursive: true, force: true });
    }
    const [ma, mb, mc] = [median(a), median(b), median(c)];
    const fmt = (ms: number) => `${(ms / 1000).toFixed(2)} s`;
    const all = (xs: number[]) => xs.map((x) => (x / 1000).toFixed(2)).join(', ');
    printTable(`Warm Bazel build (clean + build, all remote cache hits) of ${TARGETS.join(' ')}, median of ${REPS}`, [
      ['(a) --storage file:', fmt(ma), `runs: ${all(a)}`],
      ['(b) --storage s3://, empty tier', fmt(mb), `runs: ${all(b)}`],
      ['(c) --storage s3://, warm tier', fmt(mc), `runs: ${all(c)}`],
      ['b/a', (mb / ma).toFixed(2), 'S3 read-through cost of a cold node'],
      ['c/a', (mc / ma).toFixed(2), 'S3 tier cost once warm'],
    ]);
  } finally {
    await cleanupBazel(workspace, outputBase);
    await s3.stop();
    for (const d of scratchDirs) rmSync(d, { recursive: true, force: true });
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
