// Whether a Makefile picks its own shell. `reapi-cc make` sets SHELL to its POSIX sh front, which
// runs every recipe with /bin/sh; a Makefile that asks for bash (say) has recipes sh may not run.
// Such a make is left alone. Only the makefiles make reads first are looked at: a SHELL set in
// an included one is not seen. Pure but for reading the files.
import { readFileSync } from 'node:fs';
import * as path from 'node:path';

/**
 * `SHELL = ...` in any of make's assignment forms, with `override` or `export` before it; not a
 * tab-indented line, which is a recipe's (`\tSHELL=bash ./configure` sets a command's variable).
 */
const SHELL_ASSIGNMENT = /^ *(?:(?:override|export)[ \t]+)*SHELL[ \t]*(?::::=|::=|:=|\+=|\?=|!=|=)[ \t]*(.*)$/gm;
/** Values that are still a POSIX sh: the front's own /bin/sh runs their recipes the same. */
const POSIX_SH = /^(?:\/bin\/|\/usr\/bin\/)?(?:sh|dash)$/;

export interface ShellChoice {
  /** Where: file and line. */
  where: string;
  value: string;
}

/** The first assignment of SHELL to something other than a plain POSIX sh in the makefile's text. */
export function otherShellIn(text: string, file: string): ShellChoice | undefined {
  for (const m of text.matchAll(SHELL_ASSIGNMENT)) {
    const value = m[1].replace(/[ \t]*#.*$/, '').trim();
    if (POSIX_SH.test(value)) continue;
    const line = text.slice(0, m.index).split('\n').length;
    return { where: `${file}:${line}`, value };
  }
  return undefined;
}

/**
 * The other shell the makefiles make starts from ask for: those named with -f/--file/--makefile,
 * else the first of GNUmakefile, makefile and Makefile in its directory.
 */
export function makefileShell(dir: string, makeArgs: string[]): ShellChoice | undefined {
  const named: string[] = [];
  for (let i = 0; i < makeArgs.length; i++) {
    const a = makeArgs[i];
    if (a === '-f' || a === '--file' || a === '--makefile') named.push(makeArgs[++i] ?? '');
    else if (/^--(?:file|makefile)=/.test(a)) named.push(a.slice(a.indexOf('=') + 1));
    else if (/^-f./.test(a)) named.push(a.slice(2));
  }
  const candidates = named.length > 0 ? named : ['GNUmakefile', 'makefile', 'Makefile'];
  for (const name of candidates) {
    let text: string;
    try {
      text = readFileSync(path.resolve(dir, name), 'utf8');
    } catch {
      continue;
    }
    const choice = otherShellIn(text, name);
    if (choice) return choice;
    if (named.length === 0) return undefined; // make reads only the first that exists
  }
  return undefined;
}
