// Requests that do not decode get INVALID_ARGUMENT, not INTERNAL. grpc-js answers any throw of a
// request deserializer with INTERNAL ("Error deserializing request"), which says the server is
// broken when it is the client's bytes that are. Here the deserializer returns a marker instead,
// and the handler refuses the marker with a status that names the problem.
import * as grpc from '@grpc/grpc-js';
import { ServiceSpec, addService } from '../apis/services';
import { invalidArgument } from './rpc-error';

/** What a request deserializer returns for bytes that are not the request message. */
export class UndecodableRequest {
  constructor(readonly method: string, readonly reason: string) {}

  error(): Error {
    return invalidArgument(`${this.method}: the request is not a valid ${this.method} request message (${this.reason})`);
  }
}

/** Throws INVALID_ARGUMENT for a request that did not decode; for client-streamed messages. */
export function checkDecoded<T>(request: T | UndecodableRequest): T {
  if (request instanceof UndecodableRequest) throw request.error();
  return request;
}

/** addService, with undecodable requests refused as INVALID_ARGUMENT (client streams: see checkDecoded). */
export function addServiceDecodingStrictly<H extends grpc.UntypedServiceImplementation>(
  server: grpc.Server,
  service: ServiceSpec<H, grpc.Client>,
  implementation: H,
): void {
  const definition: Record<string, grpc.MethodDefinition<unknown, unknown>> = {};
  const handlers: grpc.UntypedServiceImplementation = {};
  for (const [name, method] of Object.entries(service.definition as grpc.ServiceDefinition)) {
    definition[name] = {
      ...method,
      requestDeserialize: (bytes: Buffer) => {
        try {
          return method.requestDeserialize(bytes);
        } catch (err) {
          return new UndecodableRequest(method.originalName ?? name, err instanceof Error ? err.message : String(err));
        }
      },
    };
    const handler = implementation[name] as grpc.UntypedHandleCall | undefined;
    if (!handler) continue;
    if (method.requestStream) {
      handlers[name] = handler; // messages arrive later: the handler checks each (checkDecoded)
    } else if (method.responseStream) {
      handlers[name] = (call: grpc.ServerWritableStream<unknown, unknown>) => {
        if (call.request instanceof UndecodableRequest) {
          call.emit('error', { code: grpc.status.INVALID_ARGUMENT, details: call.request.error().message });
          return;
        }
        (handler as grpc.handleServerStreamingCall<unknown, unknown>)(call);
      };
    } else {
      handlers[name] = (call: grpc.ServerUnaryCall<unknown, unknown>, callback: grpc.sendUnaryData<unknown>) => {
        if (call.request instanceof UndecodableRequest) {
          callback({ code: grpc.status.INVALID_ARGUMENT, details: call.request.error().message });
          return;
        }
        (handler as grpc.handleUnaryCall<unknown, unknown>)(call, callback);
      };
    }
  }
  addService(server, { ...service, definition: definition as grpc.ServiceDefinition<H> }, handlers as H);
}
