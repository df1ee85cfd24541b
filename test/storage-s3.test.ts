// S3 storage and the local disk tier in front of it, against a real S3-compatible server (s3rver).
// One storage contract, checked against every backend (files, S3, disk tier + S3); then
// `reapi serve --storage s3://...` processes sharing one bucket, as a farm would.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { existsSync, promises as fs } from 'node:fs';
import * as path from 'node:path';
import { Readable } from 'node:stream';
import * as grpc from '@grpc/grpc-js';
import { bytestream, rex } from '../apis';
import { unary } from '../apis/services';
import { Storage } from '../cas/blob-store';
import { Digest, SHA256_EMPTY, digestOf } from '../cas/digest';
import { DiskTier } from '../cas/disk-tier';
import { FileStorage } from '../cas/file-storage';
import { S3Storage } from '../cas/s3-storage';
import { TieredStorage } from '../cas/tiered-storage';
import { RpcError } from '../server/rpc-error';
import { parseStorageFlag, readStorageConfig } from '../server/storage-config';
import { clientsFor, failure, readAll, writeStream } from './helpers/clients';
import { TestS3, startS3 } from './helpers/s3';
import { ServerProcess, startServerProcess, tempDir } from './helpers/server-process';

const MiB = 1024 * 1024;
/** Part size of the library-level S3 storages: a 20 MiB blob goes up in several parts. */
const PART = 5 * MiB;
const EMPTY: Digest = { hash: SHA256_EMPTY, sizeBytes: 0 };

let s3: TestS3;
const dirs: string[] = [];

before(async () => {
  s3 = await startS3();
});

after(async () => {
  await s3?.stop();
  await Promise.all(dirs.map((d) => fs.rm(d, { recursive: true, force: true })));
});

function scratch(prefix: string): string {
  const dir = tempDir(prefix);
  dirs.push(dir);
  return dir;
}

function openS3(prefix: string): Promise<S3Storage> {
  return S3Storage.open({
    ...s3.settings(prefix),
    partBytes: PART,
    localDir: scratch('s3-local'),
  });
}


async function readStream(stream: Readable | undefined): Promise<Buffer | undefined> {
  if (!stream) return undefined;
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}


/** A verified file in the storage's scratch directory, as an upload would leave it. */
async function scratchFile(storage: Storage, data: Buffer): Promise<string> {
  const file = path.join(storage.scratchDir, `${randomUUID()}.part`);
  await fs.writeFile(file, data);
  return file;
}

/** Sum of the sizes of all files under dir. */
async function bytesUnder(dir: string): Promise<number> {
  let total = 0;
  for (const entry of await fs.readdir(dir, { withFileTypes: true, recursive: true })) {
    if (entry.isFile()) total += (await fs.stat(path.join(entry.parentPath, entry.name))).size;
  }
  return total;
}

interface Backend {
  name: string;
  /** A fresh, empty storage. */
  open(): Promise<Storage>;
  /** Another storage on the same shared place as `storage` (another process, a fresh node). */
  reopen(storage: Storage): Promise<Storage>;
  /** Whether blobs go to S3 (so multipart can be observed). */
  s3: boolean;
}

const fileBackend: Backend = {
  name: 'FileStorage',
  open: () => FileStorage.open(scratch('file-storage')),
  reopen: (storage) => FileStorage.open((storage as FileStorage).root),
  s3: false,
};

const prefixes = new WeakMap<Storage, string>();
const s3Backend: Backend = {
  name: 'S3Storage',
  async open() {
    const prefix = `contract-${randomUUID()}`;
    const storage = await openS3(prefix);
    prefixes.set(storage, prefix);
    return storage;
  },
  reopen: (storage) => openS3(prefixes.get(storage)!),
  s3: true,
};

const tieredBackend: Backend = {
  name: 'TieredStorage(DiskTier, S3Storage)',
  async open() {
    const prefix = `tiered-${randomUUID()}`;
    const storage = new TieredStorage(await DiskTier.open(scratch('tier'), 64 * MiB), await openS3(prefix));
    prefixes.set(storage, prefix);
    return storage;
  },
  async reopen(storage) {
    const again = new TieredStorage(await DiskTier.open(scratch('tier'), 64 * MiB), await openS3(prefixes.get(storage)!));
    prefixes.set(again, prefixes.get(storage)!);
    return again;
  },
  s3: true,
};

/** The checks every Storage must pass, whatever it keeps blobs in. */
function storageContract(backend: Backend): void {
  describe(`storage contract: ${backend.name}`, () => {
    let storage: Storage;
    before(async () => {
      storage = await backend.open();
    });

    test('put, then read and openRead give the blob back; findMissing names exactly the absent ones', async () => {
      const cas = storage.cas('');
      const a = randomBytes(1000);
      const b = randomBytes(70_000);
      const absent = randomBytes(10);
      // Asking first must not make the store remember "missing".
      assert.deepEqual(await cas.findMissing([digestOf(a)]), [digestOf(a)]);
      await cas.put(digestOf(a), a);
      await cas.put(digestOf(b), b);
      await cas.put(digestOf(b), b); // again: harmless
      assert.deepEqual(await cas.findMissing([digestOf(a), digestOf(absent), EMPTY, digestOf(b)]), [digestOf(absent)]);
      assert.deepEqual(await cas.findMissing([]), []);
      // Same hash, another size: another blob, absent.
      const wrongSize = { hash: digestOf(a).hash, sizeBytes: 1001 };
      assert.deepEqual(await cas.findMissing([wrongSize]), [wrongSize]);
      assert.equal(await cas.read(wrongSize), undefined);
      assert.ok((await cas.read(digestOf(a)))?.equals(a));
      assert.ok((await readStream(await cas.openRead(digestOf(b))))?.equals(b));
      assert.equal(await cas.read(digestOf(absent)), undefined);
      assert.equal(await cas.openRead(digestOf(absent)), undefined);
      assert.equal((await cas.read(EMPTY))?.length, 0);
      assert.equal((await readStream(await cas.openRead(EMPTY)))?.length, 0);
    });

    test('range reads: from an offset, with a limit, past the end, at the end', async () => {
      const cas = storage.cas('');
      const data = randomBytes(10_000);
      const d = digestOf(data);
      await cas.put(d, data);
      const range = async (offset: number, limit?: number) => readStream(await cas.openRead(d, { offset, limit }));
      assert.ok((await range(0))?.equals(data));
      assert.ok((await range(1234))?.equals(data.subarray(1234)));
      assert.ok((await range(1234, 100))?.equals(data.subarray(1234, 1334)));
      assert.ok((await range(9990, 500))?.equals(data.subarray(9990)));
      assert.equal((await range(10_000))?.length, 0);
      assert.equal((await range(0, 0))?.length, 0);
    });

    test('put refuses data that does not match its digest, naming it, and stores nothing', async () => {
      const cas = storage.cas('');
      const claimed = randomBytes(64);
      const d = digestOf(claimed);
      for (const wrong of [randomBytes(64), claimed.subarray(0, 10)]) {
        const err = await failure<RpcError>(cas.put(d, wrong));
        assert.equal(err.code, grpc.status.INVALID_ARGUMENT);
        assert.match(err.message, new RegExp(d.hash));
      }
      assert.deepEqual(await cas.findMissing([d]), [d]);
      assert.equal(await cas.read(d), undefined);
    });

    test('adoptVerifiedFile takes the file: the blob is readable and the file is gone', async () => {
      const cas = storage.cas('');
      const data = randomBytes(300_000);
      const file = await scratchFile(storage, data);
      await cas.adoptVerifiedFile(digestOf(data), file);
      assert.equal(existsSync(file), false, 'the file was consumed');
      assert.ok((await cas.read(digestOf(data)))?.equals(data));
      // Adopting a blob already stored consumes the file too.
      const again = await scratchFile(storage, data);
      await cas.adoptVerifiedFile(digestOf(data), again);
      assert.equal(existsSync(again), false);
    });

    test('a 20 MiB blob (beyond the multipart part size) goes in from a file and reads back whole and in ranges', async () => {
      const cas = storage.cas('');
      const data = randomBytes(20 * MiB + 17);
      const d = digestOf(data);
      const seen = s3.requests.length;
      await cas.adoptVerifiedFile(d, await scratchFile(storage, data));
      if (backend.s3) {
        const multipart = s3.requests.slice(seen).filter((r) => r.startsWith('POST ') && r.includes(`/cas/${d.hash}?uploads`));
        assert.equal(multipart.length, 1, 'uploaded as one multipart upload');
      }
      assert.deepEqual(await cas.findMissing([d]), []);
      assert.ok((await readStream(await cas.openRead(d)))?.equals(data));
      // A range across a part boundary.
      const from = PART - 1000;
      assert.ok((await readStream(await cas.openRead(d, { offset: from, limit: 3 * MiB })))?.equals(data.subarray(from, from + 3 * MiB)));
    });

    test('action cache: absent is undefined; put, get, put again replaces', async () => {
      const ac = storage.actionCache('');
      const action = digestOf(randomBytes(32));
      assert.equal(await ac.get(action), undefined);
      await ac.put(action, Buffer.from('result one'));
      assert.equal((await ac.get(action))?.toString(), 'result one');
      await ac.put(action, Buffer.from('result two'));
      assert.equal((await ac.get(action))?.toString(), 'result two');
    });

    test('instance names are namespaces for blobs and action results', async () => {
      const data = randomBytes(100);
      const d = digestOf(data);
      await storage.cas('team/a').put(d, data);
      await storage.actionCache('team/a').put(d, Buffer.from('r'));
      assert.deepEqual(await storage.cas('team/a').findMissing([d]), []);
      for (const other of ['', 'team/b', 'team']) {
        assert.deepEqual(await storage.cas(other).findMissing([d]), [d], other);
        assert.equal(await storage.actionCache(other).get(d), undefined, other);
      }
      assert.throws(() => storage.cas('a/../b'), (err: RpcError) => err.code === grpc.status.INVALID_ARGUMENT);
    });

    test('another storage opened on the same place sees every blob and action result', async () => {
      const data = randomBytes(5000);
      const d = digestOf(data);
      await storage.cas('x').put(d, data);
      await storage.actionCache('x').put(d, Buffer.from('shared result'));
      const other = await backend.reopen(storage);
      assert.deepEqual(await other.cas('x').findMissing([d]), []);
      assert.ok((await other.cas('x').read(d))?.equals(data));
      assert.equal((await other.actionCache('x').get(d))?.toString(), 'shared result');
    });
  });
}

storageContract(fileBackend);
storageContract(s3Backend);
storageContract(tieredBackend);

describe('S3 layout and the disk tier', () => {
  test('blobs and action results sit at <prefix>/instances/<instance>/cas/<hash> and .../ac/<hash>-<size>', async () => {
    const storage = await openS3('layout/p');
    const data = randomBytes(123);
    const d = digestOf(data);
    await storage.cas('').put(d, data);
    await storage.cas('team/a').put(d, data);
    await storage.actionCache('').put(d, Buffer.from('r'));
    const client = s3.client();
    assert.equal((await client.statObject(s3.bucket, `layout/p/instances/_/cas/${d.hash}`)).size, 123);
    assert.equal((await client.statObject(s3.bucket, `layout/p/instances/team%2Fa/cas/${d.hash}`)).size, 123);
    assert.equal((await client.statObject(s3.bucket, `layout/p/instances/_/ac/${d.hash}-123`)).size, 1);
  });

  test('a blob corrupted in S3 is refused by the tier (DATA_LOSS), never served or kept', async () => {
    const prefix = `corrupt-${randomUUID()}`;
    const tierDir = scratch('tier');
    const tiered = new TieredStorage(await DiskTier.open(tierDir, 64 * MiB), await openS3(prefix));
    const data = randomBytes(4096);
    const d = digestOf(data);
    await s3.client().putObject(s3.bucket, `${prefix}/instances/_/cas/${d.hash}`, randomBytes(4096));
    assert.equal((await failure<RpcError>(tiered.cas('').read(d))).code, grpc.status.DATA_LOSS);
    assert.equal((await failure<RpcError>(tiered.cas('').openRead(d))).code, grpc.status.DATA_LOSS);
    assert.equal(await bytesUnder(tierDir), 0, 'nothing of it kept locally');
  });

  test('the tier keeps at most maxBytes; evicted blobs still read through from S3', async () => {
    const tierDir = scratch('tier');
    const tier = await DiskTier.open(tierDir, 3 * MiB);
    const tiered = new TieredStorage(tier, await openS3(`bounded-${randomUUID()}`));
    const cas = tiered.cas('');
    const blobs = Array.from({ length: 8 }, () => randomBytes(MiB));
    for (const b of blobs) await cas.put(digestOf(b), b);
    assert.ok(tier.usedBytes <= 3 * MiB, `tier holds ${tier.usedBytes} bytes`);
    assert.ok((await bytesUnder(tierDir)) <= 3 * MiB);
    assert.ok((await bytesUnder(tierDir)) >= 2 * MiB, 'the most recent blobs are kept');
    for (const b of blobs) assert.ok((await readStream(await cas.openRead(digestOf(b))))?.equals(b));
    for (const b of blobs) assert.ok((await cas.read(digestOf(b)))?.equals(b));
    assert.ok((await bytesUnder(tierDir)) <= 3 * MiB);
    // A blob larger than the whole tier bypasses it: stored in and read from S3 only.
    const huge = randomBytes(4 * MiB);
    const before = tier.usedBytes;
    await cas.adoptVerifiedFile(digestOf(huge), await scratchFile(tiered, huge));
    assert.ok((await readStream(await cas.openRead(digestOf(huge), { offset: MiB })))?.equals(huge.subarray(MiB)));
    assert.equal(tier.usedBytes, before);
    // Reopened, the tier picks up what is on disk and stays within a smaller bound.
    const smaller = await DiskTier.open(tierDir, 2 * MiB);
    assert.ok(smaller.usedBytes <= 2 * MiB && smaller.usedBytes > 0);
    assert.ok((await bytesUnder(tierDir)) <= 2 * MiB);
  });
});

describe('storage flags', () => {
  test('--storage file: and s3:// forms, and --storage-config JSON', async () => {
    assert.deepEqual(parseStorageFlag('file:/srv/reapi'), { type: 'file', dir: '/srv/reapi' });
    assert.deepEqual(parseStorageFlag('s3://AK:S%2FK@minio.local:9000/cache/farm/one?tier=/var/tier&tierBytes=20G&secure=false'), {
      type: 's3',
      endpoint: 'minio.local:9000',
      bucket: 'cache',
      prefix: 'farm/one',
      accessKey: 'AK',
      secretKey: 'S/K',
      useSSL: false,
      region: undefined,
      partBytes: undefined,
      tier: { dir: '/var/tier', maxBytes: 20 * 1024 ** 3 },
    });
    assert.throws(() => parseStorageFlag('s3://h/b?tier=/x'), /tierBytes/);
    assert.throws(() => parseStorageFlag('s3://AK:SECRET@h/b?bogus=1'), (err: Error) => /bogus/.test(err.message) && !err.message.includes('SECRET'));
    const dir = scratch('config');
    const file = path.join(dir, 'storage.json');
    await fs.writeFile(file, JSON.stringify({ type: 's3', endpoint: 'http://10.0.0.5:9000', bucket: 'b', prefix: 'p', tier: { dir: 'tier', maxBytes: '512M' } }));
    const spec = await readStorageConfig(file);
    assert.deepEqual(spec, {
      type: 's3',
      endpoint: '10.0.0.5:9000',
      bucket: 'b',
      prefix: 'p',
      accessKey: undefined,
      secretKey: undefined,
      useSSL: false,
      region: undefined,
      partBytes: undefined,
      tier: { dir: path.join(dir, 'tier'), maxBytes: 512 * MiB },
    });
  });
});

describe('reapi serve --storage s3://: servers sharing one bucket', () => {
  const servers: ServerProcess[] = [];
  let first: ServerProcess;
  let c1: ReturnType<typeof clientsFor>;
  const prefix = `farm-${randomUUID()}`;

  /** A server on the shared bucket: with `--storage s3://...`, or `--storage-config FILE` when asked. */
  async function serve(storage: string[]): Promise<ServerProcess> {
    const server = await startServerProcess({ dataDir: scratch('data'), args: [...storage, '--worker', 'off'] });
    servers.push(server);
    return server;
  }

  before(async () => {
    // The first server has no local tier: S3 alone, its partial uploads under --data.
    first = await serve(['--storage', s3.storageUrl(prefix)]);
    c1 = clientsFor(first.address);
  });

  after(async () => {
    c1?.close();
    await Promise.all(servers.map((s) => s.stop()));
  });

  const readName = (d: Digest) => `blobs/${d.hash}/${d.sizeBytes}`;

  function writeRequests(data: Buffer): bytestream.IWriteRequest[] {
    const d = digestOf(data);
    const out: bytestream.IWriteRequest[] = [];
    for (let at = 0; at < data.length; at += MiB) {
      const end = Math.min(data.length, at + MiB);
      out.push({ resourceName: at === 0 ? `uploads/${randomUUID()}/blobs/${d.hash}/${d.sizeBytes}` : '', writeOffset: at, data: data.subarray(at, end), finishWrite: end === data.length });
    }
    return out;
  }

  const big = randomBytes(24 * MiB + 5);
  const small = [randomBytes(100), randomBytes(5000), randomBytes(200_000)];
  const action = digestOf(randomBytes(40));

  test('a large ByteStream write lands in S3 (multipart) and reads back; BatchUpdate and FindMissing work', async () => {
    const seen = s3.requests.length;
    const res = await writeStream(c1.bs, writeRequests(big));
    assert.equal(Number(res.committedSize), big.length);
    const key = `${prefix}/instances/_/cas/${digestOf(big).hash}`;
    assert.equal((await s3.client().statObject(s3.bucket, key)).size, big.length, 'the blob is in the bucket');
    assert.ok(s3.requests.slice(seen).some((r) => r.startsWith('POST ') && r.includes(`${digestOf(big).hash}?uploads`)), 'went up as a multipart upload');
    assert.ok((await readAll(c1.bs, { resourceName: readName(digestOf(big)) })).equals(big));
    const part = await readAll(c1.bs, { resourceName: readName(digestOf(big)), readOffset: 20 * MiB, readLimit: MiB });
    assert.ok(part.equals(big.subarray(20 * MiB, 21 * MiB)));

    const up = await unary(c1.cas, 'BatchUpdateBlobs', { requests: small.map((data) => ({ digest: digestOf(data), data })) });
    assert.deepEqual(up.responses.map((r) => r.status?.code ?? 0), small.map(() => grpc.status.OK));
    const absent = digestOf(randomBytes(7));
    const found = await unary(c1.cas, 'FindMissingBlobs', { blobDigests: [...small.map(digestOf), digestOf(big), absent] });
    assert.deepEqual(found.missingBlobDigests.map((d) => d.hash), [absent.hash]);

    const result: rex.IActionResult = { outputFiles: [{ path: 'out/big', digest: digestOf(big) }], stdoutDigest: digestOf(small[0]), exitCode: 0 };
    await unary(c1.ac, 'UpdateActionResult', { actionDigest: action, actionResult: result });
  });

  test('a fresh server with an empty local tier serves everything the first one stored', async () => {
    const tierDir = scratch('tier');
    const second = await serve(['--storage', s3.storageUrl(prefix, { tier: tierDir, tierBytes: '256M' })]);
    const c2 = clientsFor(second.address);
    try {
      const found = await unary(c2.cas, 'FindMissingBlobs', { blobDigests: [...small.map(digestOf), digestOf(big)] });
      assert.deepEqual(found.missingBlobDigests, []);
      assert.ok((await readAll(c2.bs, { resourceName: readName(digestOf(big)) })).equals(big));
      const read = await unary(c2.cas, 'BatchReadBlobs', { digests: small.map(digestOf) });
      assert.deepEqual(read.responses.map((r) => Buffer.from(r.data ?? []).toString('hex')), small.map((b) => b.toString('hex')));
      const got = await unary(c2.ac, 'GetActionResult', { actionDigest: action });
      assert.equal(got.outputFiles[0].path, 'out/big');
      // What it served came through its own local tier.
      assert.ok((await bytesUnder(tierDir)) >= big.length);
    } finally {
      c2.close();
    }
  });

  test('a server with a small tier (from --storage-config) stays within it and still serves every blob', async () => {
    const tierDir = scratch('tier');
    const config = path.join(scratch('config'), 'storage.json');
    await fs.writeFile(
      config,
      JSON.stringify({
        type: 's3',
        ...s3.settings(prefix),
        tier: { dir: tierDir, maxBytes: 4 * MiB },
      }),
    );
    const server = await serve(['--storage-config', config]);
    const c = clientsFor(server.address);
    try {
      const blobs = Array.from({ length: 10 }, () => randomBytes(MiB));
      for (let i = 0; i < blobs.length; i += 3) {
        const batch = blobs.slice(i, i + 3);
        const up = await unary(c.cas, 'BatchUpdateBlobs', { requests: batch.map((data) => ({ digest: digestOf(data), data })) });
        assert.deepEqual(up.responses.map((r) => r.status?.code ?? 0), batch.map(() => grpc.status.OK));
      }
      assert.ok((await bytesUnder(tierDir)) <= 4 * MiB, `tier holds ${await bytesUnder(tierDir)} bytes`);
      for (const b of blobs) assert.ok((await readAll(c.bs, { resourceName: readName(digestOf(b)) })).equals(b));
      const read = await unary(c.cas, 'BatchReadBlobs', { digests: blobs.slice(0, 3).map(digestOf) });
      assert.ok(read.responses.every((r, i) => Buffer.from(r.data ?? []).equals(blobs[i])));
      assert.ok((await bytesUnder(tierDir)) <= 4 * MiB, `tier holds ${await bytesUnder(tierDir)} bytes after reads`);
    } finally {
      c.close();
    }
  });
});
