// Holds a make session's new object jobs back while the farm already has enough actions in
// flight, and lets them on one at a time as actions end. Nothing runs later for it (the farm was
// busy anyway), but jobs that waited share checks: each include scan checks ~650 files and
// directories against the disk, and a scan whose job arrived before the last round of checks
// began may take that round's answers (IncludeScanner.scan, `receivedAt`). In a cold kernel
// build make keeps ~16 recipes waiting on two worker slots, and checking for each of them alone
// cost ~1.5 CPU-s that the compilers were short of. One at a time, not all at once: a burst of
// scans on the embedded farm's own thread would keep it from handing slots their next action.
export class BacklogGate {
  private inFlight = 0;
  private held: (() => void)[] = [];

  /**
   * `enough`: actions in flight that keep the farm busy while jobs wait (Infinity: never hold).
   * Below `low` the farm is about to run dry, and every held job goes on at once: some of them
   * may need no action at all (a cache hit), and then no action's end would let the next one go.
   */
  constructor(private readonly enough: number, private readonly low = 1) {}

  /** Resolves at once while fewer than `enough` actions are in flight and nobody waits, else in turn. */
  async turn(): Promise<void> {
    if (this.inFlight < this.enough && this.held.length === 0) return;
    await new Promise<void>((resolve) => this.held.push(resolve));
  }

  /** Runs one action's execution, counted as in flight until it settles. */
  async executing<T>(execute: () => Promise<T>): Promise<T> {
    this.inFlight++;
    try {
      return await execute();
    } finally {
      this.inFlight--;
      const going = this.inFlight < this.low ? this.held.length : this.inFlight < this.enough ? 1 : 0;
      for (const release of this.held.splice(0, going)) release();
    }
  }
}
