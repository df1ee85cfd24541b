// google.longrunning.Operations over the same OperationStore that Execute uses.
import { status } from '@grpc/grpc-js';
import { longrunning } from '../apis';
import { RpcError, invalidArgument, notFound } from '../server/rpc-error';
import { ActionQueue } from './action-queue';
import { cancelledBeforeStart } from './operation-proto';
import { OperationRecord, OperationStore } from './operation-store';

const MAX_PAGE = 1000;

export class OperationsService {
  constructor(private readonly operations: OperationStore, private readonly queue: ActionQueue) {}

  async get(name: string): Promise<OperationRecord> {
    const record = await this.operations.get(name);
    if (!record) throw notFound(`operation ${JSON.stringify(name)} is unknown`);
    return record;
  }

  async list(req: longrunning.ListOperationsRequest): Promise<{ records: OperationRecord[]; nextPageToken: string }> {
    if (req.filter) throw invalidArgument('ListOperations filters are not supported; leave filter empty');
    if (req.pageSize < 0) throw invalidArgument(`page_size ${req.pageSize} is negative`);
    return this.operations.list(Math.min(req.pageSize || 100, MAX_PAGE), req.pageToken);
  }

  /**
   * Queued: dropped from the queue at once. Executing: the worker is told to stop it. The request
   * is recorded first: should this server die between taking the job out of the queue and
   * finishing the operation, whoever comes back for the operation finishes it (ExecutionService).
   */
  async cancel(name: string): Promise<void> {
    const record = await this.get(name);
    if (record.done) return;
    await this.operations.update(name, { cancelRequested: true });
    if (await this.queue.remove(name)) await this.operations.update(name, cancelledBeforeStart());
  }

  async delete(name: string): Promise<void> {
    if (!(await this.operations.delete(name))) throw notFound(`operation ${JSON.stringify(name)} is unknown`);
  }

  /** Waits until the operation is done or the timeout passes; returns its state then. */
  async wait(req: longrunning.WaitOperationRequest): Promise<OperationRecord> {
    let latest = await this.get(req.name);
    const timeoutMs = req.timeout ? Number(req.timeout.seconds ?? 0) * 1000 + Math.floor((req.timeout.nanos ?? 0) / 1e6) : 60_000;
    if (timeoutMs < 0) throw new RpcError(status.INVALID_ARGUMENT, 'timeout is negative');
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), timeoutMs);
    try {
      for await (const record of this.operations.watch(req.name, abort.signal)) latest = record;
    } finally {
      clearTimeout(timer);
    }
    return latest;
  }
}
