// A grpc-js server interceptor that counts every call by method and final status code, and the
// blob bytes that ByteStream and the batch CAS calls carry. One place, for every service, so a
// handler stays about its service and nothing else.
import * as grpc from '@grpc/grpc-js';
import { BytePath, ByteDirection, ServerMetrics } from './metrics';

/** Where blob bytes sit in the messages of the methods that carry them. */
const BYTE_COUNTERS: Record<string, { direction: ByteDirection; path: BytePath; bytes: (message: unknown) => number }> = {
  '/google.bytestream.ByteStream/Write': { direction: 'in', path: 'bytestream', bytes: (m) => dataLength(m) },
  '/google.bytestream.ByteStream/Read': { direction: 'out', path: 'bytestream', bytes: (m) => dataLength(m) },
  '/build.bazel.remote.execution.v2.ContentAddressableStorage/BatchUpdateBlobs': {
    direction: 'in',
    path: 'batch',
    bytes: (m) => sumData((m as { requests?: unknown[] }).requests),
  },
  '/build.bazel.remote.execution.v2.ContentAddressableStorage/BatchReadBlobs': {
    direction: 'out',
    path: 'batch',
    bytes: (m) => sumData((m as { responses?: unknown[] }).responses),
  },
};

export function metricsInterceptor(metrics: ServerMetrics): grpc.ServerInterceptor {
  return (descriptor, call) => {
    const method = descriptor.path.slice(descriptor.path.lastIndexOf('/') + 1);
    const counter = BYTE_COUNTERS[descriptor.path];
    let counted = false;
    const count = (code: grpc.status) => {
      if (counted) return;
      counted = true;
      metrics.grpcRequest(method, grpc.status[code] ?? String(code));
    };
    const listener = new grpc.ServerListenerBuilder()
      .withOnReceiveMessage((message, next) => {
        if (counter?.direction === 'in') metrics.transferred('in', counter.path, counter.bytes(message));
        next(message);
      })
      .withOnCancel(() => count(grpc.status.CANCELLED))
      .build();
    const responder = new grpc.ResponderBuilder()
      .withStart((next) => next(listener))
      .withSendMessage((message, next) => {
        if (counter?.direction === 'out') metrics.transferred('out', counter.path, counter.bytes(message));
        next(message);
      })
      .withSendStatus((status, next) => {
        count(status.code);
        next(status);
      })
      .build();
    return new grpc.ServerInterceptingCall(call, responder);
  };
}

function dataLength(message: unknown): number {
  const data = (message as { data?: { length?: number } } | undefined)?.data;
  return typeof data?.length === 'number' ? data.length : 0;
}

function sumData(items: unknown[] | undefined): number {
  return (items ?? []).reduce<number>((sum, item) => sum + dataLength(item), 0);
}
