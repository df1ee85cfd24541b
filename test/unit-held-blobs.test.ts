// Blobs held in memory in front of the file store (the embedded farm's action messages): served
// like stored blobs, never written to disk, verified, and bounded, oldest hold dropped first.
import test from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import * as path from 'node:path';
import { text } from 'node:stream/consumers';
import { status } from '@grpc/grpc-js';
import { FileStorage } from '../cas/file-storage';
import { HeldBlobStorage } from '../cas/held-blobs';
import { digestOf } from '../cas/digest';
import { tempDir } from './helpers/server-process';

const blob = (s: string) => ({ data: Buffer.from(s), digest: digestOf(Buffer.from(s)) });

async function open(maxBytes?: number) {
  const dir = tempDir('held-blobs');
  const durable = await FileStorage.open(dir);
  return { dir, durable, held: new HeldBlobStorage(durable, maxBytes) };
}

test('a held blob is read, streamed and found like a stored one, and never reaches the disk', async () => {
  const { dir, durable, held } = await open();
  const message = blob('an action message');
  const stored = blob('an input file');
  held.hold('', message.digest, message.data);
  await held.cas('').put(stored.digest, stored.data);

  const cas = held.cas('');
  assert.deepEqual(await cas.findMissing([message.digest, stored.digest, blob('absent').digest]), [blob('absent').digest]);
  assert.equal((await cas.read(message.digest))?.toString(), 'an action message');
  assert.equal(await text((await cas.openRead(message.digest, { offset: 3, limit: 6 }))!), 'action');
  assert.equal(await cas.linkTo!(message.digest, path.join(dir, 'link')), false, 'no file to link: the caller writes it out');

  assert.deepEqual(await durable.cas('').findMissing([message.digest, stored.digest]), [message.digest]);
  assert.equal((await durable.cas('').read(stored.digest))?.toString(), 'an input file', 'writes go to the durable store');
  assert.equal(existsSync(path.join(dir, 'instances', '_', 'cas', message.digest.hash.slice(0, 2), message.digest.hash)), false);
  assert.deepEqual(await held.cas('other').findMissing([message.digest]), [message.digest], 'instance names stay namespaces');
});

test('bytes that do not match the digest are refused with INVALID_ARGUMENT, and nothing is held', async () => {
  const { held } = await open();
  const claimed = blob('what the digest names');
  assert.throws(() => held.hold('', claimed.digest, Buffer.from('something else')), (err: { code?: number; message: string }) => {
    assert.equal(err.code, status.INVALID_ARGUMENT);
    assert.match(err.message, new RegExp(claimed.digest.hash));
    return true;
  });
  assert.equal(await held.cas('').read(claimed.digest), undefined);
});

test('past the byte budget the oldest hold goes first; holding a blob again makes it the newest', async () => {
  const { held } = await open(30);
  const [a, b, c] = ['first blob (10)', 'second blob ..', 'third blob ...'].map(blob);
  held.hold('', a.digest, a.data);
  held.hold('', b.digest, b.data);
  held.hold('', a.digest, a.data); // a is now newer than b
  held.hold('', c.digest, c.data); // 15 + 14 + 14 > 30: the oldest, b, goes
  assert.deepEqual(await held.cas('').findMissing([a.digest, b.digest, c.digest]), [b.digest]);
  assert.equal((await held.cas('').read(a.digest))?.toString(), 'first blob (10)');
});

test('a held copy does not change when the caller reuses its buffer', async () => {
  const { held } = await open();
  const original = blob('bytes the caller will overwrite');
  const reused = Buffer.from(original.data);
  held.hold('', original.digest, reused);
  reused.fill(0);
  assert.equal((await held.cas('').read(original.digest))?.toString(), 'bytes the caller will overwrite');
});
