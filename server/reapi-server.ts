// Assembles the gRPC server: storage, service logic, and the handlers that expose them.
import * as grpc from '@grpc/grpc-js';
import {
  ActionCacheService as AcDef,
  ByteStreamService as BsDef,
  CapabilitiesService as CapsDef,
  CasService as CasDef,
  ExecutionService as ExecDef,
  OperationsService as OpsDef,
} from '../apis/services';
import { ActionQueue, MAX_PRIORITY, MIN_PRIORITY } from '../scheduler/action-queue';
import { ExecutionService } from '../scheduler/execution-service';
import { toOperation } from '../scheduler/operation-proto';
import { OperationRecord, OperationStore } from '../scheduler/operation-store';
import { OperationsService } from '../scheduler/operations-service';
import { ActionCacheService } from '../cas/action-cache-service';
import { Storage } from '../cas/blob-store';
import { ByteStreamService } from '../cas/bytestream-service';
import { CasService } from '../cas/cas-service';
import { ClientLimits, DEFAULT_CLIENT_LIMITS, MAX_GRPC_MESSAGE_BYTES } from '../cas/limits';
import { UploadSessions } from '../cas/upload-sessions';
import { CapabilitiesService } from './capabilities-service';
import { parseReadResource, parseWriteResource } from '../cas/resource-name';
import { AccessControl, CallIdentity, Caller, Need } from './auth';
import { clientStream, serverStream, unary } from './grpc-adapter';
import { ServerMetrics } from './metrics';
import { metricsInterceptor } from './metrics-interceptor';
import { unimplemented } from './rpc-error';
import { addServiceDecodingStrictly, checkDecoded } from './request-decoding';
import { ServerTlsFiles, serverCredentials } from './tls';

export interface ServerOptions {
  storage: Storage;
  allowActionCacheUpdates?: boolean;
  /** Container image name -> current image ID, so results built in a replaced image miss. */
  resolveImage?: (name: string) => Promise<string | undefined>;
  /** Offer remote execution: where operations live and the queue workers take actions from. */
  scheduler?: { operations: OperationStore; queue: ActionQueue };
  /** Who may call what; open to every caller when absent. */
  access?: AccessControl;
  /** Serve over TLS (mutual TLS with a client CA); plain-text gRPC when absent. */
  tls?: ServerTlsFiles;
  /** What one client may make the server hold (defaults: DEFAULT_CLIENT_LIMITS). */
  limits?: Partial<ClientLimits>;
  /** Count calls, bytes and cache lookups, and report the queue's depth (--metrics-listen). */
  metrics?: ServerMetrics;
}

export interface RunningServer {
  server: grpc.Server;
  port: number;
  /** The services, for components (scheduler, embedded worker) living in the same process. */
  actionCache: ActionCacheService;
  shutdown(): Promise<void>;
}

export async function startServer(listen: string, options: ServerOptions): Promise<RunningServer> {
  const { storage } = options;
  const allowActionCacheUpdates = options.allowActionCacheUpdates ?? true;
  const access = options.access ?? AccessControl.open();
  const credentials = serverCredentials(options.tls);
  const uploads = new UploadSessions(storage);
  await uploads.collectAbandoned();
  const limits: ClientLimits = { ...DEFAULT_CLIENT_LIMITS, ...options.limits };
  const cas = new CasService(storage, limits);
  const { metrics } = options;
  const actionCache = new ActionCacheService(storage, {
    allowClientUpdates: allowActionCacheUpdates,
    resolveImage: options.resolveImage,
    onLookup: metrics && ((result) => metrics.actionCacheLookup(result)),
  });
  // Farm workers store the results of actions the farm ran: accepted even when clients may not
  // write the ActionCache, which is what makes --no-ac-updates work with standalone workers.
  const workerResults = new ActionCacheService(storage, { allowClientUpdates: true, resolveImage: options.resolveImage });
  const bytestream = new ByteStreamService(storage, uploads, limits);
  const capabilities = new CapabilitiesService({
    allowActionCacheUpdates,
    execution: options.scheduler ? { minPriority: MIN_PRIORITY, maxPriority: MAX_PRIORITY } : undefined,
  });
  const mayUpdateActionCache = (caller: Caller, instance: string) =>
    caller.may(instance, 'updateActionCache') && (caller.role === 'worker' || allowActionCacheUpdates);

  /** Authenticates, then authorizes on the instance a ByteStream resource name names. */
  const checkResource = (call: CallIdentity, method: string, resourceName: string, parse: (name: string) => { instanceName: string }) => {
    const caller = access.authenticate(call, method);
    access.authorize(caller, call, method, parse(resourceName).instanceName, 'use');
  };

  const server = new grpc.Server({
    'grpc.max_receive_message_length': MAX_GRPC_MESSAGE_BYTES,
    'grpc.max_send_message_length': MAX_GRPC_MESSAGE_BYTES,
    // Calls beyond this on one connection wait (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS).
    'grpc.max_concurrent_streams': limits.maxConcurrentStreams,
    interceptors: metrics ? [metricsInterceptor(metrics)] : [],
  });
  addServiceDecodingStrictly(server, CapsDef, {
    GetCapabilities: unary('GetCapabilities', async (req, call) => {
      const caller = access.check(call, 'GetCapabilities', req.instanceName, 'use');
      const caps = capabilities.getCapabilities(req);
      // Per caller: Bazel then knows up front whether uploading its local results can work.
      caps.cacheCapabilities = { ...caps.cacheCapabilities, actionCacheUpdateCapabilities: { updateEnabled: mayUpdateActionCache(caller, req.instanceName) } };
      return caps;
    }),
  });
  addServiceDecodingStrictly(server, CasDef, {
    FindMissingBlobs: unary('FindMissingBlobs', async (req, call) => {
      access.check(call, 'FindMissingBlobs', req.instanceName, 'use');
      return cas.findMissingBlobs(req);
    }),
    BatchUpdateBlobs: unary('BatchUpdateBlobs', async (req, call) => {
      access.check(call, 'BatchUpdateBlobs', req.instanceName, 'use');
      return cas.batchUpdateBlobs(req);
    }),
    BatchReadBlobs: unary('BatchReadBlobs', async (req, call) => {
      access.check(call, 'BatchReadBlobs', req.instanceName, 'use');
      return cas.batchReadBlobs(req);
    }),
    GetTree: serverStream('GetTree', async function* (req, call) {
      access.check(call, 'GetTree', req.instanceName, 'use');
      yield* treePages(cas, req);
    }),
    SplitBlob: unary('SplitBlob', async (req, call) => {
      access.check(call, 'SplitBlob', req.instanceName, 'use');
      throw unimplemented('SplitBlob: blob splitting is not offered (see Capabilities)');
    }),
    SpliceBlob: unary('SpliceBlob', async (req, call) => {
      access.check(call, 'SpliceBlob', req.instanceName, 'use');
      throw unimplemented('SpliceBlob: blob splicing is not offered (see Capabilities)');
    }),
  });
  addServiceDecodingStrictly(server, AcDef, {
    GetActionResult: unary('GetActionResult', async (req, call) => {
      access.check(call, 'GetActionResult', req.instanceName, 'use');
      return actionCache.getActionResult(req);
    }),
    UpdateActionResult: unary('UpdateActionResult', async (req, call) => {
      const caller = access.check(call, 'UpdateActionResult', req.instanceName, 'updateActionCache');
      return (caller.role === 'worker' ? workerResults : actionCache).updateActionResult(req);
    }),
  });
  addServiceDecodingStrictly(server, BsDef, {
    Read: serverStream('Read', async function* (req, call) {
      checkResource(call, 'Read', req.resourceName, parseReadResource);
      yield* readChunks(bytestream, req);
    }),
    Write: clientStream('Write', async (requests, call) => {
      // Authenticated before a byte is read; authorized on the first message, which names the resource.
      const caller = access.authenticate(call, 'Write');
      const checked = checkFirst(requests, (first) =>
        access.authorize(caller, call, 'Write', parseWriteResource(checkDecoded(first).resourceName).instanceName, 'use'),
      );
      return bytestream.write(checked);
    }),
    QueryWriteStatus: unary('QueryWriteStatus', async (req, call) => {
      checkResource(call, 'QueryWriteStatus', req.resourceName, parseWriteResource);
      return bytestream.queryWriteStatus(req);
    }),
  });

  if (options.scheduler) addExecution(server, storage, actionCache, options.scheduler, access);
  if (options.scheduler && metrics) metrics.watchQueue(options.scheduler.queue);

  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(listen, credentials, (err, p) => (err ? reject(err) : resolve(p))),
  );
  return {
    server,
    port,
    actionCache,
    shutdown: () =>
      new Promise<void>((resolve) => {
        // Give in-flight calls a moment, then cut the rest: a stuck client must not block exit.
        const force = setTimeout(() => server.forceShutdown(), 5000);
        server.tryShutdown(() => {
          clearTimeout(force);
          resolve();
        });
      }),
  };
}

function addExecution(
  server: grpc.Server,
  storage: Storage,
  actionCache: ActionCacheService,
  scheduler: NonNullable<ServerOptions['scheduler']>,
  access: AccessControl,
): void {
  const execution = new ExecutionService(storage, actionCache, scheduler.operations, scheduler.queue);
  const operations = new OperationsService(scheduler.operations, scheduler.queue);
  /**
   * An operation belongs to the instance it was created for: only callers who may use that
   * instance see it, and only those who may execute there cancel or delete it. Unknown names are
   * left to the services, which answer NOT_FOUND.
   */
  const checkOperation = async (call: CallIdentity, method: string, name: string, need: Need) => {
    const caller = access.authenticate(call, method);
    const record = await scheduler.operations.get(name);
    if (record) access.authorize(caller, call, method, record.instanceName, need);
  };
  addServiceDecodingStrictly(server, ExecDef, {
    Execute: serverStream('Execute', async function* (req, call) {
      access.check(call, 'Execute', req.instanceName, 'execute');
      yield* operationStream(call, (signal) => execution.execute(req, signal));
    }),
    WaitExecution: serverStream('WaitExecution', async function* (req, call) {
      await checkOperation(call, 'WaitExecution', req.name, 'use');
      yield* operationStream(call, (signal) => execution.waitExecution(req, signal));
    }),
  });
  addServiceDecodingStrictly(server, OpsDef, {
    GetOperation: unary('GetOperation', async (req, call) => {
      await checkOperation(call, 'GetOperation', req.name, 'use');
      return toOperation(await operations.get(req.name));
    }),
    ListOperations: unary('ListOperations', async (req, call) => {
      const caller = access.authenticate(call, 'ListOperations');
      const page = await operations.list(req);
      // Operations of instances the caller may not use are left out (a page may come back short).
      const visible = page.records.filter((r) => caller.may(r.instanceName, 'use'));
      return { operations: visible.map(toOperation), nextPageToken: page.nextPageToken };
    }),
    CancelOperation: unary('CancelOperation', async (req, call) => {
      await checkOperation(call, 'CancelOperation', req.name, 'execute');
      await operations.cancel(req.name);
      return {};
    }),
    DeleteOperation: unary('DeleteOperation', async (req, call) => {
      await checkOperation(call, 'DeleteOperation', req.name, 'execute');
      await operations.delete(req.name);
      return {};
    }),
    WaitOperation: unary('WaitOperation', async (req, call) => {
      await checkOperation(call, 'WaitOperation', req.name, 'use');
      return toOperation(await operations.wait(req));
    }),
  });
}

/** Passes requests through, calling `check` on the first before it goes any further. */
async function* checkFirst<T>(requests: AsyncIterable<T>, check: (first: T) => void): AsyncGenerator<T> {
  let first = true;
  for await (const request of requests) {
    if (first) check(request);
    first = false;
    yield request;
  }
}

/** Streams operation states as Operations until done; stops watching when the client leaves. */
async function* operationStream(call: grpc.ServerWritableStream<unknown, unknown>, source: (signal: AbortSignal) => AsyncIterable<OperationRecord>) {
  const abort = new AbortController();
  const stop = () => abort.abort();
  call.once('cancelled', stop);
  call.once('close', stop);
  try {
    for await (const record of source(abort.signal)) yield toOperation(record);
  } finally {
    call.off('cancelled', stop);
    call.off('close', stop);
    abort.abort();
  }
}

/**
 * GetTree as a stream: one page per message, following page tokens until the walk is done or
 * the client asked for a single page.
 */
async function* treePages(cas: CasService, req: Parameters<CasService['getTree']>[0]) {
  let page = await cas.getTree(req);
  yield page;
  while (page.nextPageToken && !req.pageSize) {
    req.pageToken = page.nextPageToken;
    page = await cas.getTree(req);
    yield page;
  }
}

async function* readChunks(bytestream: ByteStreamService, req: Parameters<ByteStreamService['read']>[0]) {
  for await (const data of bytestream.read(req)) yield { data };
}
