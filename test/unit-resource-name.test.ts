// Pure parsing of ByteStream resource names and instance names.
import test from 'node:test';
import assert from 'node:assert/strict';
import { status } from '@grpc/grpc-js';
import {
  parseReadResource,
  parseWriteResource,
  readResourceName,
  validateInstanceName,
  writeResourceName,
} from '../cas/resource-name';
import { RpcError } from '../server/rpc-error';

const H = 'a'.repeat(64);
const UUID = '3f0c6f36-0a0e-4c39-9d5b-8c6a3b1f2e77';

function invalid(fn: () => unknown, pattern?: RegExp): void {
  assert.throws(fn, (err) => {
    assert.ok(err instanceof RpcError, String(err));
    assert.equal(err.code, status.INVALID_ARGUMENT);
    if (pattern) assert.match(err.message, pattern);
    return true;
  });
}

test('read resource names: plain, with instance (slashes included), trailing metadata', () => {
  assert.deepEqual(parseReadResource(`blobs/${H}/12`), { instanceName: '', compressor: 'identity', digest: { hash: H, sizeBytes: 12 } });
  assert.deepEqual(parseReadResource(`main/blobs/${H}/12`), { instanceName: 'main', compressor: 'identity', digest: { hash: H, sizeBytes: 12 } });
  assert.deepEqual(parseReadResource(`a/b/c-d.e/blobs/${H}/4096`).instanceName, 'a/b/c-d.e');
  // Anything after the size is ignored (REAPI allows optional metadata there).
  assert.deepEqual(parseReadResource(`x/blobs/${H}/7/some/file/name.txt`), { instanceName: 'x', compressor: 'identity', digest: { hash: H, sizeBytes: 7 } });
  // Size 2^53-1 still parses exactly.
  assert.equal(parseReadResource(`blobs/${H}/9007199254740991`).digest.sizeBytes, 9007199254740991);
});

test('read resource names: compressed-blobs/zstd and the optional sha256 digest-function segment', () => {
  assert.deepEqual(parseReadResource(`inst/compressed-blobs/zstd/${H}/100`), { instanceName: 'inst', compressor: 'zstd', digest: { hash: H, sizeBytes: 100 } });
  assert.equal(parseReadResource(`compressed-blobs/identity/${H}/100`).compressor, 'identity');
  assert.deepEqual(parseReadResource(`blobs/sha256/${H}/5`).digest, { hash: H, sizeBytes: 5 });
  assert.deepEqual(parseReadResource(`i/compressed-blobs/zstd/sha256/${H}/5/meta`), { instanceName: 'i', compressor: 'zstd', digest: { hash: H, sizeBytes: 5 } });
});

test('write resource names: upload id, instance with slashes, compressed, trailing metadata', () => {
  assert.deepEqual(parseWriteResource(`uploads/${UUID}/blobs/${H}/12`), {
    instanceName: '',
    compressor: 'identity',
    digest: { hash: H, sizeBytes: 12 },
    uploadId: UUID,
  });
  assert.deepEqual(parseWriteResource(`a/b/uploads/${UUID}/compressed-blobs/zstd/${H}/12/trailing/meta`), {
    instanceName: 'a/b',
    compressor: 'zstd',
    digest: { hash: H, sizeBytes: 12 },
    uploadId: UUID,
  });
  assert.equal(parseWriteResource(`uploads/${UUID}/blobs/sha256/${H}/12`).digest.hash, H);
});

test('resource names built by the helpers parse back to the same thing', () => {
  const d = { hash: H, sizeBytes: 77 };
  for (const inst of ['', 'x', 'x/y/z']) {
    for (const c of ['identity', 'zstd'] as const) {
      assert.deepEqual(parseReadResource(readResourceName(inst, d, c)), { instanceName: inst, compressor: c, digest: d });
      assert.deepEqual(parseWriteResource(writeResourceName(inst, UUID, d, c)), { instanceName: inst, compressor: c, digest: d, uploadId: UUID });
    }
  }
});

test('malformed read resource names are INVALID_ARGUMENT', () => {
  invalid(() => parseReadResource(''), /empty/);
  invalid(() => parseReadResource(`blobs/${H}`), /malformed/); // missing size
  invalid(() => parseReadResource(`blobs/${H}/`), /size/);
  invalid(() => parseReadResource(`blobs/${H}/12x`), /size "12x"/);
  invalid(() => parseReadResource(`blobs/${H}/-12`), /size/);
  invalid(() => parseReadResource(`blobs/${H}/1.5`), /size/);
  invalid(() => parseReadResource(`blobs/${H}/99999999999999999`), /size/); // 17 digits
  invalid(() => parseReadResource(`blobs/${H}/0`), /zero-length/);
  invalid(() => parseReadResource(`blobs/${H.toUpperCase()}/12`), /hex/);
  invalid(() => parseReadResource(`blobs/${H.slice(1)}/12`), /hex/);
  invalid(() => parseReadResource(`${H}/12`), /malformed/); // no blobs segment
  invalid(() => parseReadResource(`uploads/${UUID}/blobs/${H}/12`), /malformed/); // a write name is not a read name
  invalid(() => parseReadResource(`actions/blobs/${H}/12`), /malformed/); // reserved word first
  invalid(() => parseReadResource(`compressed-blobs/${H}/12`), /compressor/); // compressor missing
  invalid(() => parseReadResource(`compressed-blobs/gzip/${H}/12`), /compressor "gzip" is not supported/);
  invalid(() => parseReadResource(`compressed-blobs/deflate/${H}/12`), /not supported/);
  invalid(() => parseReadResource(`../blobs/${H}/12`), /'\.\.'/);
  invalid(() => parseReadResource(`a/../b/blobs/${H}/12`), /'\.\.'/);
  invalid(() => parseReadResource(`a/./blobs/${H}/12`), /'\.'/);
  invalid(() => parseReadResource(`a//b/blobs/${H}/12`), /empty/);
  invalid(() => parseReadResource(`blobs/../${H}/12`));
  invalid(() => parseReadResource(`a\0b/blobs/${H}/12`), /NUL/);
  invalid(() => parseReadResource('x'.repeat(5000) + `/blobs/${H}/12`), /4096/);
  invalid(() => parseReadResource(`blobs/md5/${H.slice(0, 32)}/12`));
});

test('malformed write resource names are INVALID_ARGUMENT', () => {
  invalid(() => parseWriteResource(`blobs/${H}/12`), /malformed/); // no uploads segment
  invalid(() => parseWriteResource(`uploads`), /malformed/);
  invalid(() => parseWriteResource(`uploads/${UUID}`), /malformed/);
  invalid(() => parseWriteResource(`uploads/${UUID}/${H}/12`), /malformed/);
  invalid(() => parseWriteResource(`uploads/${UUID}/blobs/${H}`), /malformed/); // missing size
  invalid(() => parseWriteResource(`uploads/${UUID}/blobs/${H}/big`), /size "big"/);
  invalid(() => parseWriteResource(`uploads/../blobs/${H}/12`), /upload id/);
  invalid(() => parseWriteResource(`uploads/./blobs/${H}/12`), /upload id/);
  invalid(() => parseWriteResource(`uploads/a b/blobs/${H}/12`), /upload id/);
  invalid(() => parseWriteResource(`uploads/${'u'.repeat(129)}/blobs/${H}/12`), /upload id/);
  invalid(() => parseWriteResource(`uploads//blobs/${H}/12`), /upload id/);
  invalid(() => parseWriteResource(`uploads/${UUID}/compressed-blobs/brotli/${H}/12`), /not supported/);
  invalid(() => parseWriteResource(`uploads/${UUID}/uploads/${UUID}/blobs/${H}/12`), /malformed/);
  invalid(() => parseWriteResource(`../uploads/${UUID}/blobs/${H}/12`), /'\.\.'/);
  // A reserved word inside the instance name ends the instance early: the rest cannot parse.
  invalid(() => parseWriteResource(`team/actions/uploads/${UUID}/blobs/${H}/12`), /malformed/);
});

test('validateInstanceName', () => {
  for (const ok of ['', 'main', 'a/b/c', 'team-1/linux_x86.64', 'UPPER', 'Blobs', 'blobsx', '_']) assert.equal(validateInstanceName(ok), ok);
  for (const word of ['blobs', 'uploads', 'compressed-blobs', 'actions', 'actionResults', 'operations', 'capabilities']) {
    invalid(() => validateInstanceName(word), new RegExp(`reserved segment '${word}'`));
    invalid(() => validateInstanceName(`a/${word}/b`), /reserved/);
  }
  for (const bad of ['/', '/a', 'a/', 'a//b', '.', '..', 'a/..', '../a', 'a/./b', 'a\0b']) invalid(() => validateInstanceName(bad));
});
