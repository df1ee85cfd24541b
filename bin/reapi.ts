#!/usr/bin/env node
// The reapi command: `reapi serve` runs a server (by default with a Docker worker inside),
// `reapi worker` a standalone worker of a farm that shares one Redis, `reapi token` makes and
// hashes tokens for `reapi serve --tokens`.
import { growHeapGenerously } from './heap-growth';
import { ENVIRONMENT_USAGE } from './options';
import type * as ServeCommand from './serve';
import type * as TokenCommand from './token';
import type * as WorkerCommand from './worker';

// Each command's module is required only when that command runs: `reapi serve` then never loads
// what only `reapi worker` needs (BullMQ and the Redis client), which shortens its startup.
const serveCommand = () => require('./serve') as typeof ServeCommand;
const workerCommand = () => require('./worker') as typeof WorkerCommand;
const tokenCommand = () => require('./token') as typeof TokenCommand;

function usage(): string {
  return `usage:
${serveCommand().SERVE_USAGE}

${workerCommand().WORKER_COMMAND_USAGE}

${tokenCommand().TOKEN_USAGE}

${ENVIRONMENT_USAGE}`;
}

async function main(): Promise<void> {
  const [command, ...rest] = process.argv.slice(2);
  switch (command) {
    case 'serve':
      return serveCommand().serve(rest);
    case 'worker':
      return workerCommand().worker(rest);
    case 'token':
      return tokenCommand().token(rest);
    case undefined:
    case 'help':
    case '--help':
    case '-h':
      process.stdout.write(usage() + '\n');
      return;
    default:
      process.stderr.write(`reapi: unknown command ${JSON.stringify(command)}\n${usage()}\n`);
      process.exitCode = 2;
  }
}

growHeapGenerously();
main().catch((err: unknown) => {
  process.stderr.write(`reapi: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
