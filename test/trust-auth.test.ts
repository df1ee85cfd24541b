// Token authentication over real gRPC against a real farm in processes: Redis, one
// `reapi serve --redis --worker off --no-ac-updates --tokens FILE` and, for the last tests, a
// standalone `reapi worker` with a token of the role "worker". That is the "trust only results of
// actions this farm executed" mode: clients may not write the ActionCache, workers may.
import test, { after, before } from 'node:test';
import assert from 'node:assert/strict';
import * as grpc from '@grpc/grpc-js';
import { randomBytes, randomUUID } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { longrunning } from '../apis';
import {
  ActionCacheService,
  ByteStreamService,
  CapabilitiesService,
  CasService,
  ExecutionService,
  OperationsService,
  allServices,
  createClient,
  unary,
} from '../apis/services';
import { digestOf } from '../cas/digest';
import { readResourceName, writeResourceName } from '../cas/resource-name';
import { hashToken } from '../server/auth-tokens';
import { buildAction, decodeOperation, executeToEnd, upload } from './helpers/actions';
import { readAll, statusOf, writeStream } from './helpers/clients';
import { TestRedis, startRedis } from './helpers/redis';
import { ServerProcess, WorkerProcess, startServerProcess, startWorkerProcess, tempDir } from './helpers/server-process';
import { bearerToken } from '../worker/server-connection';

const { UNAUTHENTICATED, PERMISSION_DENIED, FAILED_PRECONDITION, OK } = grpc.status;

/** The tokens, in clear text only here: the server's file holds their hashes. */
const TOKENS = {
  /** Default instance and team-a; may Execute; may write the ActionCache, but --no-ac-updates overrides that. */
  teamA: `team-a-${randomBytes(16).toString('hex')}`,
  /** team-b only, may Execute. */
  teamB: `team-b-${randomBytes(16).toString('hex')}`,
  /** team-a, but neither Execute nor UpdateActionResult. */
  reader: `reader-${randomBytes(16).toString('hex')}`,
  /** The farm's workers. */
  worker: `worker-${randomBytes(16).toString('hex')}`,
};

const tokensFile = {
  tokens: [
    { name: 'team-a', token: hashToken(TOKENS.teamA), instances: ['', 'team-a'], execute: true, updateActionCache: true },
    { name: 'team-b', token: hashToken(TOKENS.teamB), instances: ['team-b'], execute: true },
    { name: 'reader', token: hashToken(TOKENS.reader), instances: ['team-a'] },
    // Not the default instance: the worker must get along with a token for the instances it serves.
    { name: 'farm-workers', token: hashToken(TOKENS.worker), instances: ['team-a'], role: 'worker' },
  ],
};

let redis: TestRedis;
let server: ServerProcess;
let dir: string;
const workers: WorkerProcess[] = [];
const opened: { close(): void }[] = [];

before(async () => {
  redis = await startRedis();
  dir = tempDir('trust-auth');
  const file = path.join(dir, 'tokens.json');
  await fs.writeFile(file, JSON.stringify(tokensFile, null, 2));
  server = await startServerProcess({ args: ['--redis', redis.url, '--worker', 'off', '--no-ac-updates', '--tokens', file] });
});

after(async () => {
  for (const c of opened) c.close();
  await Promise.all(workers.map((w) => w.stop()));
  await server?.stop();
  await redis?.stop();
  if (dir) await fs.rm(dir, { recursive: true, force: true });
});


/** Clients of every service that present `token` (none when undefined). */
function clientsAs(token: string | undefined) {
  const options: grpc.ClientOptions = { interceptors: token === undefined ? [] : [bearerToken(token)] };
  const clients = {
    caps: createClient(CapabilitiesService, server.address, undefined, options),
    cas: createClient(CasService, server.address, undefined, options),
    ac: createClient(ActionCacheService, server.address, undefined, options),
    bs: createClient(ByteStreamService, server.address, undefined, options),
    exec: createClient(ExecutionService, server.address, undefined, options),
    ops: createClient(OperationsService, server.address, undefined, options),
    close() {
      for (const c of [this.caps, this.cas, this.ac, this.bs, this.exec, this.ops]) c.close();
    },
  };
  opened.push(clients);
  return clients;
}

/** One call of any method with an empty request; resolves with the status it ended with. */
function callOnce(client: grpc.Client, def: grpc.MethodDefinition<object, unknown>): Promise<grpc.status> {
  return new Promise((resolve) => {
    const done = (err: grpc.ServiceError | null) => resolve(err ? err.code : OK);
    if (!def.requestStream && !def.responseStream) {
      client.makeUnaryRequest(def.path, def.requestSerialize, def.responseDeserialize, {}, done);
    } else if (!def.requestStream) {
      const call = client.makeServerStreamRequest(def.path, def.requestSerialize, def.responseDeserialize, {});
      call.on('data', () => undefined);
      call.on('error', done);
      call.on('end', () => done(null));
    } else {
      client.makeClientStreamRequest(def.path, def.requestSerialize, def.responseDeserialize, done).end();
    }
  });
}

type Refusal = { method: string; peer: string; code: string; reason: string };

function refusals(): Refusal[] {
  return server
    .stderr()
    .split('\n')
    .filter((l) => l.includes('"msg":"request refused"'))
    .map((l) => JSON.parse(l));
}

/**
 * The refusals logged since `from`, once there are at least `count`: the server writes each line
 * before it answers, but this process may read its stderr only after the answer arrived.
 */
async function loggedRefusals(from: number, count: number): Promise<Refusal[]> {
  for (let waited = 0; refusals().length - from < count && waited < 10_000; waited += 20) await new Promise((r) => setTimeout(r, 20));
  return refusals().slice(from);
}

/** An action and its blobs uploaded to `instance` by `clients`. */
async function uploadedAction(clients: ReturnType<typeof clientsAs>, instance: string, args: string[], salt: string) {
  const action = buildAction({ args, salt });
  await upload(clients.cas, action.blobs, instance);
  return action;
}

test('without a token, or with an unknown one, every method of every service is UNAUTHENTICATED', async () => {
  const before = refusals().length;
  const anonymous = { interceptors: [] as grpc.Interceptor[] };
  const impostor = { interceptors: [bearerToken(`not-a-token-${randomUUID()}`)] };
  let calls = 0;
  for (const [label, options] of [['no token', anonymous], ['unknown token', impostor]] as const) {
    for (const service of allServices) {
      const client = new service.Client(server.address, grpc.credentials.createInsecure(), options);
      try {
        for (const [name, def] of Object.entries(service.definition as grpc.ServiceDefinition)) {
          assert.equal(await callOnce(client, def), UNAUTHENTICATED, `${label}: ${service.serviceName}/${name}`);
          calls++;
        }
      } finally {
        client.close();
      }
    }
  }
  // One warn line per refused call, naming method and peer; the reason says what to send.
  const logged = await loggedRefusals(before, calls);
  assert.equal(logged.length, calls);
  for (const r of logged) {
    assert.equal(r.code, 'UNAUTHENTICATED');
    assert.ok(r.method && r.peer.includes('127.0.0.1'), JSON.stringify(r));
  }
  assert.ok(logged.some((r) => r.method === 'Write' && /requires a token/.test(r.reason)));
  assert.ok(logged.some((r) => r.method === 'WaitOperation' && /not valid/.test(r.reason)));
});

test('the refusal tells the client what to send', async () => {
  const anonymous = clientsAs(undefined);
  await assert.rejects(unary(anonymous.caps, 'GetCapabilities', {}), (err: grpc.ServiceError) => {
    assert.equal(err.code, UNAUTHENTICATED);
    assert.match(err.details, /authorization: Bearer <token>.*--remote_header=Authorization=Bearer/);
    return true;
  });
  const basic = new grpc.Metadata();
  basic.set('authorization', `Basic ${Buffer.from(`u:${TOKENS.teamA}`).toString('base64')}`);
  await assert.rejects(unary(anonymous.caps, 'GetCapabilities', {}, basic), (err: grpc.ServiceError) => err.code === UNAUTHENTICATED && /not "Bearer <token>"/.test(err.details));
});

test("a token may use its instances and nothing of another instance's, ByteStream included", async () => {
  const before = refusals().length;
  const a = clientsAs(TOKENS.teamA);
  const b = clientsAs(TOKENS.teamB);
  const secret = Buffer.from(`team-a secret ${randomUUID()}\n`);
  const digest = digestOf(secret);
  await upload(a.cas, [{ digest, data: secret }], 'team-a');
  assert.deepEqual(await readAll(a.bs, { resourceName: readResourceName('team-a', digest) }), secret);

  const denied = async (what: string, call: Promise<unknown>) => assert.equal(await statusOf(call), PERMISSION_DENIED, what);
  await denied('GetCapabilities', unary(b.caps, 'GetCapabilities', { instanceName: 'team-a' }));
  await denied('FindMissingBlobs', unary(b.cas, 'FindMissingBlobs', { instanceName: 'team-a', blobDigests: [digest] }));
  await denied('BatchReadBlobs', unary(b.cas, 'BatchReadBlobs', { instanceName: 'team-a', digests: [digest] }));
  await denied('BatchUpdateBlobs', unary(b.cas, 'BatchUpdateBlobs', { instanceName: 'team-a', requests: [{ digest, data: secret }] }));
  await denied('GetActionResult', unary(b.ac, 'GetActionResult', { instanceName: 'team-a', actionDigest: digest }));
  await denied('ByteStream Read', readAll(b.bs, { resourceName: readResourceName('team-a', digest) }));
  await denied('ByteStream Write', writeStream(b.bs, [{ resourceName: writeResourceName('team-a', randomUUID(), digest), data: secret, finishWrite: true }]));
  await denied('QueryWriteStatus', unary(b.bs, 'QueryWriteStatus', { resourceName: writeResourceName('team-a', randomUUID(), digest) }));
  // The default instance is not team-b's either.
  await denied('ByteStream Read of ""', readAll(b.bs, { resourceName: readResourceName('', digest) }));

  // team-b's own instance works, and is a namespace of its own: the blob is not there.
  const missing = await unary(b.cas, 'FindMissingBlobs', { instanceName: 'team-b', blobDigests: [digest] });
  assert.equal(missing.missingBlobDigests.length, 1);
  await writeStream(b.bs, [{ resourceName: writeResourceName('team-b', randomUUID(), digest), data: secret, finishWrite: true }]);
  assert.deepEqual(await readAll(b.bs, { resourceName: readResourceName('team-b', digest) }), secret);

  const logged = (await loggedRefusals(before, 9)).filter((r) => r.code === 'PERMISSION_DENIED' && r.method === 'Read');
  assert.ok(logged.some((r) => r.reason === 'token "team-b" may not use instance "team-a"'), JSON.stringify(logged));
});

test('UpdateActionResult: refused without the permission, refused for clients with --no-ac-updates, accepted from a worker', async () => {
  const reader = clientsAs(TOKENS.reader);
  const a = clientsAs(TOKENS.teamA);
  const farm = clientsAs(TOKENS.worker);
  const stdout = Buffer.from(`result ${randomUUID()}\n`);
  await upload(a.cas, [{ digest: digestOf(stdout), data: stdout }], 'team-a');
  const actionDigest = digestOf(Buffer.from(`an action ${randomUUID()}`));
  const request = { instanceName: 'team-a', actionDigest, actionResult: { exitCode: 0, stdoutDigest: digestOf(stdout) } };

  await assert.rejects(unary(reader.ac, 'UpdateActionResult', request), (err: grpc.ServiceError) => {
    assert.equal(err.code, PERMISSION_DENIED);
    assert.equal(err.details, 'token "reader" may not write the ActionCache (UpdateActionResult) of instance "team-a"');
    return true;
  });
  // team-a may write by its token, but the operator turned client writes off for everyone.
  assert.equal(await statusOf(unary(a.ac, 'UpdateActionResult', request)), FAILED_PRECONDITION);
  assert.equal(await statusOf(unary(a.ac, 'GetActionResult', { instanceName: 'team-a', actionDigest })), grpc.status.NOT_FOUND);

  await unary(farm.ac, 'UpdateActionResult', request);
  const cached = await unary(a.ac, 'GetActionResult', { instanceName: 'team-a', actionDigest });
  assert.equal(cached.stdoutDigest?.hash, digestOf(stdout).hash);

  // Capabilities tell each caller whether it may write results.
  const updateEnabled = async (c: ReturnType<typeof clientsAs>) =>
    (await unary(c.caps, 'GetCapabilities', { instanceName: 'team-a' })).cacheCapabilities?.actionCacheUpdateCapabilities?.updateEnabled;
  assert.equal(await updateEnabled(reader), false);
  assert.equal(await updateEnabled(a), false);
  assert.equal(await updateEnabled(farm), true);
});

test('Execute needs the execute permission on the instance', async () => {
  const reader = clientsAs(TOKENS.reader);
  const b = clientsAs(TOKENS.teamB);
  const a = clientsAs(TOKENS.teamA);
  const action = await uploadedAction(a, 'team-a', ['true'], `execute-permission-${randomUUID()}`);
  for (const [who, c] of [['reader', reader], ['team-b', b]] as const) {
    await assert.rejects(executeToEnd(c.exec, { instanceName: 'team-a', actionDigest: action.actionDigest }), (err: grpc.ServiceError) => {
      assert.equal(err.code, PERMISSION_DENIED, who);
      return true;
    });
  }
});

test("an operation belongs to its instance: another instance's token can't see, wait on, cancel or delete it", async () => {
  const a = clientsAs(TOKENS.teamA);
  const b = clientsAs(TOKENS.teamB);
  const reader = clientsAs(TOKENS.reader);
  // No worker runs yet: the operation stays queued while we look at it.
  const action = await uploadedAction(a, 'team-a', ['sh', '-c', 'echo queued'], `operation-${randomUUID()}`);
  const stream = a.exec.Execute({ instanceName: 'team-a', actionDigest: action.actionDigest });
  const name = await new Promise<string>((resolve, reject) => {
    stream.once('data', (op: longrunning.Operation) => resolve(decodeOperation(op).name));
    stream.once('error', reject);
  });
  stream.on('error', () => undefined); // the CANCELLED of our own cancel below
  stream.cancel();

  const denied = async (what: string, call: Promise<unknown>) => assert.equal(await statusOf(call), PERMISSION_DENIED, what);
  await denied('GetOperation', unary(b.ops, 'GetOperation', { name }));
  await denied('WaitOperation', unary(b.ops, 'WaitOperation', { name, timeout: { seconds: 1 } }));
  await denied('CancelOperation', unary(b.ops, 'CancelOperation', { name }));
  await denied('DeleteOperation', unary(b.ops, 'DeleteOperation', { name }));
  await denied('WaitExecution', (async () => {
    for await (const _ of b.exec.WaitExecution({ name }) as AsyncIterable<unknown>) assert.fail('WaitExecution sent an operation');
  })());
  const listedFor = async (c: ReturnType<typeof clientsAs>) =>
    (await unary(c.ops, 'ListOperations', { name: 'operations', pageSize: 1000 })).operations.map((o) => o.name);
  assert.ok(!(await listedFor(b)).includes(name), 'team-b does not see it in ListOperations');
  assert.ok((await listedFor(a)).includes(name), 'team-a does');

  // A token of the same instance sees it, but without execute may not cancel or delete it.
  assert.equal(decodeOperation(await unary(reader.ops, 'GetOperation', { name })).name, name);
  await denied('CancelOperation by reader', unary(reader.ops, 'CancelOperation', { name }));
  await denied('DeleteOperation by reader', unary(reader.ops, 'DeleteOperation', { name }));

  await unary(a.ops, 'CancelOperation', { name });
  const cancelled = decodeOperation(await unary(a.ops, 'GetOperation', { name }));
  assert.equal(cancelled.done, true);
  assert.equal(cancelled.response?.status?.code, grpc.status.CANCELLED);
});

test('a worker without a token is refused at start, with a message that says why', async () => {
  await assert.rejects(
    startWorkerProcess({ server: server.address, redis: redis.url, name: 'worker-without-token' }),
    (err: Error) => /does not accept this worker: this server requires a token/.test(err.message),
  );
});

test("a standalone worker with a worker token completes actions whose results are cached, though clients can't UpdateActionResult", async () => {
  const tokenFile = path.join(dir, 'worker.token');
  await fs.writeFile(tokenFile, `${TOKENS.worker}\n`);
  workers.push(await startWorkerProcess({ server: server.address, redis: redis.url, name: 'trusted-worker', args: ['--token-file', tokenFile, '--concurrency', '2'] }));

  const a = clientsAs(TOKENS.teamA);
  const marker = randomUUID();
  const action = await uploadedAction(a, 'team-a', ['sh', '-c', `echo ran-on-the-farm ${marker}`], `farm-${marker}`);
  const response = await executeToEnd(a.exec, { instanceName: 'team-a', actionDigest: action.actionDigest });
  assert.equal(response.status?.code ?? 0, 0, `${response.status?.message}\nworker stderr:\n${workers[0].stderr()}`);
  assert.equal(response.cachedResult, false);
  assert.equal(response.result?.executionMetadata?.worker, 'trusted-worker');

  // The worker stored the result with UpdateActionResult under its token: it is in the cache.
  const cached = await unary(a.ac, 'GetActionResult', { instanceName: 'team-a', actionDigest: action.actionDigest, inlineStdout: true });
  assert.equal(Buffer.from(cached.stdoutRaw).toString(), `ran-on-the-farm ${marker}\n`);
  const again = await executeToEnd(a.exec, { instanceName: 'team-a', actionDigest: action.actionDigest });
  assert.equal(again.cachedResult, true);

  // The same token from the environment works too.
  workers.push(await startWorkerProcess({ server: server.address, redis: redis.url, name: 'env-token-worker', env: { REAPI_TOKEN: TOKENS.worker } }));
});

test('the server refuses to start on a tokens file that holds a token instead of its hash, or a misspelt permission', async () => {
  const start = async (entry: object) => {
    const file = path.join(dir, `bad-${randomUUID()}.json`);
    await fs.writeFile(file, JSON.stringify({ tokens: [entry] }));
    return startServerProcess({ args: ['--worker', 'off', '--tokens', file] });
  };
  await assert.rejects(start({ name: 'plain', token: 'a-token-in-clear', instances: ['*'] }), /"token" must be "sha256:<64 hex digits>".*never the token itself/);
  await assert.rejects(start({ name: 'typo', token: hashToken('x'), instances: ['*'], excute: true }), /unknown key\(s\) excute/);
  await assert.rejects(start({ name: 'nowhere', token: hashToken('x'), instances: [] }), /"instances" must be a non-empty list/);
});

test('no token ever appears in the server log', () => {
  const log = server.stderr();
  for (const [name, token] of Object.entries(TOKENS)) assert.ok(!log.includes(token), `the ${name} token is in the log`);
  assert.ok(refusals().length > 0);
});
