// Where operations live between Execute, the worker that runs them, and WaitExecution.
// In-memory for the embedded server; Redis when several servers share the work, so that a
// client can re-attach through any server, also after one restarted.
import type { Digest } from '../cas/digest';

export type Stage = 'QUEUED' | 'EXECUTING' | 'COMPLETED';

export interface OperationRecord {
  /** "operations/<uuid>". */
  name: string;
  instanceName: string;
  actionDigest: Digest;
  stage: Stage;
  done: boolean;
  /** Encoded ExecuteResponse, set when done. */
  response?: Buffer;
  /** instance + action digest of a cacheable action: identical requests share this operation. */
  dedupKey?: string;
  /** Milliseconds since the epoch. */
  queuedAt: number;
  worker?: string;
  cancelRequested?: boolean;
}

export interface OperationPage {
  records: OperationRecord[];
  nextPageToken: string;
}

export interface OperationStore {
  create(record: OperationRecord): Promise<void>;
  get(name: string): Promise<OperationRecord | undefined>;
  /** Applies a change and notifies watchers; undefined if the operation is gone. */
  update(name: string, patch: Partial<Omit<OperationRecord, 'name'>>): Promise<OperationRecord | undefined>;
  /**
   * A worker took the operation's job: EXECUTING on `worker`, unless the operation has already
   * finished (a job can be queued again after its operation completed; at-least-once delivery
   * hands out a finished one). Returns the record as it now is; undefined if it is gone.
   */
  startExecuting(name: string, worker: string): Promise<OperationRecord | undefined>;
  /** The current state, then every change, ending after the record is done (or deleted). */
  watch(name: string, signal: AbortSignal): AsyncIterable<OperationRecord>;
  /**
   * Makes `record` the in-flight operation for its dedupKey unless another unfinished one holds
   * it. Returns the operation that now owns the key (the given one when it was created).
   */
  createOrJoin(record: OperationRecord): Promise<OperationRecord>;
  list(pageSize: number, pageToken: string): Promise<OperationPage>;
  delete(name: string): Promise<boolean>;
  close(): Promise<void>;
}
