// One object pipeline from recipe to objects on disk: find its inputs, make its action, look it
// up, run it remotely on a miss, and write its outputs; or say "run it locally" when the build
// farm cannot help. Shared by the make session and the compiler-wrapper mode.
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { readBlobFile } from '../cas/file-range';
import { BuiltAction, buildAction, InputFile } from './action-builder';
import { BacklogGate } from './backlog-gate';
import { CompileCommand } from './compile-args';
import { ClientConfig, actionEnvironment, farmName } from './config';
import { DigestCache } from './digest-cache';
import { explainDifference, KeyParts } from './explain';
import { digestString, discoverInputs, inTree } from './input-discovery';
import { IncludeScanner } from './include-scanner';
import { ManifestStore, ObjectManifest, recipeKeyOf } from './manifest-store';
import { writeOutputs } from './output-writer';
import { InfrastructureError, RemoteExecutor, Result, UnreachableError } from './remote-executor';
import { Counters } from './stats';

export interface ObjectJob {
  /** The tree: the input root, and the absolute path the action runs at. */
  root: string;
  cwd: string;
  /** The remote Command's arguments. */
  argv: string[];
  compile: CompileCommand;
  /** As written in the recipe (relative to cwd). */
  outputs: string[];
  candidates: string[];
  /** The recipe's whole environment; only the allowlisted part reaches the action. */
  env: NodeJS.ProcessEnv;
  /** Aborts when nobody waits for the object any more (make was interrupted): the job stops early. */
  stop?: AbortSignal;
  /**
   * When the session read the request (performance.now()). make starts a recipe only once the
   * recipes it depends on have ended, so every change to a file this job depends on came before:
   * a check of that file made since then is as good as one made now.
   */
  receivedAt?: number;
}

export type JobOutcome =
  | { kind: 'replay'; exitCode: number; stdout: Buffer; stderr: Buffer }
  | { kind: 'local' };

/** The answer for a job nobody waits for: not run, not counted, nothing written. */
const ABANDONED: JobOutcome = { kind: 'local' };

export class ObjectRunner {
  /** Set once the server proved unreachable: the rest of the build runs locally. */
  private serverDown = false;

  constructor(
    private readonly config: ClientConfig,
    private readonly executor: RemoteExecutor,
    private readonly digests: DigestCache,
    private readonly manifests: ManifestStore,
    private readonly counters: Counters,
    private readonly warn: (line: string) => void,
    private readonly scanner?: IncludeScanner,
    private readonly gate = new BacklogGate(Infinity),
  ) {}

  async run(job: ObjectJob): Promise<JobOutcome> {
    if (job.stop?.aborted) return ABANDONED;
    if (this.serverDown) return this.local();
    await this.gate.turn();
    if (job.stop?.aborted) return ABANDONED;
    const placed = placeAction(job);
    if (!placed) return { kind: 'local' };
    const { workingDirectory, outputs } = placed;
    const object = inTree(job.root, path.resolve(job.cwd, job.compile.object))!;

    const partsWithoutInputs = {
      argv: placed.argv,
      env: actionEnvironment(job.env, this.config.envAllowlist, job.cwd),
      platform: { 'container-image': this.config.image, InputRootAbsolutePath: job.root },
      outputs: [...outputs].sort(),
      workingDirectory,
    };
    const recipeKey = recipeKeyOf(partsWithoutInputs);
    const manifest = await this.manifests.load(job.root, object);
    const outputDir = path.join(job.root, workingDirectory);
    let outcome = await this.attempt(job, object, outputDir, outputs, partsWithoutInputs, recipeKey, manifest, false);
    // The scanned or recorded header list missed a file the compile needed (the scanner's rules
    // were wrong for this source): once more with the preprocessor's exact list.
    if (outcome === 'preprocess') outcome = await this.attempt(job, object, outputDir, outputs, partsWithoutInputs, recipeKey, manifest, true);
    return outcome === 'preprocess' ? this.local() : outcome;
  }

  private async attempt(
    job: ObjectJob,
    object: string,
    /** Where the action's output paths start: its working directory in the tree. */
    outputDir: string,
    outputs: string[],
    partsWithoutInputs: Omit<KeyParts, 'inputs'>,
    recipeKey: string,
    manifest: ObjectManifest | undefined,
    preprocess: boolean,
  ): Promise<JobOutcome | 'preprocess'> {
    const discovery = await discoverInputs({
      root: job.root,
      cwd: job.cwd,
      compile: job.compile,
      candidates: job.candidates,
      env: job.env,
      digests: this.digests,
      recorded: manifest?.recipeKey === recipeKey ? manifest.parts.inputs : undefined,
      recordedIncbin: manifest?.incbin,
      scanner: this.scanner,
      preprocess,
      receivedAt: job.receivedAt,
    });
    if (!discovery.ok) return { kind: 'local' }; // e.g. a missing header: the local run prints the real error

    // Same recipe, same inputs as the recorded action: its key is known without rebuilding the
    // Merkle tree (ccache's direct mode, one step further). The tree is built only to upload.
    const build = () =>
      buildAction({ ...partsWithoutInputs, outputPaths: partsWithoutInputs.outputs, inputs: discovery.inputs, timeoutSeconds: this.config.timeoutSeconds });
    const reuse = discovery.sameAsRecorded && manifest?.actionSize !== undefined ? manifest : undefined;
    let built = reuse ? undefined : build();
    const actionDigest = reuse ? { hash: reuse.actionDigest, sizeBytes: reuse.actionSize! } : built!.actionDigest;
    const parts: KeyParts = reuse
      ? reuse.parts
      : { ...partsWithoutInputs, inputs: inputRecord(discovery.inputs) };
    const reasons = manifest?.actionDigest === actionDigest.hash ? [] : explainDifference(manifest?.parts, parts);
    const record = async (hit: boolean) => {
      // A hit on the same key as last time changes nothing worth a rewrite.
      if (hit && reuse?.lastLookup.hit) return;
      await this.manifests.save({
        root: job.root, object, recipeKey, parts, actionDigest: actionDigest.hash, actionSize: actionDigest.sizeBytes,
        incbin: discovery.incbin, lastLookup: { hit, reasons },
      });
    };

    const started = Date.now();
    const saved = (r: Result) => (this.counters.timeSavedMs += Math.max(0, executionMs(r) - (Date.now() - started)));
    /** Ends what a farm in this process holds for the action, once it has run. */
    const releases: (() => void)[] = [];
    try {
      // A lookup of its own pays when a hit is likely: the last build of this object had this
      // very key (a rebuild after `make clean`). Otherwise Execute looks in the cache itself,
      // and a new object costs one call fewer.
      const cached = manifest?.actionDigest === actionDigest.hash ? await this.executor.lookup(actionDigest, outputs) : undefined;
      if (cached && cached.exitCode === 0) {
        await writeOutputs(cached, outputs, outputDir, this.executor);
        this.counters.hits++;
        saved(cached);
        await record(true);
        return await this.replay(cached);
      }
      built ??= build();
      if (job.stop?.aborted) return ABANDONED;
      const upload = async (b: BuiltAction) => {
        const inputs = discovery.inputs.map((f) => ({ digest: f.digest, read: () => readBlobFile(path.join(job.root, f.path), f.digest.sizeBytes) }));
        releases.push(await this.executor.uploadAction(b.messages, inputs));
      };
      await upload(built);
      const { actionDigest: runDigest } = built;
      let outcome = await this.gate.executing(() => this.executor.execute(runDigest, job.stop));
      if (outcome.status.code === grpc.status.FAILED_PRECONDITION) {
        // An input we believed the server had is gone (evicted): ask about every blob again.
        this.executor.forgetPresent();
        await upload(built);
        outcome = await this.gate.executing(() => this.executor.execute(runDigest, job.stop));
      }
      if (outcome.status.code !== 0 || !outcome.result) {
        throw new InfrastructureError(`the server could not run it: ${outcome.status.message || 'no result'}`);
      }
      const result = outcome.result;
      if (outcome.cachedResult) {
        this.counters.hits++;
        saved(result);
      } else {
        this.counters.misses++;
        this.counters.remoteRuns++;
      }
      if (result.exitCode === 0) {
        await writeOutputs(result, outputs, outputDir, this.executor);
      } else if (await missingInputSymptom(result, this.executor)) {
        // A header the scan or the record missed: try the preprocessor's exact list. Already
        // that one: probably a file read by a tool, not the preprocessor; the local run is the
        // truth, and prints the real error if there is one.
        if (discovery.headers !== 'preprocessed') return 'preprocess';
        throw new InfrastructureError(`it failed on a missing file, likely an input reapi-cc did not see`);
      } else {
        this.counters.failures++;
        // gcc removes its output when it fails; so must we, or make would see a stale object.
        await fs.rm(path.join(job.cwd, job.compile.object), { force: true });
      }
      await record(outcome.cachedResult);
      return await this.replay(result);
    } catch (err) {
      if (!(err instanceof InfrastructureError)) throw err;
      if (job.stop?.aborted) return ABANDONED;
      if (isUnreachable(err)) {
        if (!this.serverDown) this.warn(`reapi-cc: warning: ${farmName(this.config)} is unreachable (${err.message}); building locally`);
        this.serverDown = true;
      } else {
        this.warn(`reapi-cc: warning: remote run of ${object} failed (${err.message}); building it locally`);
      }
      return this.local();
    } finally {
      for (const release of releases) release();
    }
  }

  private local(): JobOutcome {
    this.counters.localFallbacks++;
    return { kind: 'local' };
  }

  private async replay(result: Result): Promise<JobOutcome> {
    const stdio = async (raw: Uint8Array | null | undefined, digest: Result['stdoutDigest']): Promise<Buffer> => {
      const size = Number(digest?.sizeBytes ?? 0);
      if (raw && raw.length === size) return Buffer.from(raw);
      if (!digest || size === 0) return Buffer.alloc(0);
      const got = await this.executor.read([{ hash: digest.hash ?? '', sizeBytes: size }]);
      return got.get(digest.hash ?? '') ?? Buffer.alloc(0);
    };
    return {
      kind: 'replay',
      exitCode: result.exitCode ?? 0,
      stdout: await stdio(result.stdoutRaw, result.stdoutDigest),
      stderr: await stdio(result.stderrRaw, result.stderrDigest),
    };
  }
}

/**
 * The action's working directory, output paths and arguments. Output paths are relative to the
 * working directory and may not climb out of it; recipes may name them absolutely (the kernel's
 * tools/ builds do) or in another directory of the tree (libsubcmd, built from tools/lib/subcmd
 * into tools/objtool/libsubcmd). Then the action starts at the root and changes into the
 * recipe's directory first. Undefined when an output lies outside the tree or the recipe runs
 * outside it: the recipe runs locally.
 */
export function placeAction(job: Pick<ObjectJob, 'root' | 'cwd' | 'argv' | 'outputs'>): { workingDirectory: string; outputs: string[]; argv: string[] } | undefined {
  const directory = path.resolve(job.cwd) === path.resolve(job.root) ? '' : inTree(job.root, job.cwd);
  if (directory === undefined) return undefined;
  const fromRoot: string[] = [];
  for (const o of job.outputs) {
    const rel = inTree(job.root, path.resolve(job.cwd, o));
    if (rel === undefined) return undefined;
    fromRoot.push(rel);
  }
  const prefix = directory ? `${directory}/` : '';
  if (fromRoot.every((o) => o.startsWith(prefix))) {
    return { workingDirectory: directory, outputs: fromRoot.map((o) => o.slice(prefix.length)), argv: job.argv };
  }
  // `sh -c SCRIPT sh DIR ARGV...`: DIR is made if no input lies in it (as the worker makes a
  // working directory), and ARGV runs there.
  const enter = '[ -d "$1" ] || mkdir -p "$1"; cd "$1" && shift && exec "$@"';
  return { workingDirectory: '', outputs: fromRoot, argv: ['/bin/sh', '-c', enter, 'sh', directory, ...job.argv] };
}

/** Whether a failed action's stderr says a file was missing. */
async function missingInputSymptom(result: Result, executor: RemoteExecutor): Promise<boolean> {
  const digest = result.stderrDigest;
  let text = result.stderrRaw && result.stderrRaw.length ? Buffer.from(result.stderrRaw).toString() : '';
  if (!text && digest && Number(digest.sizeBytes) > 0) {
    text = (await executor.read([{ hash: digest.hash ?? '', sizeBytes: Number(digest.sizeBytes) }])).get(digest.hash ?? '')?.toString() ?? '';
  }
  return /No such file or directory|file not found/.test(text);
}

/**
 * Input path -> "hash/size[+x]". A null-prototype object is a dictionary from the start: V8
 * fills it with ~570 path keys ten times faster than a plain object (Object.fromEntries took
 * over a millisecond per object here).
 */
function inputRecord(inputs: InputFile[]): Record<string, string> {
  const record = Object.create(null) as Record<string, string>;
  for (const f of inputs) record[f.path] = digestString(f.digest, f.executable);
  return record;
}

function executionMs(r: Result): number {
  const m = r.executionMetadata;
  const ms = (t: { seconds?: number | Long | null; nanos?: number | null } | null | undefined) =>
    t ? Number(t.seconds ?? 0) * 1000 + Math.floor((t.nanos ?? 0) / 1e6) : 0;
  return m ? Math.max(0, ms(m.workerCompletedTimestamp) - ms(m.workerStartTimestamp)) : 0;
}

type Long = { toNumber(): number };

function isUnreachable(err: Error): boolean {
  return err instanceof UnreachableError || /UNAVAILABLE|ECONNREFUSED|No connection established|DEADLINE_EXCEEDED|failed to connect/i.test(err.message);
}
