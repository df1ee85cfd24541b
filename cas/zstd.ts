// zstd for the compressed-blobs resources and batch calls, bounded by the size the digest
// declares so a small hostile payload can never expand into an out-of-memory crash.
import { DCtx } from 'zstd-napi/binding';
import { CompressStream } from 'zstd-napi';

export class ZstdSizeError extends Error {}

/** Decompresses data that must expand to exactly expectedSize bytes. */
export function decompressExact(data: Uint8Array, expectedSize: number): Buffer {
  const out = Buffer.allocUnsafe(expectedSize + 1);
  const dctx = new DCtx();
  let produced = 0;
  let input = data;
  while (input.length > 0) {
    const [, wrote, consumed] = dctx.decompressStream(out.subarray(produced), input);
    produced += wrote;
    input = input.subarray(consumed);
    if (produced > expectedSize) throw new ZstdSizeError(`decompresses to more than ${expectedSize} bytes`);
    if (wrote === 0 && consumed === 0) throw new ZstdSizeError('truncated zstd frame');
  }
  if (produced !== expectedSize) throw new ZstdSizeError(`decompresses to ${produced} bytes, not ${expectedSize}`);
  return out.subarray(0, produced);
}

export function compressStream(): CompressStream {
  // Level 1: ByteStream reads are on the critical path; speed matters more than ratio here.
  return new CompressStream({ compressionLevel: 1 });
}
