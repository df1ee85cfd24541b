// @grpc/grpc-js service definitions, typed handler/client interfaces and small client helpers
// for the REAPI v2, ByteStream and Operations services, built on the static protobuf code.
import * as grpc from '@grpc/grpc-js';
import { bytestream, longrunning, protobuf, rex } from './index';

// ---------------------------------------------------------------------------
// Method definitions

/** A generated message class: encodes plain objects (`P`), decodes to instances (`T`). */
interface MessageCodec<T extends P, P> {
  encode(message: P): { finish(): Uint8Array };
  decode(data: Uint8Array): T;
}

function toBuffer(bytes: Uint8Array): Buffer {
  // protobufjs already returns a Buffer on Node; wrap (no copy) otherwise.
  return Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

function method<Req extends ReqP, ReqP, Res extends ResP, ResP>(
  service: string,
  name: string,
  requestStream: boolean,
  responseStream: boolean,
  request: MessageCodec<Req, ReqP>,
  response: MessageCodec<Res, ResP>,
): grpc.MethodDefinition<ReqP, ResP> {
  return {
    path: `/${service}/${name}`,
    requestStream,
    responseStream,
    requestSerialize: (m: ReqP) => toBuffer(request.encode(m).finish()),
    requestDeserialize: (b: Buffer) => request.decode(b),
    responseSerialize: (m: ResP) => toBuffer(response.encode(m).finish()),
    responseDeserialize: (b: Buffer) => response.decode(b),
    originalName: name,
  };
}

// ---------------------------------------------------------------------------
// Typed client call signatures (subset of grpc-js generic client overloads)

export interface UnaryCall<Req, Res> {
  (request: Req, callback: grpc.requestCallback<Res>): grpc.ClientUnaryCall;
  (request: Req, metadata: grpc.Metadata, callback: grpc.requestCallback<Res>): grpc.ClientUnaryCall;
  (
    request: Req,
    metadata: grpc.Metadata,
    options: Partial<grpc.CallOptions>,
    callback: grpc.requestCallback<Res>,
  ): grpc.ClientUnaryCall;
}

export interface ServerStreamingCall<Req, Res> {
  (request: Req, metadata?: grpc.Metadata, options?: Partial<grpc.CallOptions>): grpc.ClientReadableStream<Res>;
}

export interface ClientStreamingCall<Req, Res> {
  (callback: grpc.requestCallback<Res>): grpc.ClientWritableStream<Req>;
  (metadata: grpc.Metadata, callback: grpc.requestCallback<Res>): grpc.ClientWritableStream<Req>;
  (
    metadata: grpc.Metadata,
    options: Partial<grpc.CallOptions>,
    callback: grpc.requestCallback<Res>,
  ): grpc.ClientWritableStream<Req>;
}

/** A service: fully-qualified name, grpc-js definition (for Server#addService) and client constructor. */
export interface ServiceSpec<H extends grpc.UntypedServiceImplementation, C extends grpc.Client> {
  readonly serviceName: string;
  readonly definition: grpc.ServiceDefinition<H>;
  readonly Client: new (address: string, credentials: grpc.ChannelCredentials, options?: grpc.ClientOptions) => C;
}

function spec<H extends grpc.UntypedServiceImplementation, C extends grpc.Client>(
  serviceName: string,
  definition: grpc.ServiceDefinition<H>,
): ServiceSpec<H, C> {
  const Client = grpc.makeGenericClientConstructor(definition, serviceName);
  return { serviceName, definition, Client: Client as unknown as ServiceSpec<H, C>['Client'] };
}

// ---------------------------------------------------------------------------
// build.bazel.remote.execution.v2.Capabilities

export interface CapabilitiesHandlers extends grpc.UntypedServiceImplementation {
  GetCapabilities: grpc.handleUnaryCall<rex.GetCapabilitiesRequest, rex.IServerCapabilities>;
}

export interface CapabilitiesClient extends grpc.Client {
  GetCapabilities: UnaryCall<rex.IGetCapabilitiesRequest, rex.ServerCapabilities>;
}

const CAPABILITIES = 'build.bazel.remote.execution.v2.Capabilities';
export const CapabilitiesService = spec<CapabilitiesHandlers, CapabilitiesClient>(CAPABILITIES, {
  GetCapabilities: method(CAPABILITIES, 'GetCapabilities', false, false, rex.GetCapabilitiesRequest, rex.ServerCapabilities),
});

// ---------------------------------------------------------------------------
// build.bazel.remote.execution.v2.ContentAddressableStorage

export interface ContentAddressableStorageHandlers extends grpc.UntypedServiceImplementation {
  FindMissingBlobs: grpc.handleUnaryCall<rex.FindMissingBlobsRequest, rex.IFindMissingBlobsResponse>;
  BatchUpdateBlobs: grpc.handleUnaryCall<rex.BatchUpdateBlobsRequest, rex.IBatchUpdateBlobsResponse>;
  BatchReadBlobs: grpc.handleUnaryCall<rex.BatchReadBlobsRequest, rex.IBatchReadBlobsResponse>;
  GetTree: grpc.handleServerStreamingCall<rex.GetTreeRequest, rex.IGetTreeResponse>;
  SplitBlob: grpc.handleUnaryCall<rex.SplitBlobRequest, rex.ISplitBlobResponse>;
  SpliceBlob: grpc.handleUnaryCall<rex.SpliceBlobRequest, rex.ISpliceBlobResponse>;
}

export interface ContentAddressableStorageClient extends grpc.Client {
  FindMissingBlobs: UnaryCall<rex.IFindMissingBlobsRequest, rex.FindMissingBlobsResponse>;
  BatchUpdateBlobs: UnaryCall<rex.IBatchUpdateBlobsRequest, rex.BatchUpdateBlobsResponse>;
  BatchReadBlobs: UnaryCall<rex.IBatchReadBlobsRequest, rex.BatchReadBlobsResponse>;
  GetTree: ServerStreamingCall<rex.IGetTreeRequest, rex.GetTreeResponse>;
  SplitBlob: UnaryCall<rex.ISplitBlobRequest, rex.SplitBlobResponse>;
  SpliceBlob: UnaryCall<rex.ISpliceBlobRequest, rex.SpliceBlobResponse>;
}

const CAS = 'build.bazel.remote.execution.v2.ContentAddressableStorage';
export const CasService = spec<ContentAddressableStorageHandlers, ContentAddressableStorageClient>(CAS, {
  FindMissingBlobs: method(CAS, 'FindMissingBlobs', false, false, rex.FindMissingBlobsRequest, rex.FindMissingBlobsResponse),
  BatchUpdateBlobs: method(CAS, 'BatchUpdateBlobs', false, false, rex.BatchUpdateBlobsRequest, rex.BatchUpdateBlobsResponse),
  BatchReadBlobs: method(CAS, 'BatchReadBlobs', false, false, rex.BatchReadBlobsRequest, rex.BatchReadBlobsResponse),
  GetTree: method(CAS, 'GetTree', false, true, rex.GetTreeRequest, rex.GetTreeResponse),
  SplitBlob: method(CAS, 'SplitBlob', false, false, rex.SplitBlobRequest, rex.SplitBlobResponse),
  SpliceBlob: method(CAS, 'SpliceBlob', false, false, rex.SpliceBlobRequest, rex.SpliceBlobResponse),
});

// ---------------------------------------------------------------------------
// build.bazel.remote.execution.v2.ActionCache

export interface ActionCacheHandlers extends grpc.UntypedServiceImplementation {
  GetActionResult: grpc.handleUnaryCall<rex.GetActionResultRequest, rex.IActionResult>;
  UpdateActionResult: grpc.handleUnaryCall<rex.UpdateActionResultRequest, rex.IActionResult>;
}

export interface ActionCacheClient extends grpc.Client {
  GetActionResult: UnaryCall<rex.IGetActionResultRequest, rex.ActionResult>;
  UpdateActionResult: UnaryCall<rex.IUpdateActionResultRequest, rex.ActionResult>;
}

const AC = 'build.bazel.remote.execution.v2.ActionCache';
export const ActionCacheService = spec<ActionCacheHandlers, ActionCacheClient>(AC, {
  GetActionResult: method(AC, 'GetActionResult', false, false, rex.GetActionResultRequest, rex.ActionResult),
  UpdateActionResult: method(AC, 'UpdateActionResult', false, false, rex.UpdateActionResultRequest, rex.ActionResult),
});

// ---------------------------------------------------------------------------
// build.bazel.remote.execution.v2.Execution

export interface ExecutionHandlers extends grpc.UntypedServiceImplementation {
  Execute: grpc.handleServerStreamingCall<rex.ExecuteRequest, longrunning.IOperation>;
  WaitExecution: grpc.handleServerStreamingCall<rex.WaitExecutionRequest, longrunning.IOperation>;
}

export interface ExecutionClient extends grpc.Client {
  Execute: ServerStreamingCall<rex.IExecuteRequest, longrunning.Operation>;
  WaitExecution: ServerStreamingCall<rex.IWaitExecutionRequest, longrunning.Operation>;
}

const EXECUTION = 'build.bazel.remote.execution.v2.Execution';
export const ExecutionService = spec<ExecutionHandlers, ExecutionClient>(EXECUTION, {
  Execute: method(EXECUTION, 'Execute', false, true, rex.ExecuteRequest, longrunning.Operation),
  WaitExecution: method(EXECUTION, 'WaitExecution', false, true, rex.WaitExecutionRequest, longrunning.Operation),
});

// ---------------------------------------------------------------------------
// google.bytestream.ByteStream

export interface ByteStreamHandlers extends grpc.UntypedServiceImplementation {
  Read: grpc.handleServerStreamingCall<bytestream.ReadRequest, bytestream.IReadResponse>;
  Write: grpc.handleClientStreamingCall<bytestream.WriteRequest, bytestream.IWriteResponse>;
  QueryWriteStatus: grpc.handleUnaryCall<bytestream.QueryWriteStatusRequest, bytestream.IQueryWriteStatusResponse>;
}

export interface ByteStreamClient extends grpc.Client {
  Read: ServerStreamingCall<bytestream.IReadRequest, bytestream.ReadResponse>;
  Write: ClientStreamingCall<bytestream.IWriteRequest, bytestream.WriteResponse>;
  QueryWriteStatus: UnaryCall<bytestream.IQueryWriteStatusRequest, bytestream.QueryWriteStatusResponse>;
}

const BYTESTREAM = 'google.bytestream.ByteStream';
export const ByteStreamService = spec<ByteStreamHandlers, ByteStreamClient>(BYTESTREAM, {
  Read: method(BYTESTREAM, 'Read', false, true, bytestream.ReadRequest, bytestream.ReadResponse),
  Write: method(BYTESTREAM, 'Write', true, false, bytestream.WriteRequest, bytestream.WriteResponse),
  QueryWriteStatus: method(
    BYTESTREAM,
    'QueryWriteStatus',
    false,
    false,
    bytestream.QueryWriteStatusRequest,
    bytestream.QueryWriteStatusResponse,
  ),
});

// ---------------------------------------------------------------------------
// google.longrunning.Operations

export interface OperationsHandlers extends grpc.UntypedServiceImplementation {
  ListOperations: grpc.handleUnaryCall<longrunning.ListOperationsRequest, longrunning.IListOperationsResponse>;
  GetOperation: grpc.handleUnaryCall<longrunning.GetOperationRequest, longrunning.IOperation>;
  DeleteOperation: grpc.handleUnaryCall<longrunning.DeleteOperationRequest, protobuf.IEmpty>;
  CancelOperation: grpc.handleUnaryCall<longrunning.CancelOperationRequest, protobuf.IEmpty>;
  WaitOperation: grpc.handleUnaryCall<longrunning.WaitOperationRequest, longrunning.IOperation>;
}

export interface OperationsClient extends grpc.Client {
  ListOperations: UnaryCall<longrunning.IListOperationsRequest, longrunning.ListOperationsResponse>;
  GetOperation: UnaryCall<longrunning.IGetOperationRequest, longrunning.Operation>;
  DeleteOperation: UnaryCall<longrunning.IDeleteOperationRequest, protobuf.Empty>;
  CancelOperation: UnaryCall<longrunning.ICancelOperationRequest, protobuf.Empty>;
  WaitOperation: UnaryCall<longrunning.IWaitOperationRequest, longrunning.Operation>;
}

const OPERATIONS = 'google.longrunning.Operations';
export const OperationsService = spec<OperationsHandlers, OperationsClient>(OPERATIONS, {
  ListOperations: method(
    OPERATIONS,
    'ListOperations',
    false,
    false,
    longrunning.ListOperationsRequest,
    longrunning.ListOperationsResponse,
  ),
  GetOperation: method(OPERATIONS, 'GetOperation', false, false, longrunning.GetOperationRequest, longrunning.Operation),
  DeleteOperation: method(OPERATIONS, 'DeleteOperation', false, false, longrunning.DeleteOperationRequest, protobuf.Empty),
  CancelOperation: method(OPERATIONS, 'CancelOperation', false, false, longrunning.CancelOperationRequest, protobuf.Empty),
  WaitOperation: method(OPERATIONS, 'WaitOperation', false, false, longrunning.WaitOperationRequest, longrunning.Operation),
});

/** Every service above, e.g. for registering UNIMPLEMENTED stubs or listing in reflection. */
export const allServices = [
  CapabilitiesService,
  CasService,
  ActionCacheService,
  ExecutionService,
  ByteStreamService,
  OperationsService,
] as const;

// ---------------------------------------------------------------------------
// Helpers

/** Registers a typed implementation of `service` on `server`. */
export function addService<H extends grpc.UntypedServiceImplementation>(
  server: grpc.Server,
  service: ServiceSpec<H, grpc.Client>,
  implementation: H,
): void {
  server.addService(service.definition, implementation);
}

/** Creates a typed client for `service` (insecure credentials by default). */
export function createClient<C extends grpc.Client>(
  service: ServiceSpec<grpc.UntypedServiceImplementation, C>,
  address: string,
  credentials: grpc.ChannelCredentials = grpc.credentials.createInsecure(),
  options?: grpc.ClientOptions,
): C {
  return new service.Client(address, credentials, options);
}

/** Names of the unary methods of client type `C`. */
export type UnaryMethodName<C> = {
  [K in Exclude<keyof C, keyof grpc.Client>]: C[K] extends UnaryCall<never, unknown> ? K : never;
}[Exclude<keyof C, keyof grpc.Client>];
export type UnaryRequest<M> = M extends UnaryCall<infer Req, unknown> ? Req : never;
export type UnaryResponse<M> = M extends UnaryCall<never, infer Res> ? Res : never;

/** Promise wrapper for a unary call: `await unary(cas, 'FindMissingBlobs', { blobDigests })`. */
export function unary<C extends grpc.Client, K extends UnaryMethodName<C>>(
  client: C,
  methodName: K,
  request: UnaryRequest<C[K]>,
  metadata: grpc.Metadata = new grpc.Metadata(),
  options: Partial<grpc.CallOptions> = {},
): Promise<UnaryResponse<C[K]>> {
  const call = client[methodName] as unknown as UnaryCall<UnaryRequest<C[K]>, UnaryResponse<C[K]>>;
  return new Promise((resolve, reject) => {
    call.call(client, request, metadata, options, (err, value) => {
      if (err) reject(err);
      else resolve(value as UnaryResponse<C[K]>);
    });
  });
}
