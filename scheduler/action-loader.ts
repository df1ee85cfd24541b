// Loads and checks an Action and its Command from the CAS. Used where an action enters the
// farm (Execute) and where it is run (the worker), so both agree on what a valid action is.
import { rex } from '../apis';
import { Digest, digestKey, validateDigest } from '../cas/digest';
import { MAX_DIRECTORY_BYTES } from '../cas/limits';
import { failedPrecondition, invalidArgument } from '../server/rpc-error';
import { PlatformProperty, canonicalPlatform } from './platform';

export interface LoadedAction {
  actionDigest: Digest;
  action: rex.Action;
  command: rex.Command;
  inputRootDigest: Digest;
  /** Action.platform when set (REAPI 2.2), else Command.platform. */
  platform: PlatformProperty[];
}

/** Reads a small blob from the CAS; undefined when it is not there. */
export type BlobReader = (digest: Digest) => Promise<Buffer | undefined>;

export async function loadAction(read: BlobReader, actionDigest: Digest): Promise<LoadedAction> {
  const action = decode(rex.Action, await fetchOrFail(read, actionDigest, 'action'), actionDigest, 'Action');
  const commandDigest = validateDigest(action.commandDigest, `action ${digestKey(actionDigest)} command_digest`);
  const inputRootDigest = validateDigest(action.inputRootDigest, `action ${digestKey(actionDigest)} input_root_digest`);
  const command = decode(rex.Command, await fetchOrFail(read, commandDigest, 'command'), commandDigest, 'Command');
  if (command.arguments.length === 0) throw invalidArgument(`command ${digestKey(commandDigest)} has no arguments`);
  for (const p of [...command.outputFiles, ...command.outputDirectories, ...command.outputPaths]) checkRelativePath(p, 'output path');
  if (command.workingDirectory) checkRelativePath(command.workingDirectory, 'working_directory');
  const platformSource = action.platform?.properties?.length ? action.platform : command.platform;
  return { actionDigest, action, command, inputRootDigest, platform: canonicalPlatform(platformSource?.properties) };
}

/**
 * Actions loaded lately, by instance and digest. Execute loads and checks an action and the
 * embedded worker runs it moments later in the same process: it need not read and decode the
 * same two blobs again. Content-addressed, so an entry never goes stale; callers must not
 * modify what they get. Oldest first, so eviction drops the oldest.
 */
const recentActions = new Map<string, LoadedAction>();
const RECENT_ACTIONS_LIMIT = 1024;

/** loadAction, answered from recently loaded actions of the same instance when possible. */
export async function loadRecentAction(instanceName: string, read: BlobReader, actionDigest: Digest): Promise<LoadedAction> {
  const key = `${instanceName}\0${digestKey(actionDigest)}`;
  const recent = recentActions.get(key);
  if (recent) return recent;
  const loaded = await loadAction(read, actionDigest);
  recentActions.set(key, loaded);
  if (recentActions.size > RECENT_ACTIONS_LIMIT) recentActions.delete(recentActions.keys().next().value!);
  return loaded;
}

async function fetchOrFail(read: BlobReader, digest: Digest, what: string): Promise<Buffer> {
  if (digest.sizeBytes > MAX_DIRECTORY_BYTES) throw invalidArgument(`${what} ${digestKey(digest)} is larger than ${MAX_DIRECTORY_BYTES} bytes`);
  const blob = await read(digest);
  if (!blob) throw failedPrecondition(`${what} ${digestKey(digest)} is not in the CAS; upload it before Execute`, [digestKey(digest)]);
  return blob;
}

function decode<T>(type: { decode(b: Uint8Array): T }, blob: Buffer, digest: Digest, name: string): T {
  try {
    return type.decode(blob);
  } catch (err) {
    throw invalidArgument(`blob ${digestKey(digest)} is not a ${name} message: ${(err as Error).message}`);
  }
}

/** A path inside the input root: relative, no '..', '.', empty segments or NUL. */
export function checkRelativePath(p: string, what: string): void {
  if (p === '' || p.startsWith('/') || p.includes('\0') || p.split('/').some((s) => s === '' || s === '.' || s === '..')) {
    throw invalidArgument(`${what} ${JSON.stringify(p)} must be a normalized relative path inside the input root`);
  }
}
