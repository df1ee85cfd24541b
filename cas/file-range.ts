// Reading a blob, or part of one, from a file: the range a ByteStream Read asks for, as a stream.
import { promises as fs } from 'node:fs';
import { Readable } from 'node:stream';
import { ByteRange } from './blob-store';

/** A stream of the range of a blob of `sizeBytes` stored in `file`; rejects as fs.open does (ENOENT: gone). */
export async function openFileRange(file: string, sizeBytes: number, range: ByteRange): Promise<Readable> {
  const end = range.limit === undefined ? sizeBytes : Math.min(sizeBytes, range.offset + range.limit);
  if (sizeBytes === 0 || range.offset >= end) return Readable.from([]);
  const handle = await fs.open(file, 'r');
  return handle.createReadStream({ start: range.offset, end: end - 1, highWaterMark: 1 << 20 });
}
