// ContentAddressableStorage and Capabilities over real gRPC against a real `reapi serve` process.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { rmSync } from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { compress } from 'zstd-napi';
import { rex } from '../apis';
import { unary } from '../apis/services';
import { clientsFor, failure, statusOf } from './helpers/clients';
import { ServerProcess, startServerProcess } from './helpers/server-process';

type Clients = ReturnType<typeof clientsFor>;
let server: ServerProcess;
let c: Clients;

before(async () => {
  server = await startServerProcess();
  c = clientsFor(server.address);
});

after(async () => {
  c?.close();
  await server?.stop();
  if (server) rmSync(server.dataDir, { recursive: true, force: true });
});

const MiB = 1024 * 1024;
const EMPTY = { hash: createHash('sha256').digest('hex'), sizeBytes: 0 };
const { SHA256, SHA1, MD5 } = rex.DigestFunction.Value;
const { IDENTITY, ZSTD } = rex.Compressor.Value;

function digestOf(data: Uint8Array): { hash: string; sizeBytes: number } {
  return { hash: createHash('sha256').update(data).digest('hex'), sizeBytes: data.length };
}
const key = (d: rex.IDigest) => `${d.hash}/${d.sizeBytes}`;
const keys = (ds: rex.IDigest[]) => ds.map(key).sort();
const bytes = (b: Uint8Array | null | undefined) => Buffer.from(b ?? []);

async function upload(blobs: Buffer[], instanceName = ''): Promise<void> {
  const res = await unary(c.cas, 'BatchUpdateBlobs', { instanceName, requests: blobs.map((data) => ({ digest: digestOf(data), data })) });
  assert.deepEqual(res.responses.map((r) => r.status?.code ?? 0), blobs.map(() => grpc.status.OK));
}

async function missing(digests: rex.IDigest[], instanceName = ''): Promise<string[]> {
  return keys((await unary(c.cas, 'FindMissingBlobs', { instanceName, blobDigests: digests })).missingBlobDigests);
}


test('Capabilities advertise SHA256, the 4 MiB batch limit, ZSTD, AC updates and API 2.0-2.2+', async () => {
  const caps = await unary(c.caps, 'GetCapabilities', { instanceName: '' });
  const cache = caps.cacheCapabilities!;
  assert.deepEqual(cache.digestFunctions, [SHA256]);
  assert.equal(Number(cache.maxBatchTotalSizeBytes), 4 * MiB);
  assert.ok(cache.supportedCompressors?.includes(ZSTD));
  assert.ok(cache.supportedBatchUpdateCompressors?.includes(ZSTD));
  assert.equal(cache.actionCacheUpdateCapabilities?.updateEnabled, true);
  assert.equal(caps.lowApiVersion?.major, 2);
  assert.equal(caps.lowApiVersion?.minor ?? 0, 0);
  assert.equal(caps.highApiVersion?.major, 2);
  assert.ok((caps.highApiVersion?.minor ?? 0) >= 2, 'compressed blobs need API 2.2');
  // Same answer for a named instance; a reserved word is not an instance name.
  assert.deepEqual((await unary(c.caps, 'GetCapabilities', { instanceName: 'team/a' })).cacheCapabilities?.digestFunctions, [SHA256]);
  assert.equal(await statusOf(unary(c.caps, 'GetCapabilities', { instanceName: 'blobs' })), grpc.status.INVALID_ARGUMENT);
});

test('FindMissingBlobs reports exactly the absent blobs; the empty blob is never missing', async () => {
  const a = randomBytes(100);
  const b = randomBytes(2000);
  const absent = randomBytes(300);
  await upload([a, b]);
  assert.deepEqual(await missing([digestOf(a), digestOf(b), digestOf(absent), EMPTY]), [key(digestOf(absent))]);
  // Same hash, different size: that is a different (absent) blob.
  const wrongSize = { hash: digestOf(a).hash, sizeBytes: 101 };
  assert.deepEqual(await missing([wrongSize]), [key(wrongSize)]);
  assert.deepEqual(await missing([]), []);
  // Asking first must not make the server remember "missing": once uploaded, it is present.
  await upload([absent]);
  assert.deepEqual(await missing([digestOf(a), digestOf(absent)]), []);
});

test('BatchUpdateBlobs + BatchReadBlobs round trip, including a zstd-compressed entry', async () => {
  const plain = randomBytes(5000);
  const squashy = Buffer.alloc(200_000, 'reapi ');
  const z = compress(squashy);
  assert.ok(z.length < squashy.length / 10);
  const up = await unary(c.cas, 'BatchUpdateBlobs', {
    digestFunction: SHA256,
    requests: [
      { digest: digestOf(plain), data: plain },
      { digest: digestOf(squashy), data: z, compressor: ZSTD },
      { digest: EMPTY, data: Buffer.alloc(0) },
    ],
  });
  assert.deepEqual(up.responses.map((r) => [key(r.digest!), r.status?.code ?? 0]), [
    [key(digestOf(plain)), grpc.status.OK],
    [key(digestOf(squashy)), grpc.status.OK],
    [key(EMPTY), grpc.status.OK],
  ]);
  const read = await unary(c.cas, 'BatchReadBlobs', { digests: [digestOf(squashy), digestOf(plain), EMPTY], acceptableCompressors: [IDENTITY] });
  assert.equal(read.responses.length, 3);
  const byKey = new Map(read.responses.map((r) => [key(r.digest!), r]));
  for (const data of [plain, squashy, Buffer.alloc(0)]) {
    const r = byKey.get(key(digestOf(data)))!;
    assert.equal(r.status?.code ?? 0, grpc.status.OK);
    assert.equal(r.compressor ?? IDENTITY, IDENTITY);
    assert.ok(bytes(r.data).equals(data), `content of ${key(digestOf(data))}`);
  }
});

test('a zstd batch entry that expands beyond its digest size is refused and not stored', async () => {
  const claimed = randomBytes(1000);
  const bomb = compress(Buffer.alloc(64 * MiB));
  const res = await unary(c.cas, 'BatchUpdateBlobs', { requests: [{ digest: digestOf(claimed), data: bomb, compressor: ZSTD }] });
  assert.equal(res.responses[0].status?.code, grpc.status.INVALID_ARGUMENT);
  assert.deepEqual(await missing([digestOf(claimed)]), [key(digestOf(claimed))]);
  // Unsupported batch compressor: per-entry INVALID_ARGUMENT.
  const res2 = await unary(c.cas, 'BatchUpdateBlobs', { requests: [{ digest: digestOf(claimed), data: claimed, compressor: rex.Compressor.Value.BROTLI }] });
  assert.equal(res2.responses[0].status?.code, grpc.status.INVALID_ARGUMENT);
  assert.deepEqual(await missing([digestOf(claimed)]), [key(digestOf(claimed))]);
});

test('BatchUpdateBlobs: data not matching its digest is refused per blob, named, and not stored', async () => {
  const good = randomBytes(64);
  const claimed = randomBytes(64);
  const other = randomBytes(64); // right size, wrong content
  const short = claimed.subarray(0, 10); // wrong size
  const res = await unary(c.cas, 'BatchUpdateBlobs', {
    requests: [
      { digest: digestOf(claimed), data: other },
      { digest: digestOf(good), data: good },
      { digest: digestOf(claimed), data: short },
    ],
  });
  const [bad1, ok, bad2] = res.responses;
  assert.equal(ok.status?.code ?? 0, grpc.status.OK);
  for (const bad of [bad1, bad2]) {
    assert.equal(bad.status?.code, grpc.status.INVALID_ARGUMENT);
    assert.ok(bad.status?.message?.includes(digestOf(claimed).hash), bad.status?.message ?? '');
  }
  assert.deepEqual(await missing([digestOf(claimed), digestOf(good), digestOf(other)]), keys([digestOf(claimed), digestOf(other)]));
  const read = await unary(c.cas, 'BatchReadBlobs', { digests: [digestOf(claimed)] });
  assert.equal(read.responses[0].status?.code, grpc.status.NOT_FOUND);
  assert.equal(bytes(read.responses[0].data).length, 0);
});

test('a batch over 4 MiB in total is INVALID_ARGUMENT naming the limit, and nothing of it is stored', async () => {
  const a = randomBytes(2 * MiB + 1);
  const b = randomBytes(2 * MiB);
  const err = await failure(unary(c.cas, 'BatchUpdateBlobs', { requests: [a, b].map((data) => ({ digest: digestOf(data), data })) }));
  assert.equal(err.code, grpc.status.INVALID_ARGUMENT);
  assert.match(err.details, /4194304/);
  assert.deepEqual(await missing([digestOf(a), digestOf(b)]), keys([digestOf(a), digestOf(b)]));
  // Exactly 4 MiB is allowed, and so is reading it back in one batch.
  const c1 = randomBytes(2 * MiB);
  const c2 = randomBytes(2 * MiB);
  await upload([c1, c2]);
  const read = await unary(c.cas, 'BatchReadBlobs', { digests: [digestOf(c1), digestOf(c2)] });
  assert.ok(bytes(read.responses[0].data).equals(c1) && bytes(read.responses[1].data).equals(c2));
  // Reading more than 4 MiB in one batch is refused the same way.
  const err2 = await failure(unary(c.cas, 'BatchReadBlobs', { digests: [digestOf(c1), digestOf(c2), digestOf(a)] }));
  assert.equal(err2.code, grpc.status.INVALID_ARGUMENT);
  assert.match(err2.details, /4194304/);
});

test('BatchReadBlobs of an unknown blob is a per-entry NOT_FOUND next to found ones', async () => {
  const known = randomBytes(10);
  const unknown = randomBytes(10);
  await upload([known]);
  const res = await unary(c.cas, 'BatchReadBlobs', { digests: [digestOf(unknown), digestOf(known)] });
  assert.equal(res.responses[0].status?.code, grpc.status.NOT_FOUND);
  assert.equal(key(res.responses[0].digest!), key(digestOf(unknown)));
  assert.equal(res.responses[1].status?.code ?? 0, grpc.status.OK);
  assert.ok(bytes(res.responses[1].data).equals(known));
});

test('malformed digests are INVALID_ARGUMENT', async () => {
  const h = createHash('sha256').update('x').digest('hex');
  const bad: rex.IDigest[] = [
    { hash: h.toUpperCase(), sizeBytes: 1 },
    { hash: h.slice(2), sizeBytes: 1 },
    { hash: 'zz' + h.slice(2), sizeBytes: 1 },
    { hash: h, sizeBytes: -1 },
    { hash: h, sizeBytes: 0 },
    { hash: '', sizeBytes: 0 },
  ];
  for (const d of bad) {
    assert.equal(await statusOf(unary(c.cas, 'FindMissingBlobs', { blobDigests: [EMPTY, d] })), grpc.status.INVALID_ARGUMENT, JSON.stringify(d));
    assert.equal(await statusOf(unary(c.cas, 'BatchReadBlobs', { digests: [d] })), grpc.status.INVALID_ARGUMENT, JSON.stringify(d));
    const up = await unary(c.cas, 'BatchUpdateBlobs', { requests: [{ digest: d, data: Buffer.from('x') }] });
    assert.equal(up.responses[0].status?.code, grpc.status.INVALID_ARGUMENT, JSON.stringify(d));
  }
  const err = await failure(unary(c.cas, 'FindMissingBlobs', { blobDigests: [{ hash: h.toUpperCase(), sizeBytes: 1 }] }));
  assert.match(err.details, /blob_digests\[0\]/);
});

test('an unsupported digest_function is INVALID_ARGUMENT on every CAS call', async () => {
  const data = randomBytes(20);
  for (const digestFunction of [SHA1, MD5, 99]) {
    const fmb = await failure(unary(c.cas, 'FindMissingBlobs', { digestFunction, blobDigests: [digestOf(data)] }));
    assert.equal(fmb.code, grpc.status.INVALID_ARGUMENT);
    assert.match(fmb.details, /digest function/);
    assert.equal(await statusOf(unary(c.cas, 'BatchUpdateBlobs', { digestFunction, requests: [{ digest: digestOf(data), data }] })), grpc.status.INVALID_ARGUMENT);
    assert.equal(await statusOf(unary(c.cas, 'BatchReadBlobs', { digestFunction, digests: [digestOf(data)] })), grpc.status.INVALID_ARGUMENT);
    assert.equal((await collectTree({ digestFunction, rootDigest: digestOf(data) })).code, grpc.status.INVALID_ARGUMENT);
  }
  assert.deepEqual(await missing([digestOf(data)]), [key(digestOf(data))]);
});

test('instance names are namespaces', async () => {
  const blob = randomBytes(500);
  await upload([blob], 'a');
  assert.deepEqual(await missing([digestOf(blob)], 'a'), []);
  assert.deepEqual(await missing([digestOf(blob)], 'b'), [key(digestOf(blob))]);
  assert.deepEqual(await missing([digestOf(blob)], ''), [key(digestOf(blob))]);
  assert.deepEqual(await missing([digestOf(blob)], 'a/b'), [key(digestOf(blob))]);
  const inB = await unary(c.cas, 'BatchReadBlobs', { instanceName: 'b', digests: [digestOf(blob)] });
  assert.equal(inB.responses[0].status?.code, grpc.status.NOT_FOUND);
  const inA = await unary(c.cas, 'BatchReadBlobs', { instanceName: 'a', digests: [digestOf(blob)] });
  assert.ok(bytes(inA.responses[0].data).equals(blob));
  for (const instanceName of ['blobs', 'a/../b', '../a', 'a//b', 'x/uploads']) {
    assert.equal(await statusOf(unary(c.cas, 'FindMissingBlobs', { instanceName, blobDigests: [digestOf(blob)] })), grpc.status.INVALID_ARGUMENT, instanceName);
  }
});

// --- GetTree ---------------------------------------------------------------------------------

function dirBlob(dir: rex.IDirectory): { data: Buffer; digest: { hash: string; sizeBytes: number } } {
  const data = Buffer.from(rex.Directory.encode(dir).finish());
  return { data, digest: digestOf(data) };
}

async function collectTree(req: rex.IGetTreeRequest): Promise<{ code: grpc.status; details?: string; pages: rex.GetTreeResponse[] }> {
  const pages: rex.GetTreeResponse[] = [];
  try {
    for await (const page of c.cas.GetTree(req) as AsyncIterable<rex.GetTreeResponse>) pages.push(page);
    return { code: grpc.status.OK, pages };
  } catch (err) {
    return { code: (err as grpc.ServiceError).code, details: (err as grpc.ServiceError).details, pages };
  }
}

/** root -> {m1 -> {x: leafA, y: leafB}, m2 -> {z: leafA, w: leafB, f: file}, again: m1}: 5 distinct directories. */
async function threeLevelTree(tag: string) {
  const file = Buffer.from(`file ${tag}`);
  const leafA = dirBlob({ files: [{ name: `a-${tag}.txt`, digest: digestOf(file) }] });
  const leafB = dirBlob({ files: [{ name: `b-${tag}.txt`, digest: digestOf(file), isExecutable: true }] });
  const m1 = dirBlob({ directories: [{ name: 'x', digest: leafA.digest }, { name: 'y', digest: leafB.digest }] });
  const m2 = dirBlob({
    files: [{ name: 'f', digest: digestOf(file) }],
    directories: [{ name: 'w', digest: leafB.digest }, { name: 'z', digest: leafA.digest }],
  });
  const root = dirBlob({ directories: [{ name: 'again', digest: m1.digest }, { name: 'm1', digest: m1.digest }, { name: 'm2', digest: m2.digest }] });
  await upload([file, leafA.data, leafB.data, m1.data, m2.data, root.data]);
  return { root, all: [root, m1, m2, leafA, leafB] };
}

const dirKey = (d: rex.IDirectory) => key(digestOf(Buffer.from(rex.Directory.encode(d).finish())));

test('GetTree returns every distinct directory of a 3-level tree with shared subdirectories once, root first', async () => {
  const { root, all } = await threeLevelTree('t1');
  const res = await collectTree({ rootDigest: root.digest });
  assert.equal(res.code, grpc.status.OK, res.details);
  const dirs = res.pages.flatMap((p) => p.directories);
  assert.equal(dirKey(dirs[0]), key(root.digest));
  assert.deepEqual(dirs.map(dirKey).sort(), keys(all.map((d) => d.digest)));
  assert.equal(res.pages.at(-1)!.nextPageToken, '');
});

test('GetTree pages with page_size and page_token, covering the tree exactly once', async () => {
  const { root, all } = await threeLevelTree('t2');
  const seen: string[] = [];
  let pageToken = '';
  let requests = 0;
  do {
    const res = await collectTree({ rootDigest: root.digest, pageSize: 2, pageToken });
    assert.equal(res.code, grpc.status.OK, res.details);
    for (const page of res.pages) {
      assert.ok(page.directories.length <= 2, `page of ${page.directories.length}`);
      seen.push(...page.directories.map(dirKey));
    }
    pageToken = res.pages.at(-1)!.nextPageToken;
    requests++;
    assert.ok(requests < 10);
  } while (pageToken);
  assert.deepEqual(seen.slice().sort(), keys(all.map((d) => d.digest)));
  assert.equal(seen[0], key(root.digest));
  assert.ok(requests >= 2 || seen.length === all.length);
});

test('GetTree refuses a page token issued for another root; a missing root is NOT_FOUND', async () => {
  const one = await threeLevelTree('t3');
  const two = await threeLevelTree('t4');
  const first = await collectTree({ rootDigest: one.root.digest, pageSize: 1 });
  const token = first.pages[0].nextPageToken;
  assert.ok(token, 'a first page of one directory has a next_page_token');
  const wrong = await collectTree({ rootDigest: two.root.digest, pageSize: 1, pageToken: token });
  assert.equal(wrong.code, grpc.status.INVALID_ARGUMENT);
  assert.equal(wrong.pages.length, 0);
  const garbage = await collectTree({ rootDigest: one.root.digest, pageToken: 'not-a-token' });
  assert.equal(garbage.code, grpc.status.INVALID_ARGUMENT);
  // The right token still works after the refusals.
  const right = await collectTree({ rootDigest: one.root.digest, pageSize: 1, pageToken: token });
  assert.equal(right.code, grpc.status.OK, right.details);
  assert.notEqual(dirKey(right.pages[0].directories[0]), key(one.root.digest));

  const absent = dirBlob({ files: [{ name: 'never-uploaded', digest: EMPTY }] });
  const nf = await collectTree({ rootDigest: absent.digest });
  assert.equal(nf.code, grpc.status.NOT_FOUND);
  assert.match(nf.details ?? '', new RegExp(absent.digest.hash));
  const bad = await collectTree({ rootDigest: { hash: 'abc', sizeBytes: 3 } });
  assert.equal(bad.code, grpc.status.INVALID_ARGUMENT);
});

// --- garbage on the wire ---------------------------------------------------------------------

test('garbage request bytes are refused and the server keeps serving', async () => {
  const raw = new grpc.Client(server.address, grpc.credentials.createInsecure());
  const identity = (b: Buffer) => b;
  const call = (path: string, payload: Buffer) =>
    new Promise<grpc.status>((resolve) =>
      raw.makeUnaryRequest(path, identity, identity, payload, (err) => resolve(err ? err.code : grpc.status.OK)),
    );
  try {
    const methods = [
      '/build.bazel.remote.execution.v2.ContentAddressableStorage/FindMissingBlobs',
      '/build.bazel.remote.execution.v2.ContentAddressableStorage/BatchUpdateBlobs',
      '/build.bazel.remote.execution.v2.ContentAddressableStorage/BatchReadBlobs',
      '/build.bazel.remote.execution.v2.ActionCache/UpdateActionResult',
      '/google.bytestream.ByteStream/QueryWriteStatus',
    ];
    for (const m of methods) {
      // Field 1, length-delimited, claiming 2^31 bytes: cannot decode, whatever follows.
      const undecodable = Buffer.concat([Buffer.from([0x0a, 0xff, 0xff, 0xff, 0xff, 0x07]), randomBytes(200)]);
      const code = await call(m, undecodable);
      assert.ok(code === grpc.status.INVALID_ARGUMENT || code === grpc.status.INTERNAL, `${m}: ${grpc.status[code]}`);
      // Purely random bytes may or may not decode; either way the server must answer.
      for (let i = 0; i < 5; i++) await call(m, randomBytes(1 + Math.floor(Math.random() * 2000)));
    }
    // Garbage on a client-streaming call, after a valid-looking start.
    const streamCode = await new Promise<grpc.status>((resolve) => {
      const s = raw.makeClientStreamRequest('/google.bytestream.ByteStream/Write', identity, identity, (err) => resolve(err ? err.code : grpc.status.OK));
      s.write(Buffer.from([0x0a, 0xff, 0xff, 0xff, 0xff, 0x07]));
      s.write(randomBytes(1000));
      s.end();
    });
    assert.notEqual(streamCode, grpc.status.OK);
  } finally {
    raw.close();
  }
  assert.equal(server.child.exitCode, null, 'server still running');
  const blob = randomBytes(33);
  await upload([blob]);
  assert.deepEqual(await missing([digestOf(blob)]), []);
  assert.doesNotMatch(server.stderr(), /uncaught|unhandled/i);
});
