#!/usr/bin/env node
// The reapi command: `reapi serve` runs a server (by default with a Docker worker inside),
// `reapi worker` a standalone worker of a farm that shares one Redis, `reapi token` makes and
// hashes tokens for `reapi serve --tokens`.
import { ENVIRONMENT_USAGE } from './options';
import { SERVE_USAGE, serve } from './serve';
import { WORKER_COMMAND_USAGE, worker } from './worker';
import { TOKEN_USAGE, token } from './token';

const USAGE = `usage:
${SERVE_USAGE}

${WORKER_COMMAND_USAGE}

${TOKEN_USAGE}

${ENVIRONMENT_USAGE}`;

async function main(): Promise<void> {
  const [command, ...rest] = process.argv.slice(2);
  switch (command) {
    case 'serve':
      return serve(rest);
    case 'worker':
      return worker(rest);
    case 'token':
      return token(rest);
    case undefined:
    case 'help':
    case '--help':
    case '-h':
      process.stdout.write(USAGE + '\n');
      return;
    default:
      process.stderr.write(`reapi: unknown command ${JSON.stringify(command)}\n${USAGE}\n`);
      process.exitCode = 2;
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`reapi: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
