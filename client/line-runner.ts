// The POSIX sh code that runs a .ONESHELL script line by line, as make runs recipe lines without
// .ONESHELL: each line in its own (sub)shell, and the first line that fails ends the recipe with
// its status. reapi-cc turns .ONESHELL on only so that one object's whole rule arrives in one
// SHELL call; this keeps the lines' meaning unchanged. Lines ending in a backslash continue.
//
// Used in two places that must agree: the shell shim (local runs) and the remote Command.
import { lexScript } from './shell-words';

/** Expects the script in $1. Variables are prefixed so scripts do not see ordinary names change. */
export const LINE_RUNNER = [
  '__reapi_rest=$1 __reapi_line= __reapi_last= __reapi_nl=\'',
  "'",
  'set --',
  'while :; do',
  '  case $__reapi_rest in',
  '    *"$__reapi_nl"*) __reapi_part=${__reapi_rest%%"$__reapi_nl"*}; __reapi_rest=${__reapi_rest#*"$__reapi_nl"} ;;',
  '    *) __reapi_part=$__reapi_rest; __reapi_last=1 ;;',
  '  esac',
  '  __reapi_line=$__reapi_line$__reapi_part',
  '  case $__reapi_part in *\\\\) if [ -z "$__reapi_last" ]; then __reapi_line=$__reapi_line$__reapi_nl; continue; fi ;; esac',
  // Not `( ... ) || exit`: inside an || list the shell ignores the line's own `set -e`.
  '  ( eval "$__reapi_line" )',
  '  __reapi_status=$?',
  '  if [ "$__reapi_status" -ne 0 ]; then exit "$__reapi_status"; fi',
  '  __reapi_line=',
  '  if [ -n "$__reapi_last" ]; then exit 0; fi',
  'done',
].join('\n');

/** Signals kbuild's trap-only lines name; a trap line naming anything else is not a no-op. */
export const TRAP_SIGNALS = ['HUP', 'INT', 'QUIT', 'TERM', 'PIPE', 'EXIT'];

/** argv for running `script` with per-line semantics, without the lines that cannot change anything. */
export function lineRunnerArgv(script: string): string[] {
  return ['/bin/sh', '-c', LINE_RUNNER, 'sh', withoutNoOpLines(script)];
}

/**
 * The script without its no-op lines: `:`, `set -e` and `trap '...' SIG` statements only. Each
 * line runs in a subshell of its own, so what such a line sets ends with it; kbuild's object
 * rules carry six of them (one per step the configuration leaves out), and each would cost the
 * action a shell fork. The compiled front drops the same lines for local runs. Pure.
 */
export function withoutNoOpLines(script: string): string {
  const kept: string[] = [];
  let logical: string[] = [];
  for (const line of script.split('\n')) {
    logical.push(line);
    if (line.endsWith('\\')) continue; // continued on the next line
    const text = logical.join('\n');
    logical = [];
    if (!isNoOpLine(text)) kept.push(text);
  }
  if (logical.length) kept.push(logical.join('\n'));
  return kept.length ? kept.join('\n') : ':';
}

function isNoOpLine(line: string): boolean {
  if (!/^[\s;]*(?::|set|trap)(?![^\s;])/.test(line)) return false; // most lines: no need to lex them
  const lexed = lexScript(line);
  if (lexed.hasSubstitution) return false;
  return lexed.commands.every(({ words, redirects }) => {
    if (redirects.length > 0) return false;
    if (words.length === 0) return true;
    if (words[0] === ':') return words.length === 1;
    if (words[0] === 'set') return words.length === 2 && words[1] === '-e';
    return words[0] === 'trap' && words.length >= 3 && words.slice(2).every((sig) => TRAP_SIGNALS.includes(sig));
  });
}
