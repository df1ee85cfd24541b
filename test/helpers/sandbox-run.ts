// Running one command in a sandbox from a test: the request (stdout and stderr in a directory of
// the test's, a PATH, a minute's timeout) and what the command printed.
import fs from 'node:fs';
import path from 'node:path';
import type { SandboxResult, SlotRunRequest } from '../../worker/sandbox/sandbox';

export const PATH_ENV = '/usr/local/bin:/usr/bin:/bin';

export interface Ran {
  result: SandboxResult;
  stdout: string;
  stderr: string;
  dir: string;
}

/** Runs `argv` with its output files in `dir` (also its cwd unless `extra` says otherwise). */
export async function runInDir(
  run: (req: SlotRunRequest) => Promise<SandboxResult>,
  dir: string,
  argv: string[],
  extra: Partial<SlotRunRequest> = {},
): Promise<Ran> {
  const req: SlotRunRequest = {
    argv,
    env: { PATH: PATH_ENV },
    cwd: dir,
    stdoutPath: path.join(dir, 'stdout'),
    stderrPath: path.join(dir, 'stderr'),
    timeoutMs: 60_000,
    ...extra,
  };
  const result = await run(req);
  return { result, stdout: fs.readFileSync(req.stdoutPath, 'utf8'), stderr: fs.readFileSync(req.stderrPath, 'utf8'), dir };
}
