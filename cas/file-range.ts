// Reading a stored blob, whole or the range a ByteStream Read asks for, from its file.
import { promises as fs, readFileSync } from 'node:fs';
import { Readable } from 'node:stream';
import { SMALL_FILE_BYTES } from './atomic-file';
import { ByteRange } from './blob-store';

/** The whole blob of `sizeBytes` stored in `file`; rejects as fs.readFile does (ENOENT: gone). */
export async function readBlobFile(file: string, sizeBytes: number): Promise<Buffer> {
  return sizeBytes <= SMALL_FILE_BYTES ? readFileSync(file) : fs.readFile(file);
}

/** A stream of the range of a blob of `sizeBytes` stored in `file`; rejects as fs.open does (ENOENT: gone). */
export async function openFileRange(file: string, sizeBytes: number, range: ByteRange): Promise<Readable> {
  const end = range.limit === undefined ? sizeBytes : Math.min(sizeBytes, range.offset + range.limit);
  if (sizeBytes === 0 || range.offset >= end) return Readable.from([]);
  if (sizeBytes <= SMALL_FILE_BYTES) return Readable.from([readFileSync(file).subarray(range.offset, end)]);
  const handle = await fs.open(file, 'r');
  return handle.createReadStream({ start: range.offset, end: end - 1, highWaterMark: 1 << 20 });
}
