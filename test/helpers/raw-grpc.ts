// Raw gRPC calls: request bytes go out exactly as given (identity serializers), so tests can send
// truncated, mutated or random protobuf to every method of a real server. Every call carries a
// deadline, so a server that hangs shows up as DEADLINE_EXCEEDED instead of a stuck test.
import * as grpc from '@grpc/grpc-js';
import { readFileSync } from 'node:fs';
import { bytestream, longrunning, rex } from '../../apis';

export interface RawOutcome {
  code: grpc.status;
  details: string;
  /** Response messages received (unary: at most one). */
  responses: Buffer[];
}

const identity = (b: Buffer) => b;

export type MethodKind = 'unary' | 'server-stream' | 'client-stream';

export interface RawMethod {
  path: string;
  kind: MethodKind;
}

const V2 = 'build.bazel.remote.execution.v2';
export const RAW_METHODS: Record<string, RawMethod> = {
  GetCapabilities: { path: `/${V2}.Capabilities/GetCapabilities`, kind: 'unary' },
  FindMissingBlobs: { path: `/${V2}.ContentAddressableStorage/FindMissingBlobs`, kind: 'unary' },
  BatchUpdateBlobs: { path: `/${V2}.ContentAddressableStorage/BatchUpdateBlobs`, kind: 'unary' },
  BatchReadBlobs: { path: `/${V2}.ContentAddressableStorage/BatchReadBlobs`, kind: 'unary' },
  GetTree: { path: `/${V2}.ContentAddressableStorage/GetTree`, kind: 'server-stream' },
  SplitBlob: { path: `/${V2}.ContentAddressableStorage/SplitBlob`, kind: 'unary' },
  SpliceBlob: { path: `/${V2}.ContentAddressableStorage/SpliceBlob`, kind: 'unary' },
  GetActionResult: { path: `/${V2}.ActionCache/GetActionResult`, kind: 'unary' },
  UpdateActionResult: { path: `/${V2}.ActionCache/UpdateActionResult`, kind: 'unary' },
  Execute: { path: `/${V2}.Execution/Execute`, kind: 'server-stream' },
  WaitExecution: { path: `/${V2}.Execution/WaitExecution`, kind: 'server-stream' },
  Read: { path: '/google.bytestream.ByteStream/Read', kind: 'server-stream' },
  Write: { path: '/google.bytestream.ByteStream/Write', kind: 'client-stream' },
  QueryWriteStatus: { path: '/google.bytestream.ByteStream/QueryWriteStatus', kind: 'unary' },
  GetOperation: { path: '/google.longrunning.Operations/GetOperation', kind: 'unary' },
  ListOperations: { path: '/google.longrunning.Operations/ListOperations', kind: 'unary' },
  CancelOperation: { path: '/google.longrunning.Operations/CancelOperation', kind: 'unary' },
  DeleteOperation: { path: '/google.longrunning.Operations/DeleteOperation', kind: 'unary' },
  WaitOperation: { path: '/google.longrunning.Operations/WaitOperation', kind: 'unary' },
};

export class RawClient {
  readonly client: grpc.Client;

  constructor(address: string, options: grpc.ChannelOptions = {}) {
    this.client = new grpc.Client(address, grpc.credentials.createInsecure(), { 'grpc.max_receive_message_length': 64 * 1024 * 1024, ...options });
  }

  close(): void {
    this.client.close();
  }

  /**
   * Calls a method with raw request bytes: one message for unary and server-streaming methods,
   * a list of messages for client streams. Resolves (never rejects) once the call has ended.
   */
  call(method: RawMethod, request: Buffer | Buffer[], deadlineMs = 30_000): Promise<RawOutcome> {
    const deadline = Date.now() + deadlineMs;
    const responses: Buffer[] = [];
    return new Promise((resolve) => {
      const done = (err: grpc.ServiceError | null) =>
        resolve({ code: err ? err.code : grpc.status.OK, details: err ? err.details : '', responses });
      const messages = Array.isArray(request) ? request : [request];
      if (method.kind === 'unary') {
        this.client.makeUnaryRequest(method.path, identity, identity, messages[0]!, new grpc.Metadata(), { deadline }, (err, res) => {
          if (res) responses.push(res);
          done(err);
        });
      } else if (method.kind === 'server-stream') {
        const stream = this.client.makeServerStreamRequest(method.path, identity, identity, messages[0]!, new grpc.Metadata(), { deadline });
        let ended = false;
        stream.on('data', (d: Buffer) => responses.push(d));
        stream.on('error', (err: grpc.ServiceError) => {
          if (!ended) (ended = true), done(err);
        });
        stream.on('status', (s: grpc.StatusObject) => {
          if (!ended && s.code === grpc.status.OK) (ended = true), done(null);
        });
      } else {
        const stream = this.client.makeClientStreamRequest(method.path, identity, identity, new grpc.Metadata(), { deadline }, (err, res) => {
          if (res) responses.push(res);
          done(err);
        });
        for (const m of messages) stream.write(m);
        stream.end();
      }
    });
  }
}

/** Resident memory of a process, from /proc/<pid>/status (VmRSS), in bytes. */
export function rssBytes(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error(`no VmRSS in /proc/${pid}/status`);
  return Number(m[1]) * 1024;
}

/** A small, seeded PRNG (mulberry32), so a failing run can be repeated with its seed. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Field 1, length-delimited, claiming 2^31 bytes: no message type decodes this. */
export const UNDECODABLE = Buffer.from([0x0a, 0xff, 0xff, 0xff, 0xff, 0x07, 0x01, 0x02]);

export const encode = {
  findMissing: (m: rex.IFindMissingBlobsRequest) => Buffer.from(rex.FindMissingBlobsRequest.encode(m).finish()),
  batchUpdate: (m: rex.IBatchUpdateBlobsRequest) => Buffer.from(rex.BatchUpdateBlobsRequest.encode(m).finish()),
  batchRead: (m: rex.IBatchReadBlobsRequest) => Buffer.from(rex.BatchReadBlobsRequest.encode(m).finish()),
  getTree: (m: rex.IGetTreeRequest) => Buffer.from(rex.GetTreeRequest.encode(m).finish()),
  read: (m: bytestream.IReadRequest) => Buffer.from(bytestream.ReadRequest.encode(m).finish()),
  write: (m: bytestream.IWriteRequest) => Buffer.from(bytestream.WriteRequest.encode(m).finish()),
  queryWriteStatus: (m: bytestream.IQueryWriteStatusRequest) => Buffer.from(bytestream.QueryWriteStatusRequest.encode(m).finish()),
  getOperation: (m: longrunning.IGetOperationRequest) => Buffer.from(longrunning.GetOperationRequest.encode(m).finish()),
};
