// ByteStream over the CAS: ranged and zstd-compressed reads, resumable writes.
import { status } from '@grpc/grpc-js';
import { Readable } from 'node:stream';
import { bytestream } from '../apis';
import { Storage } from './blob-store';
import { digestKey } from './digest';
import { DEFAULT_CLIENT_LIMITS, READ_CHUNK_BYTES, checkBlobSize } from './limits';
import { parseReadResource, parseWriteResource } from './resource-name';
import { UploadSessions, UploadWriter } from './upload-sessions';
import { compressStream } from './zstd';
import { RpcError, invalidArgument, notFound } from '../server/rpc-error';
import { UndecodableRequest, checkDecoded } from '../server/request-decoding';

export class ByteStreamService {
  constructor(
    private readonly storage: Storage,
    private readonly uploads: UploadSessions,
    private readonly limits: { maxBlobBytes: number; writeIdleMs: number } = DEFAULT_CLIENT_LIMITS,
  ) {}

  /** The chunks to send for a Read, each at most READ_CHUNK_BYTES. */
  async *read(req: bytestream.ReadRequest): AsyncGenerator<Buffer> {
    const res = parseReadResource(req.resourceName);
    const offset = req.readOffset;
    const limit = req.readLimit;
    if (offset < 0) throw invalidArgument(`read_offset ${offset} is negative`);
    if (limit < 0) throw invalidArgument(`read_limit ${limit} is negative`);
    const size = res.digest.sizeBytes;
    if (res.compressor === 'identity' && offset > size) {
      throw new RpcError(status.OUT_OF_RANGE, `read_offset ${offset} is past the end of blob ${digestKey(res.digest)} (${size} bytes)`);
    }
    const cas = this.storage.cas(res.instanceName);
    // Offsets into a compressed resource count compressed bytes, so compression comes first.
    const source =
      res.compressor === 'identity'
        ? await cas.openRead(res.digest, { offset, limit: limit || undefined })
        : await cas.openRead(res.digest);
    if (!source) throw notFound(`blob ${digestKey(res.digest)} is not in the CAS`);
    const chunks = res.compressor === 'identity' ? source : slice(source.pipe(compressStream()), offset, limit || Infinity);
    for await (const chunk of rechunk(chunks)) yield chunk;
  }

  async write(requests: AsyncIterable<bytestream.WriteRequest | UndecodableRequest>): Promise<bytestream.WriteResponse.$Properties> {
    let writer: UploadWriter | undefined;
    let resourceName = '';
    try {
      for await (const received of idleLimited(requests, this.limits.writeIdleMs, () => resourceName)) {
        const req = checkDecoded(received);
        if (!writer) {
          resourceName = req.resourceName;
          const res = parseWriteResource(resourceName);
          checkBlobSize(res.digest, this.limits.maxBlobBytes, `Write ${JSON.stringify(resourceName)}: blob`);
          if (req.writeOffset < 0) throw invalidArgument(`write_offset ${req.writeOffset} is negative`);
          if (req.writeOffset === 0 && req.finishWrite) {
            const committedSize = await this.uploads.storeWhole(res, messageData(req));
            if (committedSize !== undefined) return { committedSize };
          }
          writer = await this.uploads.open(res, req.writeOffset);
          if (!writer) return { committedSize: res.compressor === 'identity' ? res.digest.sizeBytes : -1 };
        } else if (req.resourceName && req.resourceName !== resourceName) {
          throw invalidArgument(`resource_name changed within one Write stream (${JSON.stringify(resourceName)} then ${JSON.stringify(req.resourceName)})`);
        }
        await writer.append(req.writeOffset, messageData(req));
        if (req.finishWrite) {
          const committedSize = await writer.finish();
          writer = undefined;
          return { committedSize };
        }
      }
    } finally {
      await writer?.suspend();
    }
    if (!resourceName) throw invalidArgument('Write stream carried no request');
    throw invalidArgument(`Write stream for ${JSON.stringify(resourceName)} ended without finish_write; QueryWriteStatus tells where to resume`);
  }

  async queryWriteStatus(req: bytestream.QueryWriteStatusRequest): Promise<bytestream.QueryWriteStatusResponse.$Properties> {
    return this.uploads.queryWriteStatus(parseWriteResource(req.resourceName));
  }
}

/** A view, not a copy: the decoded message already holds the bytes in a Buffer. */
function messageData(req: bytestream.WriteRequest): Buffer {
  return Buffer.isBuffer(req.data) ? req.data : Buffer.from(req.data.buffer, req.data.byteOffset, req.data.byteLength);
}

/**
 * Passes messages through, failing with DEADLINE_EXCEEDED when none arrives for `idleMs`: a
 * client that opens a Write and goes quiet must not hold a session and a file handle forever.
 */
async function* idleLimited<T>(source: AsyncIterable<T>, idleMs: number, resource: () => string): AsyncGenerator<T> {
  const it = source[Symbol.asyncIterator]();
  let finished = false;
  try {
    for (;;) {
      let timer: NodeJS.Timeout | undefined;
      const idle = new Promise<never>((_, reject) => {
        timer = setTimeout(() => {
          const name = resource();
          reject(
            new RpcError(
              status.DEADLINE_EXCEEDED,
              `Write stream${name ? ` for ${JSON.stringify(name)}` : ''} sent nothing for ${idleMs} ms and was cancelled (idle limit, --write-idle-seconds); ` +
                'the bytes received so far are kept: QueryWriteStatus tells where to resume',
            ),
          );
        }, idleMs);
      });
      let next: IteratorResult<T>;
      try {
        const pending = it.next();
        pending.catch(() => undefined); // still pending after a timeout: its failure is nobody's
        next = await Promise.race([pending, idle]);
      } finally {
        clearTimeout(timer);
      }
      if (next.done) {
        finished = true;
        return;
      }
      yield next.value;
    }
  } finally {
    // Not awaited: after an idle timeout the source still has a read pending, which only the
    // call's end (the status the handler is about to send) settles.
    if (!finished) void Promise.resolve(it.return?.()).catch(() => undefined);
  }
}

/** Skips `offset` bytes of a stream and stops after `limit` more. */
async function* slice(source: AsyncIterable<Buffer>, offset: number, limit: number): AsyncGenerator<Buffer> {
  let skip = offset;
  let left = limit;
  for await (const chunk of source) {
    let piece: Buffer = chunk;
    if (skip > 0) {
      const dropped = Math.min(skip, piece.length);
      piece = piece.subarray(dropped);
      skip -= dropped;
    }
    if (piece.length === 0) continue;
    if (piece.length >= left) {
      yield piece.subarray(0, left);
      return;
    }
    left -= piece.length;
    yield piece;
  }
  if (skip > 0) throw new RpcError(status.OUT_OF_RANGE, `read_offset ${offset} is past the end of the compressed blob`);
}

/** Splits oversized chunks so no gRPC message exceeds READ_CHUNK_BYTES of data. */
async function* rechunk(source: AsyncIterable<Buffer> | Readable): AsyncGenerator<Buffer> {
  for await (const chunk of source as AsyncIterable<Buffer>) {
    for (let at = 0; at < chunk.length; at += READ_CHUNK_BYTES) yield chunk.subarray(at, at + READ_CHUNK_BYTES);
  }
}
