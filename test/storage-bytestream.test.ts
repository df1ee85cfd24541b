// ByteStream Read / Write / QueryWriteStatus over real gRPC against a real `reapi serve` process.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { rmSync } from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { compress, decompress } from 'zstd-napi';
import { bytestream } from '../apis';
import { unary } from '../apis/services';
import { clientsFor, readAll, writeStream, failure } from './helpers/clients';
import { ServerProcess, startServerProcess } from './helpers/server-process';

let server: ServerProcess;
let c: ReturnType<typeof clientsFor>;

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
const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
const digestOf = (b: Uint8Array) => ({ hash: sha(b), sizeBytes: b.length });
const readName = (data: Uint8Array, instance = '') => `${instance ? instance + '/' : ''}blobs/${sha(data)}/${data.length}`;
const writeName = (data: Uint8Array, id = randomUUID(), instance = '') => `${instance ? instance + '/' : ''}uploads/${id}/blobs/${sha(data)}/${data.length}`;

/** Write requests carrying data[from..] in chunks, finishing on the last one. */
function chunks(resourceName: string, data: Buffer, opts: { from?: number; to?: number; chunk?: number; finish?: boolean } = {}): bytestream.IWriteRequest[] {
  const { from = 0, to = data.length, chunk = MiB, finish = true } = opts;
  const out: bytestream.IWriteRequest[] = [];
  for (let at = from; at < to || out.length === 0; at += chunk) {
    const end = Math.min(to, at + chunk);
    out.push({ resourceName: out.length === 0 ? resourceName : '', writeOffset: at, data: data.subarray(at, end), finishWrite: finish && end === to });
  }
  return out;
}

async function readChunks(req: bytestream.IReadRequest): Promise<Buffer[]> {
  const out: Buffer[] = [];
  for await (const r of c.bs.Read(req) as AsyncIterable<bytestream.ReadResponse>) out.push(Buffer.from(r.data ?? []));
  return out;
}

async function isMissing(data: Buffer): Promise<boolean> {
  const res = await unary(c.cas, 'FindMissingBlobs', { blobDigests: [digestOf(data)] });
  return res.missingBlobDigests.length === 1;
}

const query = (resourceName: string) => unary(c.bs, 'QueryWriteStatus', { resourceName });

test('Write and Read a 20 MiB blob in 1 MiB chunks', async () => {
  const data = randomBytes(20 * MiB + 12345);
  const res = await writeStream(c.bs, chunks(writeName(data), data));
  assert.equal(Number(res.committedSize), data.length);
  assert.equal(await isMissing(data), false);
  const parts = await readChunks({ resourceName: readName(data) });
  assert.ok(parts.every((p) => p.length <= 4 * MiB), 'every Read message fits a default 4 MiB client limit');
  const back = Buffer.concat(parts);
  assert.equal(back.length, data.length);
  assert.equal(sha(back), sha(data));
  // The same blob is readable with trailing metadata in the resource name.
  assert.equal(sha(await readAll(c.bs, { resourceName: readName(data) + '/meta/data' })), sha(data));
});

test('Read honours read_offset and read_limit', async () => {
  const data = randomBytes(3 * MiB + 7);
  await writeStream(c.bs, chunks(writeName(data), data));
  const resourceName = readName(data);
  const cases: [number, number, Buffer][] = [
    [0, 0, data],
    [5, 10, data.subarray(5, 15)],
    [MiB - 1, 2, data.subarray(MiB - 1, MiB + 1)],
    [data.length - 3, 0, data.subarray(data.length - 3)],
    [data.length - 3, 100, data.subarray(data.length - 3)],
    [2 * MiB, MiB + 7, data.subarray(2 * MiB)],
    [data.length, 0, Buffer.alloc(0)],
  ];
  for (const [readOffset, readLimit, want] of cases) {
    const got = await readAll(c.bs, { resourceName, readOffset, readLimit });
    assert.ok(got.equals(want), `offset ${readOffset} limit ${readLimit}: got ${got.length} bytes, want ${want.length}`);
  }
});

test('Read errors: past the end, negative offset or limit, unknown blob, malformed names', async () => {
  const data = randomBytes(1000);
  await writeStream(c.bs, chunks(writeName(data), data));
  const code = async (req: bytestream.IReadRequest) => (await failure(readAll(c.bs, req))).code;
  assert.equal(await code({ resourceName: readName(data), readOffset: 1001 }), grpc.status.OUT_OF_RANGE);
  assert.equal(await code({ resourceName: readName(data), readOffset: -1 }), grpc.status.INVALID_ARGUMENT);
  assert.equal(await code({ resourceName: readName(data), readLimit: -5 }), grpc.status.INVALID_ARGUMENT);
  const unknown = randomBytes(1000);
  const nf = await failure(readAll(c.bs, { resourceName: readName(unknown) }));
  assert.equal(nf.code, grpc.status.NOT_FOUND);
  assert.match(nf.details, new RegExp(sha(unknown)));
  // Found in its instance only.
  assert.equal(await code({ resourceName: readName(data, 'other') }), grpc.status.NOT_FOUND);
  const h = sha(data);
  for (const resourceName of [
    '',
    `blobs/${h}`,
    `blobs/${h}/ten`,
    `blobs/${h.toUpperCase()}/1000`,
    `blobs/${h.slice(1)}/1000`,
    `${h}/1000`,
    `compressed-blobs/gzip/${h}/1000`,
    `../blobs/${h}/1000`,
    `a/../blobs/${h}/1000`,
    `uploads/${randomUUID()}/blobs/${h}/1000`,
    `actions/blobs/${h}/1000`,
  ]) {
    assert.equal(await code({ resourceName }), grpc.status.INVALID_ARGUMENT, resourceName);
  }
});

test('Write refuses malformed resource names and negative offsets', async () => {
  const data = randomBytes(100);
  const h = sha(data);
  for (const resourceName of [
    `blobs/${h}/100`,
    `uploads/${randomUUID()}/blobs/${h}`,
    `uploads/${randomUUID()}/blobs/${h}/x100`,
    `uploads/../blobs/${h}/100`,
    `uploads/has space/blobs/${h}/100`,
    `uploads/${randomUUID()}/compressed-blobs/brotli/${h}/100`,
    `capabilities/uploads/${randomUUID()}/blobs/${h}/100`,
    `a/./uploads/${randomUUID()}/blobs/${h}/100`,
  ]) {
    const err = await failure(writeStream(c.bs, [{ resourceName, data, finishWrite: true }]));
    assert.equal(err.code, grpc.status.INVALID_ARGUMENT, resourceName);
    assert.equal((await failure(query(resourceName))).code, grpc.status.INVALID_ARGUMENT, resourceName);
  }
  const neg = await failure(writeStream(c.bs, [{ resourceName: writeName(data), writeOffset: -1, data, finishWrite: true }]));
  assert.equal(neg.code, grpc.status.INVALID_ARGUMENT);
  assert.equal((await failure(writeStream(c.bs, []))).code, grpc.status.INVALID_ARGUMENT);
  assert.ok(await isMissing(data));
});

test('Write of wrong content is INVALID_ARGUMENT and the blob is not readable afterwards', async () => {
  const claimed = randomBytes(2 * MiB);
  const sent = Buffer.from(claimed);
  sent[MiB + 17] ^= 0xff;
  const name = writeName(claimed);
  const err = await failure(writeStream(c.bs, chunks(name, sent)));
  assert.equal(err.code, grpc.status.INVALID_ARGUMENT);
  assert.match(err.details, new RegExp(sha(claimed)));
  assert.ok(await isMissing(claimed));
  assert.equal((await failure(readAll(c.bs, { resourceName: readName(claimed) }))).code, grpc.status.NOT_FOUND);
  // The failed upload left nothing to resume from.
  assert.equal(Number((await query(name)).committedSize), 0);
  // Too few bytes, then finish: refused too.
  const short = await failure(writeStream(c.bs, chunks(writeName(claimed), claimed.subarray(0, MiB), { finish: true })));
  assert.equal(short.code, grpc.status.INVALID_ARGUMENT);
  assert.ok(await isMissing(claimed));
});

test('Write of more bytes than the digest says is INVALID_ARGUMENT', async () => {
  const claimed = randomBytes(MiB);
  const sent = Buffer.concat([claimed, randomBytes(10)]);
  const err = await failure(writeStream(c.bs, chunks(writeName(claimed), sent, { chunk: 256 * 1024 })));
  assert.equal(err.code, grpc.status.INVALID_ARGUMENT);
  assert.ok(await isMissing(claimed));
});

test('compressed-blobs/zstd: Write compressed, Read compressed and plain', async () => {
  const data = Buffer.concat([randomBytes(MiB), Buffer.alloc(4 * MiB, 'abc'), randomBytes(1000)]);
  const z = compress(data);
  assert.ok(z.length < data.length / 2);
  const id = randomUUID();
  const name = `inst/uploads/${id}/compressed-blobs/zstd/${sha(data)}/${data.length}`;
  const res = await writeStream(c.bs, chunks(name, z, { chunk: 256 * 1024 }));
  assert.equal(Number(res.committedSize), z.length);
  const compressedBack = await readAll(c.bs, { resourceName: `inst/compressed-blobs/zstd/${sha(data)}/${data.length}` });
  assert.ok(Buffer.from(decompress(compressedBack)).equals(data));
  assert.ok((await readAll(c.bs, { resourceName: readName(data, 'inst') })).equals(data));
  // Offsets into a compressed resource count compressed bytes.
  const tail = await readAll(c.bs, { resourceName: `inst/compressed-blobs/zstd/${sha(data)}/${data.length}`, readOffset: 10 });
  assert.ok(tail.equals(compressedBack.subarray(10)));
  // A plain blob can be read compressed as well.
  const plain = randomBytes(300_000);
  await writeStream(c.bs, chunks(writeName(plain), plain));
  assert.ok(Buffer.from(decompress(await readAll(c.bs, { resourceName: `compressed-blobs/zstd/${sha(plain)}/${plain.length}` }))).equals(plain));
});

test('compressed-blobs/zstd: wrong content, non-zstd data and a decompression bomb are refused', async () => {
  const data = randomBytes(100_000);
  const name = () => `uploads/${randomUUID()}/compressed-blobs/zstd/${sha(data)}/${data.length}`;
  const other = compress(randomBytes(100_000));
  const bomb = compress(Buffer.alloc(64 * MiB));
  for (const payload of [other, randomBytes(5000), bomb]) {
    const err = await failure(writeStream(c.bs, chunks(name(), payload)));
    assert.equal(err.code, grpc.status.INVALID_ARGUMENT);
  }
  assert.ok(await isMissing(data));
  assert.equal(server.child.exitCode, null);
});

test('resume: a half-written upload is reported by QueryWriteStatus and can be continued', async () => {
  const data = randomBytes(8 * MiB + 99);
  const half = 4 * MiB;
  const name = writeName(data);
  const err = await failure(writeStream(c.bs, chunks(name, data, { to: half, finish: false })));
  assert.notEqual(err.code, grpc.status.OK);
  let status = await query(name);
  assert.equal(Number(status.committedSize), half);
  assert.equal(status.complete, false);
  assert.ok(await isMissing(data));

  // A write_offset that does not match the committed size is refused, and changes nothing.
  for (const writeOffset of [half + 1, half - 1, data.length]) {
    const bad = await failure(writeStream(c.bs, [{ resourceName: name, writeOffset, data: data.subarray(writeOffset, writeOffset + 10) }]));
    assert.equal(bad.code, grpc.status.INVALID_ARGUMENT, `write_offset ${writeOffset}`);
  }
  // A wrong offset in a later message of the stream, too.
  const midBad = await failure(
    writeStream(c.bs, [
      { resourceName: name, writeOffset: half, data: data.subarray(half, half + 100) },
      { writeOffset: half + 200, data: data.subarray(half + 200, half + 300) },
    ]),
  );
  assert.equal(midBad.code, grpc.status.INVALID_ARGUMENT);
  status = await query(name);
  const committed = Number(status.committedSize);
  assert.ok(committed === half || committed === half + 100, `committed ${committed}`);

  assert.ok(await isMissing(data));
  const res = await writeStream(c.bs, chunks(name, data, { from: committed }));
  assert.equal(Number(res.committedSize), data.length);
  assert.equal(await isMissing(data), false);
  assert.equal(sha(await readAll(c.bs, { resourceName: readName(data) })), sha(data));
  status = await query(name);
  assert.equal(status.complete, true);
  assert.equal(Number(status.committedSize), data.length);
});

test('a Write for a blob already present answers committed_size = size without waiting for the data', async () => {
  const data = randomBytes(3 * MiB);
  await writeStream(c.bs, chunks(writeName(data), data));
  // Only the first chunk, no finish_write: a server that did not short-circuit would refuse this.
  const res = await writeStream(c.bs, chunks(writeName(data), data, { to: MiB, finish: false }));
  assert.equal(Number(res.committedSize), data.length);
  // Through QueryWriteStatus for a fresh upload id, too.
  const st = await query(writeName(data));
  assert.equal(st.complete, true);
  assert.equal(Number(st.committedSize), data.length);
  // The empty blob is always present.
  const empty = Buffer.alloc(0);
  const er = await writeStream(c.bs, [{ resourceName: writeName(empty), data: empty, finishWrite: true }]);
  assert.equal(Number(er.committedSize), 0);
  assert.equal((await readAll(c.bs, { resourceName: readName(empty) })).length, 0);
});

test('two uploads of the same blob under different upload ids both succeed', async () => {
  const data = randomBytes(2 * MiB);
  const [a, b] = await Promise.all([writeStream(c.bs, chunks(writeName(data), data, { chunk: 64 * 1024 })), writeStream(c.bs, chunks(writeName(data), data, { chunk: 64 * 1024 }))]);
  assert.equal(Number(a.committedSize), data.length);
  assert.equal(Number(b.committedSize), data.length);
  assert.equal(sha(await readAll(c.bs, { resourceName: readName(data) })), sha(data));
});
