// ActionCache over real gRPC against a real `reapi serve` process, including the completeness
// check after blobs vanish from disk and the --no-ac-updates mode.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { rmSync } from 'node:fs';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { rex, rpc } from '../apis';
import { unary } from '../apis/services';
import { clientsFor, statusOf, failure } from './helpers/clients';
import { ServerProcess, startServerProcess, tempDir } from './helpers/server-process';

let server: ServerProcess;
let c: ReturnType<typeof clientsFor>;
const dataDir = tempDir('ac');

before(async () => {
  server = await startServerProcess({ dataDir });
  c = clientsFor(server.address);
});

after(async () => {
  c?.close();
  await server?.stop();
  rmSync(dataDir, { recursive: true, force: true });
});

async function restart(): Promise<void> {
  c.close();
  assert.equal(await server.stop(), 0);
  server = await startServerProcess({ dataDir });
  c = clientsFor(server.address);
}

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
const digestOf = (b: Uint8Array) => ({ hash: sha(b), sizeBytes: b.length });
const key = (d: rex.IDigest) => `${d.hash}/${d.sizeBytes}`;
const bytes = (b: Uint8Array | null | undefined) => Buffer.from(b ?? []);
const encoded = (r: rex.IActionResult) => Buffer.from(rex.ActionResult.encode(r).finish());
/** A fresh action digest (the AC does not require the Action itself to be in the CAS). */
const newAction = () => digestOf(randomBytes(64));
const blobPath = (d: rex.IDigest, instanceDir = '_') => path.join(dataDir, 'instances', instanceDir, 'cas', d.hash!.slice(0, 2), d.hash!);

async function upload(blobs: Buffer[], instanceName = ''): Promise<void> {
  const res = await unary(c.cas, 'BatchUpdateBlobs', { instanceName, requests: blobs.map((data) => ({ digest: digestOf(data), data })) });
  assert.ok(res.responses.every((r) => (r.status?.code ?? 0) === grpc.status.OK));
}

function treeBlob(files: Buffer[]): { data: Buffer; digest: { hash: string; sizeBytes: number } } {
  const child: rex.IDirectory = { files: files.slice(1).map((f, i) => ({ name: `c${i}`, digest: digestOf(f) })) };
  const childData = Buffer.from(rex.Directory.encode(child).finish());
  const tree: rex.ITree = {
    root: { files: [{ name: 'r0', digest: digestOf(files[0]) }], directories: [{ name: 'sub', digest: digestOf(childData) }] },
    children: [child],
  };
  const data = Buffer.from(rex.Tree.encode(tree).finish());
  return { data, digest: digestOf(data) };
}

test('UpdateActionResult then GetActionResult returns the same result', async () => {
  const out = randomBytes(1000);
  const stdout = Buffer.from('compiled 1 file\n');
  await upload([out, stdout]);
  const action = newAction();
  const result: rex.IActionResult = {
    outputFiles: [{ path: 'bazel-out/bin/a.o', digest: digestOf(out), isExecutable: true }],
    exitCode: 3,
    stdoutDigest: digestOf(stdout),
    executionMetadata: { worker: 'w1', queuedTimestamp: { seconds: 1_700_000_000, nanos: 5 } },
  };
  const stored = await unary(c.ac, 'UpdateActionResult', { actionDigest: action, actionResult: result });
  assert.ok(encoded(stored).equals(encoded(result)));
  const got = await unary(c.ac, 'GetActionResult', { actionDigest: action });
  assert.ok(encoded(got).equals(encoded(result)), 'GetActionResult returns what was stored');
  assert.equal(got.exitCode, 3);
  assert.equal(got.outputFiles[0].path, 'bazel-out/bin/a.o');
  // Action results are namespaced by instance name.
  assert.equal(await statusOf(unary(c.ac, 'GetActionResult', { instanceName: 'elsewhere', actionDigest: action })), grpc.status.NOT_FOUND);
  // Updating again replaces the result.
  await unary(c.ac, 'UpdateActionResult', { actionDigest: action, actionResult: { ...result, exitCode: 0 } });
  assert.equal((await unary(c.ac, 'GetActionResult', { actionDigest: action })).exitCode, 0);
});

test('GetActionResult of an unknown action is NOT_FOUND; malformed requests are INVALID_ARGUMENT', async () => {
  const action = newAction();
  const err = await failure(unary(c.ac, 'GetActionResult', { actionDigest: action }));
  assert.equal(err.code, grpc.status.NOT_FOUND);
  assert.match(err.details, new RegExp(action.hash));
  assert.equal(await statusOf(unary(c.ac, 'GetActionResult', { actionDigest: { hash: 'xyz', sizeBytes: 1 } })), grpc.status.INVALID_ARGUMENT);
  assert.equal(await statusOf(unary(c.ac, 'GetActionResult', {})), grpc.status.INVALID_ARGUMENT);
  assert.equal(
    await statusOf(unary(c.ac, 'GetActionResult', { actionDigest: action, digestFunction: rex.DigestFunction.Value.SHA1 })),
    grpc.status.INVALID_ARGUMENT,
  );
  assert.equal(await statusOf(unary(c.ac, 'UpdateActionResult', { actionDigest: action })), grpc.status.INVALID_ARGUMENT);
  const badFile = { outputFiles: [{ path: 'x', digest: { hash: 'A'.repeat(64), sizeBytes: 1 } }] };
  assert.equal(await statusOf(unary(c.ac, 'UpdateActionResult', { actionDigest: action, actionResult: badFile })), grpc.status.INVALID_ARGUMENT);
  assert.equal(await statusOf(unary(c.ac, 'GetActionResult', { actionDigest: action })), grpc.status.NOT_FOUND);
});

test('UpdateActionResult referencing blobs not in the CAS is FAILED_PRECONDITION with a PreconditionFailure naming them', async () => {
  const present = randomBytes(100);
  const absentFile = randomBytes(200);
  const absentInTree = randomBytes(300);
  const tree = treeBlob([present, absentInTree]);
  await upload([present, tree.data]);
  const action = newAction();
  const err = await failure(
    unary(c.ac, 'UpdateActionResult', {
      actionDigest: action,
      actionResult: {
        outputFiles: [{ path: 'a', digest: digestOf(present) }, { path: 'b', digest: digestOf(absentFile) }],
        outputDirectories: [{ path: 'd', treeDigest: tree.digest }],
      },
    }),
  );
  assert.equal(err.code, grpc.status.FAILED_PRECONDITION);
  const raw = err.metadata.get('grpc-status-details-bin');
  assert.equal(raw.length, 1, 'grpc-status-details-bin is present');
  const st = rpc.Status.decode(raw[0] as Buffer);
  assert.equal(st.code, grpc.status.FAILED_PRECONDITION);
  const detail = st.details.find((d) => d.type_url === 'type.googleapis.com/google.rpc.PreconditionFailure');
  assert.ok(detail, `details: ${st.details.map((d) => d.type_url).join(', ')}`);
  const pf = rpc.PreconditionFailure.decode(bytes(detail.value));
  assert.deepEqual(pf.violations.map((v) => v.type), ['MISSING', 'MISSING']);
  assert.deepEqual(pf.violations.map((v) => v.subject).sort(), [`blobs/${key(digestOf(absentFile))}`, `blobs/${key(digestOf(absentInTree))}`].sort());
  // Nothing was stored.
  assert.equal(await statusOf(unary(c.ac, 'GetActionResult', { actionDigest: action })), grpc.status.NOT_FOUND);
  // A missing Tree blob is named as well.
  const ghostTree = treeBlob([randomBytes(10)]);
  const err2 = await failure(unary(c.ac, 'UpdateActionResult', { actionDigest: action, actionResult: { outputDirectories: [{ path: 'd', treeDigest: ghostTree.digest }] } }));
  assert.equal(err2.code, grpc.status.FAILED_PRECONDITION);
  const pf2 = rpc.PreconditionFailure.decode(rpc.Status.decode(err2.metadata.get('grpc-status-details-bin')[0] as Buffer).details[0].value ?? new Uint8Array());
  assert.ok(pf2.violations.some((v) => v.subject === `blobs/${key(ghostTree.digest)}`));
});

test('inline_stdout and inline_output_files return contents; inlined uploads land in the CAS', async () => {
  const stdout = Buffer.from('hello from the action\n');
  const stderr = Buffer.from('a warning\n');
  const a = randomBytes(5000);
  const b = randomBytes(6000);
  const action = newAction();
  // Contents sent inline are moved into the CAS by the server.
  await unary(c.ac, 'UpdateActionResult', {
    actionDigest: action,
    actionResult: {
      stdoutRaw: stdout,
      stderrRaw: stderr,
      outputFiles: [
        { path: 'out/a', digest: digestOf(a), contents: a },
        { path: 'out/b', digest: digestOf(b), contents: b },
      ],
    },
  });
  const fmb = await unary(c.cas, 'FindMissingBlobs', { blobDigests: [digestOf(a), digestOf(b), digestOf(stdout), digestOf(stderr)] });
  assert.deepEqual(fmb.missingBlobDigests, []);

  const plain = await unary(c.ac, 'GetActionResult', { actionDigest: action });
  assert.equal(bytes(plain.stdoutRaw).length, 0);
  assert.equal(key(plain.stdoutDigest!), key(digestOf(stdout)));
  assert.equal(key(plain.stderrDigest!), key(digestOf(stderr)));
  assert.ok(plain.outputFiles.every((f) => bytes(f.contents).length === 0));

  const inl = await unary(c.ac, 'GetActionResult', { actionDigest: action, inlineStdout: true, inlineOutputFiles: ['out/b'] });
  assert.ok(bytes(inl.stdoutRaw).equals(stdout));
  assert.equal(bytes(inl.stderrRaw).length, 0, 'stderr was not asked for');
  const byPath = new Map(inl.outputFiles.map((f) => [f.path, bytes(f.contents)]));
  assert.ok(byPath.get('out/b')!.equals(b));
  assert.equal(byPath.get('out/a')!.length, 0);

  const both = await unary(c.ac, 'GetActionResult', { actionDigest: action, inlineStderr: true, inlineOutputFiles: ['out/a', 'out/b'] });
  assert.ok(bytes(both.stderrRaw).equals(stderr));
  assert.ok(bytes(both.outputFiles.find((f) => f.path === 'out/a')!.contents).equals(a));
});

test('a result whose blobs vanished from disk is a miss after restart, and a hit again once they are back', async () => {
  const fileX = randomBytes(1111);
  const fileY = randomBytes(2222);
  const fileZ = randomBytes(3333);
  const other = randomBytes(444);
  const tree = treeBlob([other, fileY]);
  await upload([fileX, fileY, fileZ, other, tree.data]);
  const r1 = newAction();
  const r2 = newAction();
  const r3 = newAction();
  await unary(c.ac, 'UpdateActionResult', { actionDigest: r1, actionResult: { outputFiles: [{ path: 'x', digest: digestOf(fileX) }] } });
  await unary(c.ac, 'UpdateActionResult', { actionDigest: r2, actionResult: { outputDirectories: [{ path: 'dir', treeDigest: tree.digest }] } });
  await unary(c.ac, 'UpdateActionResult', { actionDigest: r3, actionResult: { outputFiles: [{ path: 'z', digest: digestOf(fileZ) }] } });
  for (const a of [r1, r2, r3]) await unary(c.ac, 'GetActionResult', { actionDigest: a });

  // Delete one output file and one file inside an output directory's Tree, behind the server's back.
  rmSync(blobPath(digestOf(fileX)));
  rmSync(blobPath(digestOf(fileY)));
  await restart();

  assert.equal(await statusOf(unary(c.ac, 'GetActionResult', { actionDigest: r1 })), grpc.status.NOT_FOUND);
  assert.equal(await statusOf(unary(c.ac, 'GetActionResult', { actionDigest: r2 })), grpc.status.NOT_FOUND);
  const r3got = await unary(c.ac, 'GetActionResult', { actionDigest: r3 });
  assert.equal(r3got.outputFiles[0].path, 'z');

  await upload([fileX]);
  assert.equal((await unary(c.ac, 'GetActionResult', { actionDigest: r1 })).outputFiles[0].path, 'x');
  assert.equal(await statusOf(unary(c.ac, 'GetActionResult', { actionDigest: r2 })), grpc.status.NOT_FOUND);
  // Deleting the Tree blob itself makes the result a miss too.
  await upload([fileY]);
  await unary(c.ac, 'GetActionResult', { actionDigest: r2 });
  rmSync(blobPath(tree.digest));
  await restart();
  assert.equal(await statusOf(unary(c.ac, 'GetActionResult', { actionDigest: r2 })), grpc.status.NOT_FOUND);
});

test('`reapi serve --no-ac-updates` refuses UpdateActionResult and says so in Capabilities', async () => {
  const dir = tempDir('ac-ro');
  const ro = await startServerProcess({ dataDir: dir, args: ['--no-ac-updates'] });
  const rc = clientsFor(ro.address);
  try {
    const caps = await unary(rc.caps, 'GetCapabilities', {});
    assert.equal(caps.cacheCapabilities?.actionCacheUpdateCapabilities?.updateEnabled ?? false, false);
    const out = randomBytes(10);
    await unary(rc.cas, 'BatchUpdateBlobs', { requests: [{ digest: digestOf(out), data: out }] });
    const action = newAction();
    const err = await failure(unary(rc.ac, 'UpdateActionResult', { actionDigest: action, actionResult: { outputFiles: [{ path: 'o', digest: digestOf(out) }] } }));
    assert.ok([grpc.status.FAILED_PRECONDITION, grpc.status.PERMISSION_DENIED, grpc.status.UNIMPLEMENTED].includes(err.code), grpc.status[err.code]);
    assert.match(err.details, /UpdateActionResult/);
    assert.equal(await statusOf(unary(rc.ac, 'GetActionResult', { actionDigest: action })), grpc.status.NOT_FOUND);
  } finally {
    rc.close();
    await ro.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});
