// Resumable ByteStream uploads.
//
// Each upload (instance, upload id, compressor, digest) owns one part file under the uploads
// directory holding exactly the bytes received so far, so the committed size a client resumes
// from is simply the part file's length — true even after the server was killed mid-write.
// Uncompressed uploads are hashed as they arrive (re-hashed from the part file after a
// restart) and the part file becomes the blob by rename: the bytes are written once and hashed
// once. zstd uploads are decompressed and verified when the client finishes.
import { Hash, createHash } from 'node:crypto';
import { createReadStream, promises as fs } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import * as path from 'node:path';
import { Transform, TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { DecompressStream } from 'zstd-napi';
import { BlobStore, Storage } from './blob-store';
import { Digest, digestKey } from './digest';
import { BlobResource } from './resource-name';
import { tempPath } from './atomic-file';
import { RpcError, invalidArgument } from '../server/rpc-error';
import { status } from '@grpc/grpc-js';

export type UploadResource = BlobResource & { uploadId: string };

export interface WriteStatus {
  committedSize: number;
  complete: boolean;
}

/** Idle sessions kept in memory; beyond this the oldest are dropped and rebuilt from disk. */
const MAX_IDLE_SESSIONS = 10_000;
/** Part files untouched for this long are abandoned uploads. */
const ABANDONED_AFTER_MS = 24 * 3600 * 1000;

export class UploadSessions {
  private readonly sessions = new Map<string, UploadSession>();

  constructor(private readonly storage: Storage) {}

  /** Removes part files of uploads abandoned long ago. Call at start. */
  async collectAbandoned(now = Date.now()): Promise<number> {
    let removed = 0;
    for (const name of await fs.readdir(this.storage.uploadsDir)) {
      const file = path.join(this.storage.uploadsDir, name);
      const st = await fs.stat(file).catch(() => undefined);
      if (st && now - st.mtimeMs > ABANDONED_AFTER_MS) {
        await fs.rm(file, { force: true });
        removed++;
      }
    }
    return removed;
  }

  async queryWriteStatus(res: UploadResource): Promise<WriteStatus> {
    const cas = this.storage.cas(res.instanceName);
    if ((await cas.findMissing([res.digest])).length === 0) {
      return { committedSize: res.compressor === 'identity' ? res.digest.sizeBytes : -1, complete: true };
    }
    const session = this.sessions.get(sessionKey(res));
    if (session) return { committedSize: session.committed, complete: false };
    const st = await fs.stat(this.partPath(res)).catch(() => undefined);
    return { committedSize: st?.size ?? 0, complete: false };
  }

  /**
   * Stores an upload that arrived whole in its first message (what clients send for small
   * blobs): with nothing to resume there is no need for a part file, so the blob is written once
   * (put) instead of written, synced, re-opened, synced again and renamed. Returns the committed
   * size, or undefined when it must take the resumable path: zstd data, or a session of the same
   * upload is open (its part file and stream must see this write).
   */
  async storeWhole(res: UploadResource, data: Buffer): Promise<number | undefined> {
    if (res.compressor !== 'identity' || this.sessions.has(sessionKey(res))) return undefined;
    await this.storage.cas(res.instanceName).put(res.digest, data); // INVALID_ARGUMENT unless data matches the digest
    return res.digest.sizeBytes;
  }

  /**
   * Starts (or resumes, when writeOffset equals the committed size) writing an upload.
   * Returns undefined when the blob is already stored: the client may stop sending.
   */
  async open(res: UploadResource, writeOffset: number): Promise<UploadWriter | undefined> {
    const cas = this.storage.cas(res.instanceName);
    if ((await cas.findMissing([res.digest])).length === 0) return undefined;
    const key = sessionKey(res);
    let session = this.sessions.get(key);
    if (!session) {
      session = new UploadSession(res, this.partPath(res), cas, this.storage.scratchDir);
      this.sessions.set(key, session);
      this.trimIdle();
    }
    const writer = new UploadWriter(session, () => this.sessions.delete(key));
    await session.attach(writer, writeOffset);
    return writer;
  }

  private partPath(res: UploadResource): string {
    return path.join(this.storage.uploadsDir, createHash('sha256').update(sessionKey(res)).digest('hex') + '.part');
  }

  private trimIdle(): void {
    if (this.sessions.size <= MAX_IDLE_SESSIONS) return;
    for (const [key, session] of this.sessions) {
      if (this.sessions.size <= MAX_IDLE_SESSIONS) break;
      if (session.idle) this.sessions.delete(key);
    }
  }
}

function sessionKey(res: UploadResource): string {
  return [res.instanceName, res.uploadId, res.compressor, digestKey(res.digest)].join('\0');
}

/** One client stream's handle on a session; a newer stream for the same upload supersedes it. */
export class UploadWriter {
  constructor(private readonly session: UploadSession, private readonly onComplete: () => void) {}

  get committed(): number {
    return this.session.committed;
  }

  append(writeOffset: number, data: Buffer): Promise<void> {
    return this.session.append(this, writeOffset, data);
  }

  /** Verifies and stores the blob; returns the committed size to report. */
  async finish(): Promise<number> {
    const size = await this.session.finish(this);
    this.onComplete();
    return size;
  }

  /** The stream went away without finishing: keep the part file for a later resume. */
  suspend(): Promise<void> {
    return this.session.detach(this);
  }
}

class UploadSession {
  committed = 0;
  private handle?: FileHandle;
  private hash?: Hash;
  private owner?: UploadWriter;
  /** Serializes operations: streams of one upload must never interleave their writes. */
  private chain: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly res: UploadResource,
    private readonly partPath: string,
    private readonly cas: BlobStore,
    private readonly scratchDir: string,
  ) {}

  get idle(): boolean {
    return this.owner === undefined;
  }

  private get maxBytes(): number {
    const size = this.res.digest.sizeBytes;
    // zstd never expands data by more than a small bound; anything beyond it is not zstd of this blob.
    return this.res.compressor === 'identity' ? size : size + Math.ceil(size / 128) + 1024;
  }

  private serially<T>(op: () => Promise<T>): Promise<T> {
    const next = this.chain.then(op, op);
    this.chain = next.catch(() => undefined);
    return next;
  }

  attach(writer: UploadWriter, writeOffset: number): Promise<void> {
    return this.serially(async () => {
      await this.closeHandle();
      this.owner = writer;
      const onDisk = (await fs.stat(this.partPath).catch(() => undefined))?.size ?? 0;
      if (writeOffset === 0) {
        this.committed = 0;
        this.hash = createHash('sha256');
        this.handle = await fs.open(this.partPath, 'w');
      } else {
        if (writeOffset !== onDisk) {
          throw invalidArgument(
            `upload ${digestKey(this.res.digest)}: write_offset ${writeOffset} does not match the committed size ${onDisk}; ` +
              'ask QueryWriteStatus and resume from committed_size, or start again at 0',
          );
        }
        // The part file is the truth; the in-memory hash may be gone (restart) or stale.
        if (this.committed !== onDisk || !this.hash) this.hash = await this.hashPart();
        this.committed = onDisk;
        this.handle = await fs.open(this.partPath, 'a');
      }
    });
  }

  append(writer: UploadWriter, writeOffset: number, data: Buffer): Promise<void> {
    return this.serially(async () => {
      this.checkOwner(writer);
      if (writeOffset !== this.committed) {
        throw invalidArgument(`upload ${digestKey(this.res.digest)}: write_offset ${writeOffset} should be ${this.committed}, the bytes received so far`);
      }
      if (this.committed + data.length > this.maxBytes) {
        await this.discard();
        throw invalidArgument(
          `upload ${digestKey(this.res.digest)}: received more than the ${this.maxBytes} bytes the digest allows; upload discarded`,
        );
      }
      if (data.length === 0) return;
      await this.handle!.write(data);
      this.hash!.update(data);
      this.committed += data.length;
    });
  }

  finish(writer: UploadWriter): Promise<number> {
    return this.serially(async () => {
      this.checkOwner(writer);
      const handle = this.handle!;
      await handle.datasync();
      await this.closeHandle();
      this.owner = undefined;
      try {
        if (this.res.compressor === 'identity') {
          this.verify(this.committed, this.hash!.digest('hex'));
          await this.cas.adoptVerifiedFile(this.res.digest, this.partPath);
        } else {
          await this.decompressAndAdopt();
          await fs.rm(this.partPath, { force: true });
        }
      } catch (err) {
        await this.discard();
        throw err;
      }
      return this.committed;
    });
  }

  detach(writer: UploadWriter): Promise<void> {
    return this.serially(async () => {
      if (this.owner !== writer) return;
      this.owner = undefined;
      await this.closeHandle();
    });
  }

  private checkOwner(writer: UploadWriter): void {
    if (this.owner !== writer || !this.handle) {
      throw new RpcError(status.ABORTED, `upload ${digestKey(this.res.digest)}: a newer stream for the same upload took over`);
    }
  }

  private verify(size: number, hash: string): void {
    const d: Digest = this.res.digest;
    if (size !== d.sizeBytes) {
      throw invalidArgument(`upload ${digestKey(d)}: finished with ${size} bytes, digest says ${d.sizeBytes}; upload discarded`);
    }
    if (hash !== d.hash) {
      throw invalidArgument(`upload ${digestKey(d)}: content hashes to ${hash}, not ${d.hash}; upload discarded`);
    }
  }

  private async decompressAndAdopt(): Promise<void> {
    const tmp = tempPath(this.scratchDir, this.res.digest.hash);
    const counter = new HashingLimit(this.res.digest);
    try {
      await pipeline(createReadStream(this.partPath), new DecompressStream(), counter, (await fs.open(tmp, 'wx')).createWriteStream());
      this.verify(counter.size, counter.hash.digest('hex'));
      await this.cas.adoptVerifiedFile(this.res.digest, tmp);
    } catch (err) {
      await fs.rm(tmp, { force: true });
      if (err instanceof RpcError) throw err;
      throw invalidArgument(`upload ${digestKey(this.res.digest)}: not valid zstd data (${(err as Error).message}); upload discarded`);
    }
  }

  private async hashPart(): Promise<Hash> {
    const hash = createHash('sha256');
    for await (const chunk of createReadStream(this.partPath)) hash.update(chunk as Buffer);
    return hash;
  }

  private async discard(): Promise<void> {
    await this.closeHandle();
    this.owner = undefined;
    this.committed = 0;
    this.hash = undefined;
    await fs.rm(this.partPath, { force: true });
  }

  private async closeHandle(): Promise<void> {
    const handle = this.handle;
    this.handle = undefined;
    await handle?.close().catch(() => undefined);
  }
}

/** Hashes what passes through and stops a decompression bomb at the blob's declared size. */
class HashingLimit extends Transform {
  readonly hash = createHash('sha256');
  size = 0;

  constructor(private readonly digest: Digest) {
    super();
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    this.size += chunk.length;
    if (this.size > this.digest.sizeBytes) {
      done(invalidArgument(`upload ${digestKey(this.digest)}: decompresses to more than the ${this.digest.sizeBytes} bytes the digest says; upload discarded`));
      return;
    }
    this.hash.update(chunk);
    done(null, chunk);
  }
}
