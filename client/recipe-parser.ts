// Recognizes a per-object recipe (kbuild's rule_cc_o_c and anything shaped like it) and lists
// what it reads and writes. Pure: existence of files is the caller's question.
//
// An object recipe is a script with exactly one `-c -o X.o SRC` compile; around it may run tools
// that rewrite the object (objtool), turn the dependency file into a .cmd (fixdep), check it, or
// append to the .cmd. Every file the script names is a candidate input; files it writes with `>`
// or `>>`, files it removes and both names of a file it renames are outputs.
import { CompileCommand, isCompilerName, parseCompileCommand } from './compile-args';
import { lexScript } from './shell-words';

export interface ObjectRecipe {
  script: string;
  compile: CompileCommand;
  /** Paths (as written in the script) the action must bring back, or remove if it did not leave them. */
  outputs: string[];
  /** Words that may name files the script reads: tools, config files, appended-to files. */
  candidateInputs: string[];
}

/** Shell words that are syntax, not commands. */
const RESERVED = new Set(['if', 'then', 'else', 'elif', 'fi', 'do', 'done', 'while', 'until', 'for', 'in', 'case', 'esac', '!', '{', '}']);

export function parseObjectRecipe(script: string): ObjectRecipe | undefined {
  const lexed = lexScript(script);
  if (lexed.hasSubstitution) return undefined;
  const compiles: CompileCommand[] = [];
  const outputs: string[] = [];
  const candidates: string[] = [];
  const truncated = new Set<string>();
  /** Files appended to before anything truncated them: outputs whose old content is an input. */
  const appendedFirst = new Set<string>();

  for (const command of lexed.commands) {
    let words = command.words;
    while (words.length && RESERVED.has(words[0])) words = words.slice(1);
    // Leading assignments (VAR=value cmd) are environment, not the command.
    while (words.length && /^[A-Za-z_][A-Za-z0-9_]*=/.test(words[0])) words = words.slice(1);
    if (words.length && isCompilerName(words[0])) {
      const compile = parseCompileCommand(words);
      if (compile) compiles.push(compile);
    }
    if (words[0] === 'rm') {
      for (const w of words.slice(1)) if (!w.startsWith('-')) outputs.push(w);
    } else if (words[0] === 'mv') {
      // `mv -f .x.o.tmp .x.o.cmd`, how the kernel's tools/ builds finish a .cmd file: both names
      // are outputs (the first one ends up absent). A file moved into a directory is not
      // followed; nor is one the script did not write itself, whose old content is an input.
      const names = words.slice(1).filter((w) => !w.startsWith('-'));
      if (names.length !== 2 || names[1].endsWith('/') || !truncated.has(normalize(names[0]))) return undefined;
      outputs.push(...names);
      truncated.add(normalize(names[1]));
    } else {
      for (const w of words) if (looksLikePath(w)) candidates.push(w);
    }
    for (const r of command.redirects) {
      if (r.target.startsWith('/dev/') || /^\d+$/.test(r.target) || r.target === '-') continue;
      if (r.op === '>' || r.op === '>|') {
        truncated.add(normalize(r.target));
        outputs.push(r.target);
      } else if (r.op === '>>') {
        // Appending to a file the script has not truncated first reads its old content.
        if (!truncated.has(normalize(r.target))) appendedFirst.add(normalize(r.target));
        outputs.push(r.target);
      } else if (r.op === '<' || r.op === '<>') {
        candidates.push(r.target);
      }
    }
  }
  if (compiles.length !== 1) return undefined;
  const compile = compiles[0];
  outputs.unshift(compile.object);
  if (compile.depfile) outputs.push(compile.depfile);
  const outputSet = new Set(outputs.map(normalize));
  return {
    script,
    compile,
    outputs: [...outputSet],
    candidateInputs: [...new Set([...candidates.map(normalize).filter((c) => !outputSet.has(c)), ...appendedFirst])],
  };
}

/** A word that could name a file: no option dash, no spaces, not a bare number. */
function looksLikePath(word: string): boolean {
  return word.length > 0 && !word.startsWith('-') && !/\s/.test(word) && !/^\d+$/.test(word) && !word.includes('=') && !word.includes('$');
}

function normalize(p: string): string {
  return p.startsWith('./') ? p.slice(2) : p;
}
