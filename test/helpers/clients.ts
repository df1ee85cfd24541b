// Real gRPC clients for the services under test, plus small conveniences for tests.
import * as grpc from '@grpc/grpc-js';
import { bytestream } from '../../apis';
import {
  ActionCacheService,
  ByteStreamClient,
  ByteStreamService,
  CapabilitiesService,
  CasService,
  ExecutionService,
  OperationsService,
  createClient,
} from '../../apis/services';

export function clientsFor(address: string) {
  const options = { 'grpc.max_receive_message_length': 64 * 1024 * 1024 };
  return {
    caps: createClient(CapabilitiesService, address, undefined, options),
    cas: createClient(CasService, address, undefined, options),
    ac: createClient(ActionCacheService, address, undefined, options),
    bs: createClient(ByteStreamService, address, undefined, options),
    close() {
      for (const c of [this.caps, this.cas, this.ac, this.bs]) c.close();
    },
  };
}

/** clientsFor, plus Execution and Operations: a farm's clients. */
export function farmClientsFor(address: string) {
  const storage = clientsFor(address);
  const exec = createClient(ExecutionService, address);
  const ops = createClient(OperationsService, address);
  return {
    ...storage,
    exec,
    ops,
    close() {
      storage.close();
      exec.close();
      ops.close();
    },
  };
}

/** Reads a whole ByteStream resource. */
export async function readAll(bs: ByteStreamClient, request: bytestream.IReadRequest): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const res of bs.Read(request) as AsyncIterable<bytestream.ReadResponse>) chunks.push(Buffer.from(res.data));
  return Buffer.concat(chunks);
}

/** Writes requests on one Write stream and returns the response (or rejects with the status). */
export function writeStream(
  bs: ByteStreamClient,
  requests: bytestream.IWriteRequest[] | AsyncIterable<bytestream.IWriteRequest>,
): Promise<bytestream.WriteResponse> {
  return new Promise((resolve, reject) => {
    const call = bs.Write((err, res) => (err ? reject(err) : resolve(res!)));
    (async () => {
      for await (const r of requests as AsyncIterable<bytestream.IWriteRequest>) {
        if (!call.write(r)) await new Promise((ok) => call.once('drain', ok));
      }
      call.end();
    })().catch(reject);
  });
}

/** The gRPC status code of a rejected call. */
export async function statusOf(p: Promise<unknown>): Promise<grpc.status> {
  try {
    await p;
    return grpc.status.OK;
  } catch (err) {
    return (err as grpc.ServiceError).code;
  }
}

/** The error a call must fail with; fails the test if the call succeeds. */
export async function failure<E = grpc.ServiceError>(p: Promise<unknown>): Promise<E> {
  try {
    await p;
  } catch (err) {
    return err as E;
  }
  throw new Error('call unexpectedly succeeded');
}
