// How many actions of one worker execute at once. A worker takes more actions than that and
// stages their inputs while the others run, so that when one finishes the next starts at once
// instead of after its inputs are fetched and linked: on a kernel build, 25 ms per action of
// idle core. Waiters are served in the order they came, so no staged action starves.

export interface ExecutePermit {
  /** Hands the slot to the next waiting action. Call once. */
  release(): void;
}

export class ExecuteSlots {
  private free: number;
  private readonly waiting: { grant(): void }[] = [];

  constructor(size: number) {
    this.free = size;
  }

  /** Resolves when this action may execute; rejects if `abort` fires first (it then holds nothing). */
  acquire(abort?: AbortSignal): Promise<ExecutePermit> {
    if (abort?.aborted) return Promise.reject(abortError());
    if (this.free > 0 && this.waiting.length === 0) {
      this.free--;
      return Promise.resolve(this.permit());
    }
    return new Promise((resolve, reject) => {
      const waiter = {
        grant: () => {
          abort?.removeEventListener('abort', onAbort);
          resolve(this.permit());
        },
      };
      const onAbort = () => {
        const i = this.waiting.indexOf(waiter);
        if (i >= 0) this.waiting.splice(i, 1);
        reject(abortError());
      };
      abort?.addEventListener('abort', onAbort, { once: true });
      this.waiting.push(waiter);
    });
  }

  private permit(): ExecutePermit {
    let released = false;
    return {
      release: () => {
        if (released) return;
        released = true;
        const next = this.waiting.shift();
        if (next) next.grant();
        else this.free++;
      },
    };
  }
}

function abortError(): Error {
  return new Error('cancelled while waiting for an execute slot');
}
