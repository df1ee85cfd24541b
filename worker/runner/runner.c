/*
 * reapi-runner: PID 1 of a warm sandbox container. Runs one action at a time on request.
 *
 *   runner SOCKET_PATH [SCRATCH_DIR...]                                         (container mode)
 *   runner --action-user UID:GID [--max-processes N] SOCKET_PATH [SCRATCH_DIR...] (process mode)
 *
 * Process mode (`reapi worker --sandbox process`, e.g. a Kubernetes pod with no Docker): the
 * runner is a helper process of the worker, not PID 1, started as root. Each action runs as the
 * unprivileged action user (no supplementary groups, no_new_privs, its own session, rlimits), and
 * the sweep kills every process of that uid instead of every process in sight: the worker and the
 * runner live beside the action. The runner is a child subreaper, so orphans (daemons, double
 * forks) come back to it and are reaped. Each runner needs a uid of its own: two runners sharing
 * a uid would kill each other's actions.
 *
 * Why: `docker exec` costs 60-95 ms per action; a fork+exec by a process already inside the
 * container costs well under 1 ms. The worker talks to this runner over a Unix socket in a
 * bind-mounted control directory. Built with `cc -static` so it runs in any image (no libc
 * needed in the image) and bind-mounted read-only, so actions cannot replace it.
 *
 * Protocol (all integers little-endian), one request per connection:
 *   request:  u32 payload_len, then payload:
 *               u32 magic "RQv1" (0x31765152)
 *               u32 timeout_ms      (0 = none)
 *               u64 max_output_bytes (0 = unlimited; applies to stdout and stderr separately)
 *               u32 argc (>= 1), u32 envc
 *               argc NUL-terminated argv strings, envc NUL-terminated "KEY=VALUE" strings,
 *               then NUL-terminated cwd, stdout path, stderr path (absolute paths).
 *   reply:    u32 magic "RPv1" (0x31765052), u32 status (0 = ran, 1 = could not start),
 *             i32 exit_code (-1 if signalled), i32 term_signal (0 if exited),
 *             u32 flags (1 timed out, 2 output limit exceeded, 4 stray processes survived the sweep),
 *             u32 reserved, u64 wall_us (fork to reap), u32 msg_len, msg (status 1: why).
 * A connection carrying anything malformed is dropped and the runner keeps serving.
 * Container mode only takes requests from outside the container (peer pid 0 in our namespace);
 * process mode only from the runner's own uid (the worker), never from the action user.
 *
 * After the action's main process exits (or is killed on timeout), every other process in the
 * container is SIGKILLed and reaped, the scratch directories (e.g. /tmp, /dev/shm, /dev/mqueue)
 * are emptied and System V IPC objects removed, so the next action starts from the same state as the first. The reply is sent only
 * after that sweep, so nothing can still be writing the output files once the caller sees it.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <grp.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define REQ_MAGIC 0x31765152u
#define REP_MAGIC 0x31765052u
#define MAX_PAYLOAD (16u << 20) /* bigger than any sane argv+env (Linux ARG_MAX is 2 MiB by default) */
#define READ_TIMEOUT_S 10       /* a client that stalls mid-request must not wedge the runner */
#define OUTPUT_POLL_MS 20       /* how often output sizes are checked when a limit is set */
#define SWEEP_LIMIT_MS 5000

extern char **environ;
static sigset_t chld_set;
static char **scratch_dirs;

/* Process mode: the action user (0 = container mode, where the runner already is that user). */
static uid_t action_uid;
static gid_t action_gid;
static rlim_t max_processes = 4096;
/* SIGTERM in process mode: kill the running action, sweep, exit. Nothing else cleans up after us. */
static volatile sig_atomic_t stop_requested;

struct request {
  uint32_t timeout_ms;
  uint64_t max_output;
  char **argv, **envp;
  char *cwd, *out_path, *err_path;
};

struct reply {
  uint32_t status;
  int32_t exit_code, term_signal;
  uint32_t flags;
  uint64_t wall_us;
  char msg[512];
};

static uint64_t now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static uint32_t get32(const unsigned char *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t get64(const unsigned char *p) { return get32(p) | (uint64_t)get32(p + 4) << 32; }
static void put32(unsigned char *p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static void put64(unsigned char *p, uint64_t v) { put32(p, (uint32_t)v), put32(p + 4, (uint32_t)(v >> 32)); }

static int read_full(int fd, void *buf, size_t n) {
  for (size_t done = 0; done < n;) {
    ssize_t r = read(fd, (char *)buf + done, n - done);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return -1;
    done += (size_t)r;
  }
  return 0;
}

static int write_full(int fd, const void *buf, size_t n) {
  for (size_t done = 0; done < n;) {
    ssize_t w = write(fd, (const char *)buf + done, n - done);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return -1;
    done += (size_t)w;
  }
  return 0;
}

/* Splits the payload's string section; every string must be NUL-terminated and nothing may trail. */
static int parse_request(unsigned char *p, uint32_t len, struct request *rq) {
  if (len < 24 || get32(p) != REQ_MAGIC) return -1;
  rq->timeout_ms = get32(p + 4);
  rq->max_output = get64(p + 8);
  uint32_t argc = get32(p + 16), envc = get32(p + 20);
  if (argc < 1 || (uint64_t)argc + envc + 3 > len - 24) return -1; /* each string takes >= 1 byte */
  size_t nstr = (size_t)argc + envc + 3;
  char **strs = calloc(nstr + 2, sizeof(char *)); /* +2: NULL terminators for argv and envp */
  if (!strs) return -1;
  char *s = (char *)p + 24, *end = (char *)p + len;
  for (size_t i = 0; i < nstr; i++) {
    char *nul = memchr(s, 0, (size_t)(end - s));
    if (!nul) return free(strs), -1;
    strs[i < argc ? i : i + 1] = s; /* leave a NULL slot after argv */
    s = nul + 1;
  }
  if (s != end) return free(strs), -1;
  rq->argv = strs;
  rq->envp = strs + argc + 1;
  for (uint32_t i = 0; i < envc; i++)
    if (!strchr(rq->envp[i], '=')) return free(strs), -1;
  char **tail = rq->envp + envc; /* the three path strings follow envp's entries */
  rq->cwd = tail[0], rq->out_path = tail[1], rq->err_path = tail[2];
  tail[0] = NULL; /* now terminate envp */
  if (rq->cwd[0] != '/' || rq->out_path[0] != '/' || rq->err_path[0] != '/') return free(strs), -1;
  return 0;
}

/* Reaps every exited child; records the action's status if it was among them. */
static void reap(pid_t action, int *action_status, int *action_done) {
  int st;
  pid_t p;
  while ((p = waitpid(-1, &st, WNOHANG)) > 0)
    if (p == action) *action_status = st, *action_done = 1;
}

static void wait_chld(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  sigtimedwait(&chld_set, NULL, &ts);
}

/* SIGKILLs every process but ourselves until none is left (actions may fork while we scan). */
static int sweep(void) {
  uint64_t deadline = now_us() + SWEEP_LIMIT_MS * 1000ull;
  pid_t self = getpid();
  int dummy_status, dummy_done;
  while (now_us() < deadline) {
    int found = 0;
    DIR *d = opendir("/proc");
    if (!d) return -1;
    struct dirent *e;
    while ((e = readdir(d))) {
      char *endp;
      long pid = strtol(e->d_name, &endp, 10);
      if (*endp || pid <= 0 || pid == self) continue;
      found++;
      kill((pid_t)pid, SIGKILL);
    }
    closedir(d);
    reap(-1, &dummy_status, &dummy_done);
    if (!found) return 0;
    wait_chld(2);
  }
  return -1;
}

/* Whether any process (zombies too) has the action user as its real or effective uid. */
static int action_user_has_processes(void) {
  DIR *d = opendir("/proc");
  if (!d) return 1;
  int found = 0;
  struct dirent *e;
  while (!found && (e = readdir(d))) {
    char *endp, path[64], line[256];
    long pid = strtol(e->d_name, &endp, 10);
    if (*endp || pid <= 0) continue;
    snprintf(path, sizeof path, "/proc/%ld/status", pid);
    FILE *f = fopen(path, "re");
    if (!f) continue; /* already gone */
    unsigned long real, effective;
    while (fgets(line, sizeof line, f))
      if (sscanf(line, "Uid: %lu %lu", &real, &effective) == 2) {
        found = real == action_uid || effective == action_uid;
        break;
      }
    fclose(f);
  }
  closedir(d);
  return found;
}

/* Drops every privilege: from here on this process is the action user and nothing more. */
static int become_action_user(void) {
  if (setgroups(0, NULL) < 0 || setgid(action_gid) < 0 || setuid(action_uid) < 0) return -1;
  return prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
}

/* Process mode: SIGKILLs every process of the action user, never the worker's or ours. A child
 * that becomes the action user calls kill(-1, SIGKILL): the kernel signals every process that
 * user may signal (its own) in one pass under the task list lock, and no pid can be reused
 * between finding a process and killing it. The loop catches a child that was mid-fork; the
 * orphans came back to us (subreaper) and are reaped. */
static int sweep_action_user(void) {
  uint64_t deadline = now_us() + SWEEP_LIMIT_MS * 1000ull;
  int dummy_status, dummy_done;
  while (now_us() < deadline) {
    pid_t killer = fork();
    if (killer == 0) {
      if (become_action_user() < 0) _exit(1);
      kill(-1, SIGKILL);
      _exit(0);
    }
    if (killer > 0)
      while (waitpid(killer, NULL, 0) < 0 && errno == EINTR) {}
    reap(-1, &dummy_status, &dummy_done);
    if (!action_user_has_processes()) return 0;
    wait_chld(2);
  }
  return -1;
}

/* Removes everything under the directory (closing dfd) without ever leaving its filesystem: a
 * bind mount below a scratch dir (an exec root under /tmp, say) is neither entered nor touched.
 * Returns how many entries are left. */
static int empty_dir(int dfd, dev_t dev) {
  DIR *d = fdopendir(dfd);
  if (!d) return close(dfd), 1;
  int left = 0;
  struct dirent *e;
  while ((e = readdir(d))) {
    if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
    struct stat st;
    if (fstatat(dfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 || st.st_dev != dev) {
      left++;
      continue;
    }
    if (S_ISDIR(st.st_mode)) {
      fchmodat(dfd, e->d_name, (st.st_mode & 07777) | 0700, 0); /* the action may have locked it */
      int sub = openat(dfd, e->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
      if (sub >= 0) empty_dir(sub, dev);
    }
    if (unlinkat(dfd, e->d_name, S_ISDIR(st.st_mode) ? AT_REMOVEDIR : 0) < 0) left++;
  }
  closedir(d);
  return left;
}

/* Empties a scratch dir (e.g. /tmp) so nothing leaks from one action to the next. */
static void clean_scratch(const char *dir) {
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  struct stat st;
  if (fd < 0) return;
  if (fstat(fd, &st) < 0) return (void)close(fd);
  empty_dir(fd, st.st_dev);
}

/* Process mode: a scratch dir (e.g. /tmp) is shared with the worker and other runners, so only
 * what the action user left at its top level goes. Its processes are dead by now: nothing can
 * swap an entry for a symlink while we remove it. */
static void clean_scratch_of_action_user(const char *dir) {
  int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  struct stat dst;
  if (dfd < 0) return;
  if (fstat(dfd, &dst) < 0) return (void)close(dfd);
  DIR *d = fdopendir(dfd);
  if (!d) return (void)close(dfd);
  struct dirent *e;
  while ((e = readdir(d))) {
    struct stat st;
    if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
    if (fstatat(dfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 || st.st_uid != action_uid || st.st_dev != dst.st_dev) continue;
    if (S_ISDIR(st.st_mode)) {
      int sub = openat(dfd, e->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
      if (sub >= 0) empty_dir(sub, dst.st_dev);
    }
    unlinkat(dfd, e->d_name, S_ISDIR(st.st_mode) ? AT_REMOVEDIR : 0);
  }
  closedir(d);
}

/* Which column of a /proc/sysvipc header line is named `name` (-1 if none). */
static int column_of(const char *header, const char *name) {
  char copy[512], *save, *tok;
  snprintf(copy, sizeof copy, "%s", header);
  int i = 0;
  for (tok = strtok_r(copy, " \t\n", &save); tok; tok = strtok_r(NULL, " \t\n", &save), i++)
    if (!strcmp(tok, name)) return i;
  return -1;
}

/* The number in the given column of a /proc/sysvipc line (-1 if absent). */
static long column_value(const char *line, int column) {
  char copy[512], *save, *tok;
  snprintf(copy, sizeof copy, "%s", line);
  int i = 0;
  for (tok = strtok_r(copy, " \t\n", &save); tok; tok = strtok_r(NULL, " \t\n", &save), i++)
    if (i == column) return strtol(tok, NULL, 10);
  return -1;
}

/* System V IPC objects outlive processes too. In container mode the container has its own IPC
 * namespace, so every object listed is one an earlier action created; in process mode the IPC
 * namespace is the pod's, so only objects the action user owns or created go. */
static void remove_sysv_ipc(void) {
  const char *files[] = {"/proc/sysvipc/shm", "/proc/sysvipc/sem", "/proc/sysvipc/msg"};
  for (int kind = 0; kind < 3; kind++) {
    FILE *f = fopen(files[kind], "re");
    if (!f) continue;
    char line[512];
    int key, id, uid_col = -1, cuid_col = -1;
    while (fgets(line, sizeof line, f)) {
      if (uid_col < 0 && cuid_col < 0 && column_of(line, "key") == 0) {
        uid_col = column_of(line, "uid"), cuid_col = column_of(line, "cuid");
        continue;
      }
      if (sscanf(line, "%d %d", &key, &id) != 2) continue; /* the header line does not parse */
      if (action_uid && column_value(line, uid_col) != (long)action_uid && column_value(line, cuid_col) != (long)action_uid) continue;
      {
        if (kind == 0) shmctl(id, IPC_RMID, NULL);
        else if (kind == 1) semctl(id, 0, IPC_RMID);
        else msgctl(id, IPC_RMID, NULL);
      }
    }
    fclose(f);
  }
}

static void fail(struct reply *rp, const char *what, const char *path) {
  rp->status = 1;
  snprintf(rp->msg, sizeof rp->msg, "%s %s: %s", what, path, strerror(errno));
}

/* Runs the action in a fresh session; returns when its main process has been reaped. */
static void run_action(struct request *rq, struct reply *rp) {
  /* As root (process mode) never follow a link the action user could have planted. */
  int flags = O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | (action_uid ? O_NOFOLLOW : 0);
  int out = open(rq->out_path, flags, 0644);
  if (out < 0) return fail(rp, "open stdout", rq->out_path);
  int err = open(rq->err_path, flags, 0644);
  if (err < 0) return close(out), fail(rp, "open stderr", rq->err_path);

  uint64_t start = now_us();
  pid_t pid = fork();
  if (pid < 0) return close(out), close(err), fail(rp, "fork", rq->argv[0]);
  if (pid == 0) {
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL); /* blocked masks and ignored signals survive exec */
    signal(SIGPIPE, SIG_DFL);
    setsid();
    int in = open("/dev/null", O_RDONLY);
    if (in < 0 || dup2(in, 0) < 0 || dup2(out, 1) < 0 || dup2(err, 2) < 0) _exit(127);
    if (action_uid) {
      /* Limits first, while still root; the hard limits keep the action from raising them. The
       * process count is per uid, and each runner has its own: this caps this action alone. */
      struct rlimit nproc = {max_processes, max_processes}, core = {0, 0};
      if (setrlimit(RLIMIT_NPROC, &nproc) < 0 || setrlimit(RLIMIT_CORE, &core) < 0 || become_action_user() < 0) {
        dprintf(2, "reapi-runner: cannot become uid %u: %s\n", (unsigned)action_uid, strerror(errno));
        _exit(127);
      }
    }
    if (chdir(rq->cwd) < 0) { /* after the switch: the action user must be allowed in there */
      dprintf(2, "reapi-runner: chdir %s: %s\n", rq->cwd, strerror(errno));
      _exit(127);
    }
    environ = rq->envp; /* execvp searches the PATH of the request's env, as the action expects */
    execvp(rq->argv[0], rq->argv);
    dprintf(2, "reapi-runner: exec %s: %s\n", rq->argv[0], strerror(errno));
    _exit(127);
  }

  int status = 0, done = 0;
  uint64_t deadline = rq->timeout_ms ? start + rq->timeout_ms * 1000ull : UINT64_MAX;
  for (reap(pid, &status, &done); !done; reap(pid, &status, &done)) {
    uint64_t now = now_us();
    if (stop_requested) break; /* killed below, reported as signalled */
    if (now >= deadline) {
      rp->flags |= 1;
      break;
    }
    if (rq->max_output) {
      struct stat so, se;
      if ((fstat(out, &so) == 0 && (uint64_t)so.st_size > rq->max_output) ||
          (fstat(err, &se) == 0 && (uint64_t)se.st_size > rq->max_output)) {
        rp->flags |= 2;
        break;
      }
    }
    long wait_ms = deadline == UINT64_MAX ? 1000 : (long)((deadline - now + 999) / 1000);
    if (rq->max_output && wait_ms > OUTPUT_POLL_MS) wait_ms = OUTPUT_POLL_MS;
    if (action_uid && wait_ms > 1000) wait_ms = 1000; /* a SIGTERM just before the wait is seen soon */
    wait_chld(wait_ms);
  }
  if (!done) {
    kill(-pid, SIGKILL);
    kill(pid, SIGKILL); /* in case it left its process group */
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
  }
  rp->wall_us = now_us() - start;
  close(out);
  close(err);
  rp->exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  rp->term_signal = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
}

static void serve(int conn) {
  unsigned char hdr[4];
  struct timeval tv = {READ_TIMEOUT_S, 0};
  setsockopt(conn, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);

  /* Only processes outside this container may submit actions: the kernel reports a peer pid of 0
   * when the peer is not visible in our pid namespace. Without this an action could queue a
   * connection that runs more code after it "finished". */
  struct ucred cred;
  socklen_t cl = sizeof cred;
  if (getsockopt(conn, SOL_SOCKET, SO_PEERCRED, &cred, &cl) < 0) return;
  if (action_uid ? cred.uid != geteuid() : cred.pid != 0) return;

  if (read_full(conn, hdr, 4) < 0) return;
  uint32_t len = get32(hdr);
  if (len > MAX_PAYLOAD) return;
  unsigned char *payload = malloc(len + 1);
  struct request rq;
  if (!payload || read_full(conn, payload, len) < 0 || parse_request(payload, len, &rq) < 0)
    return free(payload);

  struct reply rp;
  memset(&rp, 0, sizeof rp);
  run_action(&rq, &rp);
  if ((action_uid ? sweep_action_user() : sweep()) < 0) rp.flags |= 4;
  for (char **d = scratch_dirs; *d; d++) action_uid ? clean_scratch_of_action_user(*d) : clean_scratch(*d);
  remove_sysv_ipc();

  size_t msg_len = strlen(rp.msg);
  unsigned char out[36 + sizeof rp.msg];
  put32(out, REP_MAGIC), put32(out + 4, rp.status), put32(out + 8, (uint32_t)rp.exit_code);
  put32(out + 12, (uint32_t)rp.term_signal), put32(out + 16, rp.flags), put32(out + 20, 0);
  put64(out + 24, rp.wall_us), put32(out + 32, (uint32_t)msg_len);
  memcpy(out + 36, rp.msg, msg_len);
  write_full(conn, out, 36 + msg_len); /* a vanished client is not our problem */
  free(rq.argv);
  free(payload);
}

static void on_sigterm(int sig) {
  (void)sig;
  stop_requested = 1;
}

/* Process mode set-up: the flags, root, subreaper, and a clean slate for the action user. */
static int start_process_mode(void) {
  if (action_uid == 0) return fprintf(stderr, "reapi-runner: the action user must not be root\n"), -1;
  if (geteuid() != 0) return fprintf(stderr, "reapi-runner: --action-user needs root (to switch to uid %u)\n", (unsigned)action_uid), -1;
  /* Orphaned action processes are reparented to us, not to the worker or the pod's PID 1. */
  if (prctl(PR_SET_CHILD_SUBREAPER, 1) < 0) return perror("reapi-runner: PR_SET_CHILD_SUBREAPER"), -1;
  /* A worker that dies without stopping us still gets its actions killed: SIGTERM sweeps. */
  prctl(PR_SET_PDEATHSIG, SIGTERM);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_sigterm; /* no SA_RESTART: accept() returns EINTR */
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  sweep_action_user(); /* whatever a runner killed before us left behind */
  return 0;
}

int main(int argc, char **argv) {
  int arg = 1;
  for (; arg + 1 < argc && !strncmp(argv[arg], "--", 2); arg += 2) {
    unsigned long a, b;
    if (!strcmp(argv[arg], "--action-user") && sscanf(argv[arg + 1], "%lu:%lu", &a, &b) == 2)
      action_uid = (uid_t)a, action_gid = (gid_t)b;
    else if (!strcmp(argv[arg], "--max-processes") && sscanf(argv[arg + 1], "%lu", &a) == 1 && a > 0)
      max_processes = (rlim_t)a;
    else break;
  }
  if (arg >= argc || !strncmp(argv[arg], "--", 2)) {
    fprintf(stderr, "usage: %s [--action-user UID:GID [--max-processes N]] SOCKET_PATH [SCRATCH_DIR...]\n", argv[0]);
    return 2;
  }
  const char *socket_path = argv[arg];
  scratch_dirs = argv + arg + 1;
  if (arg > 1 && start_process_mode() < 0) return 2;
  /* Actions run as our uid: without this they could ptrace (or read /proc/1/mem of) the runner
   * and take it over, outliving their own sweep. exec() makes each action dumpable again. */
  prctl(PR_SET_DUMPABLE, 0);
  signal(SIGPIPE, SIG_IGN);
  sigemptyset(&chld_set);
  sigaddset(&chld_set, SIGCHLD);
  sigprocmask(SIG_BLOCK, &chld_set, NULL); /* SIGCHLD is consumed with sigtimedwait */

  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  char tmp_path[sizeof addr.sun_path];
  if (strlen(socket_path) + 5 >= sizeof addr.sun_path) {
    fprintf(stderr, "reapi-runner: socket path too long: %s\n", socket_path);
    return 2;
  }
  /* Bind+listen under a temporary name, then rename: once the path exists it accepts connections. */
  snprintf(tmp_path, sizeof tmp_path, "%s.tmp", socket_path);
  strcpy(addr.sun_path, tmp_path);
  unlink(tmp_path);
  int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  mode_t old_umask = umask(0); /* the host side may run as a different uid */
  if (lfd < 0 || bind(lfd, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(lfd, 8) < 0 ||
      rename(tmp_path, socket_path) < 0) {
    fprintf(stderr, "reapi-runner: listen on %s: %s\n", socket_path, strerror(errno));
    return 1;
  }
  umask(old_umask);
  if (action_uid) {
    /* accept() wakes up every second, so a SIGTERM that lands just before it is not missed. */
    struct timeval tick = {1, 0};
    setsockopt(lfd, SOL_SOCKET, SO_RCVTIMEO, &tick, sizeof tick);
  }

  for (;;) {
    if (stop_requested) {
      sweep_action_user();
      unlink(socket_path);
      return 0;
    }
    int conn = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    if (conn < 0) {
      int dummy_status, dummy_done;
      reap(-1, &dummy_status, &dummy_done);
      continue;
    }
    serve(conn);
    close(conn);
  }
}
