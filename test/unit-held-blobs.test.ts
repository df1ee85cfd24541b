// Blobs held in memory in front of the file store (the embedded farm's action messages): served
// like stored blobs, never written to disk, verified, kept while held, and once released kept
// only up to a budget, least recently held dropped first.
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
  held.hold('', [message]);
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

test('bytes that do not match the digest are refused with INVALID_ARGUMENT, and nothing of that hold is kept', async () => {
  const { held } = await open();
  const good = blob('a good message');
  const claimed = blob('what the digest names');
  assert.throws(() => held.hold('', [good, { digest: claimed.digest, data: Buffer.from('something else') }]), (err: { code?: number; message: string }) => {
    assert.equal(err.code, status.INVALID_ARGUMENT);
    assert.match(err.message, new RegExp(claimed.digest.hash));
    return true;
  });
  assert.deepEqual(await held.cas('').findMissing([good.digest, claimed.digest]), [good.digest, claimed.digest]);
});

test('a held blob stays whatever the budget; released ones go past it, least recently held first', async () => {
  const { held } = await open(30);
  const [a, b, c, d] = ['first blob (15)', 'second blob ..', 'third blob ...', 'fourth blob ..'].map(blob);
  const missing = () => held.cas('').findMissing([a, b, c, d].map((x) => x.digest));
  const releaseAB = held.hold('', [a, b]);
  const releaseCD = held.hold('', [c, d]); // 57 bytes, over the budget, but all still held
  assert.deepEqual(await missing(), []);
  const releaseA = held.hold('', [a]); // a is now more recent than b
  releaseAB();
  // Released: b only (a is held again); 57 > 30 but c and d are held: b goes, nothing else can.
  assert.deepEqual(await missing(), [b.digest]);
  releaseCD();
  // a (15, held), c, d (14 each, released): the least recently held of c and d goes, then 29 <= 30.
  assert.deepEqual(await missing(), [b.digest, c.digest]);
  releaseA();
  releaseA(); // a second call changes nothing
  assert.deepEqual(await missing(), [b.digest, c.digest]);
  assert.equal((await held.cas('').read(a.digest))?.toString(), 'first blob (15)');
});

test('a held copy does not change when the caller reuses its buffer', async () => {
  const { held } = await open();
  const original = blob('bytes the caller will overwrite');
  const reused = Buffer.from(original.data);
  held.hold('', [{ digest: original.digest, data: reused }]);
  reused.fill(0);
  assert.equal((await held.cas('').read(original.digest))?.toString(), 'bytes the caller will overwrite');
});
