// Adapts promise/async-iterator service logic to grpc-js handlers, and errors to gRPC statuses.
// A FAILED_PRECONDITION that names missing blobs carries them as google.rpc.PreconditionFailure
// violations of type MISSING in grpc-status-details-bin, which is what REAPI clients read.
import * as grpc from '@grpc/grpc-js';
import { once } from 'node:events';
import { protobuf, rpc } from '../apis';
import { RpcError, asRpcError } from './rpc-error';
import { log } from './log';

export function toServiceError(err: unknown, method: string): Partial<grpc.ServiceError> {
  const e = asRpcError(err);
  if (e.code === grpc.status.INTERNAL || e.code === grpc.status.UNKNOWN) {
    log.error('request failed', { method, err: err instanceof Error ? err.stack : String(err) });
  } else {
    log.debug('request rejected', { method, code: grpc.status[e.code], message: e.message });
  }
  const metadata = new grpc.Metadata();
  if (e.missing.length > 0) metadata.set('grpc-status-details-bin', Buffer.from(rpc.Status.encode(statusProto(e)).finish()));
  return { code: e.code, details: e.message, metadata };
}

/** google.rpc.Status for an error, e.g. to put into an ExecuteResponse. */
export function statusProto(err: RpcError): rpc.Status.$Properties {
  const details: protobuf.Any.$Properties[] = [];
  if (err.missing.length > 0) {
    const failure = rpc.PreconditionFailure.encode({
      violations: err.missing.map((subject) => ({ type: 'MISSING', subject: `blobs/${subject}`, description: 'blob not in the CAS' })),
    }).finish();
    details.push({ type_url: 'type.googleapis.com/google.rpc.PreconditionFailure', value: failure });
  }
  return { code: err.code, message: err.message, details };
}

export function unary<Req, Res>(
  method: string,
  fn: (req: Req, call: grpc.ServerUnaryCall<Req, Res>) => Promise<Res>,
): grpc.handleUnaryCall<Req, Res> {
  return (call, callback) => {
    settle(() => fn(call.request, call)).then(
      (res) => callback(null, res),
      (err) => callback(toServiceError(err, method)),
    );
  };
}

export function serverStream<Req, Res>(
  method: string,
  fn: (req: Req, call: grpc.ServerWritableStream<Req, Res>) => AsyncIterable<Res>,
): grpc.handleServerStreamingCall<Req, Res> {
  return (call) => {
    (async () => {
      for await (const message of fn(call.request, call)) {
        if (call.cancelled || call.destroyed) return;
        if (!call.write(message)) await Promise.race([once(call, 'drain'), once(call, 'close')]);
      }
      call.end();
    })().catch((err) => {
      if (!call.cancelled) call.emit('error', toServiceError(err, method));
    });
  };
}

export function clientStream<Req, Res>(
  method: string,
  fn: (requests: AsyncIterable<Req>, call: grpc.ServerReadableStream<Req, Res>) => Promise<Res>,
): grpc.handleClientStreamingCall<Req, Res> {
  return (call, callback) => {
    settle(() => fn(call as unknown as AsyncIterable<Req>, call)).then(
      (res) => callback(null, res),
      (err) => callback(toServiceError(err, method)),
    );
  };
}

/** Runs fn; a synchronous throw becomes a rejection, so it reaches the client as a status too. */
function settle<T>(fn: () => Promise<T>): Promise<T> {
  return new Promise<T>((resolve) => resolve(fn()));
}
