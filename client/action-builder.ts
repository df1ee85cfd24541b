// Turns a list of input files and a command into REAPI Directory, Command and Action messages.
// Pure: digests in, encoded blobs out.
import { createHash } from 'node:crypto';
import { rex } from '../apis';
import { compareUtf8 } from '../apis/name-order';

export interface Digest {
  hash: string;
  sizeBytes: number;
}

export interface EncodedBlob {
  digest: Digest;
  data: Buffer;
}

export interface InputFile {
  /** Relative to the input root, '/'-separated, no '.' or '..' segments. */
  path: string;
  digest: Digest;
  executable: boolean;
}

export interface ActionSpec {
  argv: string[];
  env: Record<string, string>;
  /** Relative to the working directory. */
  outputPaths: string[];
  workingDirectory: string;
  platform: Record<string, string>;
  inputs: InputFile[];
  timeoutSeconds: number;
}

export interface BuiltAction {
  actionDigest: Digest;
  commandDigest: Digest;
  inputRootDigest: Digest;
  /** Action, Command and every Directory: the blobs besides input files the server needs. */
  messages: EncodedBlob[];
}

export function encodedBlob(data: Uint8Array): EncodedBlob {
  const buf = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  return { digest: { hash: createHash('sha256').update(buf).digest('hex'), sizeBytes: buf.length }, data: buf };
}

interface DirNode {
  files: Map<string, InputFile>;
  dirs: Map<string, DirNode>;
}

/** The Merkle tree of the inputs: root digest and every Directory blob. */
export function buildInputRoot(inputs: InputFile[]): { root: Digest; directories: EncodedBlob[] } {
  const top: DirNode = { files: new Map(), dirs: new Map() };
  for (const f of inputs) {
    const parts = f.path.split('/');
    let node = top;
    for (const part of parts.slice(0, -1)) {
      let next = node.dirs.get(part);
      if (!next) node.dirs.set(part, (next = { files: new Map(), dirs: new Map() }));
      node = next;
    }
    node.files.set(parts[parts.length - 1], f);
  }
  const directories: EncodedBlob[] = [];
  const encode = (node: DirNode): Digest => {
    const dirs = [...node.dirs.entries()].sort(byName).map(([name, child]) => ({ name, digest: encode(child) }));
    const files = [...node.files.entries()]
      .sort(byName)
      .map(([name, f]) => ({ name, digest: f.digest, isExecutable: f.executable }));
    const blob = encodedBlob(rex.Directory.encode({ files, directories: dirs }).finish());
    directories.push(blob);
    return blob.digest;
  };
  const root = encode(top);
  return { root, directories };
}

function byName<T>(a: [string, T], b: [string, T]): number {
  return compareUtf8(a[0], b[0]);
}

export function buildAction(spec: ActionSpec): BuiltAction {
  const { root, directories } = buildInputRoot(spec.inputs);
  const platform = {
    properties: Object.entries(spec.platform)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
      .map(([name, value]) => ({ name, value })),
  };
  const command = encodedBlob(
    rex.Command.encode({
      arguments: spec.argv,
      environmentVariables: Object.entries(spec.env)
        .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
        .map(([name, value]) => ({ name, value })),
      outputPaths: [...spec.outputPaths].sort(),
      workingDirectory: spec.workingDirectory,
      platform,
    }).finish(),
  );
  const action = encodedBlob(
    rex.Action.encode({
      commandDigest: command.digest,
      inputRootDigest: root,
      timeout: { seconds: spec.timeoutSeconds },
      platform,
    }).finish(),
  );
  return { actionDigest: action.digest, commandDigest: command.digest, inputRootDigest: root, messages: [action, command, ...directories] };
}
