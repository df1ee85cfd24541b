// One action, start to finish, as visible stages: fetch inputs -> wait for one of the worker's
// execute slots -> run -> upload outputs.
// Every stage records its timestamps in ExecutedActionMetadata; whatever happens, the caller,
// once it has reported the outcome, releases the container slot and the cache pins and removes
// the action's directory if it needed one (PipelineRun).
// A container keeps its own input root and captures (slot-dir.ts): the inputs are staged into
// that root, which the action sees at its InputRootAbsolutePath if it has one.
import { randomUUID } from 'node:crypto';
import * as path from 'node:path';
import { status } from '@grpc/grpc-js';
import { protobuf, rex } from '../apis';
import { Digest, digestKey } from '../cas/digest';
import { loadRecentAction } from '../scheduler/action-loader';
import { PlatformProperty, containerImage, propertyValue } from '../scheduler/platform';
import { RpcError, failedPrecondition } from '../server/rpc-error';
import { ContentAccess } from './content-access';
import { FileCache } from './file-cache';
import { Limit } from './limiter';
import { createOutputParents, DirectoryCache, makeOwnedDirectory, materializeInputRoot, outputParents, settleAll } from './input-tree';
import { collectOutputs, uploadStdio } from './output-collector';
import { removeTree } from './tree-ops';
import { Sandbox, SandboxSlot } from './sandbox/sandbox';
import { ImageResolver } from './image-resolver';
import { containerImageMetadata } from '../cas/action-cache-service';

export interface PipelineOptions {
  workerName: string;
  access: ContentAccess;
  cache: FileCache;
  sandbox: Sandbox;
  /** Actions get their own directories below this (same filesystem as the cache, for hardlinks). */
  actionsDir: string;
  defaultImage: string;
  /** Owner of the input root's directories: the user actions run as. */
  uid: number;
  gid: number;
  /** Used when the Action sets no timeout, and the most an Action may ask for. */
  defaultTimeoutMs: number;
  maxTimeoutMs: number;
  /** stdout and stderr, each: an action writing more is killed and fails with RESOURCE_EXHAUSTED. */
  maxOutputBytes: number;
  /** Whether an action may have a network when its platform asks (dockerNetwork=standard). */
  allowNetwork: boolean;
  images: ImageResolver;
  /**
   * Bounds how many of the worker's actions execute at once (--concurrency). Inputs are staged
   * before an action waits here and outputs collected after it leaves, so a freed slot starts
   * the next staged action at once instead of idling through its staging: 25 ms an action on a
   * kernel build.
   */
  executeSlots: Limit;
}

export interface PipelineOutcome {
  result?: rex.ActionResult;
  /** OK, DEADLINE_EXCEEDED (result kept), or the error that stopped the action. */
  status: { code: status; message: string; missing?: string[] };
  cacheable: boolean;
}

/** What the caller does with an action once it ran: report the outcome, then let go of it. */
export interface PipelineRun {
  outcome: PipelineOutcome;
  /** Hands back the container slot and the cache pins. Call once, after reporting the outcome. Never throws. */
  release(): Promise<void>;
  /**
   * Removes the action's directory; call once, after release(). Nothing else needs it any more,
   * so the worker can go on with its next action meanwhile. Never throws.
   */
  removeDirectory(): Promise<void>;
}

/** Checked Directories are shared between actions: input trees repeat a lot. */
const directoryCache = new DirectoryCache();

export async function runActionPipeline(
  opts: PipelineOptions,
  instanceName: string,
  actionDigest: Digest,
  queuedAt: number,
  /** Aborted when a client cancels the operation: the running action is killed. */
  cancel?: AbortSignal,
): Promise<PipelineRun> {
  const held: HeldResources = { actionDir: path.join(opts.actionsDir, randomUUID()) };
  const outcome = await runAction(opts, instanceName, actionDigest, queuedAt, held, cancel);
  return {
    outcome,
    release: async () => {
      await held.slot?.release();
      held.unpinInputs?.(); // links already made keep their content, whatever the cache evicts
    },
    removeDirectory: async () => {
      if (held.actionDirMade) await removeTree(held.actionDir).catch(() => undefined);
    },
  };
}

/** What an action holds until it is released, recorded by the stages as they acquire it. */
interface HeldResources {
  readonly actionDir: string;
  /** Only made for what the slot does not keep itself (see runAction). */
  actionDirMade?: boolean;
  slot?: SandboxSlot;
  unpinInputs?: () => void;
}

async function runAction(
  opts: PipelineOptions,
  instanceName: string,
  actionDigest: Digest,
  queuedAt: number,
  held: HeldResources,
  cancel: AbortSignal | undefined,
): Promise<PipelineOutcome> {
  const { actionDir } = held;
  const meta: rex.ExecutedActionMetadata.$Properties = { worker: opts.workerName, queuedTimestamp: timestamp(queuedAt), workerStartTimestamp: now() };
  try {
    const loaded = await loadRecentAction(instanceName, (d) => opts.access.read(instanceName, d), actionDigest);
    const { action, command } = loaded;
    const image = containerImage(loaded.platform, opts.defaultImage);
    // Recorded so the cache can tell when the image behind this name changed (see ActionCacheService).
    const imageId = await opts.images.resolve(image);
    if (imageId) meta.auxiliaryMetadata = [containerImageMetadata(image, imageId)];
    const network = wantsNetwork(loaded.platform);
    if (network && !opts.allowNetwork) {
      throw failedPrecondition(
        `action ${digestKey(actionDigest)} asks for a network (dockerNetwork=standard); this worker runs actions without one (operator flag --allow-network)`,
      );
    }
    // The container comes first: with InputRootAbsolutePath the inputs go into its own directory.
    const slot = (held.slot = await opts.sandbox.acquire({
      network,
      // By ID: warm containers of an image that was since re-tagged must not serve this action.
      image: imageId ?? image,
      inputRootAbsolutePath: propertyValue(loaded.platform, 'InputRootAbsolutePath'),
    }));
    // Where the inputs are staged on the host, and where the action sees them.
    const root = slot.inputRoot?.hostPath ?? path.join(actionDir, 'root');
    const rootInContainer = slot.inputRoot?.containerPath ?? root;
    const stdio = slot.stdio ?? { stdoutPath: path.join(actionDir, 'stdout'), stderrPath: path.join(actionDir, 'stderr') };
    // The process sandbox runs each slot as a uid of its own; containers all use the configured one.
    const { uid, gid } = slot.user ?? opts;

    meta.inputFetchStartTimestamp = now();
    const outputs = command.outputPaths.length > 0 ? command.outputPaths : [...command.outputFiles, ...command.outputDirectories];
    const extraDirectories = outputParents(command.workingDirectory, outputs);
    // The action's own directory, for whatever its slot does not keep: it belongs to the action
    // user (its stdout/stderr live here, and its TMPDIR unless the sandbox has a private one).
    if (!slot.inputRoot || !slot.stdio || !slot.scratchDir) {
      held.actionDirMade = true;
      await makeOwnedDirectory(actionDir, uid, gid);
    }
    const scratchDir = slot.scratchDir ?? path.join(actionDir, 'tmp');
    await settleAll([
      slot.scratchDir ? Promise.resolve() : makeOwnedDirectory(scratchDir, uid, gid),
      materializeInputRoot({
        instanceName,
        rootDigest: loaded.inputRootDigest,
        access: opts.access,
        cache: opts.cache,
        dest: root,
        uid,
        gid,
        directoryCache,
        extraDirectories,
        timestampProbe: slot.timestampProbe,
      }).then((staged) => (held.unpinInputs = staged.release)), // recorded at once: release() must unpin whatever else fails
    ]);
    // Mostly made with the inputs already: this checks them, and makes those past input symlinks.
    await createOutputParents(root, command.workingDirectory, outputs, uid, gid);
    meta.inputFetchCompletedTimestamp = now();

    const env: Record<string, string> = {};
    for (const v of command.environmentVariables) env[v.name ?? ''] = v.value ?? '';
    // Each action gets a private TMPDIR unless it chose one itself.
    env.TMPDIR ??= scratchDir;
    const timeoutMs = actionTimeout(action, opts);
    // Both timestamps inside the slot: the next action's start must not precede this one's end.
    const run = await opts.executeSlots(async () => {
      meta.executionStartTimestamp = now();
      const ran = await slot.run({
        argv: command.arguments,
        env,
        cwd: path.posix.join(rootInContainer, command.workingDirectory),
        ...stdio,
        timeoutMs,
        maxOutputBytes: opts.maxOutputBytes,
        signal: cancel,
      });
      meta.executionCompletedTimestamp = now();
      return ran;
    }, cancel);

    meta.outputUploadStartTimestamp = now();
    const [collected, stdoutDigest, stderrDigest] = await Promise.all([
      // Nothing of the action is left running, so the CAS may take its output files as they are.
      collectOutputs({ instanceName, access: opts.access, root, workingDirectory: command.workingDirectory, command, takeOver: !run.processesSurvived }),
      uploadStdio(opts.access, instanceName, stdio.stdoutPath),
      uploadStdio(opts.access, instanceName, stdio.stderrPath),
    ]);
    meta.outputUploadCompletedTimestamp = now();
    meta.workerCompletedTimestamp = now();

    const result = rex.ActionResult.create({
      ...collected,
      exitCode: run.timedOut ? -1 : run.exitCode,
      stdoutDigest,
      stderrDigest,
      executionMetadata: meta,
    });
    if (run.timedOut) {
      return {
        result,
        status: { code: status.DEADLINE_EXCEEDED, message: `action ${digestKey(actionDigest)} exceeded its ${timeoutMs} ms timeout and was killed` },
        cacheable: false,
      };
    }
    if (run.outputLimitExceeded) {
      return {
        result,
        status: {
          code: status.RESOURCE_EXHAUSTED,
          message: `action ${digestKey(actionDigest)} wrote more than ${opts.maxOutputBytes} bytes to stdout or stderr and was killed (worker --max-output-bytes)`,
        },
        cacheable: false,
      };
    }
    return { result, status: { code: status.OK, message: '' }, cacheable: run.exitCode === 0 && !action.doNotCache };
  } catch (err) {
    if (cancel?.aborted) return { status: { code: status.CANCELLED, message: `action ${digestKey(actionDigest)} was cancelled` }, cacheable: false };
    const e = err instanceof RpcError ? err : new RpcError(status.INTERNAL, `action ${digestKey(actionDigest)} on ${opts.workerName}: ${(err as Error).message}`);
    return { status: { code: e.code, message: e.message, missing: e.missing }, cacheable: false };
  }
}

function actionTimeout(action: rex.Action, opts: PipelineOptions): number {
  const t = action.timeout;
  const ms = t ? Number(t.seconds ?? 0) * 1000 + Math.floor((t.nanos ?? 0) / 1e6) : 0;
  return ms > 0 ? Math.min(ms, opts.maxTimeoutMs) : opts.defaultTimeoutMs;
}

function timestamp(ms: number): protobuf.Timestamp.$Properties {
  return { seconds: Math.floor(ms / 1000), nanos: (ms % 1000) * 1e6 };
}

function now(): protobuf.Timestamp.$Properties {
  return timestamp(Date.now());
}

/** RBE's spelling: dockerNetwork=standard asks for a network; anything else (or nothing) means none. */
function wantsNetwork(platform: PlatformProperty[]): boolean {
  return propertyValue(platform, 'dockerNetwork') === 'standard';
}
