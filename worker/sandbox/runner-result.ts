// What a runner's reply means for the worker, the same whichever sandbox (container or process)
// the runner served.
import os from 'node:os';
import path from 'node:path';
import type { RunnerReply } from './runner-protocol';
import type { SandboxResult } from './sandbox';
import { SandboxError } from './sandbox-error';

/** The action's result; throws when the runner could not even start it (bad cwd, exec failure). */
export function sandboxResultOf(reply: RunnerReply, image: string, argv0: string | undefined): SandboxResult {
  if (!reply.started) throw new SandboxError(`runner could not start the action: ${reply.message}`, { image, argv0 });
  const signal = reply.termSignal ? signalName(reply.termSignal) : undefined;
  return {
    exitCode: reply.termSignal ? 128 + reply.termSignal : reply.exitCode,
    ...(signal ? { signal } : {}),
    timedOut: reply.timedOut,
    ...(reply.outputLimitExceeded ? { outputLimitExceeded: true } : {}),
    wallMicros: reply.wallMicros,
    ...(reply.straysSurvived ? { processesSurvived: true } : {}),
  };
}

/** Whether p is root itself or an absolute path inside it. */
export function isUnder(root: string, p: string): boolean {
  return path.isAbsolute(p) && (path.resolve(p) === root || path.resolve(p).startsWith(root + path.sep));
}

const SIGNAL_NAMES = new Map(Object.entries(os.constants.signals).map(([name, num]) => [num as number, name]));

function signalName(num: number): string {
  return SIGNAL_NAMES.get(num) ?? `SIG${num}`;
}
