// Pure digest logic: validateDigest, verifyBlob, digestOf, and zstd decompressExact.
import test from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { status } from '@grpc/grpc-js';
import { compress } from 'zstd-napi';
import { SHA256_EMPTY, digestOf, isEmptyDigest, validateDigest, verifyBlob } from '../cas/digest';
import { ZstdSizeError, decompressExact } from '../cas/zstd';
import { RpcError } from '../server/rpc-error';

const sha = (b: Uint8Array | string) => createHash('sha256').update(b).digest('hex');
const HELLO = Buffer.from('hello, cas');
const HELLO_HASH = sha(HELLO);

function rejects(fn: () => unknown, pattern?: RegExp): RpcError {
  let caught: unknown;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  assert.ok(caught instanceof RpcError, `expected an RpcError, got ${String(caught)}`);
  assert.equal(caught.code, status.INVALID_ARGUMENT);
  if (pattern) assert.match(caught.message, pattern);
  return caught;
}

test('validateDigest accepts a well-formed SHA-256 digest and returns it normalized', () => {
  assert.deepEqual(validateDigest({ hash: HELLO_HASH, sizeBytes: HELLO.length }), { hash: HELLO_HASH, sizeBytes: HELLO.length });
  // Extra fields of a decoded message do not leak into the result.
  const withExtra = { hash: HELLO_HASH, sizeBytes: 10, other: 1 } as { hash: string; sizeBytes: number };
  assert.deepEqual(Object.keys(validateDigest(withExtra)).sort(), ['hash', 'sizeBytes']);
  // The largest exact integer size is a legal (if improbable) size.
  assert.equal(validateDigest({ hash: HELLO_HASH, sizeBytes: Number.MAX_SAFE_INTEGER }).sizeBytes, Number.MAX_SAFE_INTEGER);
});

test('validateDigest rejects hashes that are not 64 lower-case hex digits', () => {
  const bad = [
    '',
    HELLO_HASH.slice(0, 63),
    HELLO_HASH + '0',
    HELLO_HASH.toUpperCase(),
    HELLO_HASH.slice(0, 63) + 'g',
    HELLO_HASH.slice(0, 63) + ' ',
    ' ' + HELLO_HASH.slice(1),
    HELLO_HASH.slice(0, 32), // an MD5-length hash
    HELLO_HASH.slice(0, 40), // a SHA-1-length hash
    HELLO_HASH + HELLO_HASH, // a SHA-512-length hash
    '../' + HELLO_HASH.slice(3),
  ];
  for (const hash of bad) rejects(() => validateDigest({ hash, sizeBytes: 10 }), /64 lower-case hex/);
  rejects(() => validateDigest({ sizeBytes: 10 }), /64 lower-case hex/);
});

test('validateDigest rejects negative, fractional, non-finite and huge sizes', () => {
  for (const sizeBytes of [-1, -(2 ** 40), 1.5, 0.1, Number.NaN, Infinity, -Infinity, 2 ** 53, 2 ** 63]) {
    rejects(() => validateDigest({ hash: HELLO_HASH, sizeBytes }), /size_bytes must be a non-negative integer/);
  }
});

test('validateDigest: a zero size is only valid for the empty blob; missing digests are refused', () => {
  assert.deepEqual(validateDigest({ hash: SHA256_EMPTY, sizeBytes: 0 }), { hash: SHA256_EMPTY, sizeBytes: 0 });
  assert.deepEqual(validateDigest({ hash: SHA256_EMPTY }), { hash: SHA256_EMPTY, sizeBytes: 0 });
  rejects(() => validateDigest({ hash: HELLO_HASH, sizeBytes: 0 }), /zero-length blob/);
  rejects(() => validateDigest({ hash: HELLO_HASH }), /zero-length blob/);
  rejects(() => validateDigest(null, 'root_digest'), /root_digest is missing/);
  rejects(() => validateDigest(undefined), /digest is missing/);
  // The label names the offending field so the client can find it.
  rejects(() => validateDigest({ hash: 'x', sizeBytes: 1 }, 'blob_digests[7]'), /^blob_digests\[7\]/);
});

test('digestOf / isEmptyDigest', () => {
  assert.deepEqual(digestOf(HELLO), { hash: HELLO_HASH, sizeBytes: HELLO.length });
  assert.deepEqual(digestOf(new Uint8Array()), { hash: SHA256_EMPTY, sizeBytes: 0 });
  assert.equal(SHA256_EMPTY, sha(''));
  assert.ok(isEmptyDigest({ hash: SHA256_EMPTY, sizeBytes: 0 }));
  assert.ok(!isEmptyDigest({ hash: SHA256_EMPTY, sizeBytes: 1 }));
  assert.ok(!isEmptyDigest({ hash: HELLO_HASH, sizeBytes: 0 }));
});

test('verifyBlob accepts matching data and names the digest when size or content differ', () => {
  verifyBlob({ hash: HELLO_HASH, sizeBytes: HELLO.length }, HELLO);
  verifyBlob({ hash: SHA256_EMPTY, sizeBytes: 0 }, new Uint8Array());
  const key = `${HELLO_HASH}/${HELLO.length}`;
  const e1 = rejects(() => verifyBlob({ hash: HELLO_HASH, sizeBytes: HELLO.length }, Buffer.from('hello, caS')), /hashes to/);
  assert.ok(e1.message.includes(key), e1.message);
  const e2 = rejects(() => verifyBlob({ hash: HELLO_HASH, sizeBytes: HELLO.length }, HELLO.subarray(1)), /received 9 bytes/);
  assert.ok(e2.message.includes(key), e2.message);
  rejects(() => verifyBlob({ hash: HELLO_HASH, sizeBytes: HELLO.length }, Buffer.concat([HELLO, Buffer.from([0])])));
});

test('decompressExact returns exactly the original bytes', () => {
  const data = Buffer.concat([randomBytes(100_000), Buffer.alloc(300_000, 7)]);
  const z = compress(data);
  assert.ok(z.length < data.length);
  assert.ok(decompressExact(z, data.length).equals(data));
  assert.equal(decompressExact(compress(Buffer.alloc(0)), 0).length, 0);
  // Two concatenated frames are one valid zstd stream.
  const two = Buffer.concat([compress(data.subarray(0, 1000)), compress(data.subarray(1000))]);
  assert.ok(decompressExact(two, data.length).equals(data));
});

test('decompressExact refuses a bomb: a small input expanding beyond the expected size', () => {
  const huge = Buffer.alloc(256 * 1024 * 1024); // 256 MiB of zeros
  const bomb = compress(huge);
  assert.ok(bomb.length < 64 * 1024, `bomb is ${bomb.length} bytes`);
  assert.throws(() => decompressExact(bomb, 1024), (err) => err instanceof ZstdSizeError && /more than 1024 bytes/.test(err.message));
  assert.throws(() => decompressExact(bomb, 0), ZstdSizeError);
  // Off by one either way is refused too.
  const small = compress(Buffer.alloc(5000, 1));
  assert.throws(() => decompressExact(small, 4999), ZstdSizeError);
  assert.throws(() => decompressExact(small, 5001), ZstdSizeError);
});

test('decompressExact refuses truncated, empty and non-zstd input', () => {
  const data = randomBytes(50_000);
  const z = compress(data);
  assert.throws(() => decompressExact(z.subarray(0, z.length - 10), data.length));
  assert.throws(() => decompressExact(Buffer.alloc(0), data.length), ZstdSizeError);
  assert.throws(() => decompressExact(Buffer.from('definitely not zstd'), 19));
});
