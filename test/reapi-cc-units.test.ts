// The pure parts of reapi-cc: shell lexing, recipe and compile-command parsing, dependency files,
// the per-line runner, input trees and --explain.
import test from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { buildAction, buildInputRoot } from '../client/action-builder';
import { BacklogGate } from '../client/backlog-gate';
import { parseCompileCommand } from '../client/compile-args';
import { actionEnvironment } from '../client/config';
import { parseDepfile } from '../client/depfile';
import { explainDifference, KeyParts } from '../client/explain';
import { lineRunnerArgv, withoutNoOpLines } from '../client/line-runner';
import { otherShellIn } from '../client/makefile-shell';
import { placeAction } from '../client/object-job';
import { parseObjectRecipe } from '../client/recipe-parser';
import { parseEnv } from '../client/session-server';
import { lexScript } from '../client/shell-words';

// What make hands to SHELL for one kernel object with --eval=.ONESHELL: (init/main.o, shortened).
const KBUILD_SCRIPT = [
  "set -e; echo '  CC      init/main.o'; trap 'rm -f init/main.o; trap - HUP; kill -s HUP $$' HUP; " +
    "gcc -Wp,-MMD,init/.main.o.d -nostdinc -I./arch/x86/include -include ./include/linux/kconfig.h " +
    `-DKBUILD_MODFILE='"init/main"' -DKBUILD_BASENAME='"main"' -c -o init/main.o init/main.c ; ` +
    './tools/objtool/objtool --hacks=jump_label --orc init/main.o; ' +
    "scripts/basic/fixdep init/.main.o.d init/main.o 'gcc -Wp,-MMD,init/.main.o.d -nostdinc -c -o init/main.o init/main.c' > init/.main.o.cmd; rm -f init/.main.o.d",
  './scripts/check-local-export init/main.o',
  "printf '%s\\n' 'init/main.o: $(wildcard ./tools/objtool/objtool)' >> init/.main.o.cmd",
  'if nm init/main.o | grep -q __ksymtab; then gcc -E -D__GENKSYMS__ -nostdinc init/main.c | scripts/genksyms/genksyms -r /dev/null >> init/.main.o.cmd; fi',
].join('\n');

test('a kbuild object rule is one object recipe: compile, outputs, and the tools it names', () => {
  const r = parseObjectRecipe(KBUILD_SCRIPT);
  assert.ok(r);
  assert.equal(r.compile.object, 'init/main.o');
  assert.equal(r.compile.source, 'init/main.c');
  assert.equal(r.compile.depfile, 'init/.main.o.d');
  assert.deepEqual(r.outputs.sort(), ['init/.main.o.cmd', 'init/.main.o.d', 'init/main.o']);
  for (const tool of ['tools/objtool/objtool', 'scripts/basic/fixdep', 'scripts/check-local-export', 'scripts/genksyms/genksyms', 'init/main.c']) {
    assert.ok(r.candidateInputs.includes(tool), `${tool} in ${r.candidateInputs.join(' ')}`);
  }
  for (const output of r.outputs) assert.ok(!r.candidateInputs.includes(output), `${output} is not an input`);
  // The scan drops -c/-o/-MMD and asks for the header list instead.
  assert.deepEqual(r.compile.dependencyScanArgv.slice(-3), ['-M', '-MT', 'x']);
  assert.ok(!r.compile.dependencyScanArgv.includes('-c'));
  assert.ok(!r.compile.dependencyScanArgv.some((a) => a.includes('-MMD')));
});

test('scripts that are not one object compile are not object recipes', () => {
  assert.equal(parseObjectRecipe(':'), undefined);
  assert.equal(parseObjectRecipe('gcc -o vmlinux a.o b.o'), undefined);
  assert.equal(parseObjectRecipe('gcc -c -o a.o a.c; gcc -c -o b.o b.c'), undefined);
  assert.equal(parseObjectRecipe('gcc -MD -c -o $(echo a).o a.c'), undefined, 'command substitution');
  assert.equal(parseObjectRecipe('gcc -E -o a.i a.c'), undefined);
});

test('a file appended to before the script truncates it is an input as well as an output', () => {
  const r = parseObjectRecipe('gcc -MD -c -o a.o a.c; echo more >> log.txt');
  assert.ok(r);
  assert.ok(r.outputs.includes('log.txt'));
  assert.ok(r.candidateInputs.includes('log.txt'));
  assert.ok(r.outputs.includes('a.d'), '-MD without -MF writes a.d next to the object');
});

test("a tools/-style recipe: absolute paths, and the .cmd written to a temporary name and moved into place", () => {
  const d = '/src/tools/objtool';
  const r = parseObjectRecipe(
    `set -e; cc -Wp,-MD,${d}/.check.o.d -c -o ${d}/check.o check.c; ${d}/fixdep ${d}/.check.o.d ${d}/check.o 'cc -c' > ${d}/.check.o.tmp; rm -f ${d}/.check.o.d; mv -f ${d}/.check.o.tmp ${d}/.check.o.cmd`,
  );
  assert.ok(r);
  assert.deepEqual(new Set(r.outputs), new Set([`${d}/check.o`, `${d}/.check.o.d`, `${d}/.check.o.tmp`, `${d}/.check.o.cmd`]));
  assert.ok(r.candidateInputs.includes(`${d}/fixdep`));
  assert.equal(parseObjectRecipe('gcc -c -o a.o a.c; mv -f old.txt new.txt'), undefined, 'moves a file it did not write');
  assert.equal(parseObjectRecipe('gcc -c -o a.o a.c > t; mv t out/'), undefined, 'moves into a directory');
});

test('actions run in the recipe directory, or from the root when an output lies outside it', () => {
  const job = { root: '/src', cwd: '/src/tools/objtool', argv: ['gcc'] };
  assert.deepEqual(placeAction({ ...job, outputs: ['/src/tools/objtool/check.o', 'arch/x86/decode.o'] }), {
    workingDirectory: 'tools/objtool', outputs: ['check.o', 'arch/x86/decode.o'], argv: ['gcc'],
  });
  const across = placeAction({ ...job, cwd: '/src/tools/lib/subcmd', outputs: ['/src/tools/objtool/libsubcmd/pager.o'] });
  assert.equal(across?.workingDirectory, '');
  assert.deepEqual(across?.outputs, ['tools/objtool/libsubcmd/pager.o']);
  assert.deepEqual(across?.argv.slice(-2), ['tools/lib/subcmd', 'gcc']);
  assert.equal(placeAction({ ...job, outputs: ['/elsewhere/a.o'] }), undefined);
  assert.equal(placeAction({ ...job, cwd: '/elsewhere', outputs: ['a.o'] }), undefined);
  assert.deepEqual(placeAction({ ...job, cwd: '/src', outputs: ['./lib/a.o'] })?.outputs, ['lib/a.o']);
});

test('the lexer keeps quoted words whole and separates redirections', () => {
  const { commands } = lexScript(`echo 'a b' "c \\"d\\"" e\\ f > out 2>&1; cat < in >> app`);
  assert.deepEqual(commands[0].words, ['echo', 'a b', 'c "d"', 'e f']);
  assert.deepEqual(commands[0].redirects, [{ fd: 1, op: '>', target: 'out' }, { fd: 2, op: '>&', target: '1' }]);
  assert.deepEqual(commands[1].redirects, [{ fd: 0, op: '<', target: 'in' }, { fd: 1, op: '>>', target: 'app' }]);
});

test('compile command parsing: -o forms, -MF, and what is not a compile', () => {
  const c = parseCompileCommand(['x86_64-linux-gnu-gcc-12', '-MD', '-MF', 'deps/a.d', '-Iinc', '-c', 'src/a.c', '-oobj/a.o']);
  assert.equal(c?.object, 'obj/a.o');
  assert.equal(c?.depfile, 'deps/a.d');
  assert.equal(c?.source, 'src/a.c');
  assert.equal(parseCompileCommand(['gcc', '-o', 'prog', 'a.o']), undefined);
  assert.equal(parseCompileCommand(['ld', '-c', '-o', 'a.o', 'a.c']), undefined);
});

test('dependency files: continuations, escaped spaces, several rules', () => {
  assert.deepEqual(parseDepfile('x: a.c inc/b.h \\\n  inc/with\\ space.h \\\n  inc/b.h\ny.h:\n'), ['a.c', 'inc/b.h', 'inc/with space.h']);
});

test('the line runner gives .ONESHELL scripts the per-line meaning make gives them without it', () => {
  const runLines = (script: string) => {
    const [file, ...args] = lineRunnerArgv(script);
    return spawnSync(file, args, { encoding: 'utf8' });
  };
  const r = runLines('x=1; echo "a$x"\necho "b$x"\nfalse || echo c\nexit 5\necho never');
  assert.equal(r.stdout, 'a1\nb\nc\n', 'variables do not survive a line; a failing line stops the rest');
  assert.equal(r.status, 5);
  assert.equal(runLines('echo one \\\n  two\ncd /\npwd').stdout, `one two\n${process.cwd()}\n`, 'a cd does not survive its line');
  const errexit = runLines('set -e; false; echo no\necho yes');
  assert.equal(errexit.status, 1, 'set -e inside a line stops that line and so the recipe');
  assert.equal(errexit.stdout, '');
});

test("lines that only set traps or `set -e` are left out of the remote script: they cannot change anything", () => {
  const trapOnly = "set -e;     trap 'rm -f a.o; trap - HUP; kill -s HUP $$' HUP;  trap 'rm -f a.o; trap - INT; kill -s INT $$' INT;  ";
  const script = [`set -e; echo '  CC a.o'; ${trapOnly.slice(7)} gcc -c -o a.o a.c`, trapOnly, ':', `${trapOnly} ./check a.o`, 'set -e \\', '  ; trap "x" HUP'].join('\n');
  assert.equal(withoutNoOpLines(script), [`set -e; echo '  CC a.o'; ${trapOnly.slice(7)} gcc -c -o a.o a.c`, `${trapOnly} ./check a.o`].join('\n'));
  for (const kept of [': > truncated', 'set -x', "trap 'x' USR1", 'trap "$(evil)" HUP', 'set -e; true']) assert.equal(withoutNoOpLines(kept), kept, kept);
  assert.equal(withoutNoOpLines(trapOnly), ':');
});

test('input trees are canonical: order of inputs does not matter, content does', () => {
  const f = (p: string, h: string) => ({ path: p, digest: { hash: h.repeat(64), sizeBytes: 1 }, executable: false });
  const a = buildInputRoot([f('lib/a.c', 'a'), f('include/x.h', 'b'), f('lib/b.c', 'c')]);
  const b = buildInputRoot([f('lib/b.c', 'c'), f('lib/a.c', 'a'), f('include/x.h', 'b')]);
  assert.deepEqual(a.root, b.root);
  assert.notDeepEqual(buildInputRoot([f('lib/a.c', 'a'), f('include/x.h', 'd'), f('lib/b.c', 'c')]).root, a.root);
  const spec = { argv: ['gcc'], env: { PATH: '/bin' }, outputPaths: ['a.o'], workingDirectory: '', platform: { 'container-image': 'docker://x' }, inputs: [f('a.c', 'a')], timeoutSeconds: 60 };
  assert.deepEqual(buildAction(spec).actionDigest, buildAction({ ...spec, inputs: [f('a.c', 'a')] }).actionDigest);
  assert.notDeepEqual(buildAction(spec).actionDigest, buildAction({ ...spec, env: { PATH: '/usr/bin' } }).actionDigest);
});

test('only allowlisted variables reach the action, and PWD is the working directory', () => {
  const env = actionEnvironment({ PATH: '/bin', MAKEFLAGS: ' -j8 --jobserver-auth=3,4', LC_ALL: 'C', HOME: '/root' }, ['PATH'], '/src/linux');
  assert.deepEqual(env, { PATH: '/bin', LC_ALL: 'C', PWD: '/src/linux' });
  assert.deepEqual(parseEnv('A=1\0B=x=y\0'), { A: '1', B: 'x=y' });
});

test('--explain lists changed inputs first, then command and environment changes', () => {
  const base: KeyParts = { argv: ['gcc'], env: { PATH: '/bin' }, platform: {}, outputs: ['a.o'], workingDirectory: '', inputs: { 'a.c': '1', 'x.h': '2' } };
  assert.deepEqual(explainDifference(base, { ...base, inputs: { 'a.c': '1', 'x.h': '3', 'y.h': '4' } }), ['input changed: x.h', 'input added: y.h']);
  assert.deepEqual(explainDifference(base, { ...base, argv: ['gcc', '-O2'], env: {} }), ['command changed', 'environment changed: PATH']);
  assert.deepEqual(explainDifference(base, base), []);
});

test('a Makefile that sets SHELL to anything but a POSIX sh is found, with where it does', () => {
  const found = (text: string) => otherShellIn(text, 'Makefile');
  assert.deepEqual(found('CC := gcc\nSHELL := /bin/bash # for pipefail\nall:\n'), { where: 'Makefile:2', value: '/bin/bash' });
  assert.deepEqual(found('override SHELL = $(shell command -v bash)\n'), { where: 'Makefile:1', value: '$(shell command -v bash)' });
  for (const same of ['SHELL = /bin/sh', 'SHELL:=sh', 'export SHELL ?= /usr/bin/dash', 'MYSHELL := bash', 'all:\n\tSHELL=/bin/bash ./configure']) {
    assert.equal(found(same + '\n'), undefined, same);
  }
});

test('the backlog gate holds new jobs while enough actions are in flight, and lets them on one per action that ends', async () => {
  const gate = new BacklogGate(2, 1);
  const finish: ((ok: boolean) => void)[] = [];
  const action = () => gate.executing(() => new Promise<void>((resolve, reject) => finish.push((ok) => (ok ? resolve() : reject(new Error('failed'))))));
  const settle = () => new Promise((resolve) => setImmediate(resolve));
  const first = action();
  await gate.turn(); // one in flight: not enough to hold anyone
  const second = action();
  let through = 0;
  const held = [gate.turn(), gate.turn(), gate.turn()].map((t) => t.then(() => through++));
  await settle();
  assert.equal(through, 0, 'two actions in flight hold new jobs');
  finish[0](true);
  await first;
  await settle();
  assert.equal(through, 1, 'an action that ends lets one job on');
  let late = false;
  void gate.turn().then(() => (late = true));
  await settle();
  assert.equal(late, false, 'a job that comes while others wait waits behind them');
  // A failed action ends too; with none in flight the farm would run dry: every held job goes on.
  finish[1](false);
  await assert.rejects(second, /failed/);
  await Promise.all(held);
  await settle();
  assert.equal(through, 3);
  assert.equal(late, true);
});
