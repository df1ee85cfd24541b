#!/usr/bin/env node
// The reapi command: `reapi serve` runs the server (embedded: filesystem CAS on one machine).
import { parseArgs } from 'node:util';
import { FileStorage } from '../cas/file-storage';
import { startServer } from '../server/reapi-server';
import { log } from '../server/log';

const USAGE = `usage:
  reapi serve [--listen HOST:PORT] [--data DIR] [--no-ac-updates]
      --listen         address to serve gRPC on (default 127.0.0.1:8980; port 0 picks a free port)
      --data           data directory for blobs and action results (default ./.data)
      --no-ac-updates  refuse UpdateActionResult: only results this farm computed are cached
environment: REAPI_LOG=debug|info|warn|error (default warn)`;

async function serve(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      listen: { type: 'string', default: '127.0.0.1:8980' },
      data: { type: 'string', default: '.data' },
      'no-ac-updates': { type: 'boolean', default: false },
    },
  });
  const listen = values.listen!;
  const host = listen.slice(0, listen.lastIndexOf(':'));
  const storage = await FileStorage.open(values.data!);
  const running = await startServer(listen, { storage, allowActionCacheUpdates: !values['no-ac-updates'] });
  process.stdout.write(`reapi: listening on ${host}:${running.port} (data ${storage.root})\n`);
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info('shutting down', { signal });
    running.shutdown().then(() => process.exit(0));
  };
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGTERM', () => stop('SIGTERM'));
}

async function main(): Promise<void> {
  const [command, ...rest] = process.argv.slice(2);
  switch (command) {
    case 'serve':
      return serve(rest);
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
