// The REAPI calls of reapi-cc straight to a farm in this process (`--server embedded`): the same
// services `reapi serve` exposes, with no serialization, no HTTP/2 and no second process.
import { status } from '@grpc/grpc-js';
import { rex } from '../apis';
import type { EmbeddedFarm } from '../server/embedded-farm';
import { Digest } from './action-builder';
import { ReapiCalls, Result, UnreachableError } from './remote-executor';

export class InProcessCalls implements ReapiCalls {
  constructor(private readonly farm: EmbeddedFarm) {}

  close(): Promise<void> {
    return this.farm.close();
  }

  getActionResult(actionDigest: Digest, inlineOutputFiles: string[]): Promise<Result> {
    return this.farm.actionCache.getActionResult(
      rex.GetActionResultRequest.create({ actionDigest, inlineStdout: true, inlineStderr: true, inlineOutputFiles }),
    );
  }

  async findMissingBlobs(digests: Digest[]): Promise<rex.Digest.$Properties[]> {
    return (await this.farm.cas.findMissingBlobs(rex.FindMissingBlobsRequest.create({ blobDigests: digests }))).missingBlobDigests ?? [];
  }

  async batchUpdateBlobs(requests: { digest: Digest; data: Buffer }[]) {
    return (await this.farm.cas.batchUpdateBlobs(rex.BatchUpdateBlobsRequest.create({ requests }))).responses ?? [];
  }

  async batchReadBlobs(digests: Digest[]) {
    return (await this.farm.cas.batchReadBlobs(rex.BatchReadBlobsRequest.create({ digests }))).responses ?? [];
  }

  writeBlob(digest: Digest, data: Buffer): Promise<void> {
    // Too large for a batch: straight into the store, which verifies it as the services do.
    return this.farm.blobs.put(digest, data);
  }

  async readBlob(digest: Digest): Promise<Buffer> {
    const data = await this.farm.blobs.read(digest);
    if (!data) throw Object.assign(new Error(`blob ${digest.hash}/${digest.sizeBytes} is not in the CAS`), { code: status.NOT_FOUND });
    return data;
  }

  get farmActionsTaken(): number {
    return this.farm.actionsTaken;
  }

  holdActionMessages(messages: { digest: Digest; data: Buffer }[]): () => void {
    return this.farm.hold(messages);
  }

  async execute(actionDigest: Digest, stop?: AbortSignal): Promise<rex.ExecuteResponse | undefined> {
    const execution = await this.farm.execution();
    if ('unavailable' in execution) throw new UnreachableError(execution.unavailable);
    // Aborted at the end: it unsubscribes the watch of the operation.
    const done = new AbortController();
    // This farm runs for this client alone: an action nobody waits for any more is cancelled,
    // so that closing the farm does not wait for it.
    let operation: string | undefined;
    const cancel = () => void (operation && this.farm.cancel(operation).catch(() => undefined));
    stop?.addEventListener('abort', cancel, { once: true });
    try {
      let response: rex.ExecuteResponse | undefined;
      for await (const record of execution.execute(rex.ExecuteRequest.create({ actionDigest }), done.signal)) {
        if (!operation) {
          operation = record.name;
          if (stop?.aborted) cancel();
        }
        if (record.done && record.response) response = rex.ExecuteResponse.decode(record.response);
      }
      return response;
    } finally {
      stop?.removeEventListener('abort', cancel);
      done.abort();
    }
  }
}
