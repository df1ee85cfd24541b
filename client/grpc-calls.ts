// The REAPI calls of reapi-cc over gRPC, to a server (`reapi serve`) or a farm behind one. One
// channel per process, shared by all actions in flight.
import * as grpc from '@grpc/grpc-js';
import { randomUUID } from 'node:crypto';
import { rex } from '../apis';
import {
  ActionCacheClient, ActionCacheService, ByteStreamClient, ByteStreamService, CasService, ContentAddressableStorageClient,
  createClient, ExecutionClient, ExecutionService, unary,
} from '../apis/services';
import { Digest } from './action-builder';
import { InfrastructureError, ReapiCalls, Result } from './remote-executor';

const STREAM_CHUNK = 1024 * 1024;
const MAX_MESSAGE = 16 * 1024 * 1024;

export function serverAddress(url: string): string {
  return url.replace(/^grpcs?:\/\//, '').replace(/\/+$/, '');
}

export class GrpcCalls implements ReapiCalls {
  private readonly cas: ContentAddressableStorageClient;
  private readonly ac: ActionCacheClient;
  private readonly exec: ExecutionClient;
  private readonly bytestream: ByteStreamClient;

  constructor(serverUrl: string, private readonly instanceName = '') {
    const address = serverAddress(serverUrl);
    const options: grpc.ClientOptions = {
      'grpc.max_receive_message_length': MAX_MESSAGE,
      'grpc.max_send_message_length': MAX_MESSAGE,
    };
    // One channel for all services: grpc-js shares subchannels between clients with equal options.
    this.cas = createClient(CasService, address, undefined, options);
    this.ac = createClient(ActionCacheService, address, undefined, options);
    this.exec = createClient(ExecutionService, address, undefined, options);
    this.bytestream = createClient(ByteStreamService, address, undefined, options);
  }

  async close(): Promise<void> {
    for (const c of [this.cas, this.ac, this.exec, this.bytestream]) c.close();
  }

  getActionResult(actionDigest: Digest, inlineOutputFiles: string[]): Promise<Result> {
    return unary(this.ac, 'GetActionResult', {
      instanceName: this.instanceName,
      actionDigest,
      inlineStdout: true,
      inlineStderr: true,
      inlineOutputFiles,
    });
  }

  async findMissingBlobs(digests: Digest[]): Promise<rex.Digest.$Properties[]> {
    return (await unary(this.cas, 'FindMissingBlobs', { instanceName: this.instanceName, blobDigests: digests })).missingBlobDigests;
  }

  async batchUpdateBlobs(requests: { digest: Digest; data: Buffer }[]) {
    return (await unary(this.cas, 'BatchUpdateBlobs', { instanceName: this.instanceName, requests })).responses;
  }

  async batchReadBlobs(digests: Digest[]) {
    return (await unary(this.cas, 'BatchReadBlobs', { instanceName: this.instanceName, digests })).responses;
  }

  writeBlob(digest: Digest, data: Buffer): Promise<void> {
    const resourceName = `${this.instanceName ? this.instanceName + '/' : ''}uploads/${randomUUID()}/blobs/${digest.hash}/${digest.sizeBytes}`;
    return new Promise<void>((resolve, reject) => {
      const call = this.bytestream.Write((err) => (err ? reject(err) : resolve()));
      for (let off = 0; off < data.length || off === 0; off += STREAM_CHUNK) {
        const end = Math.min(off + STREAM_CHUNK, data.length);
        call.write({ resourceName: off === 0 ? resourceName : '', writeOffset: off, data: data.subarray(off, end), finishWrite: end === data.length });
        if (data.length === 0) break;
      }
      call.end();
    });
  }

  async readBlob(digest: Digest): Promise<Buffer> {
    const resourceName = `${this.instanceName ? this.instanceName + '/' : ''}blobs/${digest.hash}/${digest.sizeBytes}`;
    const chunks: Buffer[] = [];
    for await (const r of this.bytestream.Read({ resourceName }) as AsyncIterable<{ data: Uint8Array }>) chunks.push(Buffer.from(r.data));
    return Buffer.concat(chunks);
  }

  async execute(actionDigest: Digest, stop?: AbortSignal): Promise<rex.ExecuteResponse | undefined> {
    const stream = this.exec.Execute({ instanceName: this.instanceName, actionDigest, skipCacheLookup: false });
    // Only this client stops waiting: the server may be running the action for others too, and
    // its result still lands in the cache.
    const hangUp = () => stream.cancel();
    stop?.addEventListener('abort', hangUp, { once: true });
    let response: rex.ExecuteResponse | undefined;
    try {
      for await (const op of stream as AsyncIterable<{ done?: boolean; response?: { value?: Uint8Array | null } | null; error?: { code?: number; message?: string } | null }>) {
        if (op.error) throw new InfrastructureError(`Execute failed: ${op.error.message}`);
        if (op.done && op.response?.value) response = rex.ExecuteResponse.decode(op.response.value);
      }
    } finally {
      stop?.removeEventListener('abort', hangUp);
    }
    return response;
  }
}
