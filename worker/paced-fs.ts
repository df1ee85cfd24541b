// Collecting outputs is many tiny read-only calls per action: lstat along each output path,
// readdir and lstat through output directories, readlink, and reading small files the action
// just wrote. The worker makes those synchronously: each is a system call of microseconds
// answered from the kernel's caches, where going through libuv's thread pool also costs a
// hand-off to a pool thread and back (futex wake, eventfd write, epoll return), more CPU than
// the call itself and, on a busy machine, a wait for both threads to be scheduled.
// Calls that change the file system (mkdir, chown, link, unlink, rmdir, and anything that
// syncs) stay asynchronous: on a busy disk they can wait milliseconds for the journal, and
// must not hold the event loop meanwhile.
//
// Even read-only calls add up for a huge output tree, so loops of them are paced: after every
// SLICE_CALLS calls (across all actions) the event loop gets a turn.
import { setImmediate as nextTurn } from 'node:timers/promises';

/** Well under a millisecond of cached metadata calls. */
const SLICE_CALLS = 64;
let callsInSlice = 0;

/** Call after each synchronous file system call; now and then resolves only after a turn of the event loop. */
export function paced(): Promise<void> | undefined {
  if (++callsInSlice < SLICE_CALLS) return undefined;
  callsInSlice = 0;
  return nextTurn();
}
