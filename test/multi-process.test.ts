// A farm in processes, as deployed: one Redis, two `reapi serve --redis --worker off` servers and
// standalone `reapi worker` processes that reach the CAS only over gRPC.
import test, { after, before } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { existsSync, promises as fs } from 'node:fs';
import * as path from 'node:path';
import { Metadata, status } from '@grpc/grpc-js';
import { longrunning, rex } from '../apis';
import { ExecutionClient, ExecutionService, createClient, unary } from '../apis/services';
import { Digest, digestKey, digestOf } from '../cas/digest';
import { RedisOperationStore } from '../scheduler/redis-operation-store';
import { FIND_MISSING_CHUNK, RemoteContentAccess } from '../worker/remote-content-access';
import { ServerClients, connectToServer } from '../worker/server-connection';
import { clientsFor, readAll } from './helpers/clients';
import { ActionSpec, BuiltAction, DecodedOperation, buildAction, collect, decodeOperation, execute, executeToEnd } from './helpers/actions';
import { freePort } from './helpers/ports';
import { TestRedis, startRedis } from './helpers/redis';
import { ServerProcess, WorkerProcess, startServerProcess, startWorkerProcess, tempDir } from './helpers/server-process';

/**
 * Short leases, so a killed worker's action goes to another worker within seconds. Every worker
 * gets it: BullMQ paces the stalled-job check farm-wide (one "stalled-check" key in Redis), so a
 * single worker on the 30 s default would hold back the recovery for everyone.
 */
const FAST_RECOVERY = { REAPI_QUEUE_LOCK_MS: '1500' };

let redis: TestRedis;
let server1: ServerProcess;
let server2: ServerProcess;
let worker1: WorkerProcess;
const workers: WorkerProcess[] = [];
let remote: ServerClients;
let access: RemoteContentAccess;
let clients1: ReturnType<typeof clientsFor>;
let clients2: ReturnType<typeof clientsFor>;
let exec1: ExecutionClient;
let exec2: ExecutionClient;

before(async () => {
  redis = await startRedis();
  // Servers of one farm must see the same blobs and action results. Until the S3 storage of the
  // scale-out work replaces it, that means one shared --data directory.
  const sharedData = tempDir('farm-data');
  const serverArgs = ['--redis', redis.url, '--worker', 'off'];
  server1 = await startServerProcess({ dataDir: sharedData, args: serverArgs });
  server2 = await startServerProcess({ dataDir: sharedData, args: serverArgs });
  worker1 = await startWorkerProcess({ server: server1.address, redis: redis.url, name: 'worker-one', args: ['--concurrency', '2'], env: FAST_RECOVERY });
  workers.push(worker1);
  remote = connectToServer(`grpc://${server1.address}`);
  access = new RemoteContentAccess(remote);
  clients1 = clientsFor(server1.address);
  clients2 = clientsFor(server2.address);
  exec1 = createClient(ExecutionService, server1.address);
  exec2 = createClient(ExecutionService, server2.address);
});

after(async () => {
  for (const c of [exec1, exec2]) c?.close();
  clients1?.close();
  clients2?.close();
  remote?.close();
  await Promise.all(workers.map((w) => w.stop()));
  await Promise.all([server1?.stop(), server2?.stop()]);
  await redis?.stop();
});

async function uploaded(spec: ActionSpec, extra: Buffer[] = []): Promise<BuiltAction> {
  const action = buildAction(spec);
  for (const b of [...action.blobs.map((b) => b.data), ...extra]) await access.uploadBlob('', digestOf(b), b);
  return action;
}

async function text(clients: ReturnType<typeof clientsFor>, digest: rex.Digest.$Properties | null | undefined): Promise<string> {
  return (await readAll(clients.bs, { resourceName: `blobs/${digest!.hash}/${digest!.sizeBytes}` })).toString();
}

/** Follows an Execute stream to its end, calling `seen` on every operation state as it arrives. */
async function executeWatching(exec: ExecutionClient, request: rex.IExecuteRequest, seen: (op: DecodedOperation) => void): Promise<DecodedOperation[]> {
  const ops: DecodedOperation[] = [];
  for await (const raw of exec.Execute(request) as AsyncIterable<longrunning.Operation>) {
    const op = decodeOperation(raw);
    ops.push(op);
    seen(op);
  }
  return ops;
}

function lastResponse(ops: DecodedOperation[]) {
  const last = ops[ops.length - 1];
  assert.ok(last?.done && last.response, `the operation finished: ${JSON.stringify(ops.map((o) => o.stage))}`);
  return last.response;
}

test('RemoteContentAccess moves small and large blobs both ways and verifies them', async () => {
  const dir = tempDir('remote-access');
  const small = Buffer.from('a small blob\n');
  const large = randomBytes(5 * 1024 * 1024 + 17); // over the 4 MiB batch limit: ByteStream
  await access.uploadBlob('', digestOf(small), small);
  const largeFile = path.join(dir, 'large.bin');
  await fs.writeFile(largeFile, large);
  await access.uploadFile('', digestOf(large), largeFile);

  assert.deepEqual(await access.read('', digestOf(small)), small);
  assert.deepEqual(await access.read('', digestOf(large)), large);
  const fetched = path.join(dir, 'fetched.bin');
  assert.equal(await access.fetchToFile('', digestOf(large), fetched), true);
  assert.deepEqual(await fs.readFile(fetched), large);

  const absent = digestOf(Buffer.from(`never uploaded ${Date.now()}`));
  assert.equal(await access.read('', absent), undefined);
  const notThere = path.join(dir, 'absent.bin');
  assert.equal(await access.fetchToFile('', absent, notThere), false);
  assert.equal(existsSync(notThere), false, 'no file is left behind for an absent blob');

  // More digests than one FindMissingBlobs call carries.
  const unknown: Digest[] = Array.from({ length: FIND_MISSING_CHUNK * 2 + 5 }, (_, i) => ({
    hash: createHash('sha256').update(`unknown-${i}`).digest('hex'),
    sizeBytes: 10 + i,
  }));
  const missing = await access.findMissing('', [digestOf(small), ...unknown, digestOf(large)]);
  assert.deepEqual(missing, unknown);

  // A file that is not what the caller hashed (changed since) is refused, naming the file.
  const changed = path.join(dir, 'changed.bin');
  const claimed = digestOf(randomBytes(6 * 1024 * 1024));
  await fs.writeFile(changed, randomBytes(6 * 1024 * 1024));
  await assert.rejects(access.uploadFile('', claimed, changed), (err: Error) => err.message.includes(changed));
  assert.deepEqual(await access.findMissing('', [claimed]), [claimed], 'nothing was committed under the claimed digest');
});

test('RemoteContentAccess waits out a restart of its server instead of failing the call', async () => {
  const port = await freePort();
  const dataDir = tempDir('restarting-server');
  const start = () => startServerProcess({ dataDir, args: ['--worker', 'off', '--listen', `127.0.0.1:${port}`] });
  let server = await start();
  const connection = connectToServer(`grpc://${server.address}`);
  try {
    const patient = new RemoteContentAccess(connection);
    const blob = Buffer.from('read across a server restart\n');
    await patient.uploadBlob('', digestOf(blob), blob);
    await server.kill();
    const reading = patient.read('', digestOf(blob));
    // Down for longer than the channel's own retries last (backoffs of at most 0.2+0.4+0.8+1.6 s).
    await new Promise((r) => setTimeout(r, 4000));
    server = await start();
    assert.deepEqual(await reading, blob);
  } finally {
    connection.close();
    await server.stop();
  }
});

test('an action executed through server 1 has its outputs readable through server 2', async () => {
  const bigInput = randomBytes(5 * 1024 * 1024 + 3);
  const spec: ActionSpec = {
    args: ['sh', '-c', 'sha256sum big.in | cut -d" " -f1 > out/sum; cat big.in big.in > out/double; echo ran-remotely'],
    outputPaths: ['out/sum', 'out/double'],
    salt: `outputs-${Date.now()}`,
  };
  // buildAction takes text inputs only: give its Action an input root holding the large file.
  const built = buildAction(spec);
  const inputDigest = digestOf(bigInput);
  const root = Buffer.from(rex.Directory.encode({ files: [{ name: 'big.in', digest: inputDigest }] }).finish());
  const command = built.blobs[1].data;
  const decoded = rex.Action.decode(built.blobs[0].data);
  decoded.inputRootDigest = digestOf(root);
  const actionBytes = Buffer.from(rex.Action.encode(decoded).finish());
  for (const b of [actionBytes, command, root, bigInput]) await access.uploadBlob('', digestOf(b), b);

  const response = await executeToEnd(exec1, { actionDigest: digestOf(actionBytes) });
  assert.equal(response.status?.code ?? 0, 0, response.status?.message ?? '');
  const result = response.result!;
  assert.equal(result.exitCode, 0);
  assert.equal(result.executionMetadata?.worker, 'worker-one');
  const files = new Map(result.outputFiles.map((f) => [f.path, f.digest]));
  assert.equal((await text(clients2, files.get('out/sum'))).trim(), inputDigest.hash);
  const double = await readAll(clients2.bs, { resourceName: `blobs/${files.get('out/double')!.hash}/${files.get('out/double')!.sizeBytes}` });
  assert.deepEqual(double, Buffer.concat([bigInput, bigInput]));
  assert.equal(await text(clients2, result.stdoutDigest), 'ran-remotely\n');

  // The worker stored the result on server 1 with UpdateActionResult; server 2 serves it too.
  const cached = await unary(clients2.ac, 'GetActionResult', { actionDigest: digestOf(actionBytes) });
  assert.equal(cached.stdoutDigest?.hash, result.stdoutDigest?.hash);
  const again = await executeToEnd(exec2, { actionDigest: digestOf(actionBytes) });
  assert.equal(again.cachedResult, true);
});

test('WaitExecution on server 2 follows an operation started on server 1', async () => {
  const action = await uploaded({ args: ['sh', '-c', 'sleep 1; echo waited'], salt: `wait-${Date.now()}` });
  const stream = exec1.Execute({ actionDigest: action.actionDigest });
  const name = await new Promise<string>((resolve, reject) => {
    stream.once('data', (op) => resolve(decodeOperation(op).name));
    stream.once('error', reject);
  });
  stream.on('error', () => undefined); // the CANCELLED status of our own cancel
  stream.cancel();
  const rest = await collect(exec2.WaitExecution({ name }));
  const response = lastResponse(rest);
  assert.equal(response.status?.code ?? 0, 0, response.status?.message ?? '');
  assert.equal(await text(clients2, response.result!.stdoutDigest), 'waited\n');
});

test('identical actions sent at once through the two servers run once', async () => {
  const action = await uploaded({ args: ['sh', '-c', 'sleep 1; date +%s%N'], salt: `dedup-${Date.now()}` });
  const [a, b] = await Promise.all([execute(exec1, { actionDigest: action.actionDigest }), execute(exec2, { actionDigest: action.actionDigest })]);
  assert.equal(a[a.length - 1].name, b[b.length - 1].name, 'both callers share one operation');
  assert.equal(lastResponse(a).result!.stdoutDigest?.hash, lastResponse(b).result!.stdoutDigest?.hash, 'one run, one result');
});

/** Writes to Redis what a server SIGKILLed after recording an operation, before queueing its job, leaves. */
async function orphanedOperation(action: BuiltAction, extra: { cancelRequested?: boolean } = {}): Promise<string> {
  const store = new RedisOperationStore({ url: redis.url });
  try {
    const name = `operations/${randomUUID()}`;
    const owner = await store.createOrJoin({
      name,
      instanceName: '',
      actionDigest: action.actionDigest,
      stage: 'QUEUED',
      done: false,
      queuedAt: Date.now(),
      dedupKey: `\0${digestKey(action.actionDigest)}`,
      ...extra,
    });
    assert.equal(owner.name, name);
    return name;
  } finally {
    await store.close();
  }
}

/** A deadline, so that a watch that waits forever fails the test instead of hanging it. */
const GIVE_UP = () => ({ deadline: Date.now() + 120_000 });

test('an operation whose server died before queueing it runs when a client sends the action again', async () => {
  const action = await uploaded({ args: ['sh', '-c', 'echo rescued'], salt: `orphan-${Date.now()}` });
  const orphan = await orphanedOperation(action);
  // The client retries (Bazel does, on the broken stream) and joins the orphan.
  const ops = await collect(exec2.Execute({ actionDigest: action.actionDigest }, new Metadata(), GIVE_UP()));
  assert.equal(ops[ops.length - 1].name, orphan, 'the retry joined the orphaned operation');
  const response = lastResponse(ops);
  assert.equal(response.status?.code ?? 0, 0, response.status?.message ?? '');
  assert.equal(await text(clients2, response.result!.stdoutDigest), 'rescued\n');
});

test('WaitExecution on such an operation runs it; on one cancelled as its server died, finishes it as cancelled', async () => {
  const action = await uploaded({ args: ['sh', '-c', 'echo waited-for'], salt: `orphan-wait-${Date.now()}` });
  const orphan = await orphanedOperation(action);
  const ops = await collect(exec1.WaitExecution({ name: orphan }, new Metadata(), GIVE_UP()));
  const response = lastResponse(ops);
  assert.equal(response.status?.code ?? 0, 0, response.status?.message ?? '');
  assert.equal(await text(clients1, response.result!.stdoutDigest), 'waited-for\n');

  // The server had recorded the cancel request and taken the job out of the queue, then died.
  const doomed = await uploaded({ args: ['sh', '-c', 'echo must-not-run'], salt: `orphan-cancel-${Date.now()}` });
  const cancelled = await orphanedOperation(doomed, { cancelRequested: true });
  const after = lastResponse(await collect(exec2.WaitExecution({ name: cancelled }, new Metadata(), GIVE_UP())));
  assert.equal(after.status?.code, status.CANCELLED, after.status?.message ?? '');
  assert.equal(after.result ?? undefined, undefined, 'nothing ran');
});

test('a SIGTERM-ed worker finishes its running action, then exits 0', async () => {
  const action = await uploaded({ args: ['sh', '-c', 'sleep 2; echo finished-while-draining'], doNotCache: true, salt: `drain-${Date.now()}` });
  let exited: Promise<number | null> | undefined;
  const ops = await executeWatching(exec1, { actionDigest: action.actionDigest }, (op) => {
    if (op.stage === 'EXECUTING' && !exited) exited = worker1.stop();
  });
  assert.ok(exited, 'the action was seen executing');
  const response = lastResponse(ops);
  assert.equal(response.status?.code ?? 0, 0, response.status?.message ?? '');
  assert.equal(response.result!.exitCode, 0);
  assert.equal(await text(clients1, response.result!.stdoutDigest), 'finished-while-draining\n');
  assert.equal(await exited, 0, `worker stderr:\n${worker1.stderr()}`);
});

test('an action whose worker is killed mid-run is completed by a worker started afterwards', async () => {
  const workDir = tempDir('worker-killed');
  const doomed = await startWorkerProcess({ server: server1.address, redis: redis.url, name: 'worker-doomed', workDir, env: FAST_RECOVERY });
  workers.push(doomed);
  const action = await uploaded({ args: ['sh', '-c', 'sleep 2; echo survived'], doNotCache: true, salt: `kill-${Date.now()}` });
  let killed: Promise<void> | undefined;
  let replacement: Promise<WorkerProcess> | undefined;
  const ops = await executeWatching(exec2, { actionDigest: action.actionDigest }, (op) => {
    if (op.stage !== 'EXECUTING' || killed) return;
    killed = doomed.kill();
    // Same work dir: the replacement also removes the container the dead worker left running.
    replacement = killed.then(() => startWorkerProcess({ server: server2.address, redis: redis.url, name: 'worker-rescuer', workDir, env: FAST_RECOVERY }));
    replacement.then((w) => workers.push(w), () => undefined);
  });
  assert.ok(killed, 'the action was seen executing on the doomed worker');
  await replacement;
  const response = lastResponse(ops);
  assert.equal(response.status?.code ?? 0, 0, response.status?.message ?? '');
  assert.equal(response.result!.executionMetadata?.worker, 'worker-rescuer');
  assert.equal(await text(clients2, response.result!.stdoutDigest), 'survived\n');
  assert.equal(doomed.child.signalCode, 'SIGKILL');
});

test('a worker refuses a work dir another live worker uses', async () => {
  const workDir = tempDir('worker-shared');
  const first = await startWorkerProcess({ server: server1.address, redis: redis.url, name: 'worker-first', workDir, env: FAST_RECOVERY });
  workers.push(first);
  await assert.rejects(
    startWorkerProcess({ server: server1.address, redis: redis.url, name: 'worker-second', workDir }),
    (err: Error) => err.message.includes(`in use by the worker with pid ${first.child.pid}`),
  );
});
