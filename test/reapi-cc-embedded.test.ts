// reapi-cc with no server named: the farm (storage, action cache, scheduler, Docker worker) runs
// inside reapi-cc. The same objects as a local build, hits after `make clean`, two builds at once
// on one state directory, each with a worker directory of its own, and ^C in the middle.
import test, { after, before } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { REPO_ROOT, tempDir } from './helpers/server-process';

const REAPI_CC = path.join(REPO_ROOT, 'dist', 'client', 'reapi-cc.js');
const FIXTURE = path.join(REPO_ROOT, 'test', 'fixtures', 'kbuild-mini');
const OUTPUTS = ['app/main.o', 'lib/util.o', 'lib/math.o', 'lib/asm.o', 'tools/objtool/objtool.o', 'app/.main.o.cmd', 'lib/.util.o.cmd'];

const { claimNumberedWorkDir, lockWorkDir } = require(path.join(REPO_ROOT, 'dist', 'worker', 'work-dir-lock.js')) as typeof import('../worker/work-dir-lock');

let trees: string[];
let stateDir: string;

before(() => {
  // Not under /tmp: the worker mounts the input root at the tree's own path, and refuses
  // system directories of the image (/tmp included) as that path.
  const parent = path.join(REPO_ROOT, 'dist', 'test-trees');
  fs.mkdirSync(parent, { recursive: true });
  trees = [0, 1].map(() => {
    const tree = fs.mkdtempSync(path.join(parent, 'kbuild-embedded-'));
    fs.cpSync(FIXTURE, tree, { recursive: true });
    return tree;
  });
  stateDir = tempDir('reapi-cc-embedded-state');
});

after(() => {
  for (const tree of trees) fs.rmSync(tree, { recursive: true, force: true });
});

/** The environment of a user who named no server. */
function env(): NodeJS.ProcessEnv {
  const e: NodeJS.ProcessEnv = { ...process.env, REAPI_CC_STATE: stateDir };
  delete e.REAPI_SERVER;
  return e;
}

function run(tree: string, file: string, args: string[]) {
  const r = spawnSync(file, args, { cwd: tree, env: env(), encoding: 'utf8' });
  assert.equal(r.status, 0, `${file} ${args.join(' ')}: exit ${r.status}\n${r.stdout}\n${r.stderr}`);
  return r;
}

function runAsync(tree: string, args: string[]): Promise<{ status: number | null; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [REAPI_CC, ...args], { cwd: tree, env: env(), stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d) => (stderr += d));
    child.on('close', (status) => resolve({ status, stderr }));
  });
}

function sums(tree: string): Record<string, string> {
  return Object.fromEntries(OUTPUTS.map((p) => [p, createHash('sha256').update(fs.readFileSync(path.join(tree, p))).digest('hex')]));
}

function stats(tree: string): Record<string, number> {
  const text = run(tree, process.execPath, [REAPI_CC, '--stats']).stdout;
  const num = (label: string) => Number(new RegExp(`^\\s*${label}\\s+(\\d+)`, 'm').exec(text)?.[1]);
  return { hits: num('Hits'), remoteRuns: num('Remote runs'), localFallbacks: num('Local fallbacks') };
}

/** What reapi-cc recorded about each object's last action. */
function manifests(): { actionDigest: string; actionSize: number }[] {
  const dir = path.join(stateDir, 'manifests');
  return fs.readdirSync(dir).flatMap((shard) =>
    fs.readdirSync(path.join(dir, shard)).map((f) => JSON.parse(fs.readFileSync(path.join(dir, shard, f), 'utf8'))),
  );
}

function poolContainers(): string[] {
  const out = spawnSync('docker', ['ps', '-aq', '--filter', 'label=reapi.pool'], { encoding: 'utf8' }).stdout;
  return out.split('\n').filter(Boolean);
}

let plain: Record<string, string>[];

test('with no server named, reapi-cc make runs every object in a farm of its own, with the bytes of a local build', () => {
  plain = trees.map((tree) => {
    run(tree, 'make', ['-j8']);
    const s = sums(tree);
    run(tree, 'make', ['clean']);
    return s;
  });
  const containersBefore = poolContainers().length;
  const r = run(trees[0], process.execPath, [REAPI_CC, 'make', '-j8']);
  assert.doesNotMatch(r.stderr, /warning/, r.stderr);
  assert.deepEqual(sums(trees[0]), plain[0]);
  assert.deepEqual(stats(trees[0]), { hits: 0, remoteRuns: 5, localFallbacks: 0 });
  assert.ok(fs.existsSync(path.join(stateDir, 'farm', 'workers', '0')), 'the farm keeps its data in the state directory');
  // The actions' own messages were held in memory while they ran, not stored; their results were.
  const store = path.join(stateDir, 'farm', 'instances', '_');
  const actions = manifests().map((m) => ({ hash: m.actionDigest, sizeBytes: m.actionSize }));
  assert.equal(actions.length, 5);
  for (const a of actions) {
    assert.ok(fs.existsSync(path.join(store, 'ac', a.hash.slice(0, 2), `${a.hash}-${a.sizeBytes}`)), `a cached result for action ${a.hash}`);
    assert.equal(fs.existsSync(path.join(store, 'cas', a.hash.slice(0, 2), a.hash)), false, `no stored Action ${a.hash}`);
  }
  assert.equal(poolContainers().length, containersBefore, 'the worker removed its containers when reapi-cc ended');
  assert.deepEqual(fs.readdirSync(path.join(stateDir, 'farm', 'workers')), ['0'], 'and released its worker directory');
});

test('after make clean every object comes from the embedded farm\'s cache', () => {
  run(trees[0], 'make', ['clean']);
  run(trees[0], process.execPath, [REAPI_CC, '--zero-stats']);
  run(trees[0], process.execPath, [REAPI_CC, 'make', '-j8']);
  assert.deepEqual(sums(trees[0]), plain[0]);
  assert.deepEqual(stats(trees[0]), { hits: 5, remoteRuns: 0, localFallbacks: 0 });
});

test('two builds at once on one state directory both run remotely, each in a worker directory of its own', async () => {
  for (const tree of trees) run(tree, 'make', ['clean']);
  // A flag change: the C objects of both trees miss the cache, so both builds start a worker.
  for (const tree of trees) fs.appendFileSync(path.join(tree, 'Makefile.vars'), 'CFLAGS += -DEMBEDDED_TWICE\n');
  const results = await Promise.all(trees.map((tree) => runAsync(tree, ['make', '-j8'])));
  for (const [i, r] of results.entries()) {
    assert.equal(r.status, 0, r.stderr);
    assert.doesNotMatch(r.stderr, /warning/, `build ${i} fell back to a local build:\n${r.stderr}`);
  }
  for (const [i, tree] of trees.entries()) {
    const remote = sums(tree);
    assert.notDeepEqual(remote, plain[i], 'the flag changed the objects');
    run(tree, 'make', ['clean']);
    run(tree, 'make', ['-j8']);
    assert.deepEqual(remote, sums(tree), `tree ${i}: the bytes of a local build`);
  }
});

test('^C during a build: make stops at once, and the actions of its killed recipes are cancelled, not finished for nobody', async () => {
  const tree = trees[1];
  run(tree, 'make', ['clean']);
  // Every C object's action now waits in its second step (check-local-export runs in the
  // action) until it is killed. Left to finish, it would write its object when the sleep ends.
  fs.writeFileSync(path.join(tree, 'scripts', 'check-local-export'), '#!/bin/sh\nexec sleep 120\n', { mode: 0o755 });
  const containersBefore = poolContainers().length;
  // A group of its own, as a shell gives a foreground job: ^C reaches make and its recipes.
  const child = spawn(process.execPath, [REAPI_CC, 'make', '-j8'], { cwd: tree, env: env(), stdio: ['ignore', 'ignore', 'pipe'], detached: true });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  const exited = new Promise<number | null>((resolve) => child.on('close', resolve));
  while (!actionsSleeping()) await new Promise((r) => setTimeout(r, 200));
  process.kill(-child.pid!, 'SIGINT');
  // make ends with 130 (killed by SIGINT) or, when it finds its children already gone, 2.
  assert.notEqual(await exited, 0, `reapi-cc fails as make does on ^C\n${stderr}`);
  assert.doesNotMatch(stderr, /warning/, 'abandoned jobs are no failures to warn about');
  for (const object of ['app/main.o', 'lib/util.o', 'lib/math.o']) {
    assert.equal(fs.existsSync(path.join(tree, object)), false, `${object}: nothing written after make stopped`);
  }
  assert.equal(poolContainers().length, containersBefore, 'the worker removed its containers');
});

/** Whether some pool container runs the sleeping check-local-export. */
function actionsSleeping(): boolean {
  return poolContainers().some((id) => /sleep 120/.test(spawnSync('docker', ['top', id], { encoding: 'utf8' }).stdout ?? ''));
}

test('a worker directory is claimed by one live process at a time; a dead holder\'s is taken over', () => {
  const base = tempDir('work-dir-claim');
  const first = claimNumberedWorkDir(base);
  const second = claimNumberedWorkDir(base);
  assert.equal(first.dir, path.join(base, '0'));
  assert.equal(second.dir, path.join(base, '1'), 'the first is held by a live process (this one)');
  first.release();
  const again = claimNumberedWorkDir(base);
  assert.equal(again.dir, path.join(base, '0'), 'a released number is free again');
  again.release();
  second.release();

  const dead = spawnSync('true').pid;
  fs.writeFileSync(path.join(base, '0.pid'), `${dead}\n`);
  fs.writeFileSync(path.join(base, '1.pid'), `${process.pid}\n`);
  fs.writeFileSync(path.join(base, '2.pid'), 'not a pid\n');
  const sleeper = spawn('sleep', ['30']);
  try {
    fs.writeFileSync(path.join(base, '3.pid'), `${sleeper.pid}\n`);
    const takeovers = [0, 1, 2].map(() => claimNumberedWorkDir(base));
    assert.deepEqual(takeovers.map((t) => t.dir), [0, 1, 2].map(String).map((n) => path.join(base, n)),
      'taken over: a dead process\'s lock, one naming this pid that this process does not hold (a predecessor with the same pid), an unreadable one');
    assert.equal(fs.readFileSync(path.join(base, '0.pid'), 'utf8'), `${process.pid}\n`);
    const lock = lockWorkDir(path.join(base, '3.pid'));
    assert.deepEqual(lock, { heldBy: sleeper.pid }, 'a live holder keeps its lock');
    const next = claimNumberedWorkDir(base);
    assert.equal(next.dir, path.join(base, '4'));
    for (const t of [...takeovers, next]) t.release();
  } finally {
    sleeper.kill();
  }
});
