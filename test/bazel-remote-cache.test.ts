// End-to-end proof for the storage server: the real Bazel 4.2.3 client uses a real `reapi serve`
// as its --remote_cache (actions run locally, results and outputs go to / come from the server).
//
//   1. cold build of //... uploads everything (12 MiB //gen:big travels by ByteStream);
//   2. after `bazel clean` every non-internal action is a remote cache hit, outputs byte-identical;
//   3. a second, fresh client (own workspace copy and output base) also gets only cache hits;
//   4. `bazel test //cc:hello_test` passes and, after clean, is a remote cache hit too;
//   5. big.bin's blob sits in the server's data dir under its sha256 with the right size;
//   6. after restarting the server on the same data dir a clean build is still all cache hits.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { rmSync } from 'node:fs';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import {
  BAZEL,
  BazelResult,
  ProcessSummary,
  cleanupBazel,
  copyWorkspace,
  makeOutputBase,
  parseProcessSummary,
  runBazel,
  shutdownBazel,
} from './helpers/bazel';
import { ServerProcess, startServerProcess } from './helpers/server-process';
import { BIG_SHA256, assertKnownOutputs, hashTree, sha256File } from './helpers/bazel-outputs';

const BIG_SIZE = 12582912;

const haveBazel = spawnSync(BAZEL, ['--version'], { stdio: 'ignore' }).status === 0;
const skip = haveBazel ? false : `no ${BAZEL} on PATH`;

interface Client {
  workspace: string;
  outputBase: string;
}

let server: ServerProcess | undefined;
let dataDir: string | undefined;
const clients: Client[] = [];
/** Regular files under bazel-bin (path relative to it -> sha256) after the cold build. */
let baseline: Map<string, string> | undefined;
/** The summary line of each phase, verbatim, for the log. */
const phaseLines: string[] = [];

async function newClient(): Promise<Client> {
  const client = { workspace: await copyWorkspace(), outputBase: await makeOutputBase() };
  clients.push(client);
  return client;
}

function cacheFlags(): string[] {
  assert.ok(server, 'reapi server not running');
  return [`--remote_cache=grpc://${server.address}`, '--spawn_strategy=local'];
}

function describe(r: BazelResult): string {
  return `exit ${r.code}\n--- stderr tail ---\n${r.stderr.slice(-6000)}\n--- reapi stderr tail ---\n${server?.stderr().slice(-3000) ?? ''}`;
}

async function bazel(c: Client, args: string[], timeoutMs?: number): Promise<BazelResult> {
  return runBazel({ workspace: c.workspace, outputBase: c.outputBase, args, timeoutMs });
}

/** Runs a build/test command that must succeed; returns its parsed summary and logs the line. */
async function mustPass(phase: string, c: Client, args: string[]): Promise<{ r: BazelResult; s: ProcessSummary }> {
  const r = await bazel(c, args);
  assert.equal(r.code, 0, `${phase}: bazel ${args.join(' ')} failed: ${describe(r)}`);
  const s = parseProcessSummary(r.stderr);
  const line = r.stderr.split(/\r?\n/).filter((l) => /^INFO: \d+ process(es)?\b/.test(l.trim())).pop() ?? '';
  phaseLines.push(`${phase}: ${line.trim()}`);
  console.log(`# ${phase}: ${line.trim()}`);
  return { r, s };
}

/** The server must not have logged any error (failed requests are logged at level "error"). */
function assertServerLoggedNoErrors(s: ServerProcess): void {
  const errors = s.stderr().split('\n').filter((l) => /"level":"error"/.test(l));
  assert.deepEqual(errors, [], 'reapi serve logged errors');
}

function assertAllCacheHits(phase: string, s: ProcessSummary, r: BazelResult): void {
  const detail = `${phase}: ${JSON.stringify(s)}\n${describe(r)}`;
  assert.ok(s.total - s.internal > 0, `${phase}: no non-internal processes at all: ${detail}`);
  assert.equal(s.remoteCacheHit, s.total - s.internal, `${phase}: not every non-internal process was a remote cache hit: ${detail}`);
  assert.equal(s.local, 0, `${phase}: some processes ran locally: ${detail}`);
  assert.equal(s.remote, 0, detail);
  assert.equal(s.linuxSandbox, 0, detail);
  assert.deepEqual(s.other, {}, detail);
}

async function clean(c: Client): Promise<void> {
  const r = await bazel(c, ['clean']);
  assert.equal(r.code, 0, `bazel clean failed: ${describe(r)}`);
}

async function bazelBin(c: Client): Promise<string> {
  const r = await bazel(c, ['info', ...cacheFlags(), 'bazel-bin']);
  assert.equal(r.code, 0, `bazel info bazel-bin failed: ${describe(r)}`);
  const dir = r.stdout.trim().split(/\r?\n/).pop()!.trim();
  assert.ok(path.isAbsolute(dir), `bazel info bazel-bin printed ${JSON.stringify(r.stdout)}`);
  return dir;
}


function assertSameOutputs(phase: string, got: Map<string, string>): void {
  assert.ok(baseline, 'no baseline from the cold build');
  assert.deepEqual([...got.keys()], [...baseline.keys()], `${phase}: different set of output files`);
  for (const [file, hash] of baseline) assert.equal(got.get(file), hash, `${phase}: ${file} differs from the cold build`);
}

before(async () => {
  if (skip) return;
  server = await startServerProcess();
  dataDir = server.dataDir;
});

after(async () => {
  for (const c of clients) await shutdownBazel(c.workspace, c.outputBase);
  await server?.stop();
  for (const c of clients) await cleanupBazel(c.workspace, c.outputBase);
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
  if (phaseLines.length) console.log(`# summary lines:\n${phaseLines.map((l) => `#   ${l}`).join('\n')}`);
});

test('cold build of //... with --remote_cache runs everything locally and fills the cache', { skip }, async () => {
  const a = await newClient();
  const { r, s } = await mustPass('cold build', a, ['build', ...cacheFlags(), '//...']);
  assert.equal(s.remoteCacheHit, 0, `cold build hit an empty cache? ${describe(r)}`);
  assert.ok(s.local > 0 && s.local === s.total - s.internal, `cold build: ${JSON.stringify(s)}`);
  baseline = await hashTree(await bazelBin(a));
  assertKnownOutputs(baseline);
});

test('after bazel clean, //... is all remote cache hits with byte-identical outputs', { skip }, async () => {
  const a = clients[0];
  await clean(a);
  const { r, s } = await mustPass('rebuild after clean', a, ['build', ...cacheFlags(), '//...']);
  assertAllCacheHits('rebuild after clean', s, r);
  assertSameOutputs('rebuild after clean', await hashTree(await bazelBin(a)));
});

test('a second, fresh client (new workspace copy and output base) gets only cache hits', { skip }, async () => {
  const b = await newClient();
  try {
    const { r, s } = await mustPass('fresh client build', b, ['build', ...cacheFlags(), '//...']);
    assertAllCacheHits('fresh client build', s, r);
    assertSameOutputs('fresh client build', await hashTree(await bazelBin(b)));
  } finally {
    await shutdownBazel(b.workspace, b.outputBase); // one Bazel server at a time is enough
  }
});

test('bazel test //cc:hello_test passes with the remote cache, and is a cache hit after clean', { skip }, async () => {
  const a = clients[0];
  const first = await mustPass('test (first run)', a, ['test', ...cacheFlags(), '//cc:hello_test']);
  const firstOut = first.r.stdout + first.r.stderr;
  assert.match(firstOut, /\/\/cc:hello_test\s+(\(cached\) )?PASSED/, describe(first.r));
  // The binaries are built already; the test spawns (TestRunner, test.xml generation) ran here
  // and their results were uploaded.
  assert.equal(first.s.remoteCacheHit, 0, `test (first run): ${JSON.stringify(first.s)}`);
  assert.ok(first.s.local > 0 && first.s.local === first.s.total - first.s.internal, `test (first run): ${JSON.stringify(first.s)}`);

  await clean(a);
  const again = await mustPass('test after clean', a, ['test', ...cacheFlags(), '//cc:hello_test']);
  assertAllCacheHits('test after clean', again.s, again.r);
  // Bazel 4.2.3 reports a test result fetched from the remote cache as "(cached) PASSED".
  assert.match(again.r.stdout + again.r.stderr, /\/\/cc:hello_test\s+\(cached\) PASSED/, describe(again.r));
  for (const [phase, r] of [['test (first run)', first.r], ['test after clean', again.r]] as const) {
    const line = (r.stdout + r.stderr).split(/\r?\n/).find((l) => l.startsWith('//cc:hello_test'));
    console.log(`# ${phase}: ${line?.trim()}`);
  }
});

test("big.bin's blob is stored in the server's CAS under its sha256 (ByteStream path)", { skip }, async () => {
  assert.ok(dataDir);
  const blob = path.join(dataDir, 'instances', '_', 'cas', BIG_SHA256.slice(0, 2), BIG_SHA256);
  const st = await fs.stat(blob);
  assert.equal(st.size, BIG_SIZE);
  assert.equal(await sha256File(blob), BIG_SHA256);
});

test('after restarting the server on the same data dir a clean build is still all cache hits', { skip }, async () => {
  assert.ok(server && dataDir);
  assertServerLoggedNoErrors(server);
  const code = await server.stop();
  assert.equal(code, 0, `reapi serve exited with ${code} on SIGTERM:\n${server.stderr().slice(-3000)}`);
  server = undefined;
  server = await startServerProcess({ dataDir });

  const a = clients[0];
  await clean(a);
  const { r, s } = await mustPass('build after server restart', a, ['build', ...cacheFlags(), '//...']);
  assertAllCacheHits('build after server restart', s, r);
  assertSameOutputs('build after server restart', await hashTree(await bazelBin(a)));
  assertServerLoggedNoErrors(server);
});
