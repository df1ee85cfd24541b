// Storage throughput of a real `reapi serve` process, measured in one run:
//   ByteStream Write and Read of a 256 MiB blob, each also as a ratio to Node's own SHA-256
//   throughput over the same bytes (the server hashes every byte it stores; goal >= 0.5),
//   BatchUpdateBlobs of 10,000 1 KiB blobs in batches of <= 4 MiB, and
//   FindMissingBlobs of 10,000 digests (median of several runs; goal <= 20 ms).
// Run: npm run build && node dist/bench/storage.js   (BENCH_MIB=64 for a quicker run;
// BENCH_DATA=/dev/shm puts the data directory there, to tell disk time from CPU time)
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';
import { bytestream, rex } from '../apis';
import { ByteStreamClient, unary } from '../apis/services';
import { MAX_BATCH_TOTAL_BYTES } from '../cas/limits';
import { ByteStreamService, createClient } from '../apis/services';
import { clientsFor } from '../test/helpers/clients';
import { startServerProcess } from '../test/helpers/server-process';

const MiB = 1024 * 1024;
const BLOB_BYTES = Number(process.env.BENCH_MIB ?? 256) * MiB;
const CHUNK = MiB;
const SMALL_COUNT = 10_000;
const SMALL_BYTES = 1024;
const FMB_RUNS = 15;

const mbps = (bytes: number, ms: number) => bytes / 1e6 / (ms / 1000);

/** CPU time (user + system) a process has used so far, in ms (Linux /proc; 0 elsewhere). */
function cpuMs(pid: number): number {
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / 100; // utime, stime in clock ticks (USER_HZ = 100)
  } catch {
    return 0;
  }
}
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const digestOf = (b: Uint8Array) => ({ hash: createHash('sha256').update(b).digest('hex'), sizeBytes: b.length });

function sha256Throughput(data: Buffer): number {
  // Same chunking as the server sees, best of three so a cold first pass does not count.
  let best = Infinity;
  for (let i = 0; i < 3; i++) {
    const t0 = performance.now();
    const h = createHash('sha256');
    for (let at = 0; at < data.length; at += CHUNK) h.update(data.subarray(at, at + CHUNK));
    h.digest();
    best = Math.min(best, performance.now() - t0);
  }
  return mbps(data.length, best);
}

function write(bs: ByteStreamClient, data: Buffer, hash: string): Promise<number> {
  const resourceName = `uploads/${randomUUID()}/blobs/${hash}/${data.length}`;
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const call = bs.Write((err, res) => {
      if (err) return reject(err);
      if (Number(res!.committedSize) !== data.length) return reject(new Error(`committed ${res!.committedSize}`));
      resolve(performance.now() - t0);
    });
    (async () => {
      for (let at = 0; at < data.length; at += CHUNK) {
        const end = Math.min(data.length, at + CHUNK);
        const req: bytestream.IWriteRequest = { resourceName: at === 0 ? resourceName : '', writeOffset: at, data: data.subarray(at, end), finishWrite: end === data.length };
        if (!call.write(req)) await new Promise((ok) => call.once('drain', ok));
      }
      call.end();
    })().catch(reject);
  });
}

async function read(bs: ByteStreamClient, hash: string, size: number): Promise<number> {
  const t0 = performance.now();
  let n = 0;
  for await (const res of bs.Read({ resourceName: `blobs/${hash}/${size}` }) as AsyncIterable<bytestream.ReadResponse>) {
    n += res.data.length;
  }
  const ms = performance.now() - t0;
  if (n !== size) throw new Error(`read ${n} bytes, expected ${size}`);
  return ms;
}

async function main(): Promise<void> {
  const dataDir = process.env.BENCH_DATA ? mkdtempSync(path.join(process.env.BENCH_DATA, 'reapi-bench-')) : undefined;
  const server = await startServerProcess({ dataDir }).catch((err) => {
    if (dataDir) rmSync(dataDir, { recursive: true, force: true });
    throw err;
  });
  const c = clientsFor(server.address);
  // A client with a 16 MiB HTTP/2 receive window, as real REAPI clients use (grpc-java tunes its
  // window up by BDP); grpc-js's 64 KiB default would make the read figure measure the client.
  const bs = createClient(ByteStreamService, server.address, undefined, {
    'grpc.max_receive_message_length': 64 * MiB,
    'grpc-node.flow_control_window': 16 * MiB,
  });
  const pid = server.child.pid!;
  const rows: [string, string, string, string, string][] = [];
  try {
    // ---- ByteStream, 256 MiB
    const big = randomBytes(BLOB_BYTES);
    const bigHash = digestOf(big).hash;
    const shaMBps = sha256Throughput(big);
    const cpu0 = cpuMs(pid);
    const writeMs = await write(bs, big, bigHash);
    const cpu1 = cpuMs(pid);
    const readMs = await read(bs, bigHash, big.length);
    const cpu2 = cpuMs(pid);
    const w = mbps(big.length, writeMs);
    const r = mbps(big.length, readMs);
    const sizeLabel = `${BLOB_BYTES / MiB} MiB`;
    const shaMs = (big.length / 1e6 / shaMBps) * 1000;
    const cpuNote = (ms: number) => (ms > 0 ? `server CPU ${ms.toFixed(0)} ms (sha256 alone ${shaMs.toFixed(0)} ms)` : '');
    rows.push([`sha256 in this process (${sizeLabel})`, `${shaMBps.toFixed(0)} MB/s`, '', '', '']);
    rows.push([`ByteStream Write ${sizeLabel}, 1 MiB chunks`, `${w.toFixed(0)} MB/s`, `${(w / shaMBps).toFixed(2)} x sha256`, ok(w / shaMBps >= 0.5, '>= 0.5'), cpuNote(cpu1 - cpu0)]);
    rows.push([`ByteStream Read ${sizeLabel}`, `${r.toFixed(0)} MB/s`, `${(r / shaMBps).toFixed(2)} x sha256`, ok(r / shaMBps >= 0.5, '>= 0.5'), cpuNote(cpu2 - cpu1)]);

    // ---- BatchUpdateBlobs, 10,000 x 1 KiB
    const small = Array.from({ length: SMALL_COUNT }, () => randomBytes(SMALL_BYTES));
    const digests = small.map(digestOf);
    const perBatch = Math.floor(MAX_BATCH_TOTAL_BYTES / SMALL_BYTES);
    const t0 = performance.now();
    for (let i = 0; i < small.length; i += perBatch) {
      const requests = small.slice(i, i + perBatch).map((data, j) => ({ digest: digests[i + j], data }));
      const res = await unary(c.cas, 'BatchUpdateBlobs', { requests });
      if (res.responses.some((x) => (x.status?.code ?? 0) !== 0)) throw new Error('BatchUpdateBlobs refused a blob');
    }
    const batchMs = performance.now() - t0;
    rows.push([`BatchUpdateBlobs ${SMALL_COUNT} x 1 KiB (${perBatch}/batch)`, `${((SMALL_COUNT / batchMs) * 1000).toFixed(0)} blobs/s`, `${batchMs.toFixed(0)} ms total`, '', '']);

    // ---- FindMissingBlobs, 10,000 digests
    const timeFmb = async (ds: rex.IDigest[], expectMissing: number) => {
      const times: number[] = [];
      for (let i = 0; i < FMB_RUNS; i++) {
        const t = performance.now();
        const res = await unary(c.cas, 'FindMissingBlobs', { blobDigests: ds });
        times.push(performance.now() - t);
        if (res.missingBlobDigests.length !== expectMissing) throw new Error(`FindMissingBlobs: ${res.missingBlobDigests.length} missing, expected ${expectMissing}`);
      }
      return median(times);
    };
    const present = await timeFmb(digests, 0);
    const absent = Array.from({ length: SMALL_COUNT }, () => digestOf(randomBytes(16)));
    const mixed = digests.slice(0, SMALL_COUNT / 2).concat(absent.slice(0, SMALL_COUNT / 2));
    const allAbsent = await timeFmb(absent, SMALL_COUNT);
    const half = await timeFmb(mixed, SMALL_COUNT / 2);
    rows.push([`FindMissingBlobs ${SMALL_COUNT}, all present`, `${present.toFixed(1)} ms`, `median of ${FMB_RUNS}`, ok(present <= 20, '<= 20 ms'), '']);
    rows.push([`FindMissingBlobs ${SMALL_COUNT}, half missing`, `${half.toFixed(1)} ms`, `median of ${FMB_RUNS}`, ok(half <= 20, '<= 20 ms'), '']);
    rows.push([`FindMissingBlobs ${SMALL_COUNT}, all missing`, `${allAbsent.toFixed(1)} ms`, `median of ${FMB_RUNS}`, ok(allAbsent <= 20, '<= 20 ms'), '']);
  } finally {
    c.close();
    bs.close();
    await server.stop();
    rmSync(server.dataDir, { recursive: true, force: true });
  }
  const widths = [0, 1, 2, 3, 4].map((i) => Math.max(...rows.map((r) => r[i].length), 4));
  process.stdout.write('storage benchmark (real `reapi serve`, one run)\n');
  for (const row of rows) process.stdout.write(row.map((cell, i) => cell.padEnd(widths[i])).join('  ').trimEnd() + '\n');
}

function ok(met: boolean, goal: string): string {
  return `${met ? 'meets' : 'MISSES'} goal ${goal}`;
}

main().catch((err) => {
  process.stderr.write(`bench/storage: ${err instanceof Error ? err.stack : String(err)}\n`);
  process.exit(1);
});
