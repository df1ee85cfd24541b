// The include scanner against the real compiler: on a small tree with every kind of directive,
// its answer holds every file `gcc -M` lists (what the remote compile must find), it gives up
// where it cannot be sure, and a later scan sees headers that changed or appeared.
import test, { before } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseCompileCommand } from '../client/compile-args';
import { parseDepfile } from '../client/depfile';
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
    'int main(void) { return X + LOCAL + PRE; }',
    '',
  ].join('\n'));
  write('src/local.h', '#define LOCAL 1\n');
  write('inc1/lib/x.h', '#include_next <lib/x.h>\n');
  write('inc2/lib/x.h', '#define X 2\n');
  write('inc1/lib/dead.h', '#define DEAD\n');
  write('inc1/lib/commented.h', '#define COMMENTED\n');
  write('inc1/pre.h', '#define PRE 3\n');
});

function compileOf(source: string, extra: string[] = []) {
  const c = parseCompileCommand(['gcc', '-Iinc1', '-Iinc2', '-include', 'inc1/pre.h', ...extra, '-c', '-o', 'out.o', source]);
  assert.ok(c);
  return c;
}

function preprocessorFiles(source: string): string[] {
  const c = compileOf(source);
  const out = execFileSync(c.dependencyScanArgv[0], c.dependencyScanArgv.slice(1), { cwd: tree }).toString();
  return parseDepfile(out).map((d) => path.resolve(tree, d));
}

async function scanFiles(scanner: IncludeScanner, source: string): Promise<string[]> {
  const result = await scanner.scan(compileOf(source), tree, process.env);
  assert.ok(result.complete, result.complete ? '' : result.reason);
  return result.files;
}

test('every file the preprocessor reads is in the scan; conditionals are ignored, comments are not code', async () => {
  const files = await scanFiles(new IncludeScanner(), 'src/a.c');
  for (const f of preprocessorFiles('src/a.c')) assert.ok(files.includes(f), `${f} missing from the scan`);
  const inTree = files.filter((f) => f.startsWith(tree + '/')).map((f) => path.relative(tree, f)).sort();
  // dead.h is behind #if 0: still an input (a superset). commented.h is only named in a comment.
  assert.deepEqual(inTree, ['inc1/lib/dead.h', 'inc1/lib/x.h', 'inc1/pre.h', 'inc2/lib/x.h', 'src/a.c', 'src/local.h']);
  assert.ok(files.some((f) => f.endsWith('/stdio.h')), 'system headers are followed too');
});

test('a computed include, __has_include and unmodelled search options make the scan give up', async () => {
  const scanner = new IncludeScanner();
  write('src/computed.c', '#define H "local.h"\n#include H\n');
  write('src/has.c', '#if __has_include(<lib/x.h>)\n#endif\n');
  const computed = await scanner.scan(compileOf('src/computed.c'), tree, process.env);
  assert.equal(computed.complete, false);
  assert.match(computed.complete ? '' : computed.reason, /computed include H/);
  const has = await scanner.scan(compileOf('src/has.c'), tree, process.env);
  assert.equal(has.complete, false);
  assert.match(has.complete ? '' : has.reason, /__has_include/);
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

test('comments are blanked, string literals are not comments, directives keep their lines', () => {
  const text = 'a /* x\n#include <no.h>\n*/ b\n"/*" #x\n#include <c.h> // tail\nchar q = \'"\'; // "\n';
  const out = withoutComments(text);
  assert.equal(out.split('\n').length, text.split('\n').length);
  assert.doesNotMatch(out, /no\.h/);
  assert.match(out, /^"\/\*" #x$/m);
  assert.match(out, /^#include <c\.h> +$/m);
  assert.doesNotMatch(out, /tail/);
});
