#!/usr/bin/env node
// reapi-cc: runs kernel-style per-object recipes as cached remote actions.
//
//   reapi-cc [--server URL] [--image IMAGE] [--root DIR] make [make arguments]
//   reapi-cc [--server URL] gcc ... -c -o x.o x.c      (compiler wrapper, as in make CC="reapi-cc gcc")
//   reapi-cc --stats | --zero-stats | --explain OBJECT [--root DIR]
import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { growHeapGenerously } from '../bin/heap-growth';
import { parseCompileCommand } from './compile-args';
import { ClientConfig, embeddedDataDir, loadConfig } from './config';
import { inTree } from './input-discovery';
import { makefileShell } from './makefile-shell';
import { ManifestStore } from './manifest-store';
import type { ReapiCalls } from './remote-executor';
import { MakeSession } from './session-server';
import { formatCounters, readCounters, zeroCounters } from './stats';

const USAGE = `usage:
  reapi-cc [options] make [make arguments]   build with every object pipeline as one cached remote action
  reapi-cc [options] COMPILER ARGS...        wrap one compile (make CC="reapi-cc gcc")
  reapi-cc --stats | --zero-stats            show or reset the counters
  reapi-cc --explain OBJECT                  why OBJECT's last lookup missed
options:
  --server URL   REAPI server, grpc://HOST:PORT (default $REAPI_SERVER, else embedded: a farm inside
                 reapi-cc, its data under the state directory; embedded:DIR puts it in DIR)
  --image IMAGE  container-image of the actions (default $REAPI_CC_IMAGE or docker://reapi-toolchain:bookworm)
  --root DIR     the tree: input root and the absolute path actions run at (default: make's directory)
environment: REAPI_CC_STATE (state directory), REAPI_CC_ENV (extra environment variables actions get),
  REAPI_CC_WORKER_SLOTS (actions the embedded farm runs at once; default: number of CPUs)`;

interface Options {
  server?: string;
  image?: string;
  root?: string;
}

async function main(argv: string[]): Promise<number> {
  const opts: Options = {};
  let i = 0;
  for (; i < argv.length; i++) {
    const a = argv[i];
    const value = (name: string): string => {
      if (a.startsWith(`${name}=`)) return a.slice(name.length + 1);
      const v = argv[++i];
      if (v === undefined) throw new Error(`${name} needs a value`);
      return v;
    };
    if (a === '--server' || a.startsWith('--server=')) opts.server = value('--server');
    else if (a === '--image' || a.startsWith('--image=')) opts.image = value('--image');
    else if (a === '--root' || a.startsWith('--root=')) opts.root = path.resolve(value('--root'));
    else break;
  }
  const rest = argv.slice(i);
  const config = loadConfig(opts);
  const command = rest[0];
  switch (command) {
    case undefined:
    case '--help':
    case '-h':
      process.stdout.write(USAGE + '\n');
      return command ? 0 : 2;
    case '--stats':
    case '-s':
      process.stdout.write(formatCounters(await readCounters(config.stateDir)) + '\n');
      return 0;
    case '--zero-stats':
    case '-z':
      await zeroCounters(config.stateDir);
      return 0;
    case '--explain':
      return explain(config, opts.root ?? process.env.REAPI_CC_ROOT ?? process.cwd(), rest[1]);
    case 'make':
    case 'gmake':
      return runMake(config, opts, rest);
    default:
      return wrapCompiler(config, opts, rest);
  }
}

/**
 * Everything one process needs to run object pipelines; `finish` saves state and counters. Loaded
 * on first use: a no-op build never sends a job, and gRPC alone costs ~0.1 s of CPU to load.
 */
async function openRunner(config: ClientConfig) {
  const { RemoteExecutor } = require('./remote-executor') as typeof import('./remote-executor');
  const { DigestCache } = require('./digest-cache') as typeof import('./digest-cache');
  const { ObjectRunner } = require('./object-job') as typeof import('./object-job');
  const { IncludeScanner } = require('./include-scanner') as typeof import('./include-scanner');
  const { emptyCounters, recordCounters } = require('./stats') as typeof import('./stats');
  const calls = await connect(config);
  const executor = new RemoteExecutor(calls);
  const digests = await DigestCache.open(path.join(config.stateDir, 'digests.json'));
  const { BacklogGate } = require('./backlog-gate') as typeof import('./backlog-gate');
  const counters = emptyCounters();
  // Jobs wait while a farm in this process has one action queued beyond all its worker takes,
  // and all go on when fewer than its slots are in flight. A server's capacity is not known
  // here: its jobs never wait.
  const taken = calls.farmActionsTaken;
  const gate = taken === undefined ? new BacklogGate(Infinity) : new BacklogGate(taken + 1, config.workerSlots);
  const runner = new ObjectRunner(
    config, executor, digests, new ManifestStore(config.stateDir), counters, (line) => process.stderr.write(line + '\n'), new IncludeScanner(digests), gate,
  );
  return {
    runner,
    async finish() {
      counters.bytesUploaded += executor.bytesUploaded;
      counters.bytesDownloaded += executor.bytesDownloaded;
      await Promise.all([executor.close(), digests.save(), recordCounters(config.stateDir, counters)]);
    },
  };
}

/** The calls to the farm: to a server over gRPC, or to one in this process (`embedded[:DIR]`). */
async function connect(config: ClientConfig): Promise<ReapiCalls> {
  const embedded = embeddedDataDir(config);
  if (embedded === undefined) {
    const { GrpcCalls } = require('./grpc-calls') as typeof import('./grpc-calls');
    return new GrpcCalls(config.serverUrl);
  }
  const { openEmbeddedFarm } = require('../server/embedded-farm') as typeof import('../server/embedded-farm');
  const { InProcessCalls } = require('./in-process-calls') as typeof import('./in-process-calls');
  const farm = await openEmbeddedFarm({ dataDir: embedded, concurrency: config.workerSlots, defaultImage: config.image });
  return new InProcessCalls(farm);
}

async function runMake(config: ClientConfig, opts: Options, makeArgv: string[]): Promise<number> {
  const makeDir = path.resolve(makeDirectory(makeArgv.slice(1)) ?? '.');
  const otherShell = makefileShell(makeDir, makeArgv.slice(1));
  if (otherShell) {
    process.stderr.write(`reapi-cc: warning: ${otherShell.where} sets SHELL to ${otherShell.value}, not a POSIX sh: make runs as is, nothing cached\n`);
    return runChild(makeArgv[0], makeArgv.slice(1), process.env);
  }
  const root = opts.root ?? process.env.REAPI_CC_ROOT ?? makeDir;
  let opened: ReturnType<typeof openRunner> | undefined;
  const session = await MakeSession.start({
    root,
    stateDir: config.stateDir,
    run: async (job) => (await (opened ??= openRunner(config))).runner.run(job),
    warn: (l) => process.stderr.write(l + '\n'),
  });
  // SHELL on the command line reaches sub-makes through MAKEFLAGS, and so does --eval. Some
  // sub-makes start from an empty MAKEFLAGS (the kernel's tools/ builds: objtool, libsubcmd);
  // every make also reads the makefiles named in MAKEFILES, so the SHELL set there reaches them.
  const args = [`SHELL=${session.shellPath}`, '--eval=.ONESHELL:', ...makeArgv.slice(1)];
  const shellMakefile = path.join(session.dir, 'shell.mk');
  writeFileSync(shellMakefile, `SHELL := ${session.shellPath}\n`);
  const makefiles = [shellMakefile, ...(process.env.MAKEFILES ?? '').split(/\s+/).filter(Boolean)].join(' ');
  const code = await runChild(makeArgv[0], args, { ...process.env, REAPI_CC_SESSION: session.dir, MAKEFILES: makefiles });
  await session.close();
  if (opened) await (await opened).finish();
  return code;
}

/** The directory make will run in (-C DIR, -CDIR, --directory=DIR; the last one relative to the previous). */
function makeDirectory(args: string[]): string | undefined {
  let dir: string | undefined;
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    let d: string | undefined;
    if (a === '-C' || a === '--directory') d = args[++i];
    else if (a.startsWith('--directory=')) d = a.slice('--directory='.length);
    else if (a.startsWith('-C')) d = a.slice(2);
    if (d !== undefined) dir = dir ? path.resolve(dir, d) : d;
  }
  return dir;
}

async function wrapCompiler(config: ClientConfig, opts: Options, argv: string[]): Promise<number> {
  const compile = parseCompileCommand(argv);
  if (!compile) return runChild(argv[0], argv.slice(1), process.env);
  const root = opts.root ?? process.env.REAPI_CC_ROOT ?? process.cwd();
  const { runner, finish } = await openRunner(config);
  try {
    const outcome = await runner.run({
      root,
      cwd: process.cwd(),
      argv,
      compile,
      outputs: [compile.object, ...(compile.depfile ? [compile.depfile] : [])],
      candidates: [],
      env: process.env,
    });
    if (outcome.kind === 'replay') {
      process.stdout.write(outcome.stdout);
      process.stderr.write(outcome.stderr);
      return outcome.exitCode;
    }
    return await runChild(argv[0], argv.slice(1), process.env);
  } finally {
    await finish();
  }
}

async function explain(config: ClientConfig, root: string, objectArg: string | undefined): Promise<number> {
  if (!objectArg) throw new Error('--explain needs an object path');
  const object = inTree(path.resolve(root), path.resolve(objectArg));
  const manifest = object ? await new ManifestStore(config.stateDir).load(path.resolve(root), object) : undefined;
  if (!manifest) {
    process.stdout.write(`${objectArg}: no lookup recorded (not built with reapi-cc under ${root}?)\n`);
    return 1;
  }
  const { hit, reasons } = manifest.lastLookup;
  process.stdout.write(`${manifest.object}: last lookup ${hit ? 'hit' : 'missed'} (action ${manifest.actionDigest.slice(0, 16)})\n`);
  for (const r of reasons) process.stdout.write(`  ${r}\n`);
  if (!hit && reasons.length === 0) process.stdout.write('  same key as the previous build, but the cache no longer had its result\n');
  return 0;
}

function runChild(file: string, args: string[], env: NodeJS.ProcessEnv): Promise<number> {
  return new Promise((resolve) => {
    const child = spawn(file, args, { stdio: 'inherit', env });
    // make gets ^C itself (same process group); we only wait for it.
    const ignore = () => undefined;
    process.on('SIGINT', ignore);
    child.on('error', (err) => {
      process.stderr.write(`reapi-cc: ${file}: ${err.message}\n`);
      resolve(127);
    });
    child.on('close', (code, signal) => {
      process.off('SIGINT', ignore);
      resolve(code ?? 128 + (signal ? (os.constants.signals[signal] ?? 1) : 1));
    });
  });
}

growHeapGenerously();
main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`reapi-cc: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(2);
  },
);
