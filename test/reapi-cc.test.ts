// reapi-cc on a small kbuild-like C project against a real `reapi serve`: object pipelines become
// remote actions with the same bytes as a local build, come back from the cache after `make
// clean`, change key exactly when their inputs change, replay compile errors, and fall back to
// local builds when the server is gone.
import test, { after, before } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { REPO_ROOT, ServerProcess, startServerProcess, tempDir } from './helpers/server-process';

const REAPI_CC = path.join(REPO_ROOT, 'dist', 'client', 'reapi-cc.js');
const FIXTURE = path.join(REPO_ROOT, 'test', 'fixtures', 'kbuild-mini');
/** Every file the object pipelines write and a local build must reproduce exactly. */
const PIPELINE_OUTPUTS = [
  'app/main.o', 'lib/util.o', 'lib/math.o', 'lib/asm.o', 'tools/objtool/objtool.o',
  'app/.main.o.cmd', 'lib/.util.o.cmd', 'lib/.math.o.cmd', 'lib/.asm.o.cmd', 'tools/objtool/.objtool.o.cmd',
];

let server: ServerProcess;
let tree: string;
let stateDir: string;

before(async () => {
  server = await startServerProcess({ args: ['--worker', 'on'] });
  // Not under /tmp: the worker mounts the input root at the tree's own path, and refuses
  // system directories of the image (/tmp included) as that path.
  const parent = path.join(REPO_ROOT, 'dist', 'test-trees');
  fs.mkdirSync(parent, { recursive: true });
  tree = fs.mkdtempSync(path.join(parent, 'kbuild-mini-'));
  fs.cpSync(FIXTURE, tree, { recursive: true });
  stateDir = tempDir('reapi-cc-state');
});

after(async () => {
  await server.stop();
  fs.rmSync(tree, { recursive: true, force: true });
});

interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

function run(file: string, args: string[], env: NodeJS.ProcessEnv = {}, cwd = tree): Run {
  const r = spawnSync(file, args, {
    cwd,
    env: { ...process.env, REAPI_SERVER: `grpc://${server.address}`, REAPI_CC_STATE: stateDir, ...env },
    encoding: 'utf8',
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

function make(...args: string[]): Run {
  return run('make', args);
}

function reapiCc(...args: string[]): Run {
  return run(process.execPath, [REAPI_CC, ...args]);
}

function ok(r: Run): Run {
  assert.equal(r.status, 0, `exit ${r.status}\nstdout:\n${r.stdout}\nstderr:\n${r.stderr}`);
  return r;
}

function sums(): Record<string, string> {
  return Object.fromEntries(PIPELINE_OUTPUTS.map((p) => [p, createHash('sha256').update(fs.readFileSync(path.join(tree, p))).digest('hex')]));
}

function stats(): Record<string, number> {
  const text = ok(reapiCc('--stats')).stdout;
  const num = (label: string) => Number(new RegExp(`^\\s*${label}\\s+(\\d+)`, 'm').exec(text)?.[1]);
  return { hits: num('Hits'), misses: num('Misses'), remoteRuns: num('Remote runs'), localFallbacks: num('Local fallbacks'), failures: num('Failed \\(compile errors\\)') };
}

let plainSums: Record<string, string>;

test('reapi-cc make -j8 builds every object remotely, byte-identical to plain make at the same path', () => {
  ok(make('-j8'));
  plainSums = sums();
  assert.equal(ok(run(path.join(tree, 'app', 'mini'), [])).stdout, 'kbuild-mini built from lib/util.c: 6 9 42\n');
  ok(make('clean'));

  ok(reapiCc('--zero-stats'));
  const r = ok(reapiCc('make', '-j8'));
  assert.match(r.stdout, /CC {6}lib\/util\.o/, 'the recipe\'s own echo is replayed');
  assert.deepEqual(sums(), plainSums);
  // Four kbuild-style objects, and objtool.o from the tools/-style make that reset MAKEFLAGS.
  assert.deepEqual(stats(), { hits: 0, misses: 5, remoteRuns: 5, localFallbacks: 0, failures: 0 });
  assert.equal(ok(run(path.join(tree, 'app', 'mini'), [])).stdout, 'kbuild-mini built from lib/util.c: 6 9 42\n');
});

test('after make clean every object pipeline is a cache hit, with the same bytes', () => {
  ok(make('clean'));
  ok(reapiCc('--zero-stats'));
  ok(reapiCc('make', '-j8'));
  assert.deepEqual(sums(), plainSums);
  assert.deepEqual(stats(), { hits: 5, misses: 0, remoteRuns: 0, localFallbacks: 0, failures: 0 });
  const explained = ok(reapiCc('--explain', 'lib/util.o')).stdout;
  assert.match(explained, /lib\/util\.o: last lookup hit/);
});

test('a no-op rebuild sends nothing to reapi-cc; the shell shim answers `:` and plain recipes itself', () => {
  ok(reapiCc('--zero-stats'));
  ok(reapiCc('make', '-j8'));
  assert.deepEqual(stats(), { hits: 0, misses: 0, remoteRuns: 0, localFallbacks: 0, failures: 0 });

  // The front script alone, with an environment in which no node could even be found.
  const shim = path.join(tempDir('shim'), 'sh');
  const { frontScript } = require(path.join(REPO_ROOT, 'dist', 'client', 'shell-shim.js')) as typeof import('../client/shell-shim');
  fs.writeFileSync(shim, frontScript(), { mode: 0o755 });
  const bare = (script: string) => spawnSync(shim, ['-c', script], { env: { PATH: '/nonexistent' }, encoding: 'utf8' });
  assert.equal(bare(':').status, 0);
  assert.equal(bare("trap 'rm -f x; trap - HUP; kill -s HUP $$' HUP").status, 0);
  assert.equal(bare('exit 3').status, 3);
  // .ONESHELL scripts keep make's per-line meaning: a failing line ends the recipe with its status.
  const lines = bare('echo one\n/bin/sh -c "exit 4"\necho never');
  assert.equal(lines.status, 4);
  assert.equal(lines.stdout, 'one\n');
});

test('the compiled front gives every script the same result as the sh front', async () => {
  const dir = tempDir('fronts');
  const { frontScript } = require(path.join(REPO_ROOT, 'dist', 'client', 'shell-shim.js')) as typeof import('../client/shell-shim');
  const { compiledFront } = require(path.join(REPO_ROOT, 'dist', 'client', 'shell-front-c.js')) as typeof import('../client/shell-front-c');
  const shFront = path.join(dir, 'sh');
  fs.writeFileSync(shFront, frontScript(), { mode: 0o755 });
  const built = await compiledFront(path.join(dir, 'state'));
  assert.ok(built, 'gcc builds the front');
  const cFront: string = built;
  assert.equal(path.basename(cFront), 'sh', 'make strips .ONESHELL prefixes only for a shell named sh');
  const trap = (sig: string) => `trap 'rm -f x.o; trap - ${sig}; kill -s ${sig} $$' ${sig};`;
  const scripts = [
    ':', 'exit 3', 'echo hi', '/bin/echo a=b  c', 'A=1 /usr/bin/env | grep ^A=', "printf '%s\\n' 'a b' c", 'cd / && pwd',
    '/bin/echo one \\\n  two', `:\nset -e; ${trap('HUP')}  ${trap('INT')}`, `:\nset -e; ${trap('HUP')}\n/bin/echo after`,
    `set -e; trap 'x' BOGUS`, 'echo one\n/bin/sh -c "exit 4"\necho never', 'x=1\necho "[$x]"\n:\n/bin/echo last', '', '   ', ': ; :',
    '/nonexistent/tool arg',
  ];
  for (const script of scripts) {
    const viaC = spawnSync(cFront, ['-c', script], { cwd: dir, encoding: 'utf8', env: { PATH: '/usr/bin:/bin' } });
    const viaSh = spawnSync(shFront, ['-c', script], { cwd: dir, encoding: 'utf8', env: { PATH: '/usr/bin:/bin' } });
    assert.equal(viaC.status, viaSh.status, script);
    assert.equal(viaC.stdout, viaSh.stdout, script);
    assert.equal(viaC.stderr === '', viaSh.stderr === '', `${script}: ${viaC.stderr} / ${viaSh.stderr}`);
  }
});

/** Edits a file of the tree, then cleans and builds again with reapi-cc: the build's stats. */
function rebuildAfterEditing(rel: string): Record<string, number> {
  fs.appendFileSync(path.join(tree, rel), '/* changed */\n');
  ok(make('clean'));
  ok(reapiCc('--zero-stats'));
  ok(reapiCc('make', '-j8'));
  return stats();
}

test('changing a header changes exactly the keys of the objects that include it; --explain names it', () => {
  assert.deepEqual(rebuildAfterEditing('include/mini/math.h'), { hits: 3, misses: 2, remoteRuns: 2, localFallbacks: 0, failures: 0 });
  for (const object of ['app/main.o', 'lib/math.o']) {
    const explained = ok(reapiCc('--explain', object)).stdout;
    assert.match(explained, /last lookup missed/, explained);
    assert.match(explained, /input changed: include\/mini\/math\.h/, explained);
    assert.doesNotMatch(explained, /input changed: (?!include\/mini\/math\.h)/, explained);
  }
  for (const object of ['lib/util.o', 'lib/asm.o', 'tools/objtool/objtool.o']) assert.match(ok(reapiCc('--explain', object)).stdout, /last lookup hit/);
  // The rebuilt objects still match a plain build of the changed tree.
  const remote = sums();
  ok(make('clean'));
  ok(make('-j8'));
  assert.deepEqual(sums(), remote);
  plainSums = remote;
});

test('a header behind a disabled option is no input: changing it leaves every object a hit', () => {
  assert.deepEqual(rebuildAfterEditing('include/mini/debug.h'), { hits: 5, misses: 0, remoteRuns: 0, localFallbacks: 0, failures: 0 });
  assert.deepEqual(sums(), plainSums);
});

test('a Makefile that asks for bash runs as plain make, after one warning line', () => {
  const dir = path.join(tree, 'bash-project');
  fs.mkdirSync(dir);
  fs.writeFileSync(path.join(dir, 'Makefile'), 'SHELL := /bin/bash\nall:\n\t@[[ -n "$$BASH_VERSION" ]] && echo bash\n');
  const r = ok(reapiCc('make', '-C', dir, '--no-print-directory'));
  assert.equal(r.stdout, 'bash\n');
  assert.deepEqual(r.stderr.split('\n').filter(Boolean), [
    'reapi-cc: warning: Makefile:1 sets SHELL to /bin/bash, not a POSIX sh: make runs as is, nothing cached',
  ]);
  fs.rmSync(dir, { recursive: true });
});

test("a compile error shows gcc's message, and make fails with the same status as without reapi-cc", () => {
  const source = path.join(tree, 'lib', 'math.c');
  const good = fs.readFileSync(source, 'utf8');
  fs.writeFileSync(source, good.replace('return x * x;', 'return x * ;'));
  try {
    ok(make('clean'));
    const plain = make('-j8');
    ok(make('clean'));
    ok(reapiCc('--zero-stats'));
    const remote = reapiCc('make', '-j8');
    assert.notEqual(plain.status, 0);
    assert.equal(remote.status, plain.status);
    const gccLines = (s: string) => s.split('\n').filter((l) => /^lib\/math\.c|^\s+\d+ \||^\s+\|/.test(l));
    assert.ok(gccLines(plain.stderr).length > 0, plain.stderr);
    assert.deepEqual(gccLines(remote.stderr), gccLines(plain.stderr));
    assert.match(remote.stderr, /lib\/math\.c:3:\d+: error: expected expression before .;. token/);
    assert.doesNotMatch(remote.stderr, /No such file/, 'the steps after the failed compile did not run');
    assert.equal(stats().failures, 1);
    assert.equal(fs.existsSync(path.join(tree, 'lib', 'math.o')), false, 'no object is left behind');
  } finally {
    fs.writeFileSync(source, good);
  }
});

test('the wrapper mode caches and runs single compile commands (make CC="reapi-cc gcc")', () => {
  ok(make('clean'));
  ok(reapiCc('--zero-stats'));
  const args = ['gcc', '-O2', '-g', '-Iinclude', '-MD', '-c', '-o', 'lib/math.o', 'lib/math.c'];
  ok(run('gcc', args.slice(1)));
  const local = fs.readFileSync(path.join(tree, 'lib', 'math.o'));
  const localDeps = fs.readFileSync(path.join(tree, 'lib', 'math.d'), 'utf8');
  fs.rmSync(path.join(tree, 'lib', 'math.o'));
  ok(reapiCc(...args));
  ok(reapiCc(...args));
  assert.deepEqual(fs.readFileSync(path.join(tree, 'lib', 'math.o')), local);
  assert.equal(fs.readFileSync(path.join(tree, 'lib', 'math.d'), 'utf8'), localDeps);
  assert.deepEqual(stats(), { hits: 1, misses: 1, remoteRuns: 1, localFallbacks: 0, failures: 0 });
  // From a subdirectory, writing into another one: output paths may not climb out of an
  // action's working directory, so this one starts at the root and changes into lib/ itself.
  const across = ['gcc', '-O2', '-g', '-I../include', '-c', '-o', '../app/math-copy.o', 'math.c'];
  ok(run('gcc', across.slice(1), {}, path.join(tree, 'lib')));
  const localCopy = fs.readFileSync(path.join(tree, 'app', 'math-copy.o'));
  fs.rmSync(path.join(tree, 'app', 'math-copy.o'));
  ok(run(process.execPath, [REAPI_CC, ...across], { REAPI_CC_ROOT: tree }, path.join(tree, 'lib')));
  assert.deepEqual(fs.readFileSync(path.join(tree, 'app', 'math-copy.o')), localCopy, 'debug info names lib/ as the directory, as locally');
  assert.deepEqual(stats(), { hits: 1, misses: 2, remoteRuns: 2, localFallbacks: 0, failures: 0 });
  fs.rmSync(path.join(tree, 'app', 'math-copy.o'));
  // Not a compile: runs locally, untouched.
  assert.match(ok(reapiCc('gcc', '--version')).stdout, /gcc/);
  fs.rmSync(path.join(tree, 'lib', 'math.d'));
});

test('a header the include scanner cannot see is found by the preprocessor on a second try', () => {
  // `%:include` is the digraph spelling of `#include`: the compiler reads the header, the
  // scanner does not see the directive. The remote compile misses the header and fails; the
  // object is tried again with `gcc -M`'s exact list, still remotely.
  const source = path.join(tree, 'lib', 'util.c');
  const good = fs.readFileSync(source, 'utf8');
  fs.writeFileSync(path.join(tree, 'include', 'mini', 'digraph.h'), '#define MINI_DIGRAPH 1\n');
  fs.writeFileSync(source, `%:include <mini/digraph.h>\n${good}int mini_digraph(void) { return MINI_DIGRAPH; }\n`);
  try {
    ok(make('clean'));
    ok(make('-j8'));
    const plain = sums();
    ok(make('clean'));
    ok(reapiCc('--zero-stats'));
    const remote = ok(reapiCc('make', '-j8'));
    assert.doesNotMatch(remote.stderr, /warning/, remote.stderr);
    assert.deepEqual(sums(), plain);
    const s = stats();
    assert.equal(s.localFallbacks, 0);
    assert.equal(s.failures, 0);
    assert.equal(s.remoteRuns, 2, 'lib/util.o ran twice: with the scanned headers, then with the exact ones');
  } finally {
    fs.writeFileSync(source, good);
    fs.rmSync(path.join(tree, 'include', 'mini', 'digraph.h'));
  }
});

test('objects built side by side upload a shared header once; each waits until it is there', async () => {
  const { RemoteExecutor } = require(path.join(REPO_ROOT, 'dist', 'client', 'remote-executor.js')) as typeof import('../client/remote-executor');
  const { GrpcCalls } = require(path.join(REPO_ROOT, 'dist', 'client', 'grpc-calls.js')) as typeof import('../client/grpc-calls');
  const executor = new RemoteExecutor(new GrpcCalls(`grpc://${server.address}`));
  try {
    const blob = (text: string) => {
      const data = Buffer.from(`${text} ${Date.now()} ${Math.random()}`);
      return { digest: { hash: createHash('sha256').update(data).digest('hex'), sizeBytes: data.length }, read: async () => data };
    };
    const [shared, a, b] = [blob('shared header'), blob('a.c'), blob('b.c')];
    await Promise.all([executor.uploadMissing([shared, a]), executor.uploadMissing([shared, b])]);
    assert.equal(executor.bytesUploaded, shared.digest.sizeBytes + a.digest.sizeBytes + b.digest.sizeBytes);
    // All three are on the server now: nothing more to send.
    await executor.uploadMissing([shared, a, b]);
    assert.equal(executor.bytesUploaded, shared.digest.sizeBytes + a.digest.sizeBytes + b.digest.sizeBytes);
    const fresh = new RemoteExecutor(new GrpcCalls(`grpc://${server.address}`));
    await fresh.uploadMissing([shared, a, b]);
    assert.equal(fresh.bytesUploaded, 0, 'the server has every one of them');
    await fresh.close();
  } finally {
    await executor.close();
  }
});

test('with the server stopped the build still succeeds locally, after one warning line', async () => {
  await server.stop();
  ok(make('clean'));
  ok(reapiCc('--zero-stats'));
  const r = ok(reapiCc('make', '-j8'));
  const warnings = r.stderr.split('\n').filter((l) => l.startsWith('reapi-cc: warning'));
  assert.equal(warnings.length, 1, r.stderr);
  assert.match(warnings[0], /unreachable.*building locally/);
  assert.deepEqual(sums(), plainSums);
  assert.equal(stats().localFallbacks, 5);
});
