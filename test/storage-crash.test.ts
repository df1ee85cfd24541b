// Crash safety: SIGKILL the real server in the middle of uploads, restart it on the same data
// directory, and check that resumable state is right and that no blob is ever stored wrong.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import * as grpc from '@grpc/grpc-js';
import { bytestream } from '../apis';
import { ByteStreamClient, unary } from '../apis/services';
import { clientsFor, readAll } from './helpers/clients';
import { startServerProcess, tempDir } from './helpers/server-process';

const MiB = 1024 * 1024;
const CHUNK = 256 * 1024;
const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
const digestOf = (b: Uint8Array) => ({ hash: sha(b), sizeBytes: b.length });

const cleanups: (() => Promise<unknown> | void)[] = [];
after(async () => {
  for (const fn of cleanups.reverse()) await fn();
});

/** A server on a data dir that survives restarts; everything is removed after the test file. */
async function crashableServer() {
  const dataDir = tempDir('crash');
  let server = await startServerProcess({ dataDir });
  let c = clientsFor(server.address);
  const handle = {
    dataDir,
    get c() {
      return c;
    },
    get server() {
      return server;
    },
    async kill() {
      await server.kill();
      c.close();
    },
    async restart() {
      server = await startServerProcess({ dataDir });
      c = clientsFor(server.address);
    },
  };
  cleanups.push(async () => {
    c.close();
    await server.stop();
    rmSync(dataDir, { recursive: true, force: true });
  });
  return handle;
}

interface Upload {
  name: string;
  /** What the digest in the resource name promises. */
  claimed: Buffer;
  /** What the client actually sends (differs from claimed for dishonest uploads). */
  sent: Buffer;
}

function newUpload(claimed: Buffer, sent: Buffer = claimed): Upload {
  return { name: `uploads/${randomUUID()}/blobs/${sha(claimed)}/${claimed.length}`, claimed, sent };
}

/**
 * Streams data[from..] as one Write, chunk by chunk with backpressure. Stops sending at `holdAt`
 * until release() is called. Never hangs when the server goes away mid-stream.
 */
function startWrite(bs: ByteStreamClient, up: Upload, from: number, holdAt = Infinity) {
  let sent = from;
  let settled = false;
  let release!: () => void;
  const released = new Promise<void>((ok) => (release = ok));
  const done = new Promise<{ err?: grpc.ServiceError; res?: bytestream.WriteResponse }>((resolve) => {
    const call = bs.Write((err, res) => {
      settled = true;
      resolve({ err: err ?? undefined, res });
    });
    const ended = new Promise<void>((ok) => call.once('status', () => ok()));
    (async () => {
      const data = up.sent;
      for (let at = from; at < data.length || at === from; at += CHUNK) {
        if (at >= holdAt) await Promise.race([released, ended]);
        if (settled) return;
        const end = Math.min(data.length, at + CHUNK);
        const more = call.write({ resourceName: at === from ? up.name : '', writeOffset: at, data: data.subarray(at, end), finishWrite: end === data.length });
        sent = end;
        if (!more) await Promise.race([new Promise((ok) => call.once('drain', ok)), ended]);
        if (end === data.length) break;
      }
      if (!settled) call.end();
    })().catch(() => undefined);
  });
  return { sent: () => sent, done, release };
}

async function committed(bs: ByteStreamClient, up: Upload): Promise<{ committedSize: number; complete: boolean }> {
  const st = await unary(bs, 'QueryWriteStatus', { resourceName: up.name });
  return { committedSize: Number(st.committedSize), complete: st.complete };
}

/** Every file stored as a blob must hash to its own name. */
function assertEveryBlobFileIsRight(dataDir: string): number {
  let n = 0;
  const instances = path.join(dataDir, 'instances');
  for (const inst of readdirSync(instances)) {
    const cas = path.join(instances, inst, 'cas');
    let shards: string[] = [];
    try {
      shards = readdirSync(cas);
    } catch {
      continue;
    }
    for (const shard of shards) {
      for (const name of readdirSync(path.join(cas, shard))) {
        assert.equal(sha(readFileSync(path.join(cas, shard, name))), name, `blob file ${inst}/cas/${shard}/${name}`);
        n++;
      }
    }
  }
  return n;
}

test('SIGKILL during a 64 MiB Write: after restart QueryWriteStatus tells where to resume, and resuming completes the blob', async () => {
  const s = await crashableServer();
  const data = randomBytes(64 * MiB);
  const up = newUpload(data);
  // Send 24 MiB, then hold until the server has acknowledged at least 16 MiB.
  const w = startWrite(s.c.bs, up, 0, 24 * MiB);
  let acked = 0;
  while (acked < 16 * MiB) {
    acked = (await committed(s.c.bs, up)).committedSize;
    if (acked < 16 * MiB) await sleep(5);
  }
  w.release(); // keep streaming while the server dies
  await sleep(Math.random() * 20);
  await s.kill();
  const outcome = await w.done;
  assert.ok(outcome.err, 'the interrupted Write fails');
  const sentBeforeKill = w.sent();

  await s.restart();
  const st = await committed(s.c.bs, up);
  assert.equal(st.complete, false);
  assert.ok(st.committedSize > 0, 'committed_size > 0');
  assert.ok(st.committedSize >= acked, `committed ${st.committedSize} >= acknowledged ${acked}`);
  assert.ok(st.committedSize <= sentBeforeKill, `committed ${st.committedSize} <= sent ${sentBeforeKill}`);
  const fmb = await unary(s.c.cas, 'FindMissingBlobs', { blobDigests: [digestOf(data)] });
  assert.equal(fmb.missingBlobDigests.length, 1, 'a partial upload is not a blob');

  const resumed = await startWrite(s.c.bs, up, st.committedSize).done;
  assert.equal(resumed.err, undefined, resumed.err?.details);
  assert.equal(Number(resumed.res!.committedSize), data.length);
  const back = await readAll(s.c.bs, { resourceName: `blobs/${sha(data)}/${data.length}` });
  assert.equal(sha(back), sha(data));
  assertEveryBlobFileIsRight(s.dataDir);
});

test('SIGKILL at random points during concurrent writes never leaves a wrong blob, and every upload can be finished', async (t) => {
  const s = await crashableServer();
  const honest: Upload[] = [];
  const dishonest: Upload[] = [];
  const batched: Buffer[] = [];
  const progress = new Map<Upload, number>(); // where each unfinished upload resumes
  const finished = new Set<Upload>();

  for (let round = 0; round < 3; round++) {
    // New uploads this round: honest ones of several sizes, and some whose bytes do not match.
    for (const size of [1 * MiB + 3, 3 * MiB, 6 * MiB + 1, 9 * MiB]) {
      const up = newUpload(randomBytes(size));
      honest.push(up);
      progress.set(up, 0);
    }
    const claimed = randomBytes(4 * MiB);
    const liar = newUpload(claimed, randomBytes(claimed.length));
    dishonest.push(liar);
    progress.set(liar, 0);
    const batch = Array.from({ length: 48 }, () => randomBytes(64 * 1024));
    batched.push(...batch);

    const active = [...progress.keys()].filter((u) => !finished.has(u));
    const writes = active.map((up) => ({ up, w: startWrite(s.c.bs, up, progress.get(up)!) }));
    // Small batches one after another, so the kill lands between and inside them.
    const batches = (async () => {
      for (let i = 0; i < batch.length; i += 6) {
        const requests = batch.slice(i, i + 6).map((data) => ({ digest: digestOf(data), data }));
        if (!(await unary(s.c.cas, 'BatchUpdateBlobs', { requests }).then(() => true, () => false))) return;
      }
    })();
    // Kill at a random point once the server has taken some bytes of some upload.
    const watched = active[Math.floor(Math.random() * active.length)];
    while ((await committed(s.c.bs, watched).catch(() => ({ committedSize: 1 }))).committedSize === 0) await sleep(2);
    await sleep(Math.random() * 100);
    await s.kill();
    await Promise.all([batches, ...writes.map((x) => x.w.done)]);

    // Leftovers in tmp/ from the crash (and a planted one) must be gone after the restart.
    mkdirSync(path.join(s.dataDir, 'tmp'), { recursive: true });
    writeFileSync(path.join(s.dataDir, 'tmp', 'planted.tmp'), 'partial');
    await s.restart();
    assert.deepEqual(readdirSync(path.join(s.dataDir, 'tmp')), [], 'tmp/ is emptied at start');

    const seen = { complete: 0, partial: 0, none: 0 };
    for (const { up, w } of writes) {
      const st = await committed(s.c.bs, up);
      seen[st.complete ? 'complete' : st.committedSize > 0 ? 'partial' : 'none']++;
      if (st.complete) {
        assert.ok(honest.includes(up), 'a dishonest upload never completes');
        finished.add(up);
        continue;
      }
      assert.ok(st.committedSize <= w.sent(), `committed ${st.committedSize} <= sent ${w.sent()}`);
      assert.ok(st.committedSize >= progress.get(up)!, 'committed bytes are never lost');
      progress.set(up, st.committedSize);
    }
    const { missing } = await checkStore(s.c, honest, dishonest, batched);
    const stored = batched.filter((b) => !missing.has(sha(b))).length;
    t.diagnostic(`round ${round}: uploads complete ${seen.complete}, partial ${seen.partial}, empty ${seen.none}; batched blobs stored ${stored}/${batched.length}`);
    assertEveryBlobFileIsRight(s.dataDir);
  }

  // No more crashes: finish everything from where the server says it stands.
  for (const up of [...honest, ...dishonest].filter((u) => !finished.has(u))) {
    const { err, res } = await startWrite(s.c.bs, up, progress.get(up)!).done;
    if (honest.includes(up)) {
      assert.equal(err, undefined, err?.details);
      assert.equal(Number(res!.committedSize), up.claimed.length);
    } else {
      assert.equal(err?.code, grpc.status.INVALID_ARGUMENT);
    }
  }
  const { missing } = await checkStore(s.c, honest, dishonest, batched);
  for (const up of honest) assert.ok(!missing.has(sha(up.claimed)), 'every honest upload is stored in the end');
  assert.ok(assertEveryBlobFileIsRight(s.dataDir) >= honest.length);
});

/** Present blobs read back exactly; dishonest uploads are never present. */
async function checkStore(c: ReturnType<typeof clientsFor>, honest: Upload[], dishonest: Upload[], batched: Buffer[]) {
  const all = [...honest.map((u) => u.claimed), ...dishonest.map((u) => u.claimed), ...batched];
  const res = await unary(c.cas, 'FindMissingBlobs', { blobDigests: all.map(digestOf) });
  const missing = new Set(res.missingBlobDigests.map((d) => d.hash));
  for (const up of dishonest) assert.ok(missing.has(sha(up.claimed)), 'a blob whose bytes never matched is not present');
  for (const blob of all) {
    if (missing.has(sha(blob))) continue;
    const back = await readAll(c.bs, { resourceName: `blobs/${sha(blob)}/${blob.length}` });
    assert.equal(sha(back), sha(blob), 'a present blob reads back with the right content');
  }
  return { missing };
}
