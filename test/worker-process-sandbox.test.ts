// worker/sandbox/process-sandbox.ts (`reapi worker --sandbox process`, the in-pod mode) on this
// machine, for real: runners started as root run actions as unprivileged uids. Skipped, with the
// reason, when not root.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { status } from '@grpc/grpc-js';
import { ExecutionService, createClient } from '../apis/services';
import { RpcError } from '../server/rpc-error';
import { buildAction, executeToEnd, upload } from './helpers/actions';
import { clientsFor, readAll } from './helpers/clients';
import { startRedis, type TestRedis } from './helpers/redis';
import { startServerProcess, startWorkerProcess, type ServerProcess, type WorkerProcess } from './helpers/server-process';
import { createProcessSandbox } from '../worker/sandbox/process-sandbox';
import type { Sandbox, SandboxSlot, SlotRunRequest } from '../worker/sandbox/sandbox';
import { Ran, runInDir } from './helpers/sandbox-run';

const IMAGE = 'reapi-toolchain:bookworm';
/** Far from real users' uids, so the sweeps can hit nothing but this test's actions. */
const FIRST_UID = 41000 + (process.pid % 500) * 2;
const GID = 41000;

const skip = process.getuid?.() === 0 ? false : 'the process sandbox needs root (it switches actions to other uids)';

/** A directory under the exec root owned by the slot's user, as the pipeline makes them. */
function actionDir(execRoot: string, slot: SandboxSlot): string {
  const dir = fs.mkdtempSync(path.join(execRoot, 'action-'));
  fs.chownSync(dir, slot.user!.uid, slot.user!.gid);
  fs.chmodSync(dir, 0o755);
  return dir;
}

function runIn(slot: SandboxSlot, dir: string, argv: string[], extra: Partial<SlotRunRequest> = {}): Promise<Ran> {
  return runInDir((req) => slot.run(req), dir, argv, extra);
}

function isRunning(pid: number): boolean {
  return fs.existsSync(`/proc/${pid}`);
}

describe('process sandbox (in-pod mode)', { skip }, () => {
  let execRoot: string;
  let sandbox: Sandbox;

  /** Acquires a slot, runs one action in a fresh directory of its user, releases the slot. */
  const exec = async (argv: string[], extra: Partial<SlotRunRequest> = {}, prepare?: (dir: string) => void): Promise<Ran> => {
    const slot = await sandbox.acquire({ image: `docker://${IMAGE}` });
    try {
      const dir = actionDir(execRoot, slot);
      prepare?.(dir);
      return await runIn(slot, dir, argv, extra);
    } finally {
      await slot.release();
    }
  };

  before(async () => {
    execRoot = fs.mkdtempSync(path.join(os.tmpdir(), 'reapi-process-sandbox-test-'));
    fs.chmodSync(execRoot, 0o711);
    sandbox = await createProcessSandbox({ execRoot, image: IMAGE, slots: 2, firstUid: FIRST_UID, gid: GID });
  });

  after(async () => {
    await sandbox?.close();
    if (execRoot) fs.rmSync(execRoot, { recursive: true, force: true });
  });

  it('runs the action as its slot user, with no supplementary groups and no_new_privs', async () => {
    const ran = await exec(['sh', '-c', 'id -u; id -g; id -G; grep NoNewPrivs /proc/self/status; pwd']);
    assert.equal(ran.result.exitCode, 0, ran.stderr);
    const [uid, gid, groups, nnp, cwd] = ran.stdout.trim().split('\n');
    assert.ok([FIRST_UID, FIRST_UID + 1].includes(Number(uid)), `uid ${uid}`);
    assert.equal(gid, String(GID));
    assert.equal(groups, String(GID));
    assert.match(nnp!, /NoNewPrivs:\s+1/);
    assert.equal(cwd, ran.dir);
  });

  it('kills background and daemonized processes after the action, and keeps serving', async () => {
    const script = 'sleep 1000 & echo $! > bg.pid; setsid sh -c \'sleep 1000 & echo $! > daemon.pid; wait\' & sleep 0.2; true';
    const ran = await exec(['sh', '-c', script]);
    assert.equal(ran.result.exitCode, 0, ran.stderr);
    for (const name of ['bg.pid', 'daemon.pid']) {
      const pid = Number(fs.readFileSync(path.join(ran.dir, name), 'utf8').trim());
      assert.ok(pid > 0, name);
      assert.equal(isRunning(pid), false, `${name} (${pid}) survived the action`);
    }
    assert.equal((await exec(['true'])).result.exitCode, 0);
  });

  it("does not kill another slot's running action when it sweeps", async () => {
    const slowSlot = await sandbox.acquire({ image: IMAGE });
    try {
      const dir = actionDir(execRoot, slowSlot);
      fs.chmodSync(dir, 0o777); // the test (root) drops the go file in here
      const slow = runIn(slowSlot, dir, ['sh', '-c', 'touch started; while [ ! -e go ]; do sleep 0.02; done; echo finished']);
      while (!fs.existsSync(path.join(dir, 'started'))) await new Promise((r) => setTimeout(r, 10));
      const quick = await exec(['sh', '-c', 'sleep 1000 & true']); // the other slot: its sweep runs now
      assert.equal(quick.result.exitCode, 0);
      fs.writeFileSync(path.join(dir, 'go'), '');
      const ran = await slow;
      assert.equal(ran.result.exitCode, 0, `the waiting action was killed: ${JSON.stringify(ran.result)}`);
      assert.equal(ran.stdout, 'finished\n');
    } finally {
      await slowSlot.release();
    }
  });

  it("cannot write the cache's root-owned read-only files linked into its input root", async () => {
    const cacheDir = fs.mkdtempSync(path.join(execRoot, 'cache-'));
    const cached = path.join(cacheDir, 'blob');
    fs.writeFileSync(cached, 'original\n');
    fs.chmodSync(cached, 0o444);
    const ran = await exec(
      ['sh', '-c', 'echo changed > input.txt; echo "write=$?"; chmod 666 input.txt; echo "chmod=$?"; echo changed >> input.txt; echo "append=$?"'],
      {},
      (dir) => fs.linkSync(cached, path.join(dir, 'input.txt')),
    );
    assert.match(ran.stdout, /write=[1-9]/);
    assert.match(ran.stdout, /chmod=[1-9]/);
    assert.match(ran.stdout, /append=[1-9]/);
    assert.equal(fs.readFileSync(cached, 'utf8'), 'original\n');
    assert.equal(fs.statSync(cached).mode & 0o7777, 0o444);
  });

  it('kills an action that exceeds its timeout, with what it started', async () => {
    const ran = await exec(['sh', '-c', 'sleep 1000 & echo $! > bg.pid; sleep 1000'], { timeoutMs: 300 });
    assert.equal(ran.result.timedOut, true);
    assert.equal(ran.result.signal, 'SIGKILL');
    const pid = Number(fs.readFileSync(path.join(ran.dir, 'bg.pid'), 'utf8').trim());
    assert.equal(isRunning(pid), false);
  });

  it("removes what the action left in /tmp, and nothing of anyone else's", async () => {
    const mine = fs.mkdtempSync(path.join(os.tmpdir(), 'reapi-worker-own-'));
    const name = `reapi-left-by-action-${process.pid}`;
    const ran = await exec(['sh', '-c', `mkdir /tmp/${name} && echo x > /tmp/${name}/f`]);
    assert.equal(ran.result.exitCode, 0, ran.stderr);
    assert.equal(fs.existsSync(path.join('/tmp', name)), false);
    assert.equal(fs.existsSync(mine), true);
    fs.rmSync(mine, { recursive: true });
  });

  it('refuses actions that name another container image', async () => {
    await assert.rejects(sandbox.acquire({ image: 'docker://debian:bookworm' }), (err: unknown) => {
      assert.ok(err instanceof RpcError);
      assert.equal(err.code, status.INVALID_ARGUMENT);
      assert.match(err.message, /runs actions directly in its own image/);
      return true;
    });
  });

  it('gives InputRootAbsolutePath only a path that is free on the pod, and removes it afterwards', async () => {
    const free = `/reapi-input-root-test-${process.pid}/src`;
    const slot = await sandbox.acquire({ image: IMAGE, inputRootAbsolutePath: free });
    try {
      assert.deepEqual(slot.inputRoot, { hostPath: free, containerPath: free });
      fs.chownSync(free, slot.user!.uid, slot.user!.gid);
      const dir = actionDir(execRoot, slot);
      const ran = await runIn(slot, dir, ['sh', '-c', 'pwd; echo out > made'], { cwd: free });
      assert.equal(ran.result.exitCode, 0, ran.stderr);
      assert.equal(ran.stdout, `${free}\n`);
      assert.equal(fs.readFileSync(path.join(free, 'made'), 'utf8'), 'out\n');
    } finally {
      await slot.release();
    }
    assert.equal(fs.existsSync(path.dirname(free)), false);

    const taken = fs.mkdtempSync('/reapi-taken-');
    try {
      await assert.rejects(sandbox.acquire({ image: IMAGE, inputRootAbsolutePath: taken }), (err: unknown) => {
        assert.ok(err instanceof RpcError);
        assert.equal(err.code, status.INVALID_ARGUMENT);
        assert.match(err.message, /already exists on this worker.*share the worker pod's filesystem/);
        return true;
      });
    } finally {
      fs.rmSync(taken, { recursive: true });
    }
  });
});

describe('reapi worker --sandbox process, end to end', { skip }, () => {
  const actionUid = FIRST_UID + 100;
  let redis: TestRedis;
  let server: ServerProcess;
  let worker: WorkerProcess;

  before(async () => {
    redis = await startRedis();
    server = await startServerProcess({ args: ['--redis', redis.url, '--worker', 'off'] });
    worker = await startWorkerProcess({
      server: server.address,
      redis: redis.url,
      name: 'in-pod-worker',
      args: ['--sandbox', 'process', '--sandbox-uid', String(actionUid), '--concurrency', '2', '--image', IMAGE],
    });
  });

  after(async () => {
    assert.equal(await worker?.stop(), 0, worker?.stderr());
    await server?.stop();
    await redis?.stop();
  });

  it('runs an action from the queue as a slot uid and stores its outputs', async () => {
    const clients = clientsFor(server.address);
    const exec = createClient(ExecutionService, server.address);
    try {
      const action = buildAction({
        args: ['sh', '-c', 'id -u > out/uid; tr a-z A-Z < in.txt > out/upper; sleep 1000 &'],
        inputs: { 'in.txt': 'hello\n' },
        outputPaths: ['out/uid', 'out/upper'],
        salt: `process-e2e-${process.pid}`,
      });
      await upload(clients.cas, action.blobs);
      const response = await executeToEnd(exec, { actionDigest: action.actionDigest, skipCacheLookup: true });
      assert.equal(response.status?.code ?? 0, 0, response.status?.message);
      const result = response.result!;
      assert.equal(result.exitCode, 0);
      assert.equal(result.executionMetadata?.worker, 'in-pod-worker');
      const output = async (name: string) => {
        const file = result.outputFiles.find((f) => f.path === name)!;
        return (await readAll(clients.bs, { resourceName: `blobs/${file.digest!.hash}/${file.digest!.sizeBytes}` })).toString();
      };
      assert.equal(await output('out/upper'), 'HELLO\n');
      assert.ok([actionUid, actionUid + 1].includes(Number((await output('out/uid')).trim())));
    } finally {
      exec.close();
      clients.close();
    }
  });

  it('answers an action for another container image with INVALID_ARGUMENT', async () => {
    const clients = clientsFor(server.address);
    const exec = createClient(ExecutionService, server.address);
    try {
      const action = buildAction({ args: ['true'], image: 'docker://debian:bookworm', salt: `other-image-${process.pid}` });
      await upload(clients.cas, action.blobs);
      const response = await executeToEnd(exec, { actionDigest: action.actionDigest, skipCacheLookup: true });
      assert.equal(response.status?.code, status.INVALID_ARGUMENT, response.status?.message);
      assert.match(response.status?.message ?? '', /runs actions directly in its own image/);
    } finally {
      exec.close();
      clients.close();
    }
  });
});
