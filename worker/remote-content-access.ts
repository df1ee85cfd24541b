// ContentAccess over gRPC to a reapi server, for a standalone worker that shares no disk with it.
//
// Small blobs travel in batch calls (BatchReadBlobs / BatchUpdateBlobs) up to the batch size the
// server advertises; anything larger streams through ByteStream, never held in memory whole.
// Every byte that arrives is checked against its digest before the caller sees it, and every file
// that leaves is hashed while it streams, so a file changing under an upload is caught here and
// not committed.
import * as grpc from '@grpc/grpc-js';
import { createHash, Hash, randomUUID } from 'node:crypto';
import { createReadStream, promises as fs } from 'node:fs';
import { unary } from '../apis/services';
import { bytestream } from '../apis';
import { Digest, digestKey, isEmptyDigest } from '../cas/digest';
import { readResourceName, writeResourceName } from '../cas/resource-name';
import { RpcError } from '../server/rpc-error';
import { ContentAccess } from './content-access';
import { ServerClients, untilReachable } from './server-connection';

/** ByteStream Write chunk: far below any message limit, large enough to keep the pipe full. */
export const UPLOAD_CHUNK_BYTES = 1024 * 1024;
/** Digests per FindMissingBlobs call: ~80 bytes each keeps a call well under 4 MiB. */
export const FIND_MISSING_CHUNK = 10_000;
/** FindMissingBlobs calls in flight at once for one long list. */
const FIND_MISSING_PARALLEL = 4;
/** Used when the server advertises no batch limit (0 = "no limit" in REAPI): gRPC's default message size. */
const DEFAULT_BATCH_BYTES = 4 * 1024 * 1024;
/** A read broken mid-stream resumes from where it stopped this many times before giving up. */
const READ_RESUMPTIONS = 3;

export class RemoteContentAccess implements ContentAccess {
  private batchBytes?: Promise<number>;

  constructor(private readonly server: ServerClients) {}

  async findMissing(instanceName: string, digests: Digest[]): Promise<Digest[]> {
    const chunks: Digest[][] = [];
    for (let i = 0; i < digests.length; i += FIND_MISSING_CHUNK) chunks.push(digests.slice(i, i + FIND_MISSING_CHUNK));
    const missing: Digest[][] = new Array(chunks.length);
    let next = 0;
    const lane = async () => {
      while (next < chunks.length) {
        const at = next++;
        const res = await this.call(`FindMissingBlobs (${chunks[at].length} digests)`, () =>
          unary(this.server.cas, 'FindMissingBlobs', { instanceName, blobDigests: chunks[at] }),
        );
        missing[at] = res.missingBlobDigests.map((d) => ({ hash: d.hash ?? '', sizeBytes: Number(d.sizeBytes ?? 0) }));
      }
    };
    await Promise.all(Array.from({ length: Math.min(FIND_MISSING_PARALLEL, chunks.length) }, lane));
    return missing.flat();
  }

  async read(instanceName: string, digest: Digest): Promise<Buffer | undefined> {
    if (isEmptyDigest(digest)) return Buffer.alloc(0);
    if (digest.sizeBytes <= (await this.batchLimit(instanceName))) {
      const res = await this.call(`BatchReadBlobs of ${digestKey(digest)}`, () =>
        unary(this.server.cas, 'BatchReadBlobs', { instanceName, digests: [digest] }),
      );
      const answer = res.responses[0];
      const code = answer?.status?.code ?? grpc.status.OK;
      if (code === grpc.status.NOT_FOUND) return undefined;
      if (!answer || code !== grpc.status.OK) {
        throw new RpcError(answer ? code : grpc.status.INTERNAL, `BatchReadBlobs of ${digestKey(digest)}: ${answer?.status?.message ?? 'no response for the digest'}`);
      }
      const data = Buffer.from(answer.data ?? new Uint8Array());
      verify(digest, createHash('sha256').update(data), data.length, `blob ${digestKey(digest)} as the server sent it`);
      return data;
    }
    const parts: Buffer[] = [];
    const hash = createHash('sha256');
    const found = await this.readStream(instanceName, digest, hash, async (chunk) => void parts.push(chunk));
    return found ? Buffer.concat(parts) : undefined;
  }

  async fetchToFile(instanceName: string, digest: Digest, path: string): Promise<boolean> {
    const file = await fs.open(path, 'wx');
    let found = false;
    try {
      const hash = createHash('sha256');
      found = isEmptyDigest(digest) || (await this.readStream(instanceName, digest, hash, (chunk) => writeAll(file, chunk)));
    } finally {
      await file.close();
      if (!found) await fs.rm(path, { force: true });
    }
    return found;
  }

  async uploadFile(instanceName: string, digest: Digest, path: string): Promise<void> {
    if (isEmptyDigest(digest)) return;
    if (digest.sizeBytes <= (await this.batchLimit(instanceName))) {
      const data = await fs.readFile(path);
      verify(digest, createHash('sha256').update(data), data.length, `${path} (changed since it was hashed)`);
      return this.batchUpdate(instanceName, digest, data);
    }
    // One cheap question saves streaming a large file the server already has.
    if ((await this.findMissing(instanceName, [digest])).length === 0) return;
    await this.writeStream(instanceName, digest, fileChunks(path, digest));
  }

  async uploadBlob(instanceName: string, digest: Digest, data: Buffer): Promise<void> {
    if (isEmptyDigest(digest)) return;
    if (digest.sizeBytes <= (await this.batchLimit(instanceName))) return this.batchUpdate(instanceName, digest, data);
    await this.writeStream(instanceName, digest, bufferChunks(data));
  }

  // --- batches ------------------------------------------------------------------------------

  /**
   * Blob bytes one batch call may carry: the server's advertised limit, asked once. Asked for the
   * instance at hand: a server with tokens answers only for instances the worker's token covers.
   */
  private batchLimit(instanceName: string): Promise<number> {
    this.batchBytes ??= this.call('GetCapabilities', () => unary(this.server.caps, 'GetCapabilities', { instanceName })).then(
      (caps) => {
        const advertised = Number(caps.cacheCapabilities?.maxBatchTotalSizeBytes ?? 0);
        return advertised > 0 ? Math.min(advertised, DEFAULT_BATCH_BYTES) : DEFAULT_BATCH_BYTES;
      },
      (err: unknown) => {
        this.batchBytes = undefined; // ask again next time rather than remember a failure
        throw err;
      },
    );
    return this.batchBytes;
  }

  private async batchUpdate(instanceName: string, digest: Digest, data: Buffer): Promise<void> {
    const res = await this.call(`BatchUpdateBlobs of ${digestKey(digest)}`, () =>
      unary(this.server.cas, 'BatchUpdateBlobs', { instanceName, requests: [{ digest, data }] }),
    );
    const code = res.responses[0]?.status?.code ?? grpc.status.OK;
    if (code !== grpc.status.OK) {
      throw new RpcError(code, `BatchUpdateBlobs of ${digestKey(digest)}: ${res.responses[0]?.status?.message ?? ''}`);
    }
  }

  // --- ByteStream ---------------------------------------------------------------------------

  /**
   * Reads a blob through ByteStream into `sink`, hashing as it goes; false if the server does
   * not have it. A stream broken after some data resumes at the offset reached.
   */
  private async readStream(instanceName: string, digest: Digest, hash: Hash, sink: (chunk: Buffer) => Promise<void>): Promise<boolean> {
    const resourceName = readResourceName(instanceName, digest);
    let received = 0;
    for (let resumptions = 0; ; resumptions++) {
      const startedAt = received;
      try {
        const call = this.server.bs.Read({ resourceName, readOffset: received });
        for await (const res of call as AsyncIterable<bytestream.ReadResponse>) {
          const chunk = Buffer.from(res.data);
          received += chunk.length;
          if (received > digest.sizeBytes) {
            call.cancel();
            throw new RpcError(grpc.status.DATA_LOSS, `ByteStream Read of ${digestKey(digest)}: the server sent more than ${digest.sizeBytes} bytes`);
          }
          hash.update(chunk);
          await sink(chunk);
        }
        break;
      } catch (err) {
        const code = (err as grpc.ServiceError).code;
        if (code === grpc.status.NOT_FOUND && received === 0) return false;
        // Progress made and the connection broke: pick up where the stream stopped.
        if (code === grpc.status.UNAVAILABLE && received > startedAt && resumptions < READ_RESUMPTIONS) continue;
        throw asRpcError(err, `ByteStream Read of ${digestKey(digest)} at offset ${received}`);
      }
    }
    verify(digest, hash, received, `blob ${digestKey(digest)} as the server sent it`);
    return true;
  }

  /**
   * Writes a blob through ByteStream under a fresh upload id. The last chunk is held back until
   * the source is exhausted, so a source that throws (content changed) never sends finish_write.
   */
  private writeStream(instanceName: string, digest: Digest, chunks: AsyncIterable<Buffer>): Promise<void> {
    const resourceName = writeResourceName(instanceName, randomUUID(), digest);
    const what = `ByteStream Write of ${digestKey(digest)}`;
    return new Promise<void>((resolve, reject) => {
      let answered = false;
      let wakeWriter: (() => void) | undefined;
      const call = this.server.bs.Write((err, res) => {
        answered = true;
        wakeWriter?.();
        if (err) reject(asRpcError(err, what));
        else if (Number(res!.committedSize) !== digest.sizeBytes) {
          reject(new RpcError(grpc.status.DATA_LOSS, `${what}: the server committed ${res!.committedSize} bytes, not ${digest.sizeBytes}`));
        } else resolve();
      });
      let offset = 0;
      const send = async (data: Buffer, finishWrite: boolean) => {
        const more = call.write({ resourceName: offset === 0 ? resourceName : '', writeOffset: offset, data, finishWrite });
        offset += data.length;
        // Wait for room, unless the server answered meanwhile (it may stop reading at any time,
        // e.g. when it already has the blob).
        if (!more && !answered) await new Promise<void>((wake) => ((wakeWriter = wake), call.once('drain', wake)));
        wakeWriter = undefined;
      };
      (async () => {
        let held: Buffer | undefined;
        for await (const chunk of chunks) {
          if (answered) return;
          if (held) await send(held, false);
          held = chunk;
        }
        if (answered) return;
        await send(held ?? Buffer.alloc(0), true);
        call.end();
      })().catch((err: unknown) => {
        call.cancel();
        reject(err);
      });
    });
  }

  /** Runs a unary call (untilReachable), turning its failure into an RpcError that names what was attempted. */
  private async call<T>(what: string, run: () => Promise<T>): Promise<T> {
    try {
      return await untilReachable(this.server, what, run);
    } catch (err) {
      throw asRpcError(err, `${what} on ${this.server.address}`);
    }
  }
}

/** Keeps the gRPC status (UNAVAILABLE stays retryable for the client) and says what failed. */
function asRpcError(err: unknown, what: string): RpcError {
  if (err instanceof RpcError) return err;
  const e = err as Partial<grpc.ServiceError>;
  if (typeof e.code === 'number') return new RpcError(e.code, `${what}: ${e.details ?? e.message}`);
  return new RpcError(grpc.status.INTERNAL, `${what}: ${err instanceof Error ? err.message : String(err)}`);
}

function verify(digest: Digest, hash: Hash, size: number, what: string): void {
  const actual = hash.digest('hex');
  if (size !== digest.sizeBytes || actual !== digest.hash) {
    throw new RpcError(grpc.status.DATA_LOSS, `${what} is ${actual}/${size}, expected ${digestKey(digest)}`);
  }
}

async function writeAll(file: fs.FileHandle, chunk: Buffer): Promise<void> {
  for (let at = 0; at < chunk.length; ) at += (await file.write(chunk, at)).bytesWritten;
}

/** A file in upload-sized chunks, hashed on the way; throws before the end if it is not `digest`. */
async function* fileChunks(path: string, digest: Digest): AsyncGenerator<Buffer> {
  const hash = createHash('sha256');
  let size = 0;
  for await (const chunk of createReadStream(path, { highWaterMark: UPLOAD_CHUNK_BYTES }) as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > digest.sizeBytes) break; // grew: reported below
    hash.update(chunk);
    yield chunk;
  }
  verify(digest, hash, size, `${path} (changed since it was hashed)`);
}

async function* bufferChunks(data: Buffer): AsyncGenerator<Buffer> {
  for (let at = 0; at < data.length; at += UPLOAD_CHUNK_BYTES) yield data.subarray(at, at + UPLOAD_CHUNK_BYTES);
}
