// A worker executes --concurrency actions at once and stages the inputs of --stage-ahead more
// meanwhile: checked through `reapi serve` with one execute slot and one action staged ahead.
import test, { after, before } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import * as fs from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { unary } from '../apis/services';
import { farmClientsFor, readAll } from './helpers/clients';
import { ServerProcess, startServerProcess } from './helpers/server-process';
import { BuiltAction, Response, buildAction, collect, decodeOperation, executeToEnd, millis, upload } from './helpers/actions';

let server: ServerProcess;
let clients: ReturnType<typeof farmClientsFor>;

before(async () => {
  server = await startServerProcess({ args: ['--worker', 'on', '--concurrency', '1', '--stage-ahead', '1'] });
  clients = farmClientsFor(server.address);
  // Both containers warm, so what the tests see is staging, not container start-up.
  const warm = await Promise.all([1, 2].map(() => uploaded({ args: ['true'], doNotCache: true })));
  await Promise.all(warm.map((a) => executeToEnd(clients.exec, { actionDigest: a.actionDigest })));
});

after(async () => {
  clients.close();
  await server.stop();
});

async function uploaded(spec: Omit<Parameters<typeof buildAction>[0], 'salt'>): Promise<BuiltAction> {
  const action = buildAction({ ...spec, salt: randomUUID() });
  await upload(clients.cas, action.blobs);
  return action;
}

async function stdout(r: Response): Promise<string> {
  const d = r.result!.stdoutDigest!;
  return (await readAll(clients.bs, { resourceName: `blobs/${d.hash}/${d.sizeBytes}` })).toString();
}

/** The name of the operation an Execute call starts, and the call's whole stream. */
async function started(action: BuiltAction): Promise<{ name: string; done: Promise<Response> }> {
  const stream = clients.exec.Execute({ actionDigest: action.actionDigest });
  const all = collect(stream);
  const name = await new Promise<string>((resolve, reject) => {
    stream.once('data', (op) => resolve(decodeOperation(op).name));
    stream.once('error', reject);
  });
  const done = all.then((list) => {
    const last = list[list.length - 1];
    if (!last?.done || !last.response) throw new Error(`Execute ended without a done operation: ${JSON.stringify(list.map((o) => o.stage))}`);
    return last.response;
  });
  return { name, done };
}

test('the next action is staged while one executes, and executes after it', async () => {
  const [a, b] = await Promise.all([
    uploaded({ args: ['sh', '-c', 'sleep 2; cat a.txt'], inputs: { 'a.txt': 'from a\n' }, doNotCache: true }),
    uploaded({ args: ['sh', '-c', 'sleep 2; cat b.txt'], inputs: { 'b.txt': 'from b\n' }, doNotCache: true }),
  ]);
  const results = await Promise.all([a, b].map((action) => executeToEnd(clients.exec, { actionDigest: action.actionDigest })));
  assert.deepEqual(await Promise.all(results.map(stdout)), ['from a\n', 'from b\n']);
  const [first, second] = results.map((r) => r.result!.executionMetadata!).sort((x, y) => millis(x.executionStartTimestamp) - millis(y.executionStartTimestamp));
  assert.ok(
    millis(second.inputFetchCompletedTimestamp) < millis(first.executionCompletedTimestamp),
    'the second action was staged while the first executed',
  );
  assert.ok(
    millis(second.executionStartTimestamp) >= millis(first.executionCompletedTimestamp),
    'with one execute slot, the second executed after the first',
  );
});

test('an action cancelled while staged never executes, and the slot serves the next one', async () => {
  // The blocker marks its input root once it executes: only then is the victim sure to be
  // staged behind it rather than racing it for the slot.
  const marker = `executing-${randomUUID()}`;
  const blocker = await uploaded({ args: ['sh', '-c', `touch ${marker}; sleep 5; echo blocker`], doNotCache: true });
  const victim = await uploaded({ args: ['sh', '-c', 'echo victim'], doNotCache: true });
  const running = await started(blocker);
  let blockerDone = false;
  void running.done.finally(() => (blockerDone = true)).catch(() => undefined);
  const marked = () => fs.readdirSync(server.dataDir, { recursive: true }).some((p) => String(p).endsWith(marker));
  while (!blockerDone && !marked()) await new Promise((r) => setTimeout(r, 50));
  assert.ok(!blockerDone, 'the blocker was still executing when the victim came');
  const staged = await started(victim);
  // Taken by the worker (staged, waiting for the slot) rather than queued.
  let stage = '';
  for (let i = 0; i < 400 && stage !== 'EXECUTING'; i++) {
    stage = decodeOperation(await unary(clients.ops, 'GetOperation', { name: staged.name })).stage;
    if (stage !== 'EXECUTING') await new Promise((r) => setTimeout(r, 50));
  }
  assert.equal(stage, 'EXECUTING', 'the worker took the second action while the first ran');
  await unary(clients.ops, 'CancelOperation', { name: staged.name });
  const cancelled = await staged.done;
  assert.equal(cancelled.status?.code, grpc.status.CANCELLED);
  assert.equal(cancelled.result?.executionMetadata?.executionStartTimestamp ?? undefined, undefined, 'it never executed');
  const blocked = await running.done;
  assert.equal(await stdout(blocked), 'blocker\n');
  const next = await uploaded({ args: ['sh', '-c', 'echo next'], doNotCache: true });
  assert.equal(await stdout(await executeToEnd(clients.exec, { actionDigest: next.actionDigest })), 'next\n');
});

test('--stage-ahead takes 0 or a positive count', async () => {
  await assert.rejects(startServerProcess({ args: ['--worker', 'on', '--stage-ahead', 'two'] }), /--stage-ahead must be 0 or a positive integer, not "two"/);
});
