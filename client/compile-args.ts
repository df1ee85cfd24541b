// What one compiler command line compiles, writes and reads. Pure.
import * as path from 'node:path';

export interface CompileCommand {
  argv: string[];
  /** The object it writes (`-o`). */
  object: string;
  /** The source it compiles. */
  source: string;
  /** The dependency file it writes, if any (`-Wp,-MMD,f`, `-MD -MF f`, or `-MD` next to the object). */
  depfile?: string;
  /** The same command, asked for every header it includes instead of an object (`-M`, to stdout). */
  dependencyScanArgv: string[];
}

const COMPILER = /^(?:.*-)?(?:gcc|cc|clang|g\+\+|c\+\+|clang\+\+)(?:-\d+(?:\.\d+)*)?$/;
const SOURCE = /\.(?:c|S|s|cc|cpp|cxx|C|i)$/;
/** Options whose value is the next word. */
const TAKES_VALUE = new Set([
  '-o', '-x', '-MF', '-MT', '-MQ', '-include', '-imacros', '-I', '-isystem', '-iquote', '-idirafter', '-iprefix',
  '-iwithprefix', '-iwithprefixbefore', '-isysroot', '-D', '-U', '-Xassembler', '-Xpreprocessor', '-Xlinker',
  '-aux-info', '-param', '--param', '-L', '-l', '-T', '-u', '-z', '-G', '-A',
]);

export function isCompilerName(argv0: string): boolean {
  return COMPILER.test(path.basename(argv0));
}

/** A `-c ... -o X.o SRC` compile, or undefined for anything else (link, -E, -M only, several sources). */
export function parseCompileCommand(argv: string[]): CompileCommand | undefined {
  if (argv.length < 2 || !isCompilerName(argv[0])) return undefined;
  let compileOnly = false;
  let object: string | undefined;
  let depfile: string | undefined;
  let writesDeps = false;
  let mfFile: string | undefined;
  const sources: string[] = [];
  const scan: string[] = [argv[0]];
  for (let i = 1; i < argv.length; i++) {
    const a = argv[i];
    if (a === '-c') {
      compileOnly = true;
      continue;
    }
    if (a === '-E' || a === '-S' || a === '-M' || a === '-MM' || a === '-fsyntax-only') return undefined;
    if (a === '-o') {
      object = argv[++i];
      continue;
    }
    if (a.startsWith('-o') && a.length > 2) {
      object = a.slice(2);
      continue;
    }
    const wp = /^-Wp,-M(M?)D,(.+)$/.exec(a);
    if (wp) {
      depfile = wp[2];
      continue;
    }
    if (a === '-MD' || a === '-MMD') {
      writesDeps = true;
      continue;
    }
    if (a === '-MF') {
      mfFile = argv[++i];
      continue;
    }
    if (a === '-MT' || a === '-MQ') {
      i++;
      continue;
    }
    if (a === '-MP') continue;
    if (TAKES_VALUE.has(a)) {
      scan.push(a, argv[++i] ?? '');
      continue;
    }
    if (!a.startsWith('-') && SOURCE.test(a)) sources.push(a);
    scan.push(a);
  }
  if (!compileOnly || !object || sources.length !== 1) return undefined;
  if (writesDeps && !depfile) depfile = mfFile ?? object.replace(/\.[^./]*$/, '') + '.d';
  // -M lists system headers too; callers keep what lies inside the tree.
  return { argv, object, source: sources[0], depfile, dependencyScanArgv: [...scan, '-M', '-MT', 'x'] };
}
