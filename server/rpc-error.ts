// Errors that know which gRPC status they map to. Service logic throws these; the gRPC
// handlers translate them, so every layer below the handlers stays free of wire concerns.
import { status } from '@grpc/grpc-js';

export class RpcError extends Error {
  constructor(
    readonly code: status,
    message: string,
    /** Digests ("hash/size") a client must upload before retrying, for FAILED_PRECONDITION. */
    readonly missing: string[] = [],
  ) {
    super(message);
    this.name = 'RpcError';
  }
}

export const invalidArgument = (message: string) => new RpcError(status.INVALID_ARGUMENT, message);
export const notFound = (message: string) => new RpcError(status.NOT_FOUND, message);
export const resourceExhausted = (message: string) => new RpcError(status.RESOURCE_EXHAUSTED, message);
export const unimplemented = (message: string) => new RpcError(status.UNIMPLEMENTED, message);
export const unauthenticated = (message: string) => new RpcError(status.UNAUTHENTICATED, message);
export const permissionDenied = (message: string) => new RpcError(status.PERMISSION_DENIED, message);
export const failedPrecondition = (message: string, missing: string[] = []) =>
  new RpcError(status.FAILED_PRECONDITION, message, missing);

/** Any thrown value as an RpcError; unexpected failures become INTERNAL with their message kept. */
export function asRpcError(err: unknown): RpcError {
  if (err instanceof RpcError) return err;
  const message = err instanceof Error ? err.message : String(err);
  return new RpcError(status.INTERNAL, message);
}
