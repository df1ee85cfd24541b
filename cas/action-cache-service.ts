// ActionCache: GetActionResult with a completeness check, and UpdateActionResult.
// A result is only ever served while every blob it references is still in the CAS; otherwise
// the client gets NOT_FOUND and simply runs the action again.
import { protobuf, reapi, rex } from '../apis';
import { BlobStore, Storage } from './blob-store';
import { Digest, digestKey, digestOf, isEmptyDigest, validateDigest } from './digest';
import { requireSha256 } from './digest-function';
import { MAX_DIRECTORY_BYTES } from './limits';
import { validateInstanceName } from './resource-name';
import { failedPrecondition, invalidArgument, notFound } from '../server/rpc-error';
import { log } from '../server/log';

/** Inlined content per GetActionResult, so a response stays far below gRPC message limits. */
const MAX_INLINE_BYTES = 1024 * 1024;

export interface ActionCachePolicy {
  /** Whether clients may write results directly (UpdateActionResult). */
  allowClientUpdates: boolean;
  /**
   * Resolves a container image name to its current image ID. When given, a result that records
   * the image it ran in is served only while the name still resolves to that same image.
   */
  resolveImage?: (name: string) => Promise<string | undefined>;
  /** Told the outcome of every lookup (GetActionResult and Execute's), for the hit ratio. */
  onLookup?: (result: 'hit' | 'miss') => void;
}

const CONTAINER_IMAGE_TYPE = 'type.googleapis.com/reapi.ContainerImage';

/** The auxiliary metadata entry a worker attaches to say which image an action ran in. */
export function containerImageMetadata(name: string, id: string): protobuf.Any.$Properties {
  return { type_url: CONTAINER_IMAGE_TYPE, value: reapi.ContainerImage.encode({ name, id }).finish() };
}

export class ActionCacheService {
  constructor(private readonly storage: Storage, private readonly policy: ActionCachePolicy = { allowClientUpdates: true }) {}

  async getActionResult(req: rex.GetActionResultRequest): Promise<rex.ActionResult> {
    requireSha256(req.digestFunction);
    const instance = validateInstanceName(req.instanceName);
    const actionDigest = validateDigest(req.actionDigest, 'action_digest');
    const result = await this.lookup(instance, actionDigest);
    if (!result) throw notFound(`action ${digestKey(actionDigest)} has no complete cached result`);
    await this.inline(this.storage.cas(instance), result, req);
    return result;
  }

  /** The cached result if it exists and every blob it references is present; else undefined. */
  async lookup(instance: string, actionDigest: Digest): Promise<rex.ActionResult | undefined> {
    const result = await this.completeResult(instance, actionDigest);
    this.policy.onLookup?.(result ? 'hit' : 'miss');
    return result;
  }

  private async completeResult(instance: string, actionDigest: Digest): Promise<rex.ActionResult | undefined> {
    const encoded = await this.storage.actionCache(instance).get(actionDigest);
    if (!encoded) return undefined;
    let result: rex.ActionResult;
    try {
      result = rex.ActionResult.decode(encoded);
    } catch (err) {
      log.warn('undecodable action cache entry ignored', { instance, action: digestKey(actionDigest), err });
      return undefined;
    }
    if (!(await this.imageUnchanged(result))) {
      log.info('cached result built in an image that has since changed; reporting a miss', { instance, action: digestKey(actionDigest) });
      return undefined;
    }
    const cas = this.storage.cas(instance);
    const missing = await cas.findMissing(await referencedBlobs(cas, result));
    if (missing.length > 0) {
      log.info('cached result incomplete; reporting a miss', { instance, action: digestKey(actionDigest), missing: missing.slice(0, 5).map(digestKey) });
      return undefined;
    }
    return result;
  }

  async updateActionResult(req: rex.UpdateActionResultRequest): Promise<rex.ActionResult> {
    if (!this.policy.allowClientUpdates) {
      throw failedPrecondition('this server accepts only results of actions it executed itself; UpdateActionResult is disabled');
    }
    requireSha256(req.digestFunction);
    const instance = validateInstanceName(req.instanceName);
    const actionDigest = validateDigest(req.actionDigest, 'action_digest');
    if (!req.actionResult) throw invalidArgument('action_result is missing');
    return this.store(instance, actionDigest, rex.ActionResult.create(req.actionResult));
  }

  /**
   * Stores a result after checking it: inlined content moves into the CAS, and every blob it
   * references must already be there (FAILED_PRECONDITION naming the missing ones otherwise).
   */
  async store(instance: string, actionDigest: Digest, result: rex.ActionResult): Promise<rex.ActionResult> {
    const cas = this.storage.cas(instance);
    await moveInlinedContentToCas(cas, result);
    const referenced = await referencedBlobs(cas, result);
    const missing = await cas.findMissing(referenced);
    if (missing.length > 0) {
      throw failedPrecondition(
        `action ${digestKey(actionDigest)}: the result references ${missing.length} blob(s) not in the CAS; upload them first`,
        missing.map(digestKey),
      );
    }
    await this.storage.actionCache(instance).put(actionDigest, Buffer.from(rex.ActionResult.encode(result).finish()));
    return result;
  }

  private async imageUnchanged(result: rex.ActionResult): Promise<boolean> {
    const resolve = this.policy.resolveImage;
    if (!resolve) return true;
    for (const entry of result.executionMetadata?.auxiliaryMetadata ?? []) {
      if (entry.type_url !== CONTAINER_IMAGE_TYPE || !entry.value) continue;
      const ran = reapi.ContainerImage.decode(entry.value);
      if ((await resolve(ran.name)) !== ran.id) return false;
    }
    return true;
  }

  private async inline(cas: BlobStore, result: rex.ActionResult, req: rex.GetActionResultRequest): Promise<void> {
    let budget = MAX_INLINE_BYTES;
    const fetch = async (digest: rex.Digest.$Properties | null | undefined): Promise<Buffer | undefined> => {
      if (!digest || (digest.sizeBytes ?? 0) > budget) return undefined;
      const data = await cas.read(validateDigest(digest));
      if (data) budget -= data.length;
      return data;
    };
    if (req.inlineStdout) result.stdoutRaw = (await fetch(result.stdoutDigest)) ?? result.stdoutRaw;
    if (req.inlineStderr) result.stderrRaw = (await fetch(result.stderrDigest)) ?? result.stderrRaw;
    const wanted = new Set(req.inlineOutputFiles);
    for (const file of result.outputFiles) {
      if (wanted.has(file.path ?? '')) file.contents = (await fetch(file.digest)) ?? file.contents;
    }
  }
}

/** Every blob a result depends on: output files, trees and the files in them, stdout and stderr. */
export async function referencedBlobs(cas: BlobStore, result: rex.ActionResult): Promise<Digest[]> {
  const digests: Digest[] = [];
  const add = (d: rex.Digest.$Properties | null | undefined, what: string) => {
    if (!d) return;
    const digest = validateDigest(d, what);
    if (!isEmptyDigest(digest)) digests.push(digest);
  };
  result.outputFiles.forEach((f) => add(f.digest, `output file ${f.path}`));
  add(result.stdoutDigest, 'stdout_digest');
  add(result.stderrDigest, 'stderr_digest');
  for (const dir of result.outputDirectories) {
    const treeDigest = validateDigest(dir.treeDigest, `output directory ${dir.path} tree_digest`);
    digests.push(treeDigest);
    const blob = treeDigest.sizeBytes <= MAX_DIRECTORY_BYTES ? await cas.read(treeDigest) : undefined;
    if (!blob) continue; // reported missing by the caller's FindMissing
    let tree: rex.Tree;
    try {
      tree = rex.Tree.decode(blob);
    } catch (err) {
      throw invalidArgument(`output directory ${dir.path}: tree ${digestKey(treeDigest)} is not a Tree message: ${(err as Error).message}`);
    }
    for (const directory of [tree.root, ...tree.children]) {
      directory?.files?.forEach((f) => add(f.digest, `file ${f.name} in tree of ${dir.path}`));
    }
  }
  return digests;
}

async function moveInlinedContentToCas(cas: BlobStore, result: rex.ActionResult): Promise<void> {
  for (const file of result.outputFiles) {
    if (file.contents && file.contents.length > 0) {
      await cas.put(validateDigest(file.digest, `output file ${file.path}`), Buffer.from(file.contents));
      file.contents = new Uint8Array();
    }
  }
  for (const [raw, digestField] of [['stdoutRaw', 'stdoutDigest'], ['stderrRaw', 'stderrDigest']] as const) {
    const data = result[raw];
    if (data && data.length > 0) {
      const digest = result[digestField] ? validateDigest(result[digestField], digestField) : digestOf(data);
      await cas.put(digest, Buffer.from(data));
      result[digestField] = digest;
      result[raw] = new Uint8Array();
    }
  }
}
