// Scale out, end to end, in processes on loopback: one Redis, one S3 bucket (s3rver), two
// `reapi serve --redis --storage s3://... --worker off` servers and three `reapi worker` processes
// spread over both servers. The real Bazel 4.2.3 builds the fixture through server A while the
// test SIGKILLs a worker in the middle of an action and SIGKILLs server A (restarted on the same
// address). Then:
//   1. the build exits 0, with correct outputs, and ran nothing locally;
//   2. the killed worker's action was finished by another worker;
//   3. every blob every ActionResult in the bucket references (tree files included) is in the bucket;
//   4. after `bazel clean`, the rebuild is all remote cache hits, outputs byte-identical;
//   5. a NEW server with an empty disk tier on the same bucket serves a fresh Bazel output base:
//      every action a remote cache hit, outputs correct, blobs read through into its tier.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, promises as fs } from 'node:fs';
import * as path from 'node:path';
import { Client } from 'minio';
import { longrunning, rex } from '../apis';
import { OperationsClient, OperationsService, createClient, unary } from '../apis/services';
import { SHA256_EMPTY } from '../cas/digest';
import { BAZEL, BazelResult, ProcessSummary, cleanupBazel, copyWorkspace, makeOutputBase, parseProcessSummary, runBazel, shutdownBazel } from './helpers/bazel';
import { decodeOperation } from './helpers/actions';
import { hashTree } from './helpers/bazel-outputs';
import { TestRedis, startRedis } from './helpers/redis';
import { TestS3, startS3 } from './helpers/s3';
import { ServerProcess, WorkerProcess, startServerProcess, startWorkerProcess, tempDir } from './helpers/server-process';
import { freePort } from './helpers/ports';

const IMAGE = 'reapi-toolchain:bookworm';
const BIG_SHA256 = '392ca00ad3d105ac9620d6de7b57293b42a1b2a8741a15d4d5646a4fb78d78fb';
const PREFIX = 'cluster';
/**
 * //... plus (manual) 20 independent 2 s genrules, so that many actions are in flight at once, and
 * an action with an output directory, so that action results reference a Tree.
 */
const TARGETS = ['//...', '//naps:naps', '//naps:tree'];
/**
 * Every process of the farm gets the same short lease: a killed worker's action goes back to the
 * queue within a few seconds instead of 30 (BullMQ paces the stalled check farm-wide).
 */
const FARM_ENV = { REAPI_QUEUE_LOCK_MS: '2000' };
/** How long server A stays dead before it is started again on the same address. */
const SERVER_A_DOWN_MS = 2000;

const haveBazel = spawnSync(BAZEL, ['--version'], { stdio: 'ignore' }).status === 0;
const haveDocker = spawnSync('docker', ['image', 'inspect', IMAGE], { stdio: 'ignore' }).status === 0;
const skip = !haveBazel ? `no ${BAZEL} on PATH` : !haveDocker ? `no Docker image ${IMAGE}` : false;

let redis: TestRedis | undefined;
let s3: TestS3 | undefined;
let portA = 0;
let dataA = '';
let serverA: ServerProcess | undefined;
let serverB: ServerProcess | undefined;
let serverC: ServerProcess | undefined;
const workers: WorkerProcess[] = [];
const deadWorkers: WorkerProcess[] = [];
const dirs: string[] = [];
let ops: OperationsClient | undefined;
let workspace: string | undefined;
let outputBase: string | undefined;
let freshOutputBase: string | undefined;
/** bazel-bin after the chaos build: relative path -> sha256. */
let baseline: Map<string, string> | undefined;
const phaseLines: string[] = [];

function scratch(prefix: string): string {
  const dir = tempDir(prefix);
  dirs.push(dir);
  return dir;
}


/** `reapi serve` of this farm: Redis queue, the shared bucket, no embedded worker. */
function startFarmServer(opts: { dataDir: string; listen?: string; storage?: string }): Promise<ServerProcess> {
  const args = ['--redis', redis!.url, '--storage', opts.storage ?? s3!.storageUrl(PREFIX), '--worker', 'off'];
  // The helper passes --listen 127.0.0.1:0 first; a later --listen wins.
  if (opts.listen) args.push('--listen', opts.listen);
  return startServerProcess({ dataDir: opts.dataDir, args, env: FARM_ENV });
}

function startServerA(): Promise<ServerProcess> {
  return startFarmServer({ dataDir: dataA, listen: `127.0.0.1:${portA}` });
}


before(async () => {
  if (skip) return;
  redis = await startRedis();
  s3 = await startS3();
  portA = await freePort();
  dataA = scratch('cluster-a');
  serverA = await startServerA();
  assert.equal(serverA.address, `127.0.0.1:${portA}`);
  serverB = await startFarmServer({ dataDir: scratch('cluster-b') });
  const plan: [string, ServerProcess][] = [
    ['worker-1', serverA],
    ['worker-2', serverB],
    ['worker-3', serverA],
  ];
  for (const [name, server] of plan) {
    workers.push(
      await startWorkerProcess({ server: server.address, redis: redis.url, name, workDir: scratch(name), args: ['--concurrency', '2'], env: FARM_ENV }),
    );
  }
  // Server B is never killed: the test watches operations there.
  ops = createClient(OperationsService, serverB.address);
  workspace = await copyWorkspace();
  outputBase = await makeOutputBase();
});

after(async () => {
  ops?.close();
  for (const ob of [outputBase, freshOutputBase]) if (workspace && ob) await shutdownBazel(workspace, ob);
  await Promise.all(workers.map((w) => w.stop()));
  // A SIGKILL-ed worker leaves its warm containers behind: a worker started on the same work dir
  // removes them at start; stop it again at once.
  for (const dead of deadWorkers) {
    if (!redis || !serverB) break;
    const sweeper = await startWorkerProcess({ server: serverB.address, redis: redis.url, name: `${dead.name}-sweeper`, workDir: dead.workDir }).catch(() => undefined);
    await sweeper?.stop();
  }
  await Promise.all([serverA?.stop(), serverB?.stop(), serverC?.stop()]);
  await redis?.stop();
  await s3?.stop();
  if (workspace && outputBase) await cleanupBazel(workspace, outputBase);
  if (workspace && freshOutputBase) await cleanupBazel(workspace, freshOutputBase);
  await Promise.all(dirs.map((d) => fs.rm(d, { recursive: true, force: true })));
  if (phaseLines.length) console.log(`# summary lines:\n${phaseLines.map((l) => `#   ${l}`).join('\n')}`);
});

// ---- Bazel ----

function bazelFlags(server: string): string[] {
  return [
    `--remote_executor=grpc://${server}`,
    `--remote_default_exec_properties=container-image=docker://${IMAGE}`,
    // No local strategy at all, and no --remote_local_fallback: whatever ran, ran remotely.
    '--spawn_strategy=remote',
    // More actions in flight than the 6 worker slots, so some are queued when things get killed.
    '--jobs=12',
    // Bazel's default of 5 retries backs off 0.1, 0.2, 0.4, 0.8, 1.6 s: about 3 s in all, less than a
    // server restart plus grpc-java's reconnect backoff. 20 retries (capped at 5 s apart) ride it out.
    '--remote_retries=20',
  ];
}

function farmTails(): string {
  return [serverA, serverB, serverC, ...workers, ...deadWorkers]
    .filter((p): p is ServerProcess | WorkerProcess => p !== undefined)
    .map((p) => `--- ${'name' in p ? p.name : p.address} stderr tail ---\n${p.stderr().slice(-2500)}`)
    .join('\n');
}

function farmDetail(r: BazelResult): string {
  return `exit ${r.code}\n--- bazel stderr tail ---\n${r.stderr.slice(-6000)}\n${farmTails()}`;
}

function summaryLine(r: BazelResult): string {
  return r.stderr.split(/\r?\n/).filter((l) => /^INFO: \d+ process(es)?\b/.test(l.trim())).pop()?.trim() ?? '(no summary line)';
}

function logPhase(phase: string, r: BazelResult): void {
  phaseLines.push(`${phase}: ${summaryLine(r)}`);
  console.log(`# ${phase}: ${summaryLine(r)}`);
}

async function bazelBin(ob: string, server: string): Promise<string> {
  const r = await runBazel({ workspace: workspace!, outputBase: ob, args: ['info', ...bazelFlags(server), 'bazel-bin'] });
  assert.equal(r.code, 0, `bazel info bazel-bin failed: ${r.stderr}`);
  const dir = r.stdout.trim().split(/\r?\n/).pop()!.trim();
  assert.ok(path.isAbsolute(dir), `bazel info bazel-bin printed ${JSON.stringify(r.stdout)}`);
  return dir;
}

function assertNothingLocal(phase: string, s: ProcessSummary, r: BazelResult): void {
  const detail = `${phase}: ${JSON.stringify(s)}\n${farmDetail(r)}`;
  assert.equal(s.local, 0, detail);
  assert.equal(s.linuxSandbox, 0, detail);
  assert.deepEqual(s.other, {}, detail);
  assert.equal(s.remote + s.remoteCacheHit, s.total - s.internal, detail);
}

function assertAllCacheHits(phase: string, s: ProcessSummary, r: BazelResult): void {
  assertNothingLocal(phase, s, r);
  assert.ok(s.remoteCacheHit > 0, `${phase}: no cache hits at all: ${JSON.stringify(s)}`);
  assert.equal(s.remote, 0, `${phase}: something executed: ${JSON.stringify(s)}\n${farmDetail(r)}`);
}

const sha256 = (s: string | Buffer) => createHash('sha256').update(s).digest('hex');
const HELLO = 'HELLO FROM THE REAPI BAZEL FIXTURE\nSECOND LINE\n';

/** The outputs of TARGETS whose contents the fixture's README gives; cc/hello must also run. */
function assertKnownOutputs(bin: string, files: Map<string, string>): void {
  const expect: Record<string, string | null> = {
    'gen/hello.txt': sha256(HELLO),
    'gen/chained.txt': sha256(`chained:\n${HELLO}lines:\n2\n`),
    'gen/numbers.txt': sha256(Array.from({ length: 1000 }, (_, i) => `${i + 1}\n`).join('')),
    'gen/sum.txt': sha256('500500\n'),
    'gen/count.txt': sha256('1000\n'),
    'gen/big.bin': BIG_SHA256,
    'cc/hello': null,
    'cc/hello_test': null,
    'naps/tree/one.txt': sha256('one\n'),
    'naps/tree/sub/two.txt': sha256('two\n'),
    'naps/tree/sub/seq.txt': sha256(Array.from({ length: 100 }, (_, i) => `${i + 1}\n`).join('')),
  };
  for (let i = 0; i < 20; i++) {
    const n = String(i).padStart(2, '0');
    expect[`naps/nap_${n}.txt`] = sha256(`nap ${n}\n${HELLO}`);
  }
  for (const [file, hash] of Object.entries(expect)) {
    assert.ok(files.has(file), `missing output ${file}; have ${[...files.keys()].join(', ')}`);
    if (hash !== null) assert.equal(files.get(file), hash, `wrong content in ${file}`);
  }
  const hello = spawnSync(path.join(bin, 'cc', 'hello'), [], { encoding: 'utf8' });
  assert.equal(hello.status, 0, `cc/hello failed: ${hello.stderr}`);
  assert.equal(hello.stdout, 'Hello, reapi! (10 = 55)\n');
}

// ---- operations ----

interface Running {
  name: string;
  worker: string;
}

/** The operations farm-wide (they live in Redis), read through server B. */
async function listOperations(): Promise<longrunning.Operation.$Properties[]> {
  const all: longrunning.Operation.$Properties[] = [];
  let pageToken = '';
  do {
    const page = await unary(ops!, 'ListOperations', { name: '', filter: '', pageSize: 1000, pageToken });
    all.push(...page.operations);
    pageToken = page.nextPageToken;
  } while (pageToken);
  return all;
}

function executing(op: longrunning.Operation.$Properties): Running | undefined {
  if (op.done || !op.metadata) return undefined;
  const meta = rex.ExecuteOperationMetadata.decode(op.metadata.value ?? new Uint8Array());
  if (meta.stage !== rex.ExecutionStage.Value.EXECUTING) return undefined;
  const worker = meta.partialExecutionMetadata?.worker;
  return worker ? { name: op.name ?? '', worker } : undefined;
}

/** Polls until an operation is EXECUTING on one of `names` (and returns it), or `stop()` is true. */
async function waitForExecuting(names: Set<string>, stop: () => boolean): Promise<Running | undefined> {
  const deadline = Date.now() + 180_000;
  while (Date.now() < deadline && !stop()) {
    for (const op of await listOperations()) {
      const running = executing(op);
      if (running && names.has(running.worker)) return running;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return undefined;
}

// ---- S3 ----

async function listKeys(client: Client, prefix: string): Promise<string[]> {
  const keys: string[] = [];
  for await (const item of client.listObjectsV2(s3!.bucket, prefix, true) as AsyncIterable<{ name?: string }>) {
    if (item.name) keys.push(item.name);
  }
  return keys;
}

async function getObject(client: Client, key: string): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of await client.getObject(s3!.bucket, key)) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

// ---- the tests ----

let chaos: { killedWorker: string; operation: string } | undefined;

test('a Bazel build survives a worker and its server being SIGKILLed mid-build', { skip, timeout: 15 * 60_000 }, async () => {
  let bazelDone = false;
  const build = runBazel({ workspace: workspace!, outputBase: outputBase!, args: ['build', ...bazelFlags(serverA!.address), ...TARGETS], timeoutMs: 10 * 60_000 })
    .catch((err: Error) => {
      throw new Error(`${err.message}\n${farmTails()}`); // a hung build: what was the farm doing?
    })
    .finally(() => (bazelDone = true));

  // 1. SIGKILL a worker while it executes an action.
  const victim = await waitForExecuting(new Set(workers.map((w) => w.name)), () => bazelDone);
  if (!victim) assert.fail(`no action was seen executing during the build:\n${farmDetail(await build)}`);
  const doomed = workers.find((w) => w.name === victim.worker)!;
  await doomed.kill();
  workers.splice(workers.indexOf(doomed), 1);
  deadWorkers.push(doomed);
  console.log(`# killed ${doomed.name} while it executed ${victim.name}`);

  // 2. SIGKILL server A (Bazel's server, and server of worker-1/worker-3 if alive) while actions
  //    are still running, and start it again on the same address.
  const more = await waitForExecuting(new Set(workers.map((w) => w.name)), () => bazelDone);
  if (!more || bazelDone) assert.fail(`the build ended before server A could be killed:\n${farmDetail(await build)}`);
  await serverA!.kill();
  console.log(`# killed server A while ${more.worker} executed ${more.name}; restarting it on ${serverA!.address}`);
  // Down for a while: Bazel's calls and those of the workers on A meet a refused connection, not
  // just a reset one, and have to retry until A is back.
  await new Promise((r) => setTimeout(r, SERVER_A_DOWN_MS));
  serverA = await startServerA();

  const r = await build;
  if (process.env.CLUSTER_VERBOSE) console.log(farmDetail(r).replace(/^/gm, '# '));
  assert.equal(r.code, 0, `the build failed: ${farmDetail(r)}`);
  logPhase('build (worker and server A killed)', r);
  const s = parseProcessSummary(r.stderr);
  assertNothingLocal('build', s, r);
  assert.ok(s.remote > 0, `nothing ran remotely: ${JSON.stringify(s)}`);

  const bin = await bazelBin(outputBase!, serverA.address);
  baseline = await hashTree(bin);
  assertKnownOutputs(bin, baseline);

  // The killed worker's action was taken over and finished by another worker.
  const op = decodeOperation(await unary(ops!, 'GetOperation', { name: victim.name }));
  assert.equal(op.done, true, `operation ${victim.name} is not done`);
  assert.equal(op.response?.status?.code ?? 0, 0, op.response?.status?.message ?? '');
  const finishedBy = op.response?.result?.executionMetadata?.worker;
  assert.ok(finishedBy && finishedBy !== doomed.name, `operation ${victim.name} was finished by ${finishedBy}, not by a surviving worker`);
  chaos = { killedWorker: doomed.name, operation: victim.name };
  console.log(`# ${victim.name}: killed on ${doomed.name}, finished by ${finishedBy}`);
});

test('every blob that an action result in the bucket references is in the bucket', { skip }, async () => {
  assert.ok(baseline, 'the build did not run');
  const client = s3!.client();
  const base = `${PREFIX}/instances/_`;
  const acKeys = await listKeys(client, `${base}/ac/`);
  const casKeys = new Set(await listKeys(client, `${base}/cas/`));
  assert.ok(acKeys.length >= 20, `only ${acKeys.length} action results in the bucket`);

  const referenced = new Map<string, { size: number; from: string }>();
  const want = (d: rex.Digest.$Properties | null | undefined, from: string) => {
    if (!d || !d.hash || (Number(d.sizeBytes) === 0 && d.hash === SHA256_EMPTY)) return;
    referenced.set(d.hash, { size: Number(d.sizeBytes), from });
  };
  let trees = 0;
  for (const key of acKeys) {
    const result = rex.ActionResult.decode(await getObject(client, key));
    const from = key.slice(key.lastIndexOf('/') + 1);
    for (const f of result.outputFiles) want(f.digest, `${from} ${f.path}`);
    want(result.stdoutDigest, `${from} stdout`);
    want(result.stderrDigest, `${from} stderr`);
    for (const d of result.outputDirectories) {
      want(d.treeDigest, `${from} tree ${d.path}`);
      assert.ok(casKeys.has(`${base}/cas/${d.treeDigest!.hash}`), `${from}: the tree of ${d.path} is not in the bucket`);
      const tree = rex.Tree.decode(await getObject(client, `${base}/cas/${d.treeDigest!.hash}`));
      trees++;
      for (const dir of [tree.root, ...tree.children]) for (const f of dir?.files ?? []) want(f.digest, `${from} ${d.path}/.../${f.name}`);
    }
  }
  assert.ok(trees >= 1, 'no action result has an output directory (//naps:tree should)');
  const missing = [...referenced].filter(([hash]) => !casKeys.has(`${base}/cas/${hash}`));
  assert.deepEqual(missing, [], 'blobs referenced by action results but absent from the bucket');
  // Sizes too: what S3 holds under the hash is the whole blob.
  for (const [hash, { size, from }] of referenced) {
    const stat = await client.statObject(s3!.bucket, `${base}/cas/${hash}`);
    assert.equal(stat.size, size, `${hash} (${from}) has ${stat.size} bytes in the bucket, not ${size}`);
  }
  console.log(`# ${acKeys.length} action results, ${trees} trees, ${referenced.size} referenced blobs: all in the bucket`);
});

test('after bazel clean, the rebuild through server A is all remote cache hits', { skip, timeout: 10 * 60_000 }, async () => {
  assert.ok(baseline, 'the build did not run');
  const c = await runBazel({ workspace: workspace!, outputBase: outputBase!, args: ['clean'] });
  assert.equal(c.code, 0, `bazel clean failed: ${c.stderr}`);
  const r = await runBazel({ workspace: workspace!, outputBase: outputBase!, args: ['build', ...bazelFlags(serverA!.address), ...TARGETS] });
  assert.equal(r.code, 0, `the rebuild failed: ${farmDetail(r)}`);
  logPhase('rebuild after clean', r);
  assertAllCacheHits('rebuild after clean', parseProcessSummary(r.stderr), r);
  const got = await hashTree(await bazelBin(outputBase!, serverA!.address));
  assert.deepEqual([...got.keys()], [...baseline.keys()], 'different output files after clean');
  for (const [file, hash] of baseline) assert.equal(got.get(file), hash, `${file} differs from the first build`);
});

test('a new server with an empty disk tier serves a warm build entirely from S3', { skip, timeout: 10 * 60_000 }, async () => {
  assert.ok(baseline, 'the build did not run');
  const tier = scratch('cluster-tier');
  serverC = await startFarmServer({ dataDir: scratch('cluster-c'), storage: s3!.storageUrl(PREFIX, { tier, tierBytes: '256M' }) });
  freshOutputBase = await makeOutputBase();
  const r = await runBazel({ workspace: workspace!, outputBase: freshOutputBase, args: ['build', ...bazelFlags(serverC.address), ...TARGETS] });
  assert.equal(r.code, 0, `the warm build on the new server failed: ${farmDetail(r)}`);
  logPhase('fresh output base, new server, empty tier', r);
  assertAllCacheHits('fresh output base on server C', parseProcessSummary(r.stderr), r);
  const bin = await bazelBin(freshOutputBase, serverC.address);
  const got = await hashTree(bin);
  assertKnownOutputs(bin, got);
  for (const [file, hash] of baseline) assert.equal(got.get(file), hash, `${file} differs from the first build`);
  // What Bazel downloaded came from S3 through the (empty) tier, which now holds it.
  const bigInTier = path.join(tier, 'instances', '_', 'cas', BIG_SHA256.slice(0, 2), `${BIG_SHA256}-12582912`);
  assert.ok(existsSync(bigInTier), `gen/big.bin was not read through the tier (${bigInTier})`);
});

test('the surviving processes of the farm logged no errors', { skip }, () => {
  assert.ok(chaos, 'the chaos build did not run');
  for (const p of [serverA, serverB, serverC, ...workers]) {
    if (!p) continue;
    const errors = p.stderr().split('\n').filter((l) => /"level":"error"/.test(l));
    assert.deepEqual(errors, [], `${'name' in p ? p.name : p.address} logged errors`);
  }
});
