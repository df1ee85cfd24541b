// Fuzzing every method of a real `reapi serve` with mutated encodings of valid requests, sent as
// raw bytes: bit flips, truncations, splices (also across methods), inserted and random bytes.
// For each: the call ends before its deadline with a status that is not a server failure, the
// server keeps answering, and its memory stays bounded. Seeded: FUZZ_SEED=<n> repeats a run,
// FUZZ_ROUNDS=<n> changes the count per method (default 300).
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { bytestream, longrunning, rex } from '../apis';
import { ExecutionService, createClient, unary } from '../apis/services';
import { blob, buildAction, execute, upload } from './helpers/actions';
import { clientsFor } from './helpers/clients';
import { RAW_METHODS, RawClient, prng, rssBytes } from './helpers/raw-grpc';
import { ServerProcess, startServerProcess } from './helpers/server-process';
import { noDocker } from './helpers/docker';

const SEED = process.env.FUZZ_SEED ? Number(process.env.FUZZ_SEED) : Date.now() % 2 ** 31;
const ROUNDS = process.env.FUZZ_ROUNDS ? Number(process.env.FUZZ_ROUNDS) : 300;
/** Calls in flight at once. */
const PARALLEL = 16;
const CALL_DEADLINE_MS = 60_000;
const RSS_GROWTH_BOUND = 300 * 1024 * 1024;

/** Statuses that mean the server broke, hung or went away rather than refused the request. */
const FAILURES = new Set([grpc.status.INTERNAL, grpc.status.UNKNOWN, grpc.status.UNAVAILABLE, grpc.status.DEADLINE_EXCEEDED, grpc.status.DATA_LOSS]);

const docker = !noDocker;

let server: ServerProcess;
let c: ReturnType<typeof clientsFor>;
let raw: RawClient;
/** Per method, valid encoded requests (client streams: the messages of one stream). */
const corpus = new Map<string, Buffer[][]>();

before(async () => {
  server = await startServerProcess({ args: ['--worker', docker ? 'on' : 'off', '--concurrency', '2', '--write-idle-seconds', '5'] });
  c = clientsFor(server.address);
  raw = new RawClient(server.address);

  const file = blob('fuzz input file\n');
  const sub = blob(rex.Directory.encode({ files: [{ name: 'f', digest: file.digest }] }).finish());
  const root = blob(rex.Directory.encode({ directories: [{ name: 'd', digest: sub.digest }], files: [{ name: 'top', digest: file.digest, isExecutable: true }], symlinks: [{ name: 'l', target: 'd/f' }] }).finish());
  await upload(c.cas, [file, sub, root]);
  const action = buildAction({ args: ['true'], salt: `fuzz-${SEED}` });
  await upload(c.cas, action.blobs);
  let operation = 'operations/00000000-0000-0000-0000-000000000000';
  if (docker) {
    const exec = createClient(ExecutionService, server.address);
    const ops = await execute(exec, { actionDigest: action.actionDigest, skipCacheLookup: true });
    operation = ops[ops.length - 1]!.name;
    exec.close();
  }
  const result = rex.ActionResult.encode({ outputFiles: [{ path: 'out/f', digest: file.digest }], exitCode: 0, stdoutDigest: file.digest }).finish();
  const d = file.digest;
  const enc = <T>(type: { encode(m: T): { finish(): Uint8Array } }, m: T) => Buffer.from(type.encode(m).finish());
  const add = (method: string, ...requests: Buffer[]) => corpus.set(method, [...(corpus.get(method) ?? []), requests]);

  add('GetCapabilities', enc(rex.GetCapabilitiesRequest, { instanceName: '' }), enc(rex.GetCapabilitiesRequest, { instanceName: 'a/b' }));
  add('FindMissingBlobs', enc(rex.FindMissingBlobsRequest, { blobDigests: [d, sub.digest, { hash: d.hash, sizeBytes: 99 }], digestFunction: rex.DigestFunction.Value.SHA256 }));
  add('BatchUpdateBlobs', enc(rex.BatchUpdateBlobsRequest, { requests: [{ digest: d, data: file.data }, { digest: sub.digest, data: sub.data }] }));
  add('BatchReadBlobs', enc(rex.BatchReadBlobsRequest, { digests: [d, root.digest], acceptableCompressors: [rex.Compressor.Value.ZSTD] }));
  add('GetTree', enc(rex.GetTreeRequest, { rootDigest: root.digest, pageSize: 1 }), enc(rex.GetTreeRequest, { rootDigest: root.digest, pageToken: `${root.digest.hash.slice(0, 16)}:1` }));
  add('SplitBlob', enc(rex.SplitBlobRequest, { blobDigest: d }));
  add('SpliceBlob', enc(rex.SpliceBlobRequest, { blobDigest: d, chunkDigests: [d] }));
  add('GetActionResult', enc(rex.GetActionResultRequest, { actionDigest: action.actionDigest, inlineStdout: true, inlineOutputFiles: ['out/f'] }));
  add('UpdateActionResult', enc(rex.UpdateActionResultRequest, { actionDigest: { hash: file.digest.hash, sizeBytes: file.digest.sizeBytes }, actionResult: rex.ActionResult.decode(result) }));
  add('Execute', enc(rex.ExecuteRequest, { actionDigest: action.actionDigest, executionPolicy: { priority: 1 } }));
  add('WaitExecution', enc(rex.WaitExecutionRequest, { name: operation }));
  add('Read', enc(bytestream.ReadRequest, { resourceName: `blobs/${d.hash}/${d.sizeBytes}`, readOffset: 2, readLimit: 5 }), enc(bytestream.ReadRequest, { resourceName: `compressed-blobs/zstd/${d.hash}/${d.sizeBytes}` }));
  add(
    'Write',
    enc(bytestream.WriteRequest, { resourceName: `uploads/fuzz/blobs/${d.hash}/${d.sizeBytes}`, writeOffset: 0, data: file.data.subarray(0, 5) }),
    enc(bytestream.WriteRequest, { writeOffset: 5, data: file.data.subarray(5), finishWrite: true }),
  );
  add('QueryWriteStatus', enc(bytestream.QueryWriteStatusRequest, { resourceName: `uploads/fuzz/blobs/${d.hash}/${d.sizeBytes}` }));
  add('GetOperation', enc(longrunning.GetOperationRequest, { name: operation }));
  add('ListOperations', enc(longrunning.ListOperationsRequest, { name: 'operations', pageSize: 5, filter: '' }));
  add('CancelOperation', enc(longrunning.CancelOperationRequest, { name: operation }));
  add('DeleteOperation', enc(longrunning.DeleteOperationRequest, { name: `${operation}x` }));
  add('WaitOperation', enc(longrunning.WaitOperationRequest, { name: operation, timeout: { seconds: 1 } }));
  for (const name of Object.keys(RAW_METHODS)) assert.ok(corpus.has(name), `no valid request for ${name}`);
});

after(async () => {
  c?.close();
  raw?.close();
  await server?.stop();
  if (server) rmSync(server.dataDir, { recursive: true, force: true });
});

type Mutation = (input: Buffer, rand: () => number, others: Buffer[]) => Buffer;

const int = (rand: () => number, n: number) => Math.floor(rand() * n);
const randomBytesFrom = (rand: () => number, n: number) => Buffer.from(Array.from({ length: n }, () => int(rand, 256)));
const INTERESTING = [0x00, 0x01, 0x7f, 0x80, 0xff, 0x0a, 0x12, 0x08];

const MUTATIONS: Record<string, Mutation> = {
  bitFlips(input, rand) {
    const out = Buffer.from(input);
    if (out.length === 0) return out;
    for (let i = 1 + int(rand, 8); i > 0; i--) out[int(rand, out.length)]! ^= 1 << int(rand, 8);
    return out;
  },
  truncate: (input, rand) => input.subarray(0, int(rand, input.length + 1)),
  dropPrefix: (input, rand) => input.subarray(int(rand, input.length + 1)),
  splice(input, rand, others) {
    const other = others[int(rand, others.length)]!;
    return Buffer.concat([input.subarray(0, int(rand, input.length + 1)), other.subarray(int(rand, other.length + 1))]);
  },
  insertBytes(input, rand) {
    const at = int(rand, input.length + 1);
    return Buffer.concat([input.subarray(0, at), randomBytesFrom(rand, 1 + int(rand, 32)), input.subarray(at)]);
  },
  duplicateChunk(input, rand) {
    const a = int(rand, input.length + 1);
    const b = a + int(rand, input.length - a + 1);
    return Buffer.concat([input.subarray(0, b), input.subarray(a, b), input.subarray(a, b), input.subarray(b)]);
  },
  interestingBytes(input, rand) {
    const out = Buffer.from(input);
    for (let i = 1 + int(rand, 4); i > 0 && out.length > 0; i--) out[int(rand, out.length)] = INTERESTING[int(rand, INTERESTING.length)]!;
    return out;
  },
  varintBomb(input, rand) {
    const at = int(rand, input.length + 1);
    return Buffer.concat([input.subarray(0, at), Buffer.alloc(1 + int(rand, 12), 0xff), input.subarray(at)]);
  },
  randomBytes: (_input, rand) => randomBytesFrom(rand, int(rand, 1024)),
  empty: () => Buffer.alloc(0),
};
const MUTATION_NAMES = Object.keys(MUTATIONS);

test(`every method survives ${ROUNDS} mutated requests each (seed ${SEED})`, { timeout: 30 * 60_000 }, async (t) => {
  t.diagnostic(`fuzz seed ${SEED}: repeat with FUZZ_SEED=${SEED}`);
  console.log(`fuzz seed ${SEED}: repeat with FUZZ_SEED=${SEED}`);
  const pid = server.child.pid!;
  const allValid = [...corpus.values()].flat(2);
  // Warm-up: one valid round, so lazily built state is not counted as growth.
  for (const [name, requests] of corpus) for (const r of requests) await raw.call(RAW_METHODS[name]!, RAW_METHODS[name]!.kind === 'client-stream' ? r : r[0]!, CALL_DEADLINE_MS);
  const rssBefore = rssBytes(pid);
  const failures: string[] = [];
  const codes = new Map<string, Map<string, number>>();

  for (const [name, method] of Object.entries(RAW_METHODS)) {
    const rand = prng(SEED ^ hashName(name));
    const valid = corpus.get(name)!;
    const jobs = Array.from({ length: ROUNDS }, (_, i) => {
      const base = valid[int(rand, valid.length)]!;
      const mutation = MUTATION_NAMES[int(rand, MUTATION_NAMES.length)]!;
      // Client streams: mutate one message of the stream, keep the others.
      const which = int(rand, base.length);
      const mutated = MUTATIONS[mutation]!(base[which]!, rand, allValid);
      const messages = base.map((m, j) => (j === which ? mutated : m));
      return { i, mutation, request: method.kind === 'client-stream' ? messages : messages[0]! };
    });
    const seen = new Map<string, number>();
    codes.set(name, seen);
    for (let at = 0; at < jobs.length; at += PARALLEL) {
      await Promise.all(
        jobs.slice(at, at + PARALLEL).map(async (job) => {
          const out = await raw.call(method, job.request, CALL_DEADLINE_MS);
          const code = grpc.status[out.code]!;
          seen.set(code, (seen.get(code) ?? 0) + 1);
          if (FAILURES.has(out.code)) {
            const bytes = (Array.isArray(job.request) ? job.request : [job.request]).map((b) => b.toString('hex')).join(' | ');
            failures.push(`${name} #${job.i} (${job.mutation}): ${code} ${out.details} [request ${bytes.slice(0, 400)}]`);
          }
        }),
      );
    }
    assert.equal(server.child.exitCode, null, `server exited while fuzzing ${name} (seed ${SEED})`);
  }
  for (const [name, seen] of codes) t.diagnostic(`${name}: ${[...seen].map(([k, v]) => `${k} ${v}`).join(', ')}`);
  assert.deepEqual(failures.slice(0, 20), [], `seed ${SEED}: ${failures.length} calls failed or hung`);

  // Still serving: a valid round succeeds.
  const data = Buffer.from(`after fuzzing ${SEED}`);
  await upload(c.cas, [blob(data)]);
  const back = await unary(c.cas, 'BatchReadBlobs', { digests: [blob(data).digest] });
  assert.deepEqual(Buffer.from(back.responses[0]!.data ?? []), data);
  const grown = rssBytes(pid) - rssBefore;
  t.diagnostic(`server RSS ${Math.round(rssBefore / 2 ** 20)} MiB before, grew by ${Math.round(grown / 2 ** 20)} MiB`);
  assert.ok(grown < RSS_GROWTH_BOUND, `server RSS grew by ${grown} bytes (seed ${SEED})`);
  assert.doesNotMatch(server.stderr(), /uncaught|unhandled|heap out of memory/i);
});

function hashName(name: string): number {
  let h = 2166136261;
  for (const ch of name) h = Math.imul(h ^ ch.charCodeAt(0), 16777619);
  return h >>> 0;
}
