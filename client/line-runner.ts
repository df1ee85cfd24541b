// The POSIX sh code that runs a .ONESHELL script line by line, as make runs recipe lines without
// .ONESHELL: each line in its own (sub)shell, and the first line that fails ends the recipe with
// its status. reapi-cc turns .ONESHELL on only so that one object's whole rule arrives in one
// SHELL call; this keeps the lines' meaning unchanged. Lines ending in a backslash continue.
//
// Used in two places that must agree: the shell shim (local runs) and the remote Command.

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

/** argv for running `script` with per-line semantics. */
export function lineRunnerArgv(script: string): string[] {
  return ['/bin/sh', '-c', LINE_RUNNER, 'sh', script];
}
