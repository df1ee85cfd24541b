// The include scanner against the real compiler: on a small tree with every kind of directive,
// its answer holds every file `gcc -M` lists (what the remote compile must find), leaves out
// what a conditional on fixed macros rules out, gives up where it cannot be sure, and a later
// scan sees headers that changed or appeared.
import test, { before } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseCompileCommand } from '../client/compile-args';
import { parseDepfile } from '../client/depfile';
import { certainlySkipped, conditionalLines, evaluate, MacroFact, parseCondition } from '../client/include-conditions';
import { IncludeScanner, withoutComments } from '../client/include-scanner';
import { tempDir } from './helpers/server-process';

let tree: string;

function write(rel: string, text: string): void {
  fs.mkdirSync(path.dirname(path.join(tree, rel)), { recursive: true });
  fs.writeFileSync(path.join(tree, rel), text);
}

before(() => {
  tree = tempDir('include-scanner');
  write('src/a.c', [
    '#include "local.h"',
    '#include <lib/x.h> /* found in inc1, which include_next-s the one in inc2 */',
    '#if 0',
    '#include <lib/dead.h>',
    '#endif',
    '/*',
    '#include <lib/commented.h>',
    '*/',
    '#ifdef NEVER',
    '#include <lib/absent.h>',
    '#endif',
    '  #  include <stdio.h>',
    '#if defined(__has_include) && __has_include("lib/maybe.h") /* an input: the same answer remotely */',
    '#define HAVE_MAYBE 1',
    '#endif',
    'int main(void) { return X + LOCAL + PRE; }',
    '',
  ].join('\n'));
  write('src/local.h', '#define LOCAL 1\n');
  write('inc1/lib/x.h', '#include_next <lib/x.h>\n');
  write('inc2/lib/x.h', '#define X 2\n');
  write('inc1/lib/dead.h', '#define DEAD\n');
  write('inc1/lib/commented.h', '#define COMMENTED\n');
  write('inc1/pre.h', '#define PRE 3\n');
  write('inc2/lib/maybe.h', '#define MAYBE 4\n');
});

function compileOf(source: string, extra: string[] = []) {
  const c = parseCompileCommand(['gcc', '-Iinc1', '-Iinc2', '-include', 'inc1/pre.h', ...extra, '-c', '-o', 'out.o', source]);
  assert.ok(c);
  return c;
}

function preprocessorFiles(source: string, extra: string[] = []): string[] {
  const c = compileOf(source, extra);
  const out = execFileSync(c.dependencyScanArgv[0], c.dependencyScanArgv.slice(1), { cwd: tree }).toString();
  return parseDepfile(out).map((d) => path.resolve(tree, d));
}

async function scanFiles(scanner: IncludeScanner, source: string, extra: string[] = []): Promise<string[]> {
  const result = await scanner.scan(compileOf(source, extra), tree, process.env);
  assert.ok(result.complete, result.complete ? '' : result.reason);
  return result.files;
}

function inTree(files: string[]): string[] {
  return files.filter((f) => f.startsWith(tree + '/')).map((f) => path.relative(tree, f)).sort();
}

test('every file the preprocessor reads is in the scan; comments are not code', async () => {
  const files = await scanFiles(new IncludeScanner(), 'src/a.c');
  for (const f of preprocessorFiles('src/a.c')) assert.ok(files.includes(f), `${f} missing from the scan`);
  // dead.h is behind #if 0; commented.h is only named in a comment.
  assert.deepEqual(inTree(files), ['inc1/lib/x.h', 'inc1/pre.h', 'inc2/lib/maybe.h', 'inc2/lib/x.h', 'src/a.c', 'src/local.h']);
  assert.ok(files.some((f) => f.endsWith('/stdio.h')), 'system headers are followed too');
});

test('conditionals on macros fixed for the whole compile are judged; the rest keep what they guard', async () => {
  write('src/cond.c', [
    '#ifdef __clang__', '#include <lib/clang.h>', '#endif', // predefined (not, for gcc): out
    '#if defined(__GNUC__) && __GNUC__ >= 4', '#include <lib/gnuc.h>', '#else', '#include <lib/old.h>', '#endif',
    '#ifdef FROM_CMDLINE', '#include <lib/cmd.h>', '#endif', // -DFROM_CMDLINE=3
    '#if FROM_CMDLINE > 5', '#include <lib/big.h>', '#elif FROM_CMDLINE == 3', '#include <lib/three.h>', '#endif',
    '#ifndef CONFIG_UNSET', '#include <lib/unset.h>', '#endif', // set nowhere: undefined all along
    '#include "defs.h"',
    '#ifdef CONFIG_SET_BY_HEADER', '#include <lib/byheader.h>', '#endif', // a reached file defines it: not fixed
    '#ifdef CONFIG_UNDEF_BY_HEADER', '#include <lib/undef.h>', '#endif', // one #undefs it: not fixed either
    '#ifdef CLANG_ONLY', '#include <lib/clangonly.h>', '#endif', // defined only in clang.h: still not fixed
    '#if __has_attribute(noreturn)', '#include <lib/fn.h>', '#endif', // a call: not modelled
    '#if 0', '# if __has_include(<lib/probe.h>)', '# endif', '#endif',
    '#include <lib/dup.h>', // in inc1 and inc2: the compiler opens inc1's only
    'int main(void) { return 0; }', '',
  ].join('\n'));
  write('src/defs.h', '#define CONFIG_SET_BY_HEADER 1\n#undef CONFIG_UNDEF_BY_HEADER\n');
  write('inc1/lib/clang.h', '#define CLANG_ONLY 1\n');
  for (const h of ['gnuc', 'old', 'cmd', 'big', 'three', 'unset', 'byheader', 'undef', 'clangonly', 'fn', 'probe', 'dup']) write(`inc1/lib/${h}.h`, '\n');
  write('inc2/lib/dup.h', '\n');
  const flags = ['-DFROM_CMDLINE=3'];
  const files = await scanFiles(new IncludeScanner(), 'src/cond.c', flags);
  for (const f of preprocessorFiles('src/cond.c', flags)) assert.ok(files.includes(f), `${f} missing from the scan`);
  assert.deepEqual(
    inTree(files),
    ['byheader', 'clangonly', 'cmd', 'dup', 'fn', 'gnuc', 'three', 'undef', 'unset'].map((h) => `inc1/lib/${h}.h`).concat('inc1/pre.h', 'src/cond.c', 'src/defs.h'),
  );
  // The same source with the macro gone: what it guarded goes, what it ruled out comes back.
  const without = inTree(await scanFiles(new IncludeScanner(), 'src/cond.c'));
  assert.ok(!without.includes('inc1/lib/cmd.h') && !without.includes('inc1/lib/three.h'));

  // Nesting that does not balance: nothing is judged, everything stays.
  write('src/unbalanced.h', '#if 0\n#include <lib/old.h>\n#endif\n#endif\n');
  write('src/unbalanced.c', '#include "unbalanced.h"\n');
  assert.ok(inTree(await scanFiles(new IncludeScanner(), 'src/unbalanced.c')).includes('inc1/lib/old.h'));
});

test('#if expressions: what fixed macros decide, and what they leave open', () => {
  const facts = (known: Record<string, MacroFact>) => (name: string) => known[name];
  const fixed = facts({ X: { defined: true, value: 3n }, Y: { defined: false }, S: { defined: true } });
  const cases: [string, bigint | undefined][] = [
    ['0', 0n], ['1 + 2 * 3', 7n], ['(1 << 62) * 4', undefined], ['10 / 0', undefined], ['-1 < 0', 1n], ['1U', undefined],
    ["'a'", undefined], ['0x10 == 16 && 010 == 8 && ~0 == -1', 1n], ['defined X && X > 2', 1n], ['defined(Y) || Y', 0n],
    ['defined S', 1n], ['S', undefined], ['Z', undefined], ['Z && 0', 0n], ['Z || 1', 1n], ['Z || Y', undefined],
    ['F(1)', undefined], ['Z ? 2 : 2', 2n], ['X > 2 ? Y : Z', 0n], ['1 +', undefined], ['(1', undefined],
    [Array(100_000).fill('1').join(' + '), undefined], ['('.repeat(100_000) + '1' + ')'.repeat(100_000), undefined],
  ];
  for (const [text, value] of cases) assert.equal(evaluate(parseCondition(text), fixed), value, text);

  const lines = conditionalLines('#if Z\n#include <a>\n#elif 1\n#include <b>\n#else\n#include <c>\n#endif\n');
  const skipped = (known: Record<string, MacroFact>) => lines.filter((l) => l.directive === 'include').map((l) => certainlySkipped(l.gates, facts(known)));
  assert.deepEqual(skipped({}), [false, false, true]);
  assert.deepEqual(skipped({ Z: { defined: true, value: 1n } }), [false, true, true]);
});

test("computed includes are expanded with every definition of their macros: the kernel's trace events", async () => {
  // define_trace.h in miniature: the trace header is included again through a computed include,
  // from include/trace/events/ or, with TRACE_INCLUDE_PATH, through the stringified path.
  write('inc1/linux/stringify.h', '#define __stringify_1(x...) #x\n#define __stringify(x...) __stringify_1(x)\n');
  write('inc1/trace/define_trace.h', [
    '#ifdef CREATE_TRACE_POINTS',
    '#undef CREATE_TRACE_POINTS',
    '#include <linux/stringify.h>',
    '#ifndef TRACE_INCLUDE_FILE',
    '# define TRACE_INCLUDE_FILE TRACE_SYSTEM',
    '#endif',
    '#ifndef TRACE_INCLUDE_PATH',
    '# define __TRACE_INCLUDE(system) <trace/events/system.h>',
    '#else',
    '# define __TRACE_INCLUDE(system) __stringify(TRACE_INCLUDE_PATH/system.h)',
    '#endif',
    '# define TRACE_INCLUDE(system) __TRACE_INCLUDE(system)',
    '#include TRACE_INCLUDE(TRACE_INCLUDE_FILE)',
    '#undef TRACE_INCLUDE_FILE',
    '#undef TRACE_INCLUDE_PATH',
    '#define CREATE_TRACE_POINTS',
    '#endif',
    '',
  ].join('\n'));
  write('inc1/trace/events/sched.h', '#undef TRACE_SYSTEM\n#define TRACE_SYSTEM sched\nint sched_event;\n#include <trace/define_trace.h>\n');
  write('src/mytrace.h', '#undef TRACE_SYSTEM\n#define TRACE_SYSTEM mine\n#define TRACE_INCLUDE_PATH .\n#define TRACE_INCLUDE_FILE mytrace_impl\n#include <trace/define_trace.h>\n');
  // Reached only through the computed include (quoted, so looked for along -I too).
  write('inc2/mytrace_impl.h', 'int mine_event;\n');
  write('src/traced.c', '#define CREATE_TRACE_POINTS\n#include <trace/events/sched.h>\n#include "mytrace.h"\nint main(void) { return 0; }\n');
  const files = await scanFiles(new IncludeScanner(), 'src/traced.c');
  const needed = preprocessorFiles('src/traced.c');
  assert.ok(needed.includes(path.join(tree, 'inc2/mytrace_impl.h')), 'the preprocessor does read it');
  for (const f of needed) assert.ok(files.includes(f), `${f} missing from the scan`);
});

test('token pasting, an expansion that is no header name, __has_include(MACRO) and unmodelled search options make the scan give up', async () => {
  const scanner = new IncludeScanner();
  write('src/pasted.c', '#define CAT(a, b) a##b\n#include CAT(<lo, cal.h>)\n');
  write('src/nowhere.c', '#define H(x) x + 1\n#include H(2)\n');
  write('src/has.c', '#define NAME <lib/x.h>\n#if __has_include(NAME)\n#endif\n');
  const pasted = await scanner.scan(compileOf('src/pasted.c'), tree, process.env);
  assert.match(pasted.complete ? '' : pasted.reason, /computed include CAT\(<lo, cal\.h>\): CAT pastes tokens/);
  const nowhere = await scanner.scan(compileOf('src/nowhere.c'), tree, process.env);
  assert.match(nowhere.complete ? '' : nowhere.reason, /computed include H\(2\) names no header/);
  const has = await scanner.scan(compileOf('src/has.c'), tree, process.env);
  assert.equal(has.complete, false);
  assert.match(has.complete ? '' : has.reason, /__has_include with a computed operand/);
  const prefixed = await scanner.scan(compileOf('src/a.c', ['-iprefix', 'inc1/']), tree, process.env);
  assert.equal(prefixed.complete, false);
});

test('a later scan sees a header that gained an include, and a new file earlier on the search path', async () => {
  const scanner = new IncludeScanner();
  const before = await scanFiles(scanner, 'src/a.c');
  assert.ok(!before.includes(path.join(tree, 'inc2/lib/more.h')));
  write('inc2/lib/more.h', '#define MORE\n');
  fs.appendFileSync(path.join(tree, 'src/local.h'), '#include <lib/more.h>\n');
  assert.ok((await scanFiles(scanner, 'src/a.c')).includes(path.join(tree, 'inc2/lib/more.h')));
  // Now inc1 shadows inc2 for this name: the compiler would read inc1's, so the scan must list it.
  write('inc1/lib/more.h', '#define MORE 1\n');
  assert.ok((await scanFiles(scanner, 'src/a.c')).includes(path.join(tree, 'inc1/lib/more.h')));
});

test('jobs that arrived before a round of checks began share it; a job that arrived after a change sees the change', async () => {
  const scanner = new IncludeScanner();
  write('src/shared.c', '#include "shared.h"\n');
  write('src/shared.h', '#define SHARED 1\n');
  const scan = async (receivedAt: number) => {
    const result = await scanner.scan(compileOf('src/shared.c'), tree, process.env, receivedAt);
    assert.ok(result.complete, result.complete ? '' : result.reason);
    return inTree(result.files);
  };
  const waiting = performance.now(); // two jobs known to the session by now
  const first = await scan(waiting);
  assert.deepEqual(first, ['inc1/pre.h', 'src/shared.c', 'src/shared.h']);
  // Changed after the round's checks: no recipe that had started by then can depend on it (make
  // would have waited for whatever made the change), so the second waiting job takes the round.
  write('inc2/lib/late.h', '#define LATE\n');
  fs.appendFileSync(path.join(tree, 'src/shared.h'), '#include <lib/late.h>\n');
  assert.deepEqual(await scan(waiting), first);
  // A job that arrived after the change starts a new round: the disk is checked again.
  assert.deepEqual(await scan(performance.now()), [...first, 'inc2/lib/late.h'].sort());
});

test('comments are blanked, string literals are not comments, directives keep their lines', () => {
  const text = 'a /* x\n#include <no.h>\n*/ b\n"/*" #x\n#include <c.h> // tail\nchar q = \'"\'; // "\n';
  const out = withoutComments(text);
  assert.equal(out.split('\n').length, text.split('\n').length);
  assert.doesNotMatch(out, /no\.h/);
  assert.match(out, /^"\/\*" #x$/m);
  assert.match(out, /^#include <c\.h> +$/m);
  assert.doesNotMatch(out, /tail/);
});
