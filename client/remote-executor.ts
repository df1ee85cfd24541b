// The client side of REAPI: action cache lookups, uploads of what the farm lacks, Execute, and
// reads of output blobs, whichever way the calls travel (ReapiCalls: gRPC, or in this process).
import * as grpc from '@grpc/grpc-js';
import { rex } from '../apis';
import { Digest } from './action-builder';

/** Blob bytes per BatchUpdateBlobs/BatchReadBlobs call; larger blobs go through ByteStream. */
const BATCH_BYTES = 3 * 1024 * 1024;

export interface UploadableBlob {
  digest: Digest;
  /** Read only if the server lacks the blob. */
  read(): Promise<Buffer>;
}

/** An ActionResult whose stdout/stderr/outputs are decoded instances. */
export type Result = rex.ActionResult;

export interface ExecuteOutcome {
  result?: Result;
  cachedResult: boolean;
  /** Non-OK when the server could not run the action (not when the action itself failed). */
  status: { code: number; message: string };
}

/** An error that means "the build farm did not work", as opposed to "the action failed". */
export class InfrastructureError extends Error {}

/** A failure that means the farm cannot be reached at all: warned about once, then every object builds locally. */
export class UnreachableError extends InfrastructureError {}

/** A per-blob status of a batch call. */
interface BlobResponse {
  digest?: rex.Digest.$Properties | null;
  status?: { code?: number | null; message?: string | null } | null;
}

/**
 * The REAPI calls reapi-cc makes, on the default instance. Failures reject with an error carrying
 * the gRPC status `code`, as a server would send it.
 */
export interface ReapiCalls {
  /** With stdout, stderr and the named output files inline; rejects with NOT_FOUND on a miss. */
  getActionResult(actionDigest: Digest, inlineOutputFiles: string[]): Promise<Result>;
  findMissingBlobs(digests: Digest[]): Promise<rex.Digest.$Properties[]>;
  batchUpdateBlobs(requests: { digest: Digest; data: Buffer }[]): Promise<BlobResponse[]>;
  writeBlob(digest: Digest, data: Buffer): Promise<void>;
  batchReadBlobs(digests: Digest[]): Promise<(BlobResponse & { data?: Uint8Array | null })[]>;
  readBlob(digest: Digest): Promise<Buffer>;
  /**
   * The ExecuteResponse the operation finished with (undefined if it ended without one). When
   * `stop` aborts meanwhile, the caller no longer wants the result: the call may end early, with
   * an error or a CANCELLED status.
   */
  execute(actionDigest: Digest, stop?: AbortSignal): Promise<rex.ExecuteResponse | undefined>;
  /**
   * Only a farm in this process: keeps an action's own messages (Action, Command, Directories)
   * in its memory, rather than storing them as blobs, until the returned release.
   */
  holdActionMessages?(messages: { digest: Digest; data: Buffer }[]): () => void;
  /** Only a farm in this process: how many actions its worker takes from the queue at once. */
  readonly farmActionsTaken?: number;
  close(): Promise<void>;
}

export class RemoteExecutor {
  bytesUploaded = 0;
  bytesDownloaded = 0;

  constructor(private readonly calls: ReapiCalls) {}

  close(): Promise<void> {
    return this.calls.close();
  }

  /** The cached result, or undefined on a miss. Small outputs and stdio come inline. */
  async lookup(actionDigest: Digest, inlineOutputFiles: string[]): Promise<Result | undefined> {
    try {
      return await infra(this.calls.getActionResult(actionDigest, inlineOutputFiles));
    } catch (err) {
      if ((err as { code?: number }).code === grpc.status.NOT_FOUND) return undefined;
      throw err;
    }
  }

  /**
   * Blobs this process saw the server have (found present or uploaded): the actions of one build
   * share most of their inputs, so each is asked about once, as Bazel does. forgetPresent() drops
   * them when the server says an input is missing after all (evicted mid-build).
   */
  private readonly present = new Set<string>();

  forgetPresent(): void {
    this.present.clear();
  }

  /**
   * Blobs another call is asking about or uploading right now, with that call's completion:
   * objects compiled side by side share their headers, and each would otherwise upload the ones
   * the server lacks (a cold kernel build sent 2.6 times its distinct bytes).
   */
  private readonly inFlight = new Map<string, Promise<void>>();

  /**
   * Uploads the blobs the server does not have (asking first about those not known present);
   * resolves once every one of them is there, also those another call is uploading.
   */
  async uploadMissing(blobs: UploadableBlob[]): Promise<void> {
    const unique = new Map<string, UploadableBlob>();
    const others = new Set<Promise<void>>();
    for (const b of blobs) {
      const key = `${b.digest.hash}/${b.digest.sizeBytes}`;
      const pending = this.inFlight.get(key);
      if (pending) others.add(pending);
      else if (!this.present.has(key)) unique.set(key, b);
    }
    let settle!: (err?: unknown) => void;
    const mine = new Promise<void>((resolve, reject) => (settle = (err) => (err ? reject(err) : resolve())));
    mine.catch(() => undefined); // a failure is reported to this caller; others waiting see it too
    for (const key of unique.keys()) this.inFlight.set(key, mine);
    try {
      await this.upload(unique);
      settle();
    } catch (err) {
      settle(err);
      throw err;
    } finally {
      for (const key of unique.keys()) if (this.inFlight.get(key) === mine) this.inFlight.delete(key);
    }
    await Promise.all(others);
  }

  /**
   * Makes an action's inputs and own messages (Action, Command, Directories) available to
   * Execute. A farm in this process holds the messages, and need neither store them nor be asked
   * which it lacks, until the returned release (call it once the action has run); any other farm
   * gets them uploaded like the inputs, in the same calls.
   */
  async uploadAction(messages: { digest: Digest; data: Buffer }[], inputs: UploadableBlob[]): Promise<() => void> {
    if (!this.calls.holdActionMessages) {
      await this.uploadMissing([...messages.map((m) => ({ digest: m.digest, read: async () => m.data })), ...inputs]);
      return () => undefined;
    }
    let release: () => void;
    try {
      release = this.calls.holdActionMessages(messages);
    } catch (err) {
      throw new InfrastructureError(`holding the action's messages: ${(err as Error).message}`);
    }
    try {
      await this.uploadMissing(inputs);
    } catch (err) {
      release();
      throw err;
    }
    return release;
  }

  private async upload(unique: Map<string, UploadableBlob>): Promise<void> {
    const all = [...unique.values()];
    const missing: UploadableBlob[] = [];
    for (let i = 0; i < all.length; i += 5000) {
      const slice = all.slice(i, i + 5000);
      const missingDigests = await infra(this.calls.findMissingBlobs(slice.map((b) => b.digest)));
      const absent = new Set<string>();
      for (const d of missingDigests) {
        const key = `${d.hash}/${Number(d.sizeBytes)}`;
        absent.add(key);
        missing.push(unique.get(key)!);
      }
      for (const b of slice) {
        const key = `${b.digest.hash}/${b.digest.sizeBytes}`;
        if (!absent.has(key)) this.present.add(key);
      }
    }
    let batch: { digest: Digest; data: Buffer }[] = [];
    let batchBytes = 0;
    const flush = async () => {
      if (!batch.length) return;
      const responses = await infra(this.calls.batchUpdateBlobs(batch));
      for (const r of responses) if (r.status?.code) throw new InfrastructureError(`upload of ${r.digest?.hash} failed: ${r.status.message}`);
      batch = [];
      batchBytes = 0;
    };
    for (const blob of missing) {
      const data = await blob.read();
      this.bytesUploaded += data.length;
      if (data.length > BATCH_BYTES) {
        await infra(this.calls.writeBlob(blob.digest, data));
        continue;
      }
      if (batchBytes + data.length > BATCH_BYTES) await flush();
      batch.push({ digest: blob.digest, data });
      batchBytes += data.length;
    }
    await flush();
    for (const blob of missing) this.present.add(`${blob.digest.hash}/${blob.digest.sizeBytes}`);
  }

  /**
   * Runs the action (the server answers from its cache when it can) and waits for the result;
   * not at all once `stop` has aborted.
   */
  async execute(actionDigest: Digest, stop?: AbortSignal): Promise<ExecuteOutcome> {
    if (stop?.aborted) throw new InfrastructureError('Execute: no longer wanted');
    let response: rex.ExecuteResponse | undefined;
    try {
      response = await this.calls.execute(actionDigest, stop);
    } catch (err) {
      if (err instanceof InfrastructureError) throw err;
      const code = (err as { code?: number }).code;
      // The Action, Command or a Directory is not in the CAS: the caller may upload and retry.
      if (code === grpc.status.FAILED_PRECONDITION) return { cachedResult: false, status: { code, message: (err as Error).message } };
      throw new InfrastructureError(`Execute: ${(err as Error).message}`);
    }
    if (!response) throw new InfrastructureError('Execute ended without a result');
    return {
      result: (response.result as rex.ActionResult | null) ?? undefined,
      cachedResult: response.cachedResult ?? false,
      status: { code: response.status?.code ?? 0, message: response.status?.message ?? '' },
    };
  }

  /** Reads blobs; small ones in batches, large ones streamed. */
  async read(digests: Digest[]): Promise<Map<string, Buffer>> {
    const out = new Map<string, Buffer>();
    const small = digests.filter((d) => d.sizeBytes <= BATCH_BYTES);
    let batch: Digest[] = [];
    let bytes = 0;
    const flush = async () => {
      if (!batch.length) return;
      const responses = await infra(this.calls.batchReadBlobs(batch));
      for (const r of responses) {
        if (r.status?.code) throw new InfrastructureError(`reading blob ${r.digest?.hash}: ${r.status.message}`);
        const data = Buffer.isBuffer(r.data) ? r.data : Buffer.from(r.data ?? new Uint8Array());
        this.bytesDownloaded += data.length;
        out.set(r.digest!.hash!, data);
      }
      batch = [];
      bytes = 0;
    };
    for (const d of small) {
      if (bytes + d.sizeBytes > BATCH_BYTES) await flush();
      batch.push(d);
      bytes += d.sizeBytes;
    }
    await flush();
    for (const d of digests.filter((x) => x.sizeBytes > BATCH_BYTES)) out.set(d.hash, await this.readStream(d));
    return out;
  }

  private async readStream(digest: Digest): Promise<Buffer> {
    let data: Buffer;
    try {
      data = await this.calls.readBlob(digest);
    } catch (err) {
      throw new InfrastructureError(`reading blob ${digest.hash}: ${(err as Error).message}`);
    }
    this.bytesDownloaded += data.length;
    return data;
  }
}

/** Marks transport failures (server down, refused, deadline) as infrastructure errors. */
async function infra<T>(p: Promise<T>): Promise<T> {
  try {
    return await p;
  } catch (err) {
    const code = (err as { code?: number }).code;
    if (code === grpc.status.NOT_FOUND || err instanceof InfrastructureError) throw err;
    throw new InfrastructureError(`${(err as Error).message}`);
  }
}
