// End-to-end proof for remote execution: the real Bazel 4.2.3 client uses a real `reapi serve` (with
// its embedded Docker worker) as its --remote_executor; every action runs in the toolchain image.
//
//   1. `bazel build //...` runs every non-internal action remotely; outputs are right and the
//      //cc:hello binary built in the container runs on the host;
//   2. //probe:marker copies /etc/reapi-toolchain, which only the container image has;
//   3. `bazel test //cc:hello_test` passes remotely;
//   4. after `bazel clean`, build and test are all remote cache hits, outputs byte-identical;
//   5. a failing action's exit code and stderr reach Bazel's output;
//   6. a test over its --test_timeout comes back as DEADLINE_EXCEEDED, which Bazel reports as TIMEOUT;
//   7. hermeticity: an action cannot reach the reapi server's port on 127.0.0.1, and runs as non-root.
//
// Every command also passes --spawn_strategy=remote, so Bazel has no local strategy to run anything
// with (and there is never a --remote_local_fallback): a spawn that ran at all ran remotely, which
// matters for failing actions, which Bazel's process summary does not count.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, rmSync } from 'node:fs';
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
import { assertKnownOutputs, hashTree } from './helpers/bazel-outputs';

const IMAGE = 'reapi-toolchain:bookworm';
const MARKER_FILE = '/etc/reapi-toolchain';

const haveBazel = spawnSync(BAZEL, ['--version'], { stdio: 'ignore' }).status === 0;
const skip = haveBazel ? false : `no ${BAZEL} on PATH`;

let server: ServerProcess | undefined;
let dataDir: string | undefined;
let workspace: string | undefined;
let outputBase: string | undefined;
/** Regular files under bazel-bin (path relative to it -> sha256) after the first build of //... */
let baseline: Map<string, string> | undefined;
/** The summary line of each phase, verbatim, for the log. */
const phaseLines: string[] = [];

function remoteFlags(): string[] {
  assert.ok(server, 'reapi server not running');
  return [
    `--remote_executor=grpc://${server.address}`,
    `--remote_default_exec_properties=container-image=docker://${IMAGE}`,
    '--spawn_strategy=remote',
  ];
}

function serverPort(): number {
  assert.ok(server, 'reapi server not running');
  return Number(server.address.slice(server.address.lastIndexOf(':') + 1));
}

function describe(r: BazelResult): string {
  return `exit ${r.code}\n--- stderr tail ---\n${r.stderr.slice(-6000)}\n--- reapi stderr tail ---\n${server?.stderr().slice(-3000) ?? ''}`;
}

async function bazel(args: string[]): Promise<BazelResult> {
  assert.ok(workspace && outputBase, 'no Bazel workspace');
  return runBazel({ workspace, outputBase, args });
}

function summaryLine(r: BazelResult): string {
  return r.stderr.split(/\r?\n/).filter((l) => /^INFO: \d+ process(es)?\b/.test(l.trim())).pop()?.trim() ?? '(no summary line)';
}

function logPhase(phase: string, r: BazelResult): void {
  phaseLines.push(`${phase}: ${summaryLine(r)}`);
  console.log(`# ${phase}: ${summaryLine(r)}`);
}

/** Runs a build/test command that must succeed; returns its parsed summary and logs the line. */
async function mustPass(phase: string, args: string[]): Promise<{ r: BazelResult; s: ProcessSummary }> {
  const r = await bazel(args);
  assert.equal(r.code, 0, `${phase}: bazel ${args.join(' ')} failed: ${describe(r)}`);
  logPhase(phase, r);
  return { r, s: parseProcessSummary(r.stderr) };
}

/** Runs a build/test command that must fail (but not for want of a server); logs the summary line. */
async function mustFail(phase: string, args: string[]): Promise<BazelResult> {
  const r = await bazel(args);
  assert.notEqual(r.code, 0, `${phase}: bazel ${args.join(' ')} succeeded: ${describe(r)}`);
  assert.doesNotMatch(r.stderr, /Failed to query remote execution capabilities/, describe(r));
  logPhase(phase, r);
  return r;
}

function assertAllRemote(phase: string, s: ProcessSummary, r: BazelResult): void {
  const detail = `${phase}: ${JSON.stringify(s)}\n${describe(r)}`;
  assert.ok(s.remote > 0, `${phase}: nothing ran remotely: ${detail}`);
  assert.equal(s.remote, s.total - s.internal, `${phase}: not every non-internal process ran remotely: ${detail}`);
  assert.equal(s.local, 0, detail);
  assert.equal(s.remoteCacheHit, 0, detail);
  assert.equal(s.linuxSandbox, 0, detail);
  assert.deepEqual(s.other, {}, detail);
}

function assertAllCacheHits(phase: string, s: ProcessSummary, r: BazelResult): void {
  const detail = `${phase}: ${JSON.stringify(s)}\n${describe(r)}`;
  assert.ok(s.total - s.internal > 0, `${phase}: no non-internal processes at all: ${detail}`);
  assert.equal(s.remoteCacheHit, s.total - s.internal, `${phase}: not every non-internal process was a remote cache hit: ${detail}`);
  assert.equal(s.local, 0, detail);
  assert.equal(s.remote, 0, detail);
  assert.equal(s.linuxSandbox, 0, detail);
  assert.deepEqual(s.other, {}, detail);
}

async function bazelBin(): Promise<string> {
  const r = await bazel(['info', ...remoteFlags(), 'bazel-bin']);
  assert.equal(r.code, 0, `bazel info bazel-bin failed: ${describe(r)}`);
  const dir = r.stdout.trim().split(/\r?\n/).pop()!.trim();
  assert.ok(path.isAbsolute(dir), `bazel info bazel-bin printed ${JSON.stringify(r.stdout)}`);
  return dir;
}

async function bazelTestlogs(): Promise<string> {
  const r = await bazel(['info', ...remoteFlags(), 'bazel-testlogs']);
  assert.equal(r.code, 0, `bazel info bazel-testlogs failed: ${describe(r)}`);
  const dir = r.stdout.trim().split(/\r?\n/).pop()!.trim();
  assert.ok(path.isAbsolute(dir), `bazel info bazel-testlogs printed ${JSON.stringify(r.stdout)}`);
  return dir;
}


before(async () => {
  if (skip) return;
  server = await startServerProcess();
  dataDir = server.dataDir;
  workspace = await copyWorkspace();
  outputBase = await makeOutputBase();
});

after(async () => {
  if (workspace && outputBase) await shutdownBazel(workspace, outputBase);
  await server?.stop();
  if (workspace && outputBase) await cleanupBazel(workspace, outputBase);
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
  if (phaseLines.length) console.log(`# summary lines:\n${phaseLines.map((l) => `#   ${l}`).join('\n')}`);
});

test('bazel build //... runs every action remotely, with correct outputs', { skip }, async () => {
  const { r, s } = await mustPass('build //...', ['build', ...remoteFlags(), '//...']);
  assertAllRemote('build //...', s, r);
  const bin = await bazelBin();
  baseline = await hashTree(bin);
  assertKnownOutputs(baseline, ['cc/hello_test']);
  // Compiled and linked in the container, runs on the host.
  const hello = spawnSync(path.join(bin, 'cc', 'hello'), [], { encoding: 'utf8' });
  assert.equal(hello.status, 0, `cc/hello failed: ${hello.stderr}`);
  assert.equal(hello.stdout, 'Hello, reapi! (10 = 55)\n');
});

test('//probe:marker runs inside the toolchain container', { skip }, async () => {
  assert.equal(existsSync(MARKER_FILE), false, `${MARKER_FILE} exists on the host: the probe would prove nothing`);
  // The file as the image has it (the default bridge network may be unusable here, so no network).
  const inImage = spawnSync('docker', ['run', '--rm', '--network', 'none', '--entrypoint', 'cat', IMAGE, MARKER_FILE], { encoding: 'utf8' });
  assert.equal(inImage.status, 0, `docker run ${IMAGE} cat ${MARKER_FILE} failed: ${inImage.stderr}`);
  assert.match(inImage.stdout, /^reapi-toolchain\b/);

  const { r, s } = await mustPass('build //probe:marker', ['build', ...remoteFlags(), '//probe:marker']);
  assertAllRemote('build //probe:marker', s, r);
  const marker = await fs.readFile(path.join(await bazelBin(), 'probe', 'marker.txt'), 'utf8');
  assert.equal(marker, inImage.stdout, 'probe/marker.txt is not the image\'s marker file');
});

test('bazel test //cc:hello_test passes remotely', { skip }, async () => {
  const { r, s } = await mustPass('test //cc:hello_test', ['test', ...remoteFlags(), '//cc:hello_test']);
  assertAllRemote('test //cc:hello_test', s, r);
  assert.match(r.stdout + r.stderr, /\/\/cc:hello_test\s+PASSED/, describe(r));
});

test('after bazel clean, build //... and the test are all remote cache hits, outputs byte-identical', { skip }, async () => {
  assert.ok(baseline, 'no baseline from the first build');
  const c = await bazel(['clean']);
  assert.equal(c.code, 0, `bazel clean failed: ${describe(c)}`);

  const b = await mustPass('build //... after clean', ['build', ...remoteFlags(), '//...']);
  assertAllCacheHits('build //... after clean', b.s, b.r);
  const got = await hashTree(await bazelBin());
  assert.deepEqual([...got.keys()], [...baseline.keys()], 'different set of output files after clean');
  for (const [file, hash] of baseline) assert.equal(got.get(file), hash, `${file} differs from the first build`);

  const t = await mustPass('test //cc:hello_test after clean', ['test', ...remoteFlags(), '//cc:hello_test']);
  assertAllCacheHits('test //cc:hello_test after clean', t.s, t.r);
  assert.match(t.r.stdout + t.r.stderr, /\/\/cc:hello_test\s+\(cached\) PASSED/, describe(t.r));
});

test("a failing action's exit code and stderr reach Bazel", { skip }, async () => {
  const r = await mustFail('build //fail:broken', ['build', ...remoteFlags(), '//fail:broken']);
  const out = r.stdout + r.stderr;
  assert.match(out, /Executing genrule \/\/fail:broken failed: \(Exit 3\)/, describe(r));
  assert.match(out, /^reapi-fixture: deliberate failure$/m, describe(r));
});

test('a test over its timeout comes back as DEADLINE_EXCEEDED: Bazel reports TIMEOUT', { skip }, async () => {
  const r = await mustFail('test --test_timeout=2 //slow:sleepy_test', [
    'test',
    ...remoteFlags(),
    '--test_timeout=2',
    '//slow:sleepy_test',
  ]);
  const out = r.stdout + r.stderr;
  assert.equal(r.code, 3, `want Bazel's "tests failed" exit code 3: ${describe(r)}`); // not 1 (build error), 34 (remote error), 37 (internal)
  assert.match(out, /\/\/slow:sleepy_test\s+TIMEOUT\b/, describe(r));
  assert.doesNotMatch(out, /Remote Execution Failure|[Ii]nternal error|FATAL|\bINTERNAL\b/, describe(r));
  assert.equal(parseProcessSummary(r.stderr).local, 0, describe(r));
  // The partial result came back with the DEADLINE_EXCEEDED response: the test's stdout so far.
  const log = await fs.readFile(path.join(await bazelTestlogs(), 'slow', 'sleepy_test', 'test.log'), 'utf8');
  assert.match(log, /reapi-fixture: sleepy_test starting/, `test.log:\n${log}`);
  assert.doesNotMatch(log, /slept 30s/, `test.log:\n${log}`);
});

test('hermetic: an action cannot reach the host network and does not run as root', { skip }, async () => {
  const port = serverPort();
  // Control: from the host the very same probe does connect to the reapi server.
  const host = spawnSync('bash', ['-c', `exec 3<>/dev/tcp/127.0.0.1/${port}`], { encoding: 'utf8' });
  assert.equal(host.status, 0, `the host cannot connect to 127.0.0.1:${port} itself: ${host.stderr}`);

  const net = await mustFail('build //probe:network', ['build', ...remoteFlags(), `--define=REAPI_PORT=${port}`, '//probe:network']);
  assert.match(net.stdout + net.stderr, /Executing genrule \/\/probe:network failed: \(Exit 1\)/, describe(net));
  assert.match(net.stdout + net.stderr, /^reapi-fixture: no network$/m, describe(net));

  const { r, s } = await mustPass('build //probe:uid', ['build', ...remoteFlags(), '//probe:uid']);
  assertAllRemote('build //probe:uid', s, r);
  const uid = (await fs.readFile(path.join(await bazelBin(), 'probe', 'uid.txt'), 'utf8')).trim();
  assert.match(uid, /^\d+$/, `probe/uid.txt: ${JSON.stringify(uid)}`);
  assert.notEqual(Number(uid), 0, 'the action ran as root');
});

test('the server logged no errors', { skip }, () => {
  assert.ok(server);
  const errors = server.stderr().split('\n').filter((l) => /"level":"error"/.test(l));
  assert.deepEqual(errors, [], 'reapi serve logged errors');
});
