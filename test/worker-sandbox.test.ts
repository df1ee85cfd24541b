// worker/sandbox against the real Docker daemon and the real toolchain image (no mocks).
// Skipped, with the reason, only when `docker info` fails.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import Docker from 'dockerode';
import { status } from '@grpc/grpc-js';
import { RpcError } from '../server/rpc-error';
import { checkInputRootAbsolutePath } from '../worker/sandbox/input-root-path';
import { createDockerSandbox, SandboxError, type Sandbox, type SandboxRequest, type SandboxSlot } from '../worker/sandbox/sandbox';
import { PATH_ENV, Ran, runInDir } from './helpers/sandbox-run';
import { noDocker } from './helpers/docker';

const IMAGE = 'docker://reapi-toolchain:bookworm';

const skip = noDocker;

/** A fresh world-writable action dir under the exec root (the action runs as uid 1000). */
function actionDir(execRoot: string): string {
  const dir = fs.mkdtempSync(path.join(execRoot, 'action-'));
  fs.chmodSync(dir, 0o777);
  return dir;
}

function run(sandbox: Sandbox, execRoot: string, argv: string[], extra: Partial<SandboxRequest> = {}): Promise<Ran> {
  const { image = IMAGE, ...rest } = extra;
  return runInDir((req) => sandbox.run({ ...req, image }), extra.cwd ?? actionDir(execRoot), argv, rest);
}

async function poolContainers(poolId: string): Promise<Docker.ContainerInfo[]> {
  return new Docker().listContainers({ all: true, filters: { label: [`reapi.pool=${poolId}`] } });
}

function hostIPv4(): string {
  for (const addrs of Object.values(os.networkInterfaces())) {
    for (const a of addrs ?? []) if (a.family === 'IPv4' && !a.internal) return a.address;
  }
  return '192.0.2.1'; // TEST-NET-1: unroutable, but connect() must fail either way
}

describe('docker sandbox, warm pool', { skip }, () => {
  const poolId = `reapi-sbx-test-${process.pid}`;
  let execRoot: string;
  let stateDir: string;
  let sandbox: Sandbox;
  const exec = (argv: string[], extra?: Partial<SandboxRequest>) => run(sandbox, execRoot, argv, extra);

  before(async () => {
    execRoot = fs.mkdtempSync(path.join(os.tmpdir(), 'reapi-sandbox-test-'));
    fs.chmodSync(execRoot, 0o755);
    stateDir = path.join(os.tmpdir(), `${poolId}-state`);
    sandbox = await createDockerSandbox({ execRoot, poolId, stateDir, maxContainersPerImage: 2 });
  });

  after(async () => {
    await sandbox?.close();
    if (execRoot) fs.rmSync(execRoot, { recursive: true, force: true });
  });

  it('runs the command in the toolchain image as uid 1000', async () => {
    const { result, stdout } = await exec(['sh', '-c', 'cat /etc/reapi-toolchain; id -u']);
    assert.equal(result.exitCode, 0);
    assert.equal(result.timedOut, false);
    assert.match(stdout, /^reapi-toolchain bookworm\n/);
    assert.equal(stdout.trim().split('\n').at(-1), '1000');
    assert.ok(result.wallMicros > 0);
  });

  it('propagates exit codes and stderr', async () => {
    const { result, stdout, stderr } = await exec(['sh', '-c', 'echo out; echo oops >&2; exit 3']);
    assert.equal(result.exitCode, 3);
    assert.equal(result.signal, undefined);
    assert.equal(stdout, 'out\n');
    assert.equal(stderr, 'oops\n');
  });

  it('reports exec failures as exit 127 with the reason on stderr', async () => {
    const { result, stderr } = await exec(['no-such-tool', '--flag']);
    assert.equal(result.exitCode, 127);
    assert.match(stderr, /no-such-tool: No such file or directory/);
  });

  it('gives the action exactly the requested environment', async () => {
    const env = { PATH: PATH_ENV, FOO: 'bar baz', EMPTY: '' };
    const { result, stdout } = await exec(['env'], { env });
    assert.equal(result.exitCode, 0);
    assert.deepEqual(stdout.trim().split('\n').sort(), ['EMPTY=', 'FOO=bar baz', `PATH=${PATH_ENV}`]);
  });

  it('resolves argv[0] through the request PATH only', async () => {
    const { result, stderr } = await exec(['true'], { env: { PATH: '/nonexistent' } });
    assert.equal(result.exitCode, 127);
    assert.match(stderr, /exec true/);
  });

  it('runs in the requested working directory', async () => {
    const dir = actionDir(execRoot);
    fs.mkdirSync(path.join(dir, 'pkg'));
    fs.chmodSync(path.join(dir, 'pkg'), 0o777);
    fs.writeFileSync(path.join(dir, 'pkg', 'input.txt'), 'hello input\n');
    const cwd = path.join(dir, 'pkg');
    const { result, stdout } = await exec(['sh', '-c', 'pwd; cat input.txt; echo made > output.txt'], {
      cwd,
      stdoutPath: path.join(dir, 'stdout'),
      stderrPath: path.join(dir, 'stderr'),
    });
    assert.equal(result.exitCode, 0);
    assert.equal(stdout, `${cwd}\nhello input\n`);
    assert.equal(fs.readFileSync(path.join(cwd, 'output.txt'), 'utf8'), 'made\n'); // same path on the host
  });

  it('kills the action on timeout and keeps the output written before', async () => {
    const { result, stdout } = await exec(['sh', '-c', 'echo before-sleep; sleep 30'], { timeoutMs: 1000 });
    assert.equal(result.timedOut, true);
    assert.equal(result.signal, 'SIGKILL');
    assert.equal(stdout, 'before-sleep\n');
  });

  it('kills the action when its output exceeds the limit', async () => {
    const { result, stdout } = await exec(['sh', '-c', 'while :; do echo 0123456789; done'], { maxOutputBytes: 100_000 });
    assert.equal(result.outputLimitExceeded, true);
    assert.equal(result.timedOut, false);
    assert.ok(stdout.length > 100_000);
  });

  it('leaves no process of an action behind (background and double-forked daemons)', async () => {
    const first = await exec(['sh', '-c', 'sleep 1000 & (setsid sleep 1001 &) ; echo started']);
    assert.equal(first.stdout, 'started\n');
    const { stdout } = await exec(['sh', '-c', 'ls /proc | grep -E "^[0-9]+$" | wc -l; cat /proc/[0-9]*/comm']);
    // PID 1 (runner), the shell, and the pipeline's ls, grep, wc / cat: nothing named sleep.
    assert.doesNotMatch(stdout, /sleep/);
    const { stdout: pids } = await exec(['ls', '/proc']);
    assert.deepEqual(
      pids.split('\n').filter((n) => /^\d+$/.test(n)).length,
      2,
      `expected only the runner and ls in /proc, got: ${pids.replace(/\n/g, ' ')}`,
    );
  });

  it('empties /tmp between actions, leaving an exec root mounted below it alone', async () => {
    const keep = path.join(actionDir(execRoot), 'keep');
    fs.writeFileSync(keep, 'kept\n');
    await exec(['sh', '-c', 'echo secret > /tmp/leak; echo x > /dev/shm/leak; mkdir -p /tmp/d/e/f; touch /tmp/d/e/f/g; chmod 000 /tmp/d/e /tmp/d']);
    const shm = await exec(['ls', '-A', '/dev/shm']);
    assert.equal(shm.stdout, '');
    const { stdout } = await exec(['ls', '-A', '/tmp']);
    // When the exec root lives under the host's /tmp, its mount point shows up inside /tmp.
    const mountPoint = path.relative('/tmp', execRoot).split(path.sep)[0];
    assert.deepEqual(stdout.split('\n').filter((n) => n && n !== mountPoint), []);
    assert.equal(fs.readFileSync(keep, 'utf8'), 'kept\n');
  });

  it('removes System V IPC objects between actions', async () => {
    const py = 'import ctypes; libc = ctypes.CDLL(None); print(libc.shmget(1234, 4096, 0o1600) >= 0)';
    const created = await exec(['python3', '-c', py]);
    assert.equal(created.stdout, 'True\n');
    const { stdout } = await exec(['sh', '-c', 'tail -n +2 /proc/sysvipc/shm | wc -l']);
    assert.equal(stdout.trim(), '0');
  });

  it('has no network but loopback', async () => {
    const { stdout } = await exec(['cat', '/proc/net/dev']);
    const interfaces = stdout.split('\n').slice(2).filter(Boolean).map((l) => l.trim().split(':')[0]);
    assert.deepEqual(interfaces, ['lo']);

    const server = net.createServer((s) => s.end('hello from host\n'));
    await new Promise<void>((resolve) => server.listen(0, '0.0.0.0', resolve));
    const port = (server.address() as net.AddressInfo).port;
    try {
      const script = `exec 3<>/dev/tcp/${hostIPv4()}/${port} && echo connected`;
      const { result, stdout: out } = await exec(['timeout', '10', 'bash', '-c', script]);
      assert.notEqual(result.exitCode, 0);
      assert.equal(out, '');
    } finally {
      server.close();
    }
  });

  it('cannot write outside the exec root except /tmp', async () => {
    const script = [
      'touch /x 2>/dev/null && echo root-writable',
      'touch /usr/x 2>/dev/null && echo usr-writable',
      'touch /etc/passwd 2>/dev/null && echo etc-writable',
      'touch /tmp/x && echo tmp-ok',
    ].join('; ');
    const { stdout } = await exec(['sh', '-c', script]);
    assert.equal(stdout, 'tmp-ok\n');
  });

  it('cannot modify read-only root-owned inputs in the exec root', async () => {
    const dir = actionDir(execRoot);
    const inputs = path.join(dir, 'inputs');
    fs.mkdirSync(inputs, { mode: 0o755 });
    const input = path.join(inputs, 'source.c');
    fs.writeFileSync(input, 'int main(void) { return 0; }\n');
    fs.chownSync(input, 0, 0);
    fs.chmodSync(input, 0o444);
    const script = `echo tampered >> ${input} && echo wrote; chmod 666 ${input} && echo chmodded; rm -f ${input} && echo removed; true`;
    const { stdout } = await exec(['sh', '-c', script], { cwd: dir, stdoutPath: path.join(dir, 'o'), stderrPath: path.join(dir, 'e') });
    assert.equal(stdout, '');
    assert.equal(fs.readFileSync(input, 'utf8'), 'int main(void) { return 0; }\n');
    assert.equal(fs.statSync(input).mode & 0o777, 0o444);
  });

  it('ignores requests sent to the runner from inside the container', async () => {
    const marker = path.join(actionDir(execRoot), 'injected');
    // A well-formed request (see runner.c) asking the runner to create `marker` after this action.
    const py = `
import socket, struct
strs = [b"touch", ${JSON.stringify(marker)}.encode(), b"PATH=/usr/bin:/bin", b"/", b"/dev/null", b"/dev/null"]
body = b"".join(s + b"\\0" for s in strs)
payload = struct.pack("<IIQII", 0x31765152, 0, 0, 2, 1) + body
s = socket.socket(socket.AF_UNIX)
s.connect("/.reapi/ctl/runner.sock")
s.sendall(struct.pack("<I", len(payload)) + payload)
print("queued")
`;
    const { stdout } = await exec(['python3', '-c', py]);
    assert.equal(stdout, 'queued\n');
    await exec(['true']);
    await exec(['true']);
    assert.equal(fs.existsSync(marker), false);
  });

  it('rejects a request path outside the exec root', async () => {
    await assert.rejects(exec(['true'], { cwd: '/' }), SandboxError);
  });

  it('reuses the warm container', async () => {
    const a = await exec(['cat', '/etc/hostname']);
    const b = await exec(['cat', '/etc/hostname']);
    assert.equal(a.stdout, b.stdout);
    assert.equal((await poolContainers(poolId)).length >= 1, true);
  });

  it('keeps actions away from the runner socket and its control dir', async () => {
    const a = await exec(['sh', '-c', 'rm -f /.reapi/ctl/runner.sock; touch /.reapi/ctl/note; ls /.reapi/ctl; cat /etc/hostname']);
    assert.equal(a.stdout.split('\n')[0], 'runner.sock');
    const b = await exec(['cat', '/etc/hostname']);
    assert.equal(b.stdout, a.stdout.split('\n')[1] + '\n'); // same container still serving
  });

  it('keeps actions from taking over the runner (ptrace, /proc/1)', async () => {
    const py = 'import ctypes; libc = ctypes.CDLL(None, use_errno=True); print(libc.ptrace(16, 1, 0, 0), ctypes.get_errno())';
    const { stdout } = await exec(['sh', '-c', `python3 -c '${py}'; cat /proc/1/environ && echo readable; true`]);
    assert.equal(stdout, '-1 1\n'); // PTRACE_ATTACH to PID 1 fails with EPERM
  });

  it('keeps serving after garbage on its socket', async () => {
    const before = await exec(['cat', '/etc/hostname']);
    const sockets = fs.readdirSync(stateDir).map((name) => path.join(stateDir, name, 'runner.sock'));
    const garbage = [
      Buffer.from('GET / HTTP/1.1\r\n\r\n'),
      Buffer.from([0xff, 0xff, 0xff, 0xff, 1, 2, 3]), // absurd length
      Buffer.from([40, 0, 0, 0, 0x52, 0x51, 0x76, 0x31, 0, 0]), // truncated request
      Buffer.alloc(0), // connect and hang up
    ];
    for (const [socketPath, bytes] of sockets.flatMap((p) => garbage.map((g) => [p, g] as const))) {
      await new Promise<void>((resolve) => {
        const s = net.createConnection({ path: socketPath }, () => s.end(bytes));
        s.on('close', () => resolve());
        s.on('error', () => resolve());
        s.resume();
      });
    }
    const after = await exec(['cat', '/etc/hostname']);
    assert.equal(after.result.exitCode, 0);
    assert.equal(after.stdout, before.stdout);
  });

  it('replaces a container whose runner died, rerunning the action elsewhere', async () => {
    const a = await exec(['cat', '/etc/hostname']);
    await new Docker().getContainer(a.stdout.trim()).kill();
    const b = await exec(['cat', '/etc/hostname']);
    assert.equal(b.result.exitCode, 0);
    assert.notEqual(b.stdout, a.stdout);
  });

  it('runs concurrent actions on up to maxContainersPerImage containers', async () => {
    const runs = await Promise.all([1, 2, 3, 4].map(() => exec(['sh', '-c', 'sleep 0.2; cat /etc/hostname'])));
    for (const r of runs) assert.equal(r.result.exitCode, 0);
    assert.ok(new Set(runs.map((r) => r.stdout)).size <= 2);
  });

  it('fails clearly for a missing image, naming it', async () => {
    await assert.rejects(
      exec(['true'], { image: 'docker://reapi-no-such-image:latest' }),
      (err: Error) => err instanceof SandboxError && /reapi-no-such-image:latest/.test(err.message) && /not present/.test(err.message),
    );
  });

  it('removes all its containers on close', async () => {
    const other = await createDockerSandbox({ execRoot, poolId: `${poolId}-close` });
    await run(other, execRoot, ['true']);
    assert.equal((await poolContainers(`${poolId}-close`)).length, 1);
    await other.close();
    assert.equal((await poolContainers(`${poolId}-close`)).length, 0);
  });

  it('removes leftovers of an earlier run with the same pool id', async () => {
    const crashed = await createDockerSandbox({ execRoot, poolId: `${poolId}-restart` });
    await run(crashed, execRoot, ['true']); // never closed: as if the worker died
    assert.equal((await poolContainers(`${poolId}-restart`)).length, 1);
    const restarted = await createDockerSandbox({ execRoot, poolId: `${poolId}-restart` });
    assert.equal((await poolContainers(`${poolId}-restart`)).length, 0);
    await restarted.close();
  });
});

/** A path no container or host directory uses yet. */
function treePath(): string {
  return `/work/reapi-test/sandbox-${process.pid}-${Math.random().toString(16).slice(2, 10)}`;
}

/** Stages what the pipeline would: the input root directory belongs to the action user. */
function stage(slot: SandboxSlot, files: Record<string, string>): void {
  const root = slot.inputRoot!.hostPath;
  fs.chownSync(root, 1000, 1000);
  for (const [name, content] of Object.entries(files)) fs.writeFileSync(path.join(root, name), content);
}

function runInSlot(slot: SandboxSlot, execRoot: string, argv: string[], cwd = slot.inputRoot!.containerPath): Promise<Ran> {
  return runInDir((req) => slot.run(req), actionDir(execRoot), argv, { cwd });
}

function refusedPath(p: string, execRoot = '/srv/reapi/actions'): string | undefined {
  try {
    checkInputRootAbsolutePath(p, execRoot);
    return undefined;
  } catch (err) {
    assert.ok(err instanceof RpcError && err.code === status.INVALID_ARGUMENT, String(err));
    assert.ok(err.message.includes(JSON.stringify(p)), err.message);
    return err.message;
  }
}

describe('InputRootAbsolutePath validation', () => {
  it('accepts ordinary project paths', () => {
    for (const p of ['/work/src', '/b/f/w', '/home/user/chromium/src', '/opt/project', '/srv/reapi/other', '/tmp/src']) assert.equal(refusedPath(p), undefined, p);
  });

  it('refuses relative, unnormalized and system paths, and the exec root in either direction', () => {
    for (const p of ['', 'work/src', './src', '/work/../etc', '/work/./src', '/work//src', '/work/src/', '/', '/usr', '/usr/local/src', '/etc/x', '/lib', '/lib64/x', '/libx32', '/tmp', '/proc/1', '/dev/x', '/var/tmp/x', '/.reapi', '/.reapi/ctl/x', '/srv', '/srv/reapi/actions', '/srv/reapi/actions/x']) {
      assert.ok(refusedPath(p), `${JSON.stringify(p)} should be refused`);
    }
  });
});

describe('docker sandbox, input root paths', { skip }, () => {
  const poolId = `reapi-sbx-test-root-${process.pid}`;
  let execRoot: string;
  let sandbox: Sandbox;

  before(async () => {
    execRoot = fs.mkdtempSync(path.join(os.tmpdir(), 'reapi-sandbox-root-'));
    fs.chmodSync(execRoot, 0o755);
    // One container per path, three in all: a fourth path evicts the least recently used.
    sandbox = await createDockerSandbox({ execRoot, poolId, maxContainersPerImage: 1, maxContainers: 3 });
  });

  after(async () => {
    await sandbox?.close();
    if (execRoot) fs.rmSync(execRoot, { recursive: true, force: true });
  });

  it('mounts the slot\'s own directory at the path and keeps it, as the action left it, for the next action', async () => {
    const p = treePath();
    const slot = await sandbox.acquire({ image: IMAGE, inputRootAbsolutePath: p });
    const hostRoot = slot.inputRoot!.hostPath;
    assert.equal(slot.inputRoot!.containerPath, p);
    assert.equal(path.dirname(path.dirname(hostRoot)), execRoot, 'in a slot directory under the exec root: same filesystem as the cache');
    stage(slot, { 'in.txt': 'input\n' });
    const script = `pwd; cat in.txt; echo made > out.txt; touch ${path.dirname(p)}/sibling 2>/dev/null && echo parent-writable; cat /etc/hostname`;
    const first = await runInSlot(slot, execRoot, ['sh', '-c', script]);
    assert.equal(first.result.exitCode, 0, first.stderr);
    assert.deepEqual(first.stdout.split('\n').slice(0, 2), [p, 'input']);
    assert.equal(fs.readFileSync(path.join(hostRoot, 'out.txt'), 'utf8'), 'made\n', 'outputs land in the host directory');
    await slot.release();
    // Staging the next action reconciles the tree with its own (tree-ops.ts; the pipeline's
    // tampering test in input-root-path.test.ts shows nothing leaks).
    assert.deepEqual(fs.readdirSync(hostRoot).sort(), ['in.txt', 'out.txt']);

    const again = await sandbox.acquire({ image: IMAGE, inputRootAbsolutePath: p });
    try {
      assert.equal(again.inputRoot!.hostPath, hostRoot, 'the same warm container and directory');
      const second = await runInSlot(again, execRoot, ['sh', '-c', 'cat /etc/hostname']);
      assert.equal(second.stdout, first.stdout.split('\n')[2] + '\n', 'the same container');
    } finally {
      await again.release();
    }
  });

  it('refuses a cwd outside the slot\'s input root', async () => {
    const slot = await sandbox.acquire({ image: IMAGE, inputRootAbsolutePath: treePath() });
    try {
      await assert.rejects(runInSlot(slot, execRoot, ['true'], execRoot), /not an absolute path under the input root/);
    } finally {
      await slot.release();
    }
  });

  it('refuses an unusable path before starting anything', async () => {
    await assert.rejects(sandbox.acquire({ image: IMAGE, inputRootAbsolutePath: '/usr/include' }), (err: Error) => err instanceof RpcError && err.code === status.INVALID_ARGUMENT);
  });

  it('keeps the staged inputs when a runner that died while idle is replaced', async () => {
    const slot = await sandbox.acquire({ image: IMAGE, inputRootAbsolutePath: treePath() });
    try {
      stage(slot, { 'in.txt': 'survives\n' });
      const before = await runInSlot(slot, execRoot, ['cat', '/etc/hostname']);
      await new Docker().getContainer(before.stdout.trim()).kill();
      const after = await runInSlot(slot, execRoot, ['sh', '-c', 'cat in.txt; cat /etc/hostname']);
      assert.equal(after.stdout.split('\n')[0], 'survives');
      assert.notEqual(after.stdout.split('\n')[1], before.stdout.trim());
    } finally {
      await slot.release();
    }
  });

  it('evicts the least recently used idle container beyond the total cap', async () => {
    const paths = [treePath(), treePath(), treePath(), treePath()];
    for (const p of paths) {
      const slot = await sandbox.acquire({ image: IMAGE, inputRootAbsolutePath: p });
      await runInSlot(slot, execRoot, ['true']);
      await slot.release();
    }
    await sandbox.acquire({ image: IMAGE }).then((slot) => slot.release()); // a fifth key evicts too
    const byPath = async (p: string) => (await new Docker().listContainers({ all: true, filters: { label: [`reapi.pool=${poolId}`, `reapi.input-root=${p}`] } })).length;
    assert.ok((await poolContainers(poolId)).length <= 3);
    assert.deepEqual(await Promise.all(paths.map(byPath)), [0, 0, 1, 1]);
  });
});

describe('docker sandbox, strict mode', { skip }, () => {
  const poolId = `reapi-sbx-test-strict-${process.pid}`;
  let execRoot: string;
  let sandbox: Sandbox;

  before(async () => {
    execRoot = fs.mkdtempSync(path.join(os.tmpdir(), 'reapi-sandbox-strict-'));
    fs.chmodSync(execRoot, 0o755);
    sandbox = await createDockerSandbox({ execRoot, poolId, strict: true });
  });

  after(async () => {
    await sandbox?.close();
    if (execRoot) fs.rmSync(execRoot, { recursive: true, force: true });
  });

  it('runs each action in a fresh container with the same sandbox', async () => {
    const a = await run(sandbox, execRoot, ['sh', '-c', 'cat /etc/reapi-toolchain; id -u; cat /etc/hostname']);
    const b = await run(sandbox, execRoot, ['sh', '-c', 'cat /etc/reapi-toolchain; id -u; cat /etc/hostname']);
    assert.equal(a.result.exitCode, 0);
    assert.match(a.stdout, /^reapi-toolchain bookworm\n/);
    assert.equal(a.stdout.split('\n')[2], '1000');
    assert.notEqual(a.stdout.split('\n')[3], b.stdout.split('\n')[3]);
  });

  it('propagates exit codes, env and timeouts', async () => {
    const failed = await run(sandbox, execRoot, ['sh', '-c', 'echo $FOO >&2; exit 5'], { env: { PATH: PATH_ENV, FOO: 'strict' } });
    assert.equal(failed.result.exitCode, 5);
    assert.equal(failed.stderr, 'strict\n');
    const slow = await run(sandbox, execRoot, ['sh', '-c', 'echo partial; sleep 30'], { timeoutMs: 1000 });
    assert.equal(slow.result.timedOut, true);
    assert.equal(slow.stdout, 'partial\n');
  });

  it('mounts each action\'s own fresh directory at the input root path', async () => {
    const p = treePath();
    const seen: { host: string; hostRoot: string }[] = [];
    for (const name of ['first.txt', 'second.txt']) {
      const slot = await sandbox.acquire({ image: IMAGE, inputRootAbsolutePath: p });
      stage(slot, { [name]: 'x' });
      const { stdout } = await runInSlot(slot, execRoot, ['sh', '-c', 'pwd; ls -A; echo junk > junk.txt; cat /etc/hostname']);
      await slot.release();
      const [cwd, listed, host] = stdout.trim().split('\n');
      assert.deepEqual([cwd, listed], [p, name]);
      seen.push({ host: host!, hostRoot: slot.inputRoot!.hostPath });
    }
    assert.notEqual(seen[0]!.host, seen[1]!.host);
    assert.notEqual(seen[0]!.hostRoot, seen[1]!.hostRoot);
  });

  it('keeps no container once closed', async () => {
    await sandbox.close();
    assert.equal((await poolContainers(poolId)).length, 0);
    assert.deepEqual(fs.readdirSync(execRoot).filter((name) => name.startsWith('slot-')), [], 'slot directories go with their containers');
  });
});
