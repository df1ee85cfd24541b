// OperationRecord <-> google.longrunning.Operation, with REAPI's metadata and response types.
import { status } from '@grpc/grpc-js';
import { longrunning, rex } from '../apis';
import { OperationRecord } from './operation-store';

const METADATA_TYPE = 'type.googleapis.com/build.bazel.remote.execution.v2.ExecuteOperationMetadata';
const RESPONSE_TYPE = 'type.googleapis.com/build.bazel.remote.execution.v2.ExecuteResponse';

export function toOperation(record: OperationRecord): longrunning.Operation.$Properties {
  const metadata = rex.ExecuteOperationMetadata.encode({
    stage: rex.ExecutionStage.Value[record.stage],
    actionDigest: record.actionDigest,
    digestFunction: rex.DigestFunction.Value.SHA256,
    partialExecutionMetadata: record.worker ? { worker: record.worker } : undefined,
  }).finish();
  return {
    name: record.name,
    metadata: { type_url: METADATA_TYPE, value: metadata },
    done: record.done,
    response: record.done && record.response ? { type_url: RESPONSE_TYPE, value: record.response } : undefined,
  };
}

export function encodeResponse(response: rex.ExecuteResponse.$Properties): Buffer {
  return Buffer.from(rex.ExecuteResponse.encode(response).finish());
}

/** What an operation cancelled while it still waited in the queue finishes with. */
export function cancelledBeforeStart(): Partial<OperationRecord> {
  return { stage: 'COMPLETED', done: true, response: encodeResponse({ status: { code: status.CANCELLED, message: 'cancelled before it started' } }) };
}
