// Assembles the gRPC server: storage, service logic, and the handlers that expose them.
import * as grpc from '@grpc/grpc-js';
import {
  addService,
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
import { MAX_GRPC_MESSAGE_BYTES } from '../cas/limits';
import { UploadSessions } from '../cas/upload-sessions';
import { CapabilitiesService } from './capabilities-service';
import { clientStream, notImplemented, serverStream, unary } from './grpc-adapter';

export interface ServerOptions {
  storage: Storage;
  allowActionCacheUpdates?: boolean;
  /** Container image name -> current image ID, so results built in a replaced image miss. */
  resolveImage?: (name: string) => Promise<string | undefined>;
  /** Offer remote execution: where operations live and the queue workers take actions from. */
  scheduler?: { operations: OperationStore; queue: ActionQueue };
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
  const uploads = new UploadSessions(storage);
  await uploads.collectAbandoned();
  const cas = new CasService(storage);
  const actionCache = new ActionCacheService(storage, { allowClientUpdates: allowActionCacheUpdates, resolveImage: options.resolveImage });
  const bytestream = new ByteStreamService(storage, uploads);
  const capabilities = new CapabilitiesService({
    allowActionCacheUpdates,
    execution: options.scheduler ? { minPriority: MIN_PRIORITY, maxPriority: MAX_PRIORITY } : undefined,
  });

  const server = new grpc.Server({
    'grpc.max_receive_message_length': MAX_GRPC_MESSAGE_BYTES,
    'grpc.max_send_message_length': MAX_GRPC_MESSAGE_BYTES,
  });
  addService(server, CapsDef, {
    GetCapabilities: unary('GetCapabilities', async (req) => capabilities.getCapabilities(req)),
  });
  addService(server, CasDef, {
    FindMissingBlobs: unary('FindMissingBlobs', (req) => cas.findMissingBlobs(req)),
    BatchUpdateBlobs: unary('BatchUpdateBlobs', (req) => cas.batchUpdateBlobs(req)),
    BatchReadBlobs: unary('BatchReadBlobs', (req) => cas.batchReadBlobs(req)),
    GetTree: serverStream('GetTree', (req) => treePages(cas, req)),
    SplitBlob: notImplemented('SplitBlob', 'blob splitting is not offered (see Capabilities)'),
    SpliceBlob: notImplemented('SpliceBlob', 'blob splicing is not offered (see Capabilities)'),
  });
  addService(server, AcDef, {
    GetActionResult: unary('GetActionResult', (req) => actionCache.getActionResult(req)),
    UpdateActionResult: unary('UpdateActionResult', (req) => actionCache.updateActionResult(req)),
  });
  addService(server, BsDef, {
    Read: serverStream('Read', (req) => readChunks(bytestream, req)),
    Write: clientStream('Write', (requests) => bytestream.write(requests)),
    QueryWriteStatus: unary('QueryWriteStatus', (req) => bytestream.queryWriteStatus(req)),
  });

  if (options.scheduler) addExecution(server, storage, actionCache, options.scheduler);

  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(listen, grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
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

function addExecution(server: grpc.Server, storage: Storage, actionCache: ActionCacheService, scheduler: NonNullable<ServerOptions['scheduler']>): void {
  const execution = new ExecutionService(storage, actionCache, scheduler.operations, scheduler.queue);
  const operations = new OperationsService(scheduler.operations, scheduler.queue);
  addService(server, ExecDef, {
    Execute: serverStream('Execute', (req, call) => operationStream(call, (signal) => execution.execute(req, signal))),
    WaitExecution: serverStream('WaitExecution', (req, call) => operationStream(call, (signal) => execution.waitExecution(req, signal))),
  });
  addService(server, OpsDef, {
    GetOperation: unary('GetOperation', async (req) => toOperation(await operations.get(req.name))),
    ListOperations: unary('ListOperations', async (req) => {
      const page = await operations.list(req);
      return { operations: page.records.map(toOperation), nextPageToken: page.nextPageToken };
    }),
    CancelOperation: unary('CancelOperation', async (req) => {
      await operations.cancel(req.name);
      return {};
    }),
    DeleteOperation: unary('DeleteOperation', async (req) => {
      await operations.delete(req.name);
      return {};
    }),
    WaitOperation: unary('WaitOperation', async (req) => toOperation(await operations.wait(req))),
  });
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
