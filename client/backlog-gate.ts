// Holds a make session's new object jobs back while the farm already has enough actions in
// flight, then lets all that waited through together. Nothing runs later for it (the farm was
// busy anyway), but jobs that start together share one round of checks: each include scan
// checks ~650 files and directories against the disk, and a scan whose job arrived before the
// round began may take the round's answers (IncludeScanner.scan, `receivedAt`). In a cold
// kernel build make keeps ~16 recipes waiting on two worker slots, and checking for each of
// them alone cost ~2 CPU-s that the compilers were short of.
export class BacklogGate {
  private inFlight = 0;
  private held: (() => void)[] = [];

  /** `enough`: actions in flight that keep the farm busy while jobs wait (Infinity: never hold). */
  constructor(private readonly enough: number) {}

  /** Resolves at once while fewer than `enough` actions are in flight, else once they drop below. */
  async turn(): Promise<void> {
    if (this.inFlight < this.enough) return;
    await new Promise<void>((resolve) => this.held.push(resolve));
  }

  /** Runs one action's execution, counted as in flight until it settles. */
  async executing<T>(execute: () => Promise<T>): Promise<T> {
    this.inFlight++;
    try {
      return await execute();
    } finally {
      this.inFlight--;
      if (this.inFlight < this.enough && this.held.length > 0) {
        const held = this.held;
        this.held = [];
        for (const release of held) release();
      }
    }
  }
}
