// Where a standalone worker puts its results: the server's ActionCache, through
// UpdateActionResult. The server checks, as for any client, that every blob the result names is
// already in the CAS; the worker uploaded them just before. A server that refuses clients'
// results (--no-ac-updates) accepts these when the worker's token has the role "worker".
import { status } from '@grpc/grpc-js';
import { rex } from '../apis';
import { unary } from '../apis/services';
import { Digest, digestKey } from '../cas/digest';
import { RpcError } from '../server/rpc-error';
import { ServerClients, untilReachable } from './server-connection';
import { ActionResultSink } from './worker';

export class RemoteActionCache implements ActionResultSink {
  constructor(private readonly server: ServerClients) {}

  async store(instanceName: string, actionDigest: Digest, result: rex.ActionResult): Promise<void> {
    try {
      await untilReachable(this.server, 'UpdateActionResult', () => unary(this.server.ac, 'UpdateActionResult', { instanceName, actionDigest, actionResult: result }));
    } catch (err) {
      const e = err as Partial<{ code: number; details: string; message: string }>;
      throw new RpcError(e.code ?? status.INTERNAL, `UpdateActionResult of action ${digestKey(actionDigest)} on ${this.server.address}: ${e.details ?? e.message}${hint(e.code)}`);
    }
  }
}

function hint(code: number | undefined): string {
  // The server runs with --no-ac-updates and does not know this worker as a worker.
  if (code === status.FAILED_PRECONDITION) return ' (give this worker a token with the role "worker": --token-file or REAPI_TOKEN)';
  return '';
}
