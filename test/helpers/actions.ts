// Builds and uploads REAPI actions the way a client does, and runs them through Execute.
import * as grpc from '@grpc/grpc-js';
import { createHash } from 'node:crypto';
import { longrunning, rex, rpc } from '../../apis';
import { ContentAddressableStorageClient, ExecutionClient, unary } from '../../apis/services';

export interface Blob {
  digest: { hash: string; sizeBytes: number };
  data: Buffer;
}

export function blob(data: Buffer | string | Uint8Array): Blob {
  const bytes = Buffer.from(data);
  return { digest: { hash: createHash('sha256').update(bytes).digest('hex'), sizeBytes: bytes.length }, data: bytes };
}

export interface ActionSpec {
  args: string[];
  env?: Record<string, string>;
  outputPaths?: string[];
  /** Input files: path relative to the input root ("a.txt", "src/x.c") -> content. */
  inputs?: Record<string, string>;
  image?: string;
  /** Platform properties besides container-image, e.g. InputRootAbsolutePath. */
  platform?: { name: string; value: string }[];
  timeoutSeconds?: number;
  doNotCache?: boolean;
  /** Makes otherwise identical actions distinct. */
  salt?: string;
  workingDirectory?: string;
}

export interface BuiltAction {
  actionDigest: Blob['digest'];
  blobs: Blob[];
}

export const TOOLCHAIN = 'docker://reapi-toolchain:bookworm';

export function buildAction(spec: ActionSpec): BuiltAction {
  const tree = inputTree(Object.entries(spec.inputs ?? {}));
  const platform = {
    properties: [{ name: 'container-image', value: spec.image ?? TOOLCHAIN }, ...(spec.platform ?? [])].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0)),
  };
  const command = blob(
    rex.Command.encode({
      arguments: spec.args,
      environmentVariables: Object.entries(spec.env ?? { PATH: '/usr/bin:/bin' })
        .sort(([a], [b]) => (a < b ? -1 : 1))
        .map(([name, value]) => ({ name, value })),
      outputPaths: spec.outputPaths ?? [],
      workingDirectory: spec.workingDirectory ?? '',
      platform,
    }).finish(),
  );
  const action = blob(
    rex.Action.encode({
      commandDigest: command.digest,
      inputRootDigest: tree.root.digest,
      timeout: spec.timeoutSeconds ? { seconds: spec.timeoutSeconds } : undefined,
      doNotCache: spec.doNotCache ?? false,
      salt: Buffer.from(spec.salt ?? ''),
      platform,
    }).finish(),
  );
  return { actionDigest: action.digest, blobs: [action, command, tree.root, ...tree.blobs] };
}

/** The Directory for these files (paths may have subdirectories), and every blob below it. */
export function inputTree(entries: [string, string][]): { root: Blob; blobs: Blob[] } {
  const byName = (a: { name: string }, b: { name: string }) => (a.name < b.name ? -1 : 1);
  const files: { name: string; blob: Blob }[] = [];
  const subdirs = new Map<string, [string, string][]>();
  for (const [p, content] of entries) {
    const slash = p.indexOf('/');
    if (slash < 0) files.push({ name: p, blob: blob(content) });
    else subdirs.set(p.slice(0, slash), [...(subdirs.get(p.slice(0, slash)) ?? []), [p.slice(slash + 1), content]]);
  }
  const directories = [...subdirs].map(([name, children]) => ({ name, ...inputTree(children) })).sort(byName);
  files.sort(byName);
  const root = blob(
    rex.Directory.encode({
      files: files.map((f) => ({ name: f.name, digest: f.blob.digest })),
      directories: directories.map((d) => ({ name: d.name, digest: d.root.digest })),
    }).finish(),
  );
  return { root, blobs: [...files.map((f) => f.blob), ...directories.flatMap((d) => [d.root, ...d.blobs])] };
}

export async function upload(cas: ContentAddressableStorageClient, blobs: Blob[], instanceName = ''): Promise<void> {
  const res = await unary(cas, 'BatchUpdateBlobs', { instanceName, requests: blobs.map((b) => ({ digest: b.digest, data: b.data })) });
  for (const r of res.responses) if (r.status?.code) throw new Error(`upload failed: ${r.status.message}`);
}

/** An ExecuteResponse with its nested messages typed as the decoded instances they are. */
export type Response = rex.ExecuteResponse & { result?: rex.ActionResult; status?: rpc.Status };

export interface DecodedOperation {
  name: string;
  done: boolean;
  stage: string;
  response?: Response;
}

export function decodeOperation(op: longrunning.Operation.$Properties): DecodedOperation {
  const meta = op.metadata ? rex.ExecuteOperationMetadata.decode(op.metadata.value ?? new Uint8Array()) : undefined;
  return {
    name: op.name ?? '',
    done: op.done ?? false,
    stage: meta ? rex.ExecutionStage.Value[meta.stage] : 'UNKNOWN',
    response: op.response ? (rex.ExecuteResponse.decode(op.response.value ?? new Uint8Array()) as Response) : undefined,
  };
}

/** Reads a stream of Operations to its end. */
export async function collect(stream: grpc.ClientReadableStream<longrunning.Operation>): Promise<DecodedOperation[]> {
  const ops: DecodedOperation[] = [];
  for await (const op of stream as AsyncIterable<longrunning.Operation>) ops.push(decodeOperation(op));
  return ops;
}

export function execute(exec: ExecutionClient, request: rex.IExecuteRequest): Promise<DecodedOperation[]> {
  return collect(exec.Execute(request));
}

/** The final ExecuteResponse of an Execute stream (throws if the stream did not finish). */
export async function executeToEnd(exec: ExecutionClient, request: rex.IExecuteRequest): Promise<Response> {
  const ops = await execute(exec, request);
  const last = ops[ops.length - 1];
  if (!last?.done || !last.response) throw new Error(`Execute ended without a done operation: ${JSON.stringify(ops.map((o) => o.stage))}`);
  return last.response;
}

export function millis(ts: { seconds?: number | null; nanos?: number | null } | null | undefined): number {
  return ts ? Number(ts.seconds ?? 0) * 1000 + Math.floor((ts.nanos ?? 0) / 1e6) : 0;
}
