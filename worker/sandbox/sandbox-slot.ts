// One acquired container, held by one action from staging its inputs to collecting its outputs.
import type { ContainerPool } from './container-pool';
import type { InputRootMount } from './container-settings';
import { RunnerConnectionError, exchangeWithRunner } from './runner-client';
import { decodeReply, encodeRequest } from './runner-protocol';
import { isUnder, sandboxResultOf } from './runner-result';
import type { SandboxContainer } from './sandbox-container';
import { SandboxError } from './sandbox-error';
import type { SandboxResult, SandboxSlot, SlotRunRequest, StdioCaptures } from './sandbox';

/** Slack on top of the action timeout before a silent runner counts as broken (covers the sweep). */
const REPLY_GRACE_MS = 60_000;

export class ContainerSlot implements SandboxSlot {
  /** The container's own, kept across its actions (slot-dir.ts). */
  readonly inputRoot: InputRootMount;
  readonly stdio: StdioCaptures;
  readonly timestampProbe: string;
  /**
   * The container's /tmp: a tmpfs of its own, which the runner empties after every action. A
   * compiler's temporary files then never reach the disk (on ext4 each file created and deleted
   * makes every later file creation on that disk slower for a minute: recently deleted inodes are
   * skipped one by one).
   */
  readonly scratchDir = '/tmp';
  /** Undefined once the container was given up (broken or cancelled): the slot is spent. */
  private container: SandboxContainer | undefined;
  /** False once the container is no longer clean enough for another action. */
  private reusable = true;
  private released = false;

  constructor(
    private readonly pool: ContainerPool,
    private readonly execRoot: string,
    container: SandboxContainer,
  ) {
    this.container = container;
    this.inputRoot = container.inputRoot;
    this.stdio = container.slotDir;
    this.timestampProbe = container.slotDir.timestampProbe;
  }

  async run(req: SlotRunRequest): Promise<SandboxResult> {
    const argv0 = req.argv[0];
    let container = this.container;
    if (!container || this.released) throw new SandboxError('this sandbox slot can no longer run actions (its container was released or failed)', { argv0 });
    const image = container.image;
    this.checkPaths(req, image, argv0);
    const payload = encodeRequest({ ...req, maxOutputBytes: req.maxOutputBytes ?? 0 });
    const replyTimeoutMs = req.timeoutMs > 0 ? req.timeoutMs + REPLY_GRACE_MS : 0;

    for (let attempt = 1; ; attempt++) {
      if (req.signal?.aborted) throw new SandboxError('action cancelled before it started', { image, argv0 });
      // Cancelling mid-run: removing the container is the one kill nothing inside can survive.
      const running = container;
      const cancel = () => void running.remove().catch(() => undefined);
      req.signal?.addEventListener('abort', cancel, { once: true });
      let raw: Buffer;
      try {
        raw = await exchangeWithRunner(container.socketPath, payload, replyTimeoutMs);
      } catch (err) {
        if (req.signal?.aborted) {
          this.giveUp();
          throw new SandboxError('action cancelled while running', { image, container: container.id, argv0 }, { cause: err });
        }
        // Not even connected (runner died while idle): the action never started, so retry it
        // once in a fresh container that mounts the same input root directory.
        if (err instanceof RunnerConnectionError && err.phase === 'connect' && attempt === 1) {
          this.container = undefined;
          container = this.container = await this.pool.replace(container);
          continue;
        }
        return this.fail(err, argv0);
      } finally {
        req.signal?.removeEventListener('abort', cancel);
      }
      const reply = decodeReply(raw);
      if (!reply) return this.fail(new Error(`malformed reply from runner (${raw.length} bytes)`), argv0);
      // A container whose sweep left processes behind is not clean enough for the next action.
      if (reply.straysSurvived) this.reusable = false;
      return sandboxResultOf(reply, image, argv0);
    }
  }

  /**
   * Hands the container back (or has it removed). Never throws. Its input root keeps this
   * action's tree (less the outputs the CAS took over): the next action's staging makes it
   * exactly that action's tree before it runs.
   */
  async release(): Promise<void> {
    if (this.released) return;
    this.released = true;
    const container = this.container;
    if (!container) return;
    this.pool.release(container, this.reusable);
  }

  /** The runner only checks that paths are absolute; here they must also be where the action may write. */
  private checkPaths(req: SlotRunRequest, image: string, argv0: string | undefined): void {
    // With an InputRootAbsolutePath the action works in that mount; otherwise anywhere under the exec root.
    const cwdRoot = this.container?.inputRootPath ?? this.execRoot;
    const checks = [['cwd', req.cwd, cwdRoot], ['stdoutPath', req.stdoutPath, this.execRoot], ['stderrPath', req.stderrPath, this.execRoot]] as const;
    for (const [what, p, root] of checks) {
      if (!isUnder(root, p)) throw new SandboxError(`${what} ${p} is not an absolute path under ${root === this.execRoot ? 'the exec root' : 'the input root'} ${root}`, { image, argv0 });
    }
  }

  private giveUp(): void {
    if (this.container) this.pool.release(this.container, false);
    this.container = undefined;
  }

  /** The runner broke mid-action: replace its container and report what Docker knows about it. */
  private async fail(err: unknown, argv0: string | undefined): Promise<never> {
    const container = this.container!;
    const state = await container.describeState();
    this.giveUp();
    throw new SandboxError(`sandbox runner failed: ${(err as Error).message}; ${state}`, { image: container.image, container: container.id, argv0 }, { cause: err });
  }
}
