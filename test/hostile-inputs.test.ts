// Hostile clients against a real `reapi serve`: malformed digests and resource names, escaping
// paths and symlinks in Directory trees and Commands, claimed cycles, undecodable protobuf on
// every method, a client that stops mid-Write, and the resource limits. Each gets its status,
// and after each the server still answers a valid call.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import * as http2 from 'node:http2';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { rex } from '../apis';
import { ExecutionService, createClient, unary } from '../apis/services';
import { Blob, TOOLCHAIN, blob, buildAction, collect, executeToEnd, upload } from './helpers/actions';
import { clientsFor, failure, readAll, statusOf, writeStream } from './helpers/clients';
import { RAW_METHODS, RawClient, UNDECODABLE, encode, rssBytes } from './helpers/raw-grpc';
import { ServerProcess, startServerProcess } from './helpers/server-process';
import { noDocker } from './helpers/docker';

const MAX_BLOB = 1024 * 1024 * 1024; // --max-blob-bytes 1G
const IDLE_SECONDS = 2; // --write-idle-seconds
const MAX_STREAMS = 8; // --max-concurrent-streams
const MAX_OUTPUT = 1024 * 1024; // --max-output-bytes 1M

/** Execute needs the embedded Docker worker; without Docker those tests are skipped. */
const docker = !noDocker;
let server: ServerProcess;
let c: ReturnType<typeof clientsFor>;
let exec: InstanceType<typeof ExecutionService.Client>;
let raw: RawClient;

before(async () => {
  server = await startServerProcess({
    args: [
      '--worker', docker ? 'on' : 'off',
      '--concurrency', '2',
      '--max-blob-bytes', '1G',
      '--write-idle-seconds', String(IDLE_SECONDS),
      '--max-concurrent-streams', String(MAX_STREAMS),
      '--max-output-bytes', '1M',
    ],
  });
  c = clientsFor(server.address);
  exec = createClient(ExecutionService, server.address);
  raw = new RawClient(server.address);
});

after(async () => {
  c?.close();
  exec?.close();
  raw?.close();
  await server?.stop();
  if (server) rmSync(server.dataDir, { recursive: true, force: true });
});

const H = (s: string) => createHash('sha256').update(s).digest('hex');
const EMPTY_HASH = H('');


/** A valid call succeeds: the server is alive and serving after whatever came before. */
async function assertHealthy(): Promise<void> {
  assert.equal(server.child.exitCode, null, 'server process still running');
  const data = randomBytes(64);
  await upload(c.cas, [blob(data)]);
  const back = await unary(c.cas, 'BatchReadBlobs', { digests: [blob(data).digest] });
  assert.deepEqual(Buffer.from(back.responses[0]!.data ?? []), data);
  assert.doesNotMatch(server.stderr(), /uncaught|unhandled|heap out of memory/i);
}

// --- digests ------------------------------------------------------------------------------------

describe('wrong digests and sizes', () => {
  const bad: [string, rex.IDigest][] = [
    ['upper-case hash', { hash: H('x').toUpperCase(), sizeBytes: 1 }],
    ['short hash', { hash: H('x').slice(1), sizeBytes: 1 }],
    ['non-hex hash', { hash: 'g'.repeat(64), sizeBytes: 1 }],
    ['empty hash', { hash: '', sizeBytes: 1 }],
    ['negative size', { hash: H('x'), sizeBytes: -1 }],
    ['most negative size', { hash: H('x'), sizeBytes: -(2 ** 62) }],
    ['size beyond 2^53', { hash: H('x'), sizeBytes: 2 ** 62 }],
    ['size 0 with a hash that is not the empty blob', { hash: H('x'), sizeBytes: 0 }],
  ];

  test('FindMissingBlobs, BatchReadBlobs, GetActionResult and GetTree refuse malformed digests', async () => {
    for (const [what, d] of bad) {
      for (const call of [
        () => unary(c.cas, 'FindMissingBlobs', { blobDigests: [{ hash: EMPTY_HASH, sizeBytes: 0 }, d] }),
        () => unary(c.cas, 'BatchReadBlobs', { digests: [d] }),
        () => unary(c.ac, 'GetActionResult', { actionDigest: d }),
        () => collect(c.cas.GetTree({ rootDigest: d }) as never),
      ]) {
        const err = await failure(call());
        assert.equal(err.code, grpc.status.INVALID_ARGUMENT, `${what}: ${err.details}`);
      }
    }
    await assertHealthy();
  });

  test('BatchUpdateBlobs answers each bad entry with its own status and stores the good ones', async () => {
    const good = blob(randomBytes(20));
    const res = await unary(c.cas, 'BatchUpdateBlobs', {
      requests: [
        { digest: good.digest, data: good.data },
        { digest: { hash: H('other'), sizeBytes: good.data.length }, data: good.data }, // wrong hash
        { digest: { hash: good.digest.hash, sizeBytes: good.data.length + 1 }, data: good.data }, // wrong size
        { digest: { hash: good.digest.hash, sizeBytes: -5 }, data: good.data },
        { digest: { hash: good.digest.hash, sizeBytes: MAX_BLOB + 1 }, data: good.data }, // over --max-blob-bytes
      ],
    });
    const codes = res.responses.map((r) => r.status?.code ?? 0);
    const { OK, INVALID_ARGUMENT, RESOURCE_EXHAUSTED } = grpc.status;
    assert.deepEqual(codes, [OK, INVALID_ARGUMENT, INVALID_ARGUMENT, INVALID_ARGUMENT, RESOURCE_EXHAUSTED]);
    assert.match(res.responses[4]!.status!.message!, /maximum blob size of 1073741824 bytes \(--max-blob-bytes\)/);
    assert.deepEqual((await unary(c.cas, 'FindMissingBlobs', { blobDigests: [good.digest] })).missingBlobDigests, []);
    await assertHealthy();
  });

  test('a blob larger than --max-blob-bytes is refused early by FindMissingBlobs and ByteStream Write', async () => {
    const huge = { hash: H('huge'), sizeBytes: MAX_BLOB + 1 };
    const fm = await failure(unary(c.cas, 'FindMissingBlobs', { blobDigests: [huge] }));
    assert.equal(fm.code, grpc.status.RESOURCE_EXHAUSTED);
    assert.match(fm.details, /--max-blob-bytes/);
    // 64 GiB and 1 PB digests: refused on the first message, before a byte is stored.
    for (const size of [MAX_BLOB + 1, 64 * 1024 ** 3, 1024 ** 5]) {
      const err = await failure(
        writeStream(c.bs, [{ resourceName: `uploads/${randomUUIDish()}/blobs/${huge.hash}/${size}`, writeOffset: 0, data: Buffer.alloc(10) }]),
      );
      assert.equal(err.code, grpc.status.RESOURCE_EXHAUSTED, err.details);
      assert.match(err.details, /larger than this server's maximum blob size/);
    }
    // At the limit is fine to ask about.
    const ok = await unary(c.cas, 'FindMissingBlobs', { blobDigests: [{ hash: huge.hash, sizeBytes: MAX_BLOB }] });
    assert.equal(ok.missingBlobDigests.length, 1);
    await assertHealthy();
  });

  test('batches over the batch limit are refused as a whole', async () => {
    const big = Buffer.alloc(4 * 1024 * 1024 + 1);
    const up = await failure(unary(c.cas, 'BatchUpdateBlobs', { requests: [{ digest: blob(big).digest, data: big }] }));
    assert.ok([grpc.status.INVALID_ARGUMENT, grpc.status.RESOURCE_EXHAUSTED].includes(up.code), up.details);
    const read = await failure(unary(c.cas, 'BatchReadBlobs', { digests: [{ hash: H('a'), sizeBytes: 3 * 1024 * 1024 }, { hash: H('b'), sizeBytes: 3 * 1024 * 1024 }] }));
    assert.equal(read.code, grpc.status.INVALID_ARGUMENT);
    await assertHealthy();
  });
});

let uploadCounter = 0;
function randomUUIDish(): string {
  return `hostile-${process.pid}-${++uploadCounter}-${randomBytes(4).toString('hex')}`;
}

// --- ByteStream resource names and offsets ----------------------------------------------------

describe('malformed ByteStream resource names and offsets', () => {
  const content = Buffer.from('bytestream hostile content');
  const d = blob(content).digest;
  before(async () => upload(c.cas, [blob(content)]));

  const badNames = [
    '',
    'blobs',
    `blobs/${d.hash}`,
    `blobs/${d.hash}/-1`,
    `blobs/${d.hash}/12abc`,
    `blobs/${d.hash}/99999999999999999999`,
    `blobs/${d.hash.toUpperCase()}/${d.sizeBytes}`,
    `blobs/${d.hash.slice(2)}/${d.sizeBytes}`,
    `../blobs/${d.hash}/${d.sizeBytes}`,
    `a/../blobs/${d.hash}/${d.sizeBytes}`,
    `/blobs/${d.hash}/${d.sizeBytes}`,
    `a//b/blobs/${d.hash}/${d.sizeBytes}`,
    `a\0b/blobs/${d.hash}/${d.sizeBytes}`,
    `x`.repeat(5000) + `/blobs/${d.hash}/${d.sizeBytes}`,
    `compressed-blobs/lz4/${d.hash}/${d.sizeBytes}`,
    `compressed-blobs//${d.hash}/${d.sizeBytes}`,
    `actions/${d.hash}/${d.sizeBytes}`,
    `uploads/x/blobs/${d.hash}/${d.sizeBytes}`, // an upload name is not a read name
  ];

  test('Read refuses each malformed name with INVALID_ARGUMENT', async () => {
    for (const resourceName of badNames) {
      const code = await statusOf(readAll(c.bs, { resourceName }));
      assert.equal(code, grpc.status.INVALID_ARGUMENT, JSON.stringify(resourceName.slice(0, 100)));
    }
    await assertHealthy();
  });

  test('Write and QueryWriteStatus refuse malformed upload names', async () => {
    const uploadNames = [
      ...badNames.filter((n) => !n.startsWith('uploads/')),
      `uploads/blobs/${d.hash}/${d.sizeBytes}`, // no upload id
      `uploads/../blobs/${d.hash}/${d.sizeBytes}`,
      `uploads/${'u'.repeat(129)}/blobs/${d.hash}/${d.sizeBytes}`,
      `uploads/a b/blobs/${d.hash}/${d.sizeBytes}`,
      `uploads/ok/actions/${d.hash}/${d.sizeBytes}`,
    ];
    for (const resourceName of uploadNames) {
      const w = await statusOf(writeStream(c.bs, [{ resourceName, writeOffset: 0, data: content, finishWrite: true }]));
      assert.equal(w, grpc.status.INVALID_ARGUMENT, `Write ${JSON.stringify(resourceName.slice(0, 100))}`);
      const q = await statusOf(unary(c.bs, 'QueryWriteStatus', { resourceName }));
      assert.equal(q, grpc.status.INVALID_ARGUMENT, `QueryWriteStatus ${JSON.stringify(resourceName.slice(0, 100))}`);
    }
    await assertHealthy();
  });

  test('Read offsets and limits: negative, past the end, huge', async () => {
    const resourceName = `blobs/${d.hash}/${d.sizeBytes}`;
    assert.equal(await statusOf(readAll(c.bs, { resourceName, readOffset: -1 })), grpc.status.INVALID_ARGUMENT);
    assert.equal(await statusOf(readAll(c.bs, { resourceName, readLimit: -1 })), grpc.status.INVALID_ARGUMENT);
    assert.equal(await statusOf(readAll(c.bs, { resourceName, readOffset: d.sizeBytes + 1 })), grpc.status.OUT_OF_RANGE);
    assert.equal(await statusOf(readAll(c.bs, { resourceName, readOffset: 2 ** 62 })), grpc.status.OUT_OF_RANGE);
    assert.equal((await readAll(c.bs, { resourceName, readOffset: d.sizeBytes })).length, 0);
    assert.deepEqual(await readAll(c.bs, { resourceName, readOffset: 3, readLimit: 2 ** 62 }), content.subarray(3));
    // The name claims a size the stored blob does not have: not found, not a short read.
    assert.equal(await statusOf(readAll(c.bs, { resourceName: `blobs/${d.hash}/${d.sizeBytes + 1}` })), grpc.status.NOT_FOUND);
    await assertHealthy();
  });

  test('Write offsets: negative, ahead of the data, going backwards, data past the size, a renamed stream', async () => {
    const data = randomBytes(100);
    const bd = blob(data).digest;
    const name = () => `uploads/${randomUUIDish()}/blobs/${bd.hash}/${bd.sizeBytes}`;
    const cases: [string, Parameters<typeof writeStream>[1], grpc.status][] = [
      ['negative offset', [{ resourceName: name(), writeOffset: -1, data }], grpc.status.INVALID_ARGUMENT],
      ['offset ahead of the committed size', [{ resourceName: name(), writeOffset: 50, data: data.subarray(50), finishWrite: true }], grpc.status.INVALID_ARGUMENT],
      ['offset going backwards', (() => { const n = name(); return [{ resourceName: n, writeOffset: 0, data: data.subarray(0, 60) }, { writeOffset: 10, data: data.subarray(10), finishWrite: true }]; })(), grpc.status.INVALID_ARGUMENT],
      ['more data than the digest says', [{ resourceName: name(), writeOffset: 0, data: Buffer.concat([data, Buffer.from('x')]), finishWrite: true }], grpc.status.INVALID_ARGUMENT],
      ['finished short', [{ resourceName: name(), writeOffset: 0, data: data.subarray(0, 99), finishWrite: true }], grpc.status.INVALID_ARGUMENT],
      ['wrong content', [{ resourceName: name(), writeOffset: 0, data: randomBytes(100), finishWrite: true }], grpc.status.INVALID_ARGUMENT],
      ['resource name changes mid-stream', [{ resourceName: name(), writeOffset: 0, data: data.subarray(0, 10) }, { resourceName: name(), writeOffset: 10, data: data.subarray(10), finishWrite: true }], grpc.status.INVALID_ARGUMENT],
      ['huge offset', [{ resourceName: name(), writeOffset: 2 ** 62, data }], grpc.status.INVALID_ARGUMENT],
      ['no finish_write', [{ resourceName: name(), writeOffset: 0, data }], grpc.status.INVALID_ARGUMENT],
    ];
    for (const [what, requests, expected] of cases) {
      const err = await failure(writeStream(c.bs, requests));
      assert.equal(err.code, expected, `${what}: ${grpc.status[err.code]} ${err.details}`);
    }
    assert.equal((await unary(c.cas, 'FindMissingBlobs', { blobDigests: [bd] })).missingBlobDigests.length, 1, 'nothing bad was stored');
    await assertHealthy();
  });
});

// --- undecodable protobuf ---------------------------------------------------------------------

describe('truncated and random protobuf bytes on every method', () => {
  test('bytes that cannot decode are INVALID_ARGUMENT on every method, not INTERNAL', async () => {
    for (const [name, method] of Object.entries(RAW_METHODS)) {
      if (!docker && ['Execute', 'WaitExecution', 'GetOperation', 'ListOperations', 'CancelOperation', 'DeleteOperation', 'WaitOperation'].includes(name)) continue;
      const out = await raw.call(method, method.kind === 'client-stream' ? [UNDECODABLE] : UNDECODABLE);
      assert.equal(out.code, grpc.status.INVALID_ARGUMENT, `${name}: ${grpc.status[out.code]} ${out.details}`);
      assert.match(out.details, new RegExp(`not a valid ${name} request`));
    }
    await assertHealthy();
  });

  test('every truncation of valid requests gets an answer that is not a server failure', async () => {
    const d = blob('truncate me');
    await upload(c.cas, [d]);
    const valid: [keyof typeof RAW_METHODS, Buffer | Buffer[]][] = [
      ['FindMissingBlobs', encode.findMissing({ instanceName: 'inst', blobDigests: [d.digest, d.digest] })],
      ['BatchUpdateBlobs', encode.batchUpdate({ requests: [{ digest: d.digest, data: d.data }] })],
      ['BatchReadBlobs', encode.batchRead({ digests: [d.digest] })],
      ['GetTree', encode.getTree({ rootDigest: d.digest, pageSize: 10 })],
      ['Read', encode.read({ resourceName: `blobs/${d.digest.hash}/${d.digest.sizeBytes}`, readOffset: 1 })],
      ['QueryWriteStatus', encode.queryWriteStatus({ resourceName: `uploads/t/blobs/${d.digest.hash}/${d.digest.sizeBytes}` })],
      ['Write', [encode.write({ resourceName: `uploads/t/blobs/${d.digest.hash}/${d.digest.sizeBytes}`, data: d.data, finishWrite: true })]],
    ];
    for (const [name, request] of valid) {
      const whole = Array.isArray(request) ? request[0]! : request;
      for (let cut = 0; cut < whole.length; cut++) {
        const piece = whole.subarray(0, cut);
        const out = await raw.call(RAW_METHODS[name]!, Array.isArray(request) ? [piece] : piece);
        assert.ok(
          ![grpc.status.INTERNAL, grpc.status.UNKNOWN, grpc.status.UNAVAILABLE, grpc.status.DEADLINE_EXCEEDED].includes(out.code),
          `${name} cut at ${cut}: ${grpc.status[out.code]} ${out.details}`,
        );
      }
    }
    await assertHealthy();
  });

  test('random bytes on every method get an answer that is not a server failure', async () => {
    for (const [name, method] of Object.entries(RAW_METHODS)) {
      if (!docker && ['Execute', 'WaitExecution', 'GetOperation', 'ListOperations', 'CancelOperation', 'DeleteOperation', 'WaitOperation'].includes(name)) continue;
      for (let i = 0; i < 20; i++) {
        const bytes = randomBytes(1 + ((i * 97) % 3000));
        const out = await raw.call(method, method.kind === 'client-stream' ? [bytes, randomBytes(50)] : bytes);
        assert.ok(
          ![grpc.status.INTERNAL, grpc.status.UNKNOWN, grpc.status.UNAVAILABLE, grpc.status.DEADLINE_EXCEEDED].includes(out.code),
          `${name}: ${grpc.status[out.code]} ${out.details}`,
        );
      }
    }
    await assertHealthy();
  });
});

// --- GetTree over hostile graphs ----------------------------------------------------------------

describe('GetTree over missing, shared and claimed-cyclic Directory references', () => {
  const dirBlob = (d: rex.IDirectory) => blob(rex.Directory.encode(d).finish());

  test('missing children are left out; a missing root is NOT_FOUND', async () => {
    const root = dirBlob({ directories: [{ name: 'gone', digest: { hash: H('no such dir'), sizeBytes: 10 } }, { name: 'huge', digest: { hash: H('huge dir'), sizeBytes: 2 ** 40 } }] });
    await upload(c.cas, [root]);
    const pages = await collect(c.cas.GetTree({ rootDigest: root.digest }) as never).catch((e) => e);
    assert.ok(!(pages instanceof Error), String(pages));
    const code = await statusOf(collect(c.cas.GetTree({ rootDigest: { hash: H('no root'), sizeBytes: 5 } }) as never));
    assert.equal(code, grpc.status.NOT_FOUND);
    await assertHealthy();
  });

  test('a DAG that would expand to 2^60 paths is walked once per distinct directory', async () => {
    let level = dirBlob({ files: [{ name: 'leaf', digest: { hash: EMPTY_HASH, sizeBytes: 0 } }] });
    const blobs = [level];
    for (let i = 0; i < 60; i++) {
      level = dirBlob({ directories: [{ name: 'a', digest: level.digest }, { name: 'b', digest: level.digest }] });
      blobs.push(level);
    }
    await upload(c.cas, blobs);
    const dirs = await treeDirectories(level.digest);
    assert.equal(dirs, 61);
    await assertHealthy();
  });

  test('a child whose stored blob is its own parent (a cycle in damaged storage) terminates', async () => {
    // A real cycle cannot be hashed, so it is planted in the data directory behind the server's
    // back: the blob stored under the child's digest is the parent Directory itself.
    const childHash = H(`claimed child ${Date.now()}`);
    let size = 0;
    let parent = dirBlob({});
    for (let i = 0; i < 4; i++) {
      parent = dirBlob({ directories: [{ name: 'loop', digest: { hash: childHash, sizeBytes: size } }] });
      size = parent.data.length;
    }
    assert.equal(rex.Directory.decode(parent.data).directories[0]!.digest!.sizeBytes, parent.data.length);
    await upload(c.cas, [parent]);
    const shard = path.join(server.dataDir, 'instances', '_', 'cas', childHash.slice(0, 2));
    mkdirSync(shard, { recursive: true });
    writeFileSync(path.join(shard, childHash), parent.data);
    // The damaged child never comes back as a Directory, and the walk ends.
    assert.equal(await treeDirectories(parent.digest), 1);
    if (docker) {
      const action = await actionWithRoot(parent, []);
      const res = await executeToEnd(exec, { actionDigest: action.actionDigest, skipCacheLookup: true });
      assert.notEqual(res.status?.code ?? 0, 0, 'an input tree with a damaged blob does not run');
    }
    await assertHealthy();
  });

  async function treeDirectories(root: rex.IDigest): Promise<number> {
    let n = 0;
    for await (const page of c.cas.GetTree({ rootDigest: root }) as AsyncIterable<rex.GetTreeResponse>) n += page.directories.length;
    return n;
  }
});

// --- Execute: paths in Directory trees and Commands ------------------------------------------

/** An action running `true` (or args) over the given input root. */
async function actionWithRoot(root: Blob, extra: Blob[], command: Partial<rex.ICommand> = {}): Promise<{ actionDigest: rex.IDigest }> {
  const platform = { properties: [{ name: 'container-image', value: TOOLCHAIN }] };
  const cmd = blob(rex.Command.encode({ arguments: ['true'], environmentVariables: [{ name: 'PATH', value: '/usr/bin:/bin' }], platform, ...command }).finish());
  const action = blob(rex.Action.encode({ commandDigest: cmd.digest, inputRootDigest: root.digest, platform, doNotCache: true }).finish());
  await upload(c.cas, [action, cmd, root, ...extra]);
  return { actionDigest: action.digest };
}

describe('Execute refuses escaping and malformed trees and commands', () => {
  const fileBlob = blob('input file content');
  const file = (name: string) => ({ name, digest: fileBlob.digest });
  const dirBlob = (d: rex.IDirectory) => blob(rex.Directory.encode(d).finish());
  const sub = dirBlob({ files: [file('inner')] });

  const trees: [string, rex.IDirectory][] = [
    ['file named ..', { files: [file('..')] }],
    ['file named .', { files: [file('.')] }],
    ['empty file name', { files: [file('')] }],
    ['file name with /', { files: [file('a/b')] }],
    ['absolute file name', { files: [file('/etc/passwd')] }],
    ['file name with NUL', { files: [file('a\0b')] }],
    ['directory named ..', { directories: [{ name: '..', digest: sub.digest }] }],
    ['directory name climbing', { directories: [{ name: '../../x', digest: sub.digest }] }],
    ['symlink to an absolute path', { symlinks: [{ name: 'l', target: '/etc/shadow' }] }],
    ['symlink climbing out', { symlinks: [{ name: 'l', target: '../../../etc' }] }],
    ['symlink climbing out through a subdirectory', { directories: [{ name: 'd', digest: sub.digest }], symlinks: [{ name: 'l', target: 'd/../../x' }] }],
    ['symlink chain escaping', { symlinks: [{ name: 'up', target: '..' }, { name: 'x', target: 'up/..' }] }],
    ['symlink with an empty target', { symlinks: [{ name: 'l', target: '' }] }],
    ['symlink named ..', { symlinks: [{ name: '..', target: 'a' }] }],
    ['symlink loop', { symlinks: [{ name: 'a', target: 'b/x' }, { name: 'b', target: 'a/x' }] }],
    ['duplicate file names', { files: [file('a'), file('a')] }],
    ['unsorted file names', { files: [file('b'), file('a')] }],
    ['unsorted directories', { directories: [{ name: 'b', digest: sub.digest }, { name: 'a', digest: sub.digest }] }],
    ['a name used by a file and a directory', { files: [file('x')], directories: [{ name: 'x', digest: sub.digest }] }],
    ['a name used by a file and a symlink', { files: [file('x')], symlinks: [{ name: 'x', target: 'y' }] }],
    ['file with a malformed digest', { files: [{ name: 'f', digest: { hash: 'nope', sizeBytes: 3 } }] }],
    ['file with a negative size', { files: [{ name: 'f', digest: { hash: fileBlob.digest.hash, sizeBytes: -3 } }] }],
  ];

  test('input roots with escaping names, symlinks, duplicates or unsorted entries: INVALID_ARGUMENT', { skip: noDocker }, async () => {
    for (const [what, tree] of trees) {
      const root = dirBlob(tree);
      const action = await actionWithRoot(root, [fileBlob, sub]);
      const res = await executeToEnd(exec, { actionDigest: action.actionDigest, skipCacheLookup: true });
      assert.equal(res.status?.code, grpc.status.INVALID_ARGUMENT, `${what}: ${grpc.status[res.status?.code ?? 0]} ${res.status?.message}`);
    }
    // The same refusals one level down.
    const bad = dirBlob({ files: [file('..')] });
    const action = await actionWithRoot(dirBlob({ directories: [{ name: 'ok', digest: bad.digest }] }), [fileBlob, bad]);
    const res = await executeToEnd(exec, { actionDigest: action.actionDigest, skipCacheLookup: true });
    assert.equal(res.status?.code, grpc.status.INVALID_ARGUMENT, res.status?.message ?? '');
    await assertHealthy();
  });

  test('output paths and working directories that leave the input root: Execute itself refuses', { skip: noDocker }, async () => {
    const root = dirBlob({ files: [file('in')] });
    const cases: [string, Partial<rex.ICommand>][] = [
      ['output path ..', { outputPaths: ['..'] }],
      ['output path climbing', { outputPaths: ['out/../../escape'] }],
      ['absolute output path', { outputPaths: ['/etc/passwd'] }],
      ['output path with NUL', { outputPaths: ['a\0b'] }],
      ['empty output path', { outputPaths: [''] }],
      ['output path with an empty segment', { outputPaths: ['a//b'] }],
      ['output path with a trailing slash', { outputPaths: ['a/'] }],
      ['output path .', { outputPaths: ['.'] }],
      ['legacy output file climbing', { outputFiles: ['../x'] }],
      ['legacy output directory absolute', { outputDirectories: ['/usr'] }],
      ['working directory climbing', { workingDirectory: '../..' }],
      ['absolute working directory', { workingDirectory: '/' }],
      ['no arguments', { arguments: [] }],
    ];
    for (const [what, command] of cases) {
      const action = await actionWithRoot(root, [fileBlob], command);
      const err = await failure(collect(exec.Execute({ actionDigest: action.actionDigest, skipCacheLookup: true })));
      assert.equal(err.code, grpc.status.INVALID_ARGUMENT, `${what}: ${grpc.status[err.code]} ${err.details}`);
    }
    await assertHealthy();
  });

  test('a DAG expanding to 2^40 input paths is refused, not materialized', { skip: noDocker }, async () => {
    let level = dirBlob({ files: [file('leaf')] });
    const blobs = [level, fileBlob];
    for (let i = 0; i < 40; i++) {
      level = dirBlob({ directories: [{ name: 'a', digest: level.digest }, { name: 'b', digest: level.digest }] });
      blobs.push(level);
    }
    const before = rssBytes(server.child.pid!);
    const action = await actionWithRoot(level, blobs);
    const res = await executeToEnd(exec, { actionDigest: action.actionDigest, skipCacheLookup: true });
    assert.equal(res.status?.code, grpc.status.RESOURCE_EXHAUSTED, res.status?.message ?? '');
    const grown = rssBytes(server.child.pid!) - before;
    assert.ok(grown < 300 * 1024 * 1024, `server RSS grew by ${grown} bytes`);
    await assertHealthy();
  });
});

// --- slow clients and the limits ----------------------------------------------------------------

describe('slow clients and resource limits', () => {
  test('a Write that goes quiet is cancelled with DEADLINE_EXCEEDED and can be resumed', async () => {
    const data = randomBytes(300_000);
    const d = blob(data).digest;
    const resourceName = `uploads/${randomUUIDish()}/blobs/${d.hash}/${d.sizeBytes}`;
    // Sends 100 000 bytes, then nothing, never ending the stream. The client's own deadline is
    // far away: what ends the call is the server's idle limit.
    const err = await new Promise<grpc.ServiceError | null>((resolve) => {
      const call = c.bs.Write(new grpc.Metadata(), { deadline: Date.now() + 120_000 }, (e) => resolve(e));
      call.write({ resourceName, writeOffset: 0, data: data.subarray(0, 100_000) });
    });
    assert.ok(err, 'the quiet Write was ended by the server');
    assert.equal(err.code, grpc.status.DEADLINE_EXCEEDED, err.details);
    assert.match(err.details, /sent nothing for 2000 ms/);
    assert.match(err.details, /QueryWriteStatus/);
    const st = await unary(c.bs, 'QueryWriteStatus', { resourceName });
    assert.equal(st.committedSize, 100_000, 'the bytes received before the timeout were kept');
    assert.equal(st.complete, false);
    const res = await writeStream(c.bs, [{ resourceName, writeOffset: 100_000, data: data.subarray(100_000), finishWrite: true }]);
    assert.equal(res.committedSize, data.length);
    assert.deepEqual(await readAll(c.bs, { resourceName: `blobs/${d.hash}/${d.sizeBytes}` }), data);
    await assertHealthy();
  });

  test('a Write that never sends its first message is cancelled too', async () => {
    const err = await new Promise<grpc.ServiceError | null>((resolve) => {
      c.bs.Write(new grpc.Metadata(), { deadline: Date.now() + 120_000 }, (e) => resolve(e));
    });
    assert.equal(err?.code, grpc.status.DEADLINE_EXCEEDED, err?.details);
    await assertHealthy();
  });

  test('the server advertises --max-concurrent-streams; calls beyond it wait and still finish', async () => {
    const session = http2.connect(`http://${server.address}`);
    try {
      const settings = await new Promise<http2.Settings>((resolve, reject) => {
        session.once('remoteSettings', resolve);
        session.once('error', reject);
      });
      assert.equal(settings.maxConcurrentStreams, MAX_STREAMS);
    } finally {
      session.destroy();
    }
    // One channel: every call below shares one connection. MAX_STREAMS + 4 quiet Writes, then a
    // FindMissingBlobs: the quiet ones end at the idle limit, which frees streams for the rest.
    const one = new RawClient(server.address);
    try {
      const quiet = Array.from({ length: MAX_STREAMS + 4 }, () =>
        new Promise<grpc.status>((resolve) => {
          const call = one.client.makeClientStreamRequest(RAW_METHODS.Write!.path, (b: Buffer) => b, (b: Buffer) => b, new grpc.Metadata(), { deadline: Date.now() + 120_000 }, (e) => resolve(e ? e.code : grpc.status.OK));
          void call;
        }),
      );
      const fm = one.call(RAW_METHODS.FindMissingBlobs!, encode.findMissing({ blobDigests: [{ hash: EMPTY_HASH, sizeBytes: 0 }] }), 120_000);
      const codes = await Promise.all(quiet);
      assert.deepEqual([...new Set(codes)], [grpc.status.DEADLINE_EXCEEDED]);
      assert.equal((await fm).code, grpc.status.OK);
    } finally {
      one.close();
    }
    await assertHealthy();
  });

  test('an action flooding stdout is killed at --max-output-bytes with RESOURCE_EXHAUSTED', { skip: noDocker }, async () => {
    const action = buildAction({ args: ['sh', '-c', 'head -c 50000000 /dev/zero; echo done'], doNotCache: true, salt: randomUUIDish() });
    await upload(c.cas, action.blobs);
    const res = await executeToEnd(exec, { actionDigest: action.actionDigest });
    assert.equal(res.status?.code, grpc.status.RESOURCE_EXHAUSTED, res.status?.message ?? '');
    assert.match(res.status?.message ?? '', /more than 1048576 bytes to stdout or stderr/);
    assert.ok(res.result, 'the partial result is reported');
    assert.ok((res.result!.stdoutDigest?.sizeBytes ?? 0) < 50_000_000, 'output stopped early');
    assert.ok((res.result!.stdoutDigest?.sizeBytes ?? 0) >= MAX_OUTPUT);
    await assertHealthy();
  });
});
