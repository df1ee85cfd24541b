// Actions try to get out of their sandbox, through a real `reapi serve` and its embedded Docker
// worker: write outside their directory (the image, the worker's cache, through a hardlinked
// input), read a concurrently running action's inputs, reach the network, leave a process
// running, use privileges. Every attempt must fail, and the action must still be able to write
// where it is supposed to (its input root, its TMPDIR, /tmp), so the checks are not vacuous.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync, rmSync } from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { longrunning } from '../apis';
import { ExecutionService, OperationsService, createClient, unary } from '../apis/services';
import { ActionSpec, Response, buildAction, decodeOperation, executeToEnd, upload } from './helpers/actions';
import { clientsFor, readAll } from './helpers/clients';
import { ServerProcess, startServerProcess } from './helpers/server-process';
import { noDocker } from './helpers/docker';

const skip = noDocker;

let server: ServerProcess;
let address: string;
let port: number;
let c: ReturnType<typeof clientsFor>;
let exec: InstanceType<typeof ExecutionService.Client>;
let ops: InstanceType<typeof OperationsService.Client>;
const TAG = randomBytes(6).toString('hex');

before(async () => {
  if (skip) return;
  // On every address, so "the server's port on another address" is a real, listening target.
  server = await startServerProcess({ args: ['--listen', '0.0.0.0:0', '--worker', 'on', '--concurrency', '2'] });
  port = Number(server.address.slice(server.address.lastIndexOf(':') + 1));
  address = `127.0.0.1:${port}`;
  c = clientsFor(address);
  exec = createClient(ExecutionService, address);
  ops = createClient(OperationsService, address);
});

after(async () => {
  c?.close();
  exec?.close();
  ops?.close();
  await server?.stop();
  if (server) rmSync(server.dataDir, { recursive: true, force: true });
});

const workerDir = () => path.join(server.dataDir, 'worker');

/** Runs a shell script as an action; resolves with its response and stdout. */
async function run(script: string, spec: Partial<ActionSpec> = {}): Promise<{ res: Response; stdout: string; stderr: string }> {
  const action = buildAction({ args: ['sh', '-c', script], doNotCache: true, salt: randomBytes(8).toString('hex'), ...spec });
  await upload(c.cas, action.blobs);
  const res = await executeToEnd(exec, { actionDigest: action.actionDigest, skipCacheLookup: true });
  assert.equal(res.status?.code ?? 0, 0, res.status?.message ?? '');
  const text = async (d: { hash?: string | null; sizeBytes?: number | null } | null | undefined) =>
    d && d.sizeBytes ? (await readAll(c.bs, { resourceName: `blobs/${d.hash}/${d.sizeBytes}` })).toString() : '';
  return { res, stdout: await text(res.result?.stdoutDigest), stderr: await text(res.result?.stderrDigest) };
}

const lines = (s: string) => s.split('\n').filter(Boolean);

test('an action cannot write outside its directory: not /, /usr, /etc, the cache, nor through a hardlinked input', { skip }, async () => {
  const cacheDir = path.join(workerDir(), 'cache');
  const original = `input content ${TAG}\n`;
  const { stdout } = await run(
    `
    for p in / /usr /usr/bin /etc /root /.reapi /.reapi/ctl "$CACHE" "$CACHE/.." "$(dirname "$(dirname "$PWD")")"; do
      ( : > "$p/escape-${TAG}" ) 2>/dev/null && echo "WROTE $p"
      mkdir "$p/escape-dir-${TAG}" 2>/dev/null && echo "MKDIR $p"
    done
    ls "$CACHE" >/dev/null 2>&1 && echo "SEES CACHE"
    ( echo tampered >> input.txt ) 2>/dev/null && echo "APPENDED input"
    chmod u+w input.txt 2>/dev/null && echo "CHMOD input"
    chown "$(id -u)" input.txt 2>/dev/null && echo "CHOWN input"
    truncate -s 0 input.txt 2>/dev/null && echo "TRUNCATED input"
    if ln input.txt second-link.txt 2>/dev/null; then
      ( echo tampered >> second-link.txt ) 2>/dev/null && echo "APPENDED through a new hardlink"
    fi
    python3 -c "import os; fd = os.open('input.txt', os.O_WRONLY); os.write(fd, b'x')" 2>/dev/null && echo "OPENED input for writing"
    # The places an action may write, so the refusals above are not a broken shell.
    : > own-output.txt && echo ok-cwd
    : > "$TMPDIR/t" && echo ok-tmpdir
    : > /tmp/t && echo ok-tmp
    `,
    { inputs: { 'input.txt': original }, env: { PATH: '/usr/bin:/bin', CACHE: cacheDir } },
  );
  assert.deepEqual(lines(stdout), ['ok-cwd', 'ok-tmpdir', 'ok-tmp']);
  // Nothing appeared in the worker's directories on the host.
  for (const dir of [cacheDir, workerDir(), path.join(workerDir(), 'actions')]) {
    assert.deepEqual(readdirSync(dir).filter((n) => n.includes(TAG)), [], dir);
  }
  // The next action with the same input, linked from the same cache file, sees it unchanged.
  const again = await run('cat input.txt', { inputs: { 'input.txt': original } });
  assert.equal(again.stdout, original);
});

test('an action cannot read the inputs of another action running at the same time', { skip }, async () => {
  const secret = `s3cret-${randomBytes(16).toString('hex')}`;
  const [p1, p2] = [secret.slice(0, 12), secret.slice(12)];
  // A: holds the secret as an input file, in its environment, in /tmp, its TMPDIR and its
  // working directory, and sleeps.
  const holder = buildAction({
    args: ['sh', '-c', 'cp secret.txt "$TMPDIR/copy-in-tmpdir" && cp secret.txt /tmp/copy-of-secret && cp secret.txt copy-of-secret && exec sleep 300'],
    inputs: { 'secret.txt': secret, 'dir/secret-too.txt': secret },
    env: { PATH: '/usr/bin:/bin', SECRET: secret },
    doNotCache: true,
    salt: TAG,
  });
  await upload(c.cas, holder.blobs);
  const stream = exec.Execute({ actionDigest: holder.actionDigest, skipCacheLookup: true });
  let holderName = '';
  const holderDone = new Promise<void>((resolve) => {
    stream.on('data', (op: longrunning.Operation) => (holderName ||= decodeOperation(op).name));
    stream.on('error', () => resolve());
    stream.on('end', () => resolve());
  });
  try {
    // A is running once its copy exists in its working directory (seen from the host, which may look).
    const actionsDir = path.join(workerDir(), 'actions');
    const running = () => readdirSync(actionsDir).some((d) => existsSync(path.join(actionsDir, d, 'root', 'copy-of-secret')));
    for (let i = 0; i < 1200 && !running(); i++) await new Promise((r) => setTimeout(r, 100));
    assert.ok(running(), 'the action holding the secret started');

    // B: searches everything it can list. Action directories sit in a directory that can be
    // traversed but not listed (and have random names), so not even B's own inputs are found
    // from /; its own marker, split the same way and found from its working directory, shows the
    // search itself works.
    const own = `own-${randomBytes(16).toString('hex')}`;
    const { stdout } = await run(
      `
      S="$P1$P2"; O="$O1$O2"
      grep -rlsF --exclude-dir=proc --exclude-dir=sys --exclude-dir=dev -e "$S" / 2>/dev/null | sed 's/^/FOUND-FILE /'
      for f in /proc/[0-9]*/environ /proc/[0-9]*/cmdline; do grep -qsF -e "$S" "$f" && echo "FOUND-PROC $f"; done
      ls "$(dirname "$(dirname "$PWD")")" >/dev/null 2>&1 && echo "LISTED the actions directory"
      grep -rlsF -e "$O" "$PWD" >/dev/null && echo own-marker-found
      `,
      { inputs: { 'mine.txt': own }, env: { PATH: '/usr/bin:/bin', P1: p1, P2: p2, O1: own.slice(0, 10), O2: own.slice(10) }, timeoutSeconds: 600 },
    );
    assert.deepEqual(lines(stdout), ['own-marker-found']);
  } finally {
    if (holderName) await unary(ops, 'CancelOperation', { name: holderName }).catch(() => undefined);
    stream.cancel();
    await holderDone;
  }
});

test('an action cannot reach the network: not the server on 127.0.0.1 nor on any other address', { skip }, async () => {
  const hostAddresses = Object.values(os.networkInterfaces())
    .flat()
    .filter((a): a is os.NetworkInterfaceInfo => !!a && a.family === 'IPv4' && !a.internal)
    .map((a) => a.address);
  // The targets are real: from the host, the server answers on each of them.
  for (const host of ['127.0.0.1', ...hostAddresses]) {
    await new Promise<void>((resolve, reject) => {
      const s = net.connect(port, host, () => (s.destroy(), resolve()));
      s.once('error', reject);
    });
  }
  const targets = [['127.0.0.1', port], ...hostAddresses.map((h) => [h, port]), ['172.17.0.1', port], ['1.1.1.1', 53], ['8.8.8.8', 443]];
  const script = `
import socket, sys
for host, port in ${JSON.stringify(targets)}:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(3)
    try:
        s.connect((host, port))
        print("CONNECTED", host, port)
    except OSError as e:
        print("refused", host, port, e.errno, file=sys.stderr)
    finally:
        s.close()
try:
    socket.getaddrinfo("example.com", 80)
    print("RESOLVED example.com")
except OSError:
    pass
import os
print("interfaces", " ".join(sorted(os.listdir("/sys/class/net"))))
`;
  const { stdout, stderr } = await run(`python3 -c '${script.replace(/'/g, "'\\''")}'`);
  assert.deepEqual(lines(stdout), ['interfaces lo'], stderr);
  assert.equal(lines(stderr).length, targets.length, stderr);
});

test('an action leaves no process running after it ends', { skip }, async () => {
  const n = 7_000_000 + Math.floor(Math.random() * 1_000_000);
  const first = await run(
    `setsid sh -c 'exec sleep ${n}' </dev/null >/dev/null 2>&1 &
     nohup sh -c '(sleep ${n + 1} &) ; sleep ${n + 2}' </dev/null >/dev/null 2>&1 &
     sh -c 'trap "" HUP TERM; exec sleep ${n + 3}' </dev/null >/dev/null 2>&1 &
     sleep 0.2; ls /proc | grep -c '^[0-9]'`,
  );
  assert.ok(Number(first.stdout.trim()) >= 4, `the daemons were started (${first.stdout.trim()} processes)`);
  const sleeping = (text: string) => text.split('\n').filter((l) => new RegExp(`sleep ${n}|sleep ${n + 1}|sleep ${n + 2}|sleep ${n + 3}`).test(l));
  // From the next actions: neither container (there may be two) shows them.
  for (let i = 0; i < 2; i++) {
    const next = await run(`for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < "$f"; echo; done`);
    assert.deepEqual(sleeping(next.stdout), []);
  }
  // From the host: no such process anywhere, and none in any sandbox container.
  assert.deepEqual(sleeping(execFileSync('ps', ['-eo', 'pid,user,args'], { encoding: 'utf8' })), []);
  const containers = lines(execFileSync('docker', ['ps', '-q', '--filter', 'label=reapi.pool'], { encoding: 'utf8' }));
  for (const id of containers) {
    const top = execFileSync('docker', ['top', id, '-eo', 'pid,args'], { encoding: 'utf8' });
    assert.deepEqual(sleeping(top), [], `container ${id}`);
  }
});

test('an action has no capabilities, no new privileges, a read-only root and runs as an unprivileged user', { skip }, async () => {
  const { stdout } = await run(
    `grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs):' /proc/self/status
     id -u
     awk '$5 == "/" { print "root-mount", $6 }' /proc/self/mountinfo | cut -d, -f1
     su -c id root </dev/null >/dev/null 2>&1 && echo "SU worked"
     unshare -U true 2>/dev/null && echo "USERNS worked"
     mount -t tmpfs none /mnt 2>/dev/null && echo "MOUNT worked"
     chroot / true 2>/dev/null && echo "CHROOT worked"
     true`,
  );
  const status = new Map(lines(stdout).filter((l) => l.includes(':')).map((l) => l.split(/:\s+/) as [string, string]));
  for (const cap of ['CapInh', 'CapPrm', 'CapEff', 'CapBnd', 'CapAmb']) assert.equal(status.get(cap), '0000000000000000', `${cap}\n${stdout}`);
  assert.equal(status.get('NoNewPrivs'), '1', stdout);
  const rest = lines(stdout).filter((l) => !l.includes(':'));
  assert.notEqual(rest[0], '0', 'not root');
  assert.equal(rest[1], 'root-mount ro', stdout);
  assert.deepEqual(rest.slice(2), [], stdout);
});

test('after all of it the server still serves', { skip }, async () => {
  const { stdout } = await run('echo alive');
  assert.equal(stdout, 'alive\n');
  assert.equal(server.child.exitCode, null);
  assert.equal((await unary(c.caps, 'GetCapabilities', {})).executionCapabilities?.execEnabled, true);
});
