// Remote execution over real gRPC against `reapi serve` and its embedded Docker worker.
import test, { after, before } from 'node:test';
import assert from 'node:assert/strict';
import * as grpc from '@grpc/grpc-js';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import { rex, rpc } from '../apis';
import { unary } from '../apis/services';
import { farmClientsFor, readAll, statusOf } from './helpers/clients';
import { ServerProcess, startServerProcess } from './helpers/server-process';
import { BuiltAction, Response, blob, buildAction, collect, decodeOperation, execute, executeToEnd, millis, upload } from './helpers/actions';

let server: ServerProcess;
let clients: ReturnType<typeof farmClientsFor>;
let exec: typeof clients.exec;
let ops: typeof clients.ops;

before(async () => {
  // One action at a time and none staged past it, so queue order (priorities) is observable
  // (worker-stage-ahead.test.ts has the worker that stages ahead).
  server = await startServerProcess({ args: ['--worker', 'on', '--concurrency', '1', '--stage-ahead', '0'] });
  clients = farmClientsFor(server.address);
  ({ exec, ops } = clients);
});

after(async () => {
  clients.close();
  await server.stop();
});

async function uploaded(spec: Parameters<typeof buildAction>[0]): Promise<BuiltAction> {
  const action = buildAction(spec);
  await upload(clients.cas, action.blobs);
  return action;
}

async function blobText(digest: rex.Digest.$Properties | null | undefined): Promise<string> {
  return (await readAll(clients.bs, { resourceName: `blobs/${digest!.hash}/${digest!.sizeBytes}` })).toString();
}

test('Capabilities advertise execution', async () => {
  const caps = await unary(clients.caps, 'GetCapabilities', {});
  assert.equal(caps.executionCapabilities?.execEnabled, true);
  assert.equal(caps.executionCapabilities?.digestFunction, rex.DigestFunction.Value.SHA256);
});

test('an action runs in the container, streams its stages and is cached', async () => {
  const action = await uploaded({
    args: ['sh', '-c', 'cat /etc/reapi-toolchain > out/marker.txt; id -u > out/uid.txt; cat in.txt; echo to-stderr >&2'],
    inputs: { 'in.txt': 'input content\n' },
    outputPaths: ['out/marker.txt', 'out/uid.txt'],
  });
  const stream = await execute(exec, { actionDigest: action.actionDigest });
  const stages = stream.map((o) => o.stage);
  assert.equal(stages[stages.length - 1], 'COMPLETED');
  assert.ok(stages.includes('QUEUED') || stages.includes('EXECUTING'), `stages: ${stages}`);
  const response = stream[stream.length - 1].response!;
  assert.equal(response.status?.code ?? 0, 0, response.status?.message ?? '');
  assert.equal(response.cachedResult, false);
  const result = response.result!;
  assert.equal(result.exitCode, 0);
  const files = new Map(result.outputFiles.map((f) => [f.path, f]));
  assert.match(await blobText(files.get('out/marker.txt')!.digest), /reapi-toolchain/);
  assert.notEqual((await blobText(files.get('out/uid.txt')!.digest)).trim(), '0', 'actions must not run as root');
  assert.equal(await blobText(result.stdoutDigest), 'input content\n');
  assert.equal(await blobText(result.stderrDigest), 'to-stderr\n');

  const m = result.executionMetadata!;
  const order = [m.queuedTimestamp, m.workerStartTimestamp, m.inputFetchStartTimestamp, m.inputFetchCompletedTimestamp, m.executionStartTimestamp, m.executionCompletedTimestamp, m.outputUploadStartTimestamp, m.outputUploadCompletedTimestamp, m.workerCompletedTimestamp].map(millis);
  assert.ok(order.every((t) => t > 0), 'every stage has a timestamp');
  assert.deepEqual([...order].sort((a, b) => a - b), order, 'stage timestamps are in order');

  const again = await executeToEnd(exec, { actionDigest: action.actionDigest });
  assert.equal(again.cachedResult, true);
  assert.deepEqual(again.result!.outputFiles.map((f) => f.digest?.hash), result.outputFiles.map((f) => f.digest?.hash));

  const fresh = await executeToEnd(exec, { actionDigest: action.actionDigest, skipCacheLookup: true });
  assert.equal(fresh.cachedResult, false);
});

test('outputs are moved into the CAS read-only and the server\'s own; a hardlinked output is copied', async () => {
  const action = await uploaded({
    args: ['sh', '-c', 'echo moved > out/a.txt && echo linked > out/b.txt && ln out/b.txt out/c.txt'],
    outputPaths: ['out/a.txt', 'out/b.txt', 'out/c.txt'],
    salt: `adopt-${Date.now()}`,
  });
  const response = await executeToEnd(exec, { actionDigest: action.actionDigest, skipCacheLookup: true });
  assert.equal(response.status?.code ?? 0, 0, response.status?.message ?? '');
  const files = new Map(response.result!.outputFiles.map((f) => [f.path, f.digest!]));
  assert.deepEqual([...files.keys()].sort(), ['out/a.txt', 'out/b.txt', 'out/c.txt']);
  assert.equal(await blobText(files.get('out/a.txt')), 'moved\n');
  assert.equal(await blobText(files.get('out/c.txt')), 'linked\n');
  // Taken over (0440: an action's own file, never lent out as a cache inode) / copied (0444).
  for (const [name, mode] of [['out/a.txt', 0o440], ['out/b.txt', 0o444]] as const) {
    // The default instance's blobs: DATA/instances/<name>/cas/ab/<hash>
    const hash = files.get(name)!.hash!;
    const [stored] = execFileSync('find', [server.dataDir, '-path', `*/cas/${hash.slice(0, 2)}/${hash}`], { encoding: 'utf8' }).split('\n');
    const st = fs.statSync(stored!);
    assert.equal(st.mode & 0o777, mode, `${name}: read-only in the CAS`);
    assert.deepEqual([st.uid, st.gid], [process.getuid!(), process.getgid!()], `${name}: no longer the action user's`);
    assert.equal(st.nlink, 1, `${name}: shares its inode with nothing the action could still reach`);
  }
});

test('a failing action reports its exit code and stderr and is not cached', async () => {
  const action = await uploaded({ args: ['sh', '-c', 'echo broken-on-purpose >&2; exit 3'] });
  const response = await executeToEnd(exec, { actionDigest: action.actionDigest });
  assert.equal(response.status?.code ?? 0, 0);
  assert.equal(response.result!.exitCode, 3);
  assert.equal(await blobText(response.result!.stderrDigest), 'broken-on-purpose\n');
  assert.equal(await statusOf(unary(clients.ac, 'GetActionResult', { actionDigest: action.actionDigest })), grpc.status.NOT_FOUND);
});

test('an action over its timeout is DEADLINE_EXCEEDED with its partial output kept', async () => {
  const action = await uploaded({ args: ['sh', '-c', 'echo before-the-kill; sleep 30; echo never'], timeoutSeconds: 1 });
  const response = await executeToEnd(exec, { actionDigest: action.actionDigest });
  assert.equal(response.status?.code, grpc.status.DEADLINE_EXCEEDED);
  assert.equal(await blobText(response.result!.stdoutDigest), 'before-the-kill\n');
  assert.equal(await statusOf(unary(clients.ac, 'GetActionResult', { actionDigest: action.actionDigest })), grpc.status.NOT_FOUND);
});

test('missing inputs are FAILED_PRECONDITION naming every missing digest', async () => {
  const action = buildAction({ args: ['cat', 'a.txt', 'b.txt'], inputs: { 'a.txt': 'never uploaded A', 'b.txt': 'never uploaded B' } });
  const inputs = action.blobs.slice(3);
  await upload(clients.cas, action.blobs.slice(0, 3)); // action, command, root directory only
  const response = await executeToEnd(exec, { actionDigest: action.actionDigest });
  assert.equal(response.status?.code, grpc.status.FAILED_PRECONDITION, response.status?.message ?? '');
  const detail = response.status!.details.find((d) => (d.type_url ?? '').endsWith('google.rpc.PreconditionFailure'));
  assert.ok(detail, 'a PreconditionFailure detail is attached');
  const subjects = rpc.PreconditionFailure.decode(detail.value!).violations.map((v) => v.subject).sort();
  assert.deepEqual(subjects, inputs.map((b) => `blobs/${b.digest.hash}/${b.digest.sizeBytes}`).sort());
});

test('an Action missing from the CAS is refused with FAILED_PRECONDITION', async () => {
  const missing = blob('not an uploaded action');
  const code = await statusOf(collect(exec.Execute({ actionDigest: missing.digest })));
  assert.equal(code, grpc.status.FAILED_PRECONDITION);
});

test('identical actions sent at once execute once', async () => {
  const action = await uploaded({ args: ['sh', '-c', 'sleep 1; date +%s%N'], salt: `dedup-${Date.now()}` });
  const [a, b] = await Promise.all([execute(exec, { actionDigest: action.actionDigest }), execute(exec, { actionDigest: action.actionDigest })]);
  assert.equal(a[a.length - 1].name, b[b.length - 1].name, 'both callers share one operation');
  const ra = a[a.length - 1].response!.result!;
  const rb = b[b.length - 1].response!.result!;
  assert.equal(ra.stdoutDigest?.hash, rb.stdoutDigest?.hash, 'one run, one result');
});

test('lower priority values run first', async () => {
  const blocker = await uploaded({ args: ['sleep', '2'], doNotCache: true, salt: `blocker-${Date.now()}` });
  const late = await uploaded({ args: ['true'], doNotCache: true, salt: `late-${Date.now()}` });
  const urgent = await uploaded({ args: ['true'], doNotCache: true, salt: `urgent-${Date.now()}` });
  const running = executeToEnd(exec, { actionDigest: blocker.actionDigest });
  await new Promise((r) => setTimeout(r, 500)); // the blocker occupies the only slot
  const lateRun = executeToEnd(exec, { actionDigest: late.actionDigest, executionPolicy: { priority: 10 } });
  await new Promise((r) => setTimeout(r, 200));
  const urgentRun = executeToEnd(exec, { actionDigest: urgent.actionDigest, executionPolicy: { priority: -10 } });
  const [, l, u] = await Promise.all([running, lateRun, urgentRun]);
  const started = (r: Response) => millis(r.result!.executionMetadata!.executionStartTimestamp);
  assert.ok(started(u) < started(l), 'the urgent action, queued later, started first');
});

test('WaitExecution re-attaches after the Execute stream is dropped', async () => {
  const action = await uploaded({ args: ['sh', '-c', 'sleep 1; echo waited'], salt: `wait-${Date.now()}` });
  const stream = exec.Execute({ actionDigest: action.actionDigest });
  const first = await new Promise<string>((resolve, reject) => {
    stream.once('data', (op) => resolve(decodeOperation(op).name));
    stream.once('error', reject);
  });
  stream.cancel();
  stream.on('error', () => undefined); // the CANCELLED status of our own cancel
  const rest = await collect(exec.WaitExecution({ name: first }));
  const last = rest[rest.length - 1];
  assert.equal(last.done, true);
  assert.equal(await blobText(last.response!.result!.stdoutDigest), 'waited\n');
  const op = await unary(ops, 'GetOperation', { name: first });
  assert.equal(op.done, true);
});

test('Operations: list, cancel a queued action, delete', async () => {
  const blocker = await uploaded({ args: ['sleep', '2'], doNotCache: true, salt: `ops-blocker-${Date.now()}` });
  const victim = await uploaded({ args: ['true'], doNotCache: true, salt: `victim-${Date.now()}` });
  const running = executeToEnd(exec, { actionDigest: blocker.actionDigest });
  await new Promise((r) => setTimeout(r, 500));
  const victimStream = exec.Execute({ actionDigest: victim.actionDigest });
  const victimDone = collect(victimStream);
  let queued: ReturnType<typeof decodeOperation> | undefined;
  for (let i = 0; i < 100 && !queued; i++) {
    const list = await unary(ops, 'ListOperations', { name: 'operations' });
    queued = list.operations.map(decodeOperation).find((o) => o.stage === 'QUEUED');
    if (!queued) await new Promise((r) => setTimeout(r, 50)); // Execute is still on its way in
  }
  assert.ok(queued, 'the victim is listed as queued');
  await unary(ops, 'CancelOperation', { name: queued.name });
  const victimOps = await victimDone;
  assert.equal(victimOps[victimOps.length - 1].response?.status?.code, grpc.status.CANCELLED);
  await running;
  await unary(ops, 'DeleteOperation', { name: queued.name });
  assert.equal(await statusOf(unary(ops, 'GetOperation', { name: queued.name })), grpc.status.NOT_FOUND);
  assert.equal(await statusOf(collect(exec.WaitExecution({ name: 'operations/no-such-operation' }))), grpc.status.NOT_FOUND);
});

test('an image that does not exist is reported by name', async () => {
  const action = await uploaded({ args: ['true'], image: 'docker://reapi-no-such-image:latest' });
  const response = await executeToEnd(exec, { actionDigest: action.actionDigest });
  assert.notEqual(response.status?.code ?? 0, 0);
  assert.match(response.status!.message, /reapi-no-such-image/);
});

test('CancelOperation kills a running action', async () => {
  const action = await uploaded({ args: ['sh', '-c', 'echo started; sleep 30; echo finished'], doNotCache: true, salt: `cancel-${Date.now()}` });
  const done = collect(exec.Execute({ actionDigest: action.actionDigest }));
  let running: ReturnType<typeof decodeOperation> | undefined;
  for (let i = 0; i < 200 && !running; i++) {
    const list = await unary(ops, 'ListOperations', { name: 'operations' });
    running = list.operations.map(decodeOperation).find((o) => o.stage === 'EXECUTING');
    if (!running) await new Promise((r) => setTimeout(r, 50));
  }
  assert.ok(running, 'the action is seen executing');
  await unary(ops, 'CancelOperation', { name: running.name });
  const stream = await done;
  const last = stream[stream.length - 1];
  assert.equal(last.response?.status?.code, grpc.status.CANCELLED, last.response?.status?.message ?? '');
});

test('re-tagging the image makes earlier results of that image miss', async () => {
  const tag = `reapi-test-retag:${process.pid}`;
  const docker = (...args: string[]) => execFileSync('docker', args, { stdio: ['ignore', 'pipe', 'pipe'] }).toString().trim();
  docker('tag', 'reapi-toolchain:bookworm', tag);
  const container = `reapi-test-retag-${process.pid}`;
  try {
    const action = await uploaded({ args: ['sh', '-c', 'ls /etc/reapi-retag-marker 2>/dev/null || echo none'], image: `docker://${tag}` });
    assert.equal((await executeToEnd(exec, { actionDigest: action.actionDigest })).cachedResult, false);
    assert.equal((await executeToEnd(exec, { actionDigest: action.actionDigest })).cachedResult, true, 'same image: a hit');
    // A different image under the same name.
    docker('run', '--name', container, '--network', 'none', '--user', '0', tag, 'touch', '/etc/reapi-retag-marker');
    docker('commit', container, tag);
    await new Promise((r) => setTimeout(r, 5500)); // image IDs are cached for 5 s
    const rerun = await executeToEnd(exec, { actionDigest: action.actionDigest });
    assert.equal(rerun.cachedResult, false, 'the image behind the name changed: the action runs again');
    assert.equal(await blobText(rerun.result!.stdoutDigest), '/etc/reapi-retag-marker\n');
  } finally {
    execFileSync('docker', ['rm', '-f', container], { stdio: 'ignore' });
    execFileSync('docker', ['rmi', '-f', tag], { stdio: 'ignore' });
  }
});

test('an action asking for a network is refused unless the operator allows it', async () => {
  const action = await uploaded({ args: ['true'], platform: [{ name: 'dockerNetwork', value: 'standard' }], salt: `net-${Date.now()}` });
  const response = await executeToEnd(exec, { actionDigest: action.actionDigest });
  assert.equal(response.status?.code, grpc.status.FAILED_PRECONDITION);
  assert.match(response.status!.message, /--allow-network/);
});
