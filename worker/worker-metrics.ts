// What a worker reports about the actions it runs, for whoever counts them (server/metrics.ts
// turns it into Prometheus metrics). The worker only calls these hooks; it knows no metrics library.
import { status } from '@grpc/grpc-js';
import { rex } from '../apis';
import type { PipelineOutcome } from './action-pipeline';

/** How an action the worker ran ended. */
export type ActionOutcome = 'ok' | 'nonzero_exit' | 'timeout' | 'cancelled' | 'error';
export const ACTION_OUTCOMES: readonly ActionOutcome[] = ['ok', 'nonzero_exit', 'timeout', 'cancelled', 'error'];

export interface WorkerObserver {
  /** An action left the queue and starts its pipeline. */
  actionStarted(): void;
  /** It finished; metadata carries the stage timestamps when the action got that far. */
  actionFinished(outcome: ActionOutcome, metadata: rex.ExecutedActionMetadata.$Properties | null | undefined): void;
}

export function outcomeOf(outcome: Pick<PipelineOutcome, 'status' | 'result'>): ActionOutcome {
  switch (outcome.status.code) {
    case status.OK:
      return (outcome.result?.exitCode ?? 0) === 0 ? 'ok' : 'nonzero_exit';
    case status.DEADLINE_EXCEEDED:
      return 'timeout';
    case status.CANCELLED:
      return 'cancelled';
    default:
      return 'error';
  }
}
