// The digest of a local file, read as a stream so large outputs never sit in memory.
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import type { Digest } from '../cas/digest';

export async function digestOfFile(file: string): Promise<Digest> {
  const hash = createHash('sha256');
  let sizeBytes = 0;
  for await (const chunk of createReadStream(file, { highWaterMark: 1 << 20 })) {
    hash.update(chunk as Buffer);
    sizeBytes += (chunk as Buffer).length;
  }
  return { hash: hash.digest('hex'), sizeBytes };
}
