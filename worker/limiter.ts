// At most n tasks at once; the others wait their turn in the order they came. A finished task
// hands its place straight to the first waiter, so a caller arriving in between can neither jump
// the queue nor push the count past n. Bounds a worker's fetches and uploads, and how many of its
// actions execute at once while others stage their inputs (--stage-ahead).

/** Runs `task` once a place is free; rejects without running it if `abort` fires first. */
export type Limit = <T>(task: () => Promise<T>, abort?: AbortSignal) => Promise<T>;

export function limiter(n: number): Limit {
  let free = n;
  const waiting: { start(): void }[] = [];
  const release = () => {
    const next = waiting.shift();
    if (next) next.start();
    else free++;
  };
  const turn = (abort?: AbortSignal) =>
    new Promise<void>((resolve, reject) => {
      const waiter = {
        start: () => {
          abort?.removeEventListener('abort', leave);
          resolve();
        },
      };
      const leave = () => {
        waiting.splice(waiting.indexOf(waiter), 1);
        reject(new Error('abandoned while waiting for its turn'));
      };
      abort?.addEventListener('abort', leave, { once: true });
      waiting.push(waiter);
    });
  return async (task, abort) => {
    if (abort?.aborted) throw new Error('abandoned before its turn');
    // No promise to wait for while there is room: fetches go through here once per input.
    if (free > 0 && waiting.length === 0) free--;
    else await turn(abort);
    try {
      return await task();
    } finally {
      release();
    }
  };
}
