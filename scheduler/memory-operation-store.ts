// OperationStore in process memory. Finished operations are kept for a while so late
// WaitExecution / GetOperation calls still find their result.
import { EventEmitter, on } from 'node:events';
import { OperationPage, OperationRecord, OperationStore } from './operation-store';

const KEEP_DONE_MS = 60 * 60 * 1000;

export class MemoryOperationStore implements OperationStore {
  private readonly records = new Map<string, OperationRecord>();
  private readonly inFlight = new Map<string, string>();
  private readonly changes = new EventEmitter();

  constructor() {
    this.changes.setMaxListeners(0);
  }

  async create(record: OperationRecord): Promise<void> {
    this.prune();
    this.records.set(record.name, { ...record });
  }

  async get(name: string): Promise<OperationRecord | undefined> {
    const r = this.records.get(name);
    return r && { ...r };
  }

  async update(name: string, patch: Partial<Omit<OperationRecord, 'name'>>): Promise<OperationRecord | undefined> {
    const current = this.records.get(name);
    if (!current) return undefined;
    const next = { ...current, ...patch, name };
    this.records.set(name, next);
    if (next.done && next.dedupKey && this.inFlight.get(next.dedupKey) === name) this.inFlight.delete(next.dedupKey);
    this.changes.emit(name, { ...next });
    return { ...next };
  }

  async startExecuting(name: string, worker: string): Promise<OperationRecord | undefined> {
    const current = this.records.get(name);
    if (!current || current.done) return current && { ...current };
    return this.update(name, { stage: 'EXECUTING', worker });
  }

  async *watch(name: string, signal: AbortSignal): AsyncIterable<OperationRecord> {
    // Subscribe before reading, so no change can slip between the read and the subscription.
    const changes = on(this.changes, name, { signal });
    const current = this.records.get(name);
    if (!current) return;
    yield { ...current };
    if (current.done) return;
    try {
      for await (const [record] of changes as AsyncIterable<[OperationRecord | undefined]>) {
        if (!record) return; // deleted
        yield record;
        if (record.done) return;
      }
    } catch (err) {
      if ((err as Error).name !== 'AbortError') throw err;
    }
  }

  async createOrJoin(record: OperationRecord): Promise<OperationRecord> {
    const key = record.dedupKey;
    if (key) {
      const ownerName = this.inFlight.get(key);
      const owner = ownerName ? this.records.get(ownerName) : undefined;
      if (owner && !owner.done) return { ...owner };
      this.inFlight.set(key, record.name);
    }
    await this.create(record);
    return { ...record };
  }

  async list(pageSize: number, pageToken: string): Promise<OperationPage> {
    const names = [...this.records.keys()].sort();
    const start = pageToken ? names.findIndex((n) => n > pageToken) : 0;
    const slice = start < 0 ? [] : names.slice(start, start + pageSize);
    const more = start >= 0 && start + pageSize < names.length;
    return { records: slice.map((n) => ({ ...this.records.get(n)! })), nextPageToken: more ? slice[slice.length - 1] : '' };
  }

  async delete(name: string): Promise<boolean> {
    const record = this.records.get(name);
    if (!record) return false;
    this.records.delete(name);
    if (record.dedupKey && this.inFlight.get(record.dedupKey) === name) this.inFlight.delete(record.dedupKey);
    this.changes.emit(name, undefined);
    return true;
  }

  async close(): Promise<void> {
    this.changes.removeAllListeners();
  }

  /**
   * Runs on every create, so it stops at the first record young enough to keep: records sit in
   * creation order, so the ones after it are younger still. Old ones still running are skipped.
   */
  private prune(now = Date.now()): void {
    for (const [name, r] of this.records) {
      if (now - r.queuedAt <= KEEP_DONE_MS) return;
      if (r.done) this.records.delete(name);
    }
  }
}
