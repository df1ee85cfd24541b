// The InputRootAbsolutePath platform property (reclient, Siso) end to end: `reapi serve` with its
// embedded Docker worker runs the action with its input root at that path inside the container,
// so compilers record the same paths as a local build in a tree at that path.
import test, { after, before } from 'node:test';
import assert from 'node:assert/strict';
import * as grpc from '@grpc/grpc-js';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { rex } from '../apis';
import { ExecutionService, createClient } from '../apis/services';
import { clientsFor, readAll } from './helpers/clients';
import { ServerProcess, startServerProcess } from './helpers/server-process';
import { ActionSpec, Response, buildAction, executeToEnd, upload } from './helpers/actions';

let server: ServerProcess;
let clients: ReturnType<typeof clientsFor>;
let exec: InstanceType<typeof ExecutionService.Client>;

/** A fresh path per use: nothing on the host or in a container exists there yet. */
function treePath(): string {
  return `/work/reapi-test/tree-${randomBytes(6).toString('hex')}`;
}

before(async () => {
  server = await startServerProcess({ args: ['--worker', 'on'] });
  clients = clientsFor(server.address);
  exec = createClient(ExecutionService, server.address);
});

after(async () => {
  clients.close();
  exec.close();
  await server.stop();
});

async function run(inputRoot: string | undefined, spec: ActionSpec): Promise<Response> {
  const action = buildAction({ ...spec, platform: inputRoot === undefined ? [] : [{ name: 'InputRootAbsolutePath', value: inputRoot }] });
  await upload(clients.cas, action.blobs);
  return executeToEnd(exec, { actionDigest: action.actionDigest, skipCacheLookup: true });
}

async function succeeded(response: Response): Promise<rex.ActionResult> {
  assert.equal(response.status?.code ?? 0, 0, response.status?.message ?? '');
  const result = response.result!;
  assert.equal(result.exitCode, 0, await text(result.stderrDigest));
  return result;
}

async function bytes(digest: rex.Digest.$Properties | null | undefined): Promise<Buffer> {
  return readAll(clients.bs, { resourceName: `blobs/${digest!.hash}/${digest!.sizeBytes}` });
}

async function text(digest: rex.Digest.$Properties | null | undefined): Promise<string> {
  return (await bytes(digest)).toString();
}

function containersFor(inputRoot: string): string[] {
  const out = execFileSync('docker', ['ps', '-a', '-q', '--filter', `label=reapi.input-root=${inputRoot}`], { encoding: 'utf8' });
  return out.split('\n').filter(Boolean);
}

test('the action runs at the requested path and finds its inputs there', async () => {
  const root = treePath();
  const script = 'pwd; cat in.txt; cat sub/nested.txt; (echo tampered >> in.txt) 2>/dev/null && echo modified-input; cat in.txt';
  const result = await succeeded(await run(root, { args: ['sh', '-c', script], inputs: { 'in.txt': 'top\n', 'sub/nested.txt': 'nested\n' } }));
  assert.equal(await text(result.stdoutDigest), `${root}\ntop\nnested\ntop\n`, 'cwd is the path; inputs are read-only');

  const inSub = await succeeded(await run(root, { args: ['sh', '-c', 'pwd; cat nested.txt'], inputs: { 'sub/nested.txt': 'nested\n' }, workingDirectory: 'sub' }));
  assert.equal(await text(inSub.stdoutDigest), `${root}/sub\nnested\n`, 'working_directory is relative to the path');
});

test('a debug build records the path and matches a local build at that path byte for byte', async () => {
  const root = treePath();
  const source = '#include <stdio.h>\nint answer(void) { printf("%s\\n", __FILE__); return 42; }\n';
  const args = ['gcc', '-g', '-c', 'src/x.c', '-o', 'out/x.o'];
  const result = await succeeded(await run(root, { args, inputs: { 'src/x.c': source }, outputPaths: ['out/x.o'] }));
  const remote = await bytes(result.outputFiles.find((f) => f.path === 'out/x.o')?.digest);
  assert.ok(remote.includes(Buffer.from(root)), `the object's debug info names ${root}`);

  // The same compiler on the host (the image's gcc is Debian's 12.2.0-14, like the host's).
  fs.mkdirSync(path.join(root, 'src'), { recursive: true });
  fs.mkdirSync(path.join(root, 'out'));
  try {
    fs.writeFileSync(path.join(root, 'src', 'x.c'), source);
    execFileSync(args[0], args.slice(1), { cwd: root, env: { PATH: '/usr/bin:/bin' } });
    const local = fs.readFileSync(path.join(root, 'out', 'x.o'));
    assert.ok(remote.equals(local), `remote (${remote.length} bytes) and local (${local.length} bytes) objects differ`);
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
    try {
      fs.rmdirSync(path.dirname(root)); // only if empty: someone else may use it
    } catch {
      // not empty, or already gone
    }
  }
});

test('actions with different paths alternate, each seeing only its own inputs', async () => {
  const roots = [treePath(), treePath()];
  for (let round = 0; round < 2; round++) {
    for (const [i, root] of roots.entries()) {
      // Each run also leaves junk behind: the next action at the same path must not see it.
      const script = 'pwd; ls -A; echo junk > leftover.txt; mkdir -p d && chmod 000 d';
      const result = await succeeded(await run(root, { args: ['sh', '-c', script], inputs: { [`only-${i}-${round}.txt`]: 'x' } }));
      assert.equal(await text(result.stdoutDigest), `${root}\nonly-${i}-${round}.txt\n`);
    }
  }
});

for (const [kind, root] of [['at an InputRootAbsolutePath', treePath()], ['in a container without one', undefined]] as const) {
  test(`an action that tampers with its inputs leaves the next action ${kind} exactly its own tree`, async () => {
    // A container's input root keeps the last tree, and staging the next one keeps what is still
    // wanted: whatever the first action removed, replaced, moved, added or locked must not reach
    // the second, which has the same inputs plus one (and runs in the same warm container). The
    // staging remembers the directories it left; one the action changed and then dated back
    // (quiet/) must not pass for untouched.
    const inputs = { 'src/a.h': 'A\n', 'src/b.h': 'B\n', 'src/keep/c.h': 'C\n', 'top.txt': 'T\n', 'quiet/q.h': 'Q\n' };
    const tamper = [
      'cat /etc/hostname', 'rm src/a.h', 'rm src/b.h && echo evil > src/b.h', 'mv src/keep src/moved && mkdir src/keep && echo extra > src/keep/extra.h',
      'mv top.txt top.old && ln -s src/b.h top.txt', 'mkdir locked && chmod 000 locked', 'echo junk > junk.txt', 'chmod 000 src',
      'touch -r quiet /tmp/quiet.time && echo sneaky > quiet/sneaky.h && touch -m -r /tmp/quiet.time quiet',
    ].join(' && ');
    // Staged once before, so that the tampering action's tree is one the staging remembers.
    await succeeded(await run(root, { args: ['true'], inputs, salt: `before-${kind}` }));
    const tampered = await succeeded(await run(root, { args: ['sh', '-c', tamper], inputs, salt: `tamper-${kind}` }));
    const list = 'cat /etc/hostname && find . | sort && cat src/a.h src/b.h src/keep/c.h top.txt quiet/q.h new.txt && stat -c %a src src/keep && test ! -L top.txt';
    const result = await succeeded(await run(root, { args: ['sh', '-c', list], inputs: { ...inputs, 'new.txt': 'N\n' }, salt: `list-${kind}` }));
    const container = await text(tampered.stdoutDigest);
    assert.equal(
      await text(result.stdoutDigest),
      container +
        ['.', './new.txt', './quiet', './quiet/q.h', './src', './src/a.h', './src/b.h', './src/keep', './src/keep/c.h', './top.txt', 'A', 'B', 'C', 'T', 'Q', 'N', '755', '755', ''].join('\n'),
    );
  });
}

test('unusable paths are refused with INVALID_ARGUMENT naming them', async () => {
  for (const bad of ['', 'relative/tree', '/work/../etc/x', '/usr', '/usr/local/src', '/', '/work/tree/', '/lib64/x', '/tmp']) {
    const response = await run(bad, { args: ['true'] });
    assert.equal(response.status?.code, grpc.status.INVALID_ARGUMENT, `${bad}: ${response.status?.message}`);
    assert.ok(response.status!.message.includes(JSON.stringify(bad)), `${bad}: ${response.status!.message}`);
  }
});

test('actions with the same path reuse one warm container', async () => {
  const root = treePath();
  const first = await succeeded(await run(root, { args: ['cat', '/etc/hostname'], salt: 'a' }));
  const second = await succeeded(await run(root, { args: ['cat', '/etc/hostname'], salt: 'b' }));
  assert.equal(await text(second.stdoutDigest), await text(first.stdoutDigest));
  assert.equal(containersFor(root).length, 1);
});

test('actions without the property run in their container\'s own directory under the data dir', async () => {
  const result = await succeeded(await run(undefined, { args: ['pwd'] }));
  const cwd = (await text(result.stdoutDigest)).trim();
  assert.ok(cwd.startsWith(server.dataDir) && cwd.endsWith('/root'), cwd);
});

test('a tree below /tmp works, action after action (the tmpfs cleanup leaves the mount alone)', async () => {
  const root = `/tmp/reapi-test-tree-${randomBytes(6).toString('hex')}`;
  for (const round of [1, 2, 3]) {
    const result = await succeeded(await run(root, { args: ['sh', '-c', `pwd; cat in.txt; echo scratch > /tmp/left-by-${round}`], inputs: { 'in.txt': `round ${round}\n` } }));
    assert.equal(await text(result.stdoutDigest), `${root}\nround ${round}\n`);
  }
});
