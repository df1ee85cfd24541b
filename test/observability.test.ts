// Observability as an operator meets it: `reapi serve --metrics-listen` and `reapi worker
// --metrics-listen` scraped over HTTP like Prometheus does, probed like Kubernetes does, while a
// real client runs actions and the test kills and restarts the Redis they depend on.
import test, { after, before } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { longrunning } from '../apis';
import { ExecutionService, OperationsService, createClient, unary } from '../apis/services';
import { blob, buildAction, decodeOperation, executeToEnd, upload } from './helpers/actions';
import { clientsFor, readAll, statusOf, writeStream } from './helpers/clients';
import { TestRedis, startRedis } from './helpers/redis';
import { ServerProcess, WorkerProcess, startServerProcess, startWorkerProcess } from './helpers/server-process';

let redis: TestRedis;
let server: ServerProcess;
let serverMetrics: string;
let worker: WorkerProcess | undefined;
let workerMetrics: string;
let clients: ReturnType<typeof clientsFor>;
let exec: InstanceType<typeof ExecutionService.Client>;
let ops: InstanceType<typeof OperationsService.Client>;

before(async () => {
  redis = await startRedis();
  server = await startServerProcess({ args: ['--redis', redis.url, '--worker', 'on', '--concurrency', '1', '--metrics-listen', '127.0.0.1:0'] });
  serverMetrics = metricsAddress(server.stdout());
  clients = clientsFor(server.address);
  exec = createClient(ExecutionService, server.address);
  ops = createClient(OperationsService, server.address);
});

after(async () => {
  clients?.close();
  exec?.close();
  ops?.close();
  await worker?.stop();
  await server?.stop();
  await redis?.stop();
});

function metricsAddress(startLine: string): string {
  const m = /metrics on (127\.0\.0\.1:\d+)/.exec(startLine);
  assert.ok(m, `the start-up line names the metrics address: ${JSON.stringify(startLine)}`);
  assert.notEqual(m[1], '127.0.0.1:0', 'port 0 is replaced by the port chosen');
  return m[1];
}

async function get(address: string, path: string): Promise<{ status: number; text: string }> {
  const res = await fetch(`http://${address}${path}`);
  return { status: res.status, text: await res.text() };
}

interface Readiness {
  ready: boolean;
  failing: string[];
  checks: Record<string, string>;
}

async function readyz(address: string): Promise<{ status: number; body: Readiness }> {
  const { status, text } = await get(address, '/readyz');
  return { status, body: JSON.parse(text) as Readiness };
}

/** Asks until `done` holds; the deadline only keeps a broken build from hanging the suite. */
async function eventually<T>(ask: () => Promise<T>, done: (answer: T) => boolean, what: string): Promise<T> {
  const deadline = Date.now() + 60_000;
  let answer = await ask();
  while (!done(answer)) {
    if (Date.now() > deadline) assert.fail(`${what}; last answer: ${JSON.stringify(answer)}`);
    await new Promise((r) => setTimeout(r, 200));
    answer = await ask();
  }
  return answer;
}

/** A Prometheus text exposition, read back as samples. */
class Scrape {
  private readonly samples: { name: string; labels: Record<string, string>; value: number }[] = [];

  constructor(readonly text: string) {
    for (const line of text.split('\n')) {
      const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)$/.exec(line);
      if (!m) continue;
      const labels: Record<string, string> = {};
      for (const [, k, v] of (m[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[k] = v;
      this.samples.push({ name: m[1], labels, value: Number(m[3]) });
    }
  }

  has(name: string): boolean {
    return this.samples.some((s) => s.name === name);
  }

  /** The sample with exactly these labels (besides others it may have: none here), or undefined. */
  value(name: string, labels: Record<string, string> = {}): number | undefined {
    const want = Object.entries(labels);
    const found = this.samples.find((s) => s.name === name && Object.keys(s.labels).length === want.length && want.every(([k, v]) => s.labels[k] === v));
    return found?.value;
  }
}

async function scrape(address: string): Promise<Scrape> {
  const { status, text } = await get(address, '/metrics');
  assert.equal(status, 200);
  return new Scrape(text);
}

test('the server prints where its metrics are; /healthz and /readyz answer 200 with every dependency named', async () => {
  assert.equal((await get(serverMetrics, '/healthz')).status, 200);
  const ready = await readyz(serverMetrics);
  assert.equal(ready.status, 200);
  assert.deepEqual(ready.body, { ready: true, failing: [], checks: { storage: 'ok', redis: 'ok', docker: 'ok' } });
  assert.equal((await get(serverMetrics, '/nothing-here')).status, 404);
});

test('counters follow what a client does: actions, cache lookups, bytes, gRPC calls, stage durations', async () => {
  // One action, run once, then found in the cache by GetActionResult and by a second Execute.
  const action = buildAction({ args: ['sh', '-c', 'echo hello; echo made > out.txt'], outputPaths: ['out.txt'], salt: randomUUID() });
  await upload(clients.cas, action.blobs);
  const uploadedBytes = action.blobs.reduce((sum, b) => sum + b.data.length, 0);
  const first = await executeToEnd(exec, { actionDigest: action.actionDigest });
  assert.equal(first.result?.exitCode, 0);
  assert.equal(first.cachedResult, false);
  await unary(clients.ac, 'GetActionResult', { actionDigest: action.actionDigest });
  const unknown = blob(`never ran ${randomUUID()}`).digest;
  assert.equal(await statusOf(unary(clients.ac, 'GetActionResult', { actionDigest: unknown })), grpc.status.NOT_FOUND);
  const second = await executeToEnd(exec, { actionDigest: action.actionDigest });
  assert.equal(second.cachedResult, true);

  // Bytes: stdout read over ByteStream, a blob written over ByteStream and read back in a batch.
  const stdout = first.result!.stdoutDigest!;
  assert.equal((await readAll(clients.bs, { resourceName: `blobs/${stdout.hash}/${stdout.sizeBytes}` })).toString(), 'hello\n');
  const written = blob(randomBytes(3000));
  await writeStream(clients.bs, [
    { resourceName: `uploads/${randomUUID()}/blobs/${written.digest.hash}/${written.digest.sizeBytes}`, writeOffset: 0, data: written.data, finishWrite: true },
  ]);
  await unary(clients.cas, 'BatchReadBlobs', { digests: [written.digest] });

  const m = await scrape(serverMetrics);
  assert.equal(m.value('reapi_actions_total', { outcome: 'ok' }), 1);
  for (const outcome of ['nonzero_exit', 'timeout', 'cancelled', 'error']) assert.equal(m.value('reapi_actions_total', { outcome }), 0, outcome);
  assert.equal(m.value('reapi_running_actions'), 0);
  // Misses: the first Execute's lookup and the unknown digest; hits: GetActionResult and the second Execute.
  assert.equal(m.value('reapi_action_cache_lookups_total', { result: 'miss' }), 2);
  assert.equal(m.value('reapi_action_cache_lookups_total', { result: 'hit' }), 2);
  assert.equal(m.value('reapi_bytes_total', { direction: 'in', path: 'batch' }), uploadedBytes);
  assert.equal(m.value('reapi_bytes_total', { direction: 'out', path: 'bytestream' }), 'hello\n'.length);
  assert.equal(m.value('reapi_bytes_total', { direction: 'in', path: 'bytestream' }), written.data.length);
  assert.equal(m.value('reapi_bytes_total', { direction: 'out', path: 'batch' }), written.data.length);
  const calls: [string, string, number][] = [
    ['BatchUpdateBlobs', 'OK', 1],
    ['Execute', 'OK', 2],
    ['GetActionResult', 'OK', 1],
    ['GetActionResult', 'NOT_FOUND', 1],
    ['Read', 'OK', 1],
    ['Write', 'OK', 1],
    ['BatchReadBlobs', 'OK', 1],
  ];
  for (const [method, code, n] of calls) assert.equal(m.value('reapi_grpc_requests_total', { method, code }), n, `${method} ${code}`);
  for (const stage of ['queued', 'fetch', 'slot_wait', 'execute', 'upload']) {
    assert.equal(m.value('reapi_action_stage_seconds_count', { stage }), 1, `stage ${stage}`);
    assert.ok(m.value('reapi_action_stage_seconds_sum', { stage })! >= 0);
  }
  assert.ok(m.has('process_cpu_user_seconds_total'), 'the process metrics are there too');
});

test('the queue gauge counts an action waiting for a pool that has no worker, per platform queue', async () => {
  const action = buildAction({ args: ['true'], platform: [{ name: 'pool', value: 'nobody-serves-this' }], salt: randomUUID() });
  await upload(clients.cas, action.blobs);
  const call = exec.Execute({ actionDigest: action.actionDigest });
  const stream = call as AsyncIterable<longrunning.Operation>;
  const firstOp = decodeOperation((await stream[Symbol.asyncIterator]().next()).value as longrunning.Operation);
  assert.equal(firstOp.stage, 'QUEUED');
  assert.equal((await scrape(serverMetrics)).value('reapi_queue_waiting_actions', { queue: 'pool=nobody-serves-this' }), 1);
  await unary(ops, 'CancelOperation', { name: firstOp.name });
  call.cancel();
  assert.equal((await scrape(serverMetrics)).value('reapi_queue_waiting_actions', { queue: 'pool=nobody-serves-this' }), 0);
});

test('a standalone worker serves its own metrics and checks its server, Redis, work dir and Docker', async () => {
  worker = await startWorkerProcess({ server: server.address, redis: redis.url, name: 'observed-worker', args: ['--concurrency', '1', '--metrics-listen', '127.0.0.1:0'] });
  workerMetrics = metricsAddress(worker.stdout());
  const m = await scrape(workerMetrics);
  assert.equal(m.value('reapi_running_actions'), 0);
  assert.equal(m.value('reapi_actions_total', { outcome: 'ok' }), 0);
  assert.ok(m.has('reapi_action_stage_seconds_bucket'));
  assert.ok(!m.has('reapi_grpc_requests_total'), 'a worker serves no gRPC: no server metrics');
  assert.ok(!m.has('reapi_queue_waiting_actions'), 'queue depth is the servers’ to report');
  assert.equal((await get(workerMetrics, '/healthz')).status, 200);
  const ready = await readyz(workerMetrics);
  assert.equal(ready.status, 200);
  assert.deepEqual(ready.body, { ready: true, failing: [], checks: { server: 'ok', redis: 'ok', workdir: 'ok', docker: 'ok' } });
});

test('while Redis is down /readyz answers 503 naming redis, /healthz and /metrics still answer; once it is back, 200', async () => {
  const { port } = redis;
  await redis.stop();
  for (const address of [serverMetrics, workerMetrics]) {
    const down = await eventually(() => readyz(address), (r) => r.status === 503, `${address} /readyz turns 503 without Redis`);
    assert.equal(down.body.ready, false);
    assert.deepEqual(down.body.failing, ['redis']);
    assert.match(down.body.checks.redis, /Redis at redis:\/\/127\.0\.0\.1:\d+/);
    assert.equal((await get(address, '/healthz')).status, 200, 'alive, just not ready');
  }
  const m = await scrape(serverMetrics);
  assert.ok(!m.has('reapi_queue_waiting_actions'), 'no stale queue depth while the queue does not answer');
  assert.ok(m.has('reapi_grpc_requests_total'));

  redis = await startRedis({ port });
  for (const address of [serverMetrics, workerMetrics]) {
    const back = await eventually(() => readyz(address), (r) => r.status === 200, `${address} /readyz turns 200 once Redis is back`);
    assert.equal(back.body.checks.redis, 'ok');
  }
});

test("a worker whose server is gone is not ready, and says it's the server", async () => {
  await server.stop();
  const down = await eventually(() => readyz(workerMetrics), (r) => r.status === 503, 'worker /readyz turns 503 without its server');
  assert.deepEqual(down.body.failing, ['server']);
  assert.match(down.body.checks.server, /reapi server grpc:\/\/127\.0\.0\.1:\d+ does not answer/);
});
