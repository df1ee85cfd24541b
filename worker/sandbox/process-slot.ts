// One slot of the process sandbox, held by one action: its runner runs the action as the slot's
// uid and sweeps that uid afterwards.
import type { InputRootMount } from './container-settings';
import { RunnerConnectionError, exchangeWithRunner } from './runner-client';
import type { RunnerProcess } from './runner-process';
import { decodeReply, encodeRequest } from './runner-protocol';
import { isUnder, sandboxResultOf } from './runner-result';
import type { ActionUser, SandboxResult, SandboxSlot, SlotRunRequest } from './sandbox';
import { SandboxError } from './sandbox-error';

/** Slack on top of the action timeout before a silent runner counts as broken (covers the sweep). */
const REPLY_GRACE_MS = 60_000;

/** A uid and the runner that serves it; the runner is (re)started when missing or dead. */
export interface UserSlot {
  readonly user: ActionUser;
  runner: RunnerProcess | undefined;
}

export interface ProcessSlotOptions {
  slot: UserSlot;
  execRoot: string;
  image: string;
  inputRoot: InputRootMount | undefined;
  restartRunner(): Promise<RunnerProcess>;
  /** Hands the slot back (and removes an InputRootAbsolutePath directory). Never throws. */
  release(): Promise<void>;
}

export class ProcessSlot implements SandboxSlot {
  readonly inputRoot: InputRootMount | undefined;
  readonly user: ActionUser;
  private released = false;

  constructor(private readonly opts: ProcessSlotOptions) {
    this.inputRoot = opts.inputRoot;
    this.user = opts.slot.user;
  }

  async run(req: SlotRunRequest): Promise<SandboxResult> {
    const { slot, image } = this.opts;
    const argv0 = req.argv[0];
    if (this.released) throw new SandboxError('this sandbox slot was released', { image, argv0 });
    this.checkPaths(req, argv0);
    const payload = encodeRequest({ ...req, maxOutputBytes: req.maxOutputBytes ?? 0 });
    const replyTimeoutMs = req.timeoutMs > 0 ? req.timeoutMs + REPLY_GRACE_MS : 0;

    for (let attempt = 1; ; attempt++) {
      if (req.signal?.aborted) throw new SandboxError('action cancelled before it started', { image, argv0 });
      if (!slot.runner?.running) slot.runner = await this.opts.restartRunner();
      const runner = slot.runner;
      // Cancelling mid-run: SIGTERM makes the runner kill the action and its uid's processes.
      const cancel = () => void runner.stop();
      req.signal?.addEventListener('abort', cancel, { once: true });
      let raw: Buffer;
      try {
        raw = await exchangeWithRunner(runner.socketPath, payload, replyTimeoutMs);
      } catch (err) {
        if (req.signal?.aborted) throw new SandboxError('action cancelled while running', { image, argv0 }, { cause: err });
        // Not even connected (the runner died while idle): the action never started; retry once.
        if (err instanceof RunnerConnectionError && err.phase === 'connect' && attempt === 1) {
          await runner.stop();
          slot.runner = undefined;
          continue;
        }
        await runner.stop();
        throw new SandboxError(`sandbox runner for uid ${this.user.uid} failed: ${(err as Error).message}; ${runner.describe()}`, { image, argv0 }, { cause: err });
      } finally {
        req.signal?.removeEventListener('abort', cancel);
      }
      const reply = decodeReply(raw);
      if (!reply) {
        await runner.stop();
        throw new SandboxError(`malformed reply from runner (${raw.length} bytes)`, { image, argv0 });
      }
      // Processes of this uid outlived the sweep: a fresh runner sweeps again before it listens.
      if (reply.straysSurvived) await runner.stop();
      return sandboxResultOf(reply, image, argv0);
    }
  }

  async release(): Promise<void> {
    if (this.released) return;
    this.released = true;
    await this.opts.release();
  }

  /** The runner only checks that paths are absolute; here they must also be where the action may write. */
  private checkPaths(req: SlotRunRequest, argv0: string | undefined): void {
    const { execRoot, image } = this.opts;
    const cwdRoots = this.inputRoot ? [this.inputRoot.containerPath] : [execRoot];
    const checks = [['cwd', req.cwd, cwdRoots], ['stdoutPath', req.stdoutPath, [execRoot]], ['stderrPath', req.stderrPath, [execRoot]]] as const;
    for (const [what, p, roots] of checks) {
      if (!roots.some((root) => isUnder(root, p))) throw new SandboxError(`${what} ${p} is not an absolute path under ${roots.join(' or ')}`, { image, argv0 });
    }
  }
}
