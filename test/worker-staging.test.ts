// Worker staging against a real FileStorage: the content cache, input root materialization and
// output collection. No mocks: blobs go through LocalContentAccess into files on disk.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, promises as fs, rmSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { status } from '@grpc/grpc-js';
import { rex } from '../apis';
import { Digest, digestKey, digestOf } from '../cas/digest';
import { FileStorage } from '../cas/file-storage';
import { RpcError } from '../server/rpc-error';
import { FileCache } from '../worker/file-cache';
import { createOutputParents, DirectoryCache, materializeInputRoot } from '../worker/input-tree';
import { collectOutputs } from '../worker/output-collector';
import { LocalContentAccess } from '../worker/local-content-access';
import { inputTree } from './helpers/actions';

const INSTANCE = 'staging';
const isRoot = process.getuid?.() === 0;
let tmp: string;
let storage: FileStorage;
let access: LocalContentAccess;
let counter = 0;

before(async () => {
  tmp = mkdtempSync(path.join(os.tmpdir(), 'reapi-staging-'));
  storage = await FileStorage.open(path.join(tmp, 'data'));
  access = new LocalContentAccess(storage);
});

after(() => rmSync(tmp, { recursive: true, force: true }));

/** A fresh, empty directory under the test's temp dir. */
async function freshDir(name: string): Promise<string> {
  const dir = path.join(tmp, `${name}-${++counter}`);
  await fs.mkdir(dir, { recursive: true });
  return dir;
}

async function putBlob(data: string | Buffer): Promise<Digest> {
  const buf = Buffer.from(data);
  const digest = digestOf(buf);
  await access.uploadBlob(INSTANCE, digest, buf);
  return digest;
}

function encodeDirectory(dir: rex.Directory.$Properties): { digest: Digest; data: Buffer } {
  const data = Buffer.from(rex.Directory.encode(dir).finish());
  return { digest: digestOf(data), data };
}

async function putDirectory(dir: rex.Directory.$Properties): Promise<Digest> {
  const { digest, data } = encodeDirectory(dir);
  await access.uploadBlob(INSTANCE, digest, data);
  return digest;
}

async function readBlob(digest: rex.Digest.$Properties | null | undefined): Promise<Buffer> {
  assert.ok(digest);
  const blob = await storage.cas(INSTANCE).read({ hash: digest.hash ?? '', sizeBytes: Number(digest.sizeBytes ?? 0) });
  assert.ok(blob, `blob ${digest.hash} should be in the CAS`);
  return blob;
}

async function rpcFailure(p: Promise<unknown>, code: status, messageIncludes: string[] = []): Promise<RpcError> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof RpcError, `expected an RpcError, got ${(err as Error).stack}`);
    assert.equal(err.code, code, err.message);
    for (const text of messageIncludes) assert.ok(err.message.includes(text), `${JSON.stringify(err.message)} should mention ${text}`);
    return err;
  }
  assert.fail('expected a rejection');
}

async function materialize(rootDigest: Digest, cache: FileCache, extra: { directoryCache?: DirectoryCache } = {}) {
  const dest = await freshDir('root');
  const staged = await materializeInputRoot({ instanceName: INSTANCE, rootDigest, access, cache, dest, uid: 1000, gid: 1000, ...extra });
  return { dest, staged };
}

describe('FileCache', () => {
  test('fetches once, also for concurrent callers, and keeps content read-only', async () => {
    const cache = new FileCache(await freshDir('cache'), access);
    const digest = await putBlob('cached once');
    const paths = await Promise.all([1, 2, 3, 4, 5].map(async () => (await cache.pin(INSTANCE, digest, false)).path));
    assert.equal(new Set(paths).size, 1);
    assert.equal(cache.stats().fetches, 1);
    await cache.pin(INSTANCE, digest, false);
    assert.equal(cache.stats().fetches, 1, 'second pin() must not refetch');
    assert.equal(await fs.readFile(paths[0], 'utf8'), 'cached once');
    assert.equal((await fs.stat(paths[0])).mode & 0o7777, 0o444);

    // The executable variant is its own inode (modes are per inode), copied locally.
    const exe = (await cache.pin(INSTANCE, digest, true)).path;
    assert.notEqual(exe, paths[0]);
    assert.equal((await fs.stat(exe)).mode & 0o7777, 0o555);
    assert.notEqual((await fs.stat(exe)).ino, (await fs.stat(paths[0])).ino);
    assert.equal(cache.stats().fetches, 1);
    assert.deepEqual({ files: cache.stats().files, pinned: cache.stats().pinnedFiles }, { files: 2, pinned: 2 });

    // The server's own CAS on the same disk: the plain file is the CAS's read-only inode, not a
    // second copy; the executable one cannot be (it would make the CAS file executable).
    const stored = await fs.stat(path.join(storage.root, 'instances', INSTANCE, 'cas', digest.hash.slice(0, 2), digest.hash));
    assert.equal((await fs.stat(paths[0])).ino, stored.ino);
    assert.equal(stored.mode & 0o7777, 0o444);
  });

  test('never links a blob the CAS took over from an action (it may carry the action\'s extended attributes)', async () => {
    const output = path.join(await freshDir('action'), 'out.o');
    await fs.writeFile(output, 'an action wrote this');
    const digest = digestOf(Buffer.from('an action wrote this'));
    await access.adoptFile(INSTANCE, digest, output, await fs.lstat(output));
    const stored = await fs.stat(path.join(storage.root, 'instances', INSTANCE, 'cas', digest.hash.slice(0, 2), digest.hash));
    const cache = new FileCache(await freshDir('cache'), access);
    const cached = await fs.stat((await cache.pin(INSTANCE, digest, false)).path);
    assert.notEqual(cached.ino, stored.ino, 'a copy, not the action\'s inode');
    assert.equal(await fs.readFile(cache.pathOf(digest, false), 'utf8'), 'an action wrote this');
  });

  test('a missing blob is FAILED_PRECONDITION naming it', async () => {
    const cache = new FileCache(await freshDir('cache'), access);
    const absent = digestOf(Buffer.from('never uploaded'));
    const err = await rpcFailure(cache.pin(INSTANCE, absent, false), status.FAILED_PRECONDITION, [absent.hash]);
    assert.deepEqual(err.missing, [digestKey(absent)]);
  });

  test('refuses content that does not match its digest, leaving nothing behind', async () => {
    const dir = await freshDir('cache');
    const cache = new FileCache(dir, access);
    const digest = await putBlob('will be corrupted');
    // Corrupt the stored blob behind the store's back (same size, different bytes).
    const stored = path.join(storage.root, 'instances', INSTANCE, 'cas', digest.hash.slice(0, 2), digest.hash);
    await fs.chmod(stored, 0o644);
    await fs.writeFile(stored, 'WILL BE CORRUPTED');
    await assert.rejects(cache.pin(INSTANCE, digest, false), new RegExp(`${digest.hash}.*refusing`));
    await assert.rejects(fs.stat(cache.pathOf(digest, false)), { code: 'ENOENT' });
    assert.deepEqual(await fs.readdir(path.join(dir, 'tmp')), []);
  });

  test('evicts least recently used unpinned files only', async () => {
    // Room for two 6-byte files, not three.
    const cache = new FileCache(await freshDir('cache'), access, { maxBytes: 13 });
    const [a, b, c, d] = await Promise.all(['aaaaaa', 'bbbbbb', 'cccccc', 'dddddd'].map(putBlob));
    const [pinA, pinB, pinC] = [await cache.pin(INSTANCE, a, false), await cache.pin(INSTANCE, b, false), await cache.pin(INSTANCE, c, false)];
    // All pinned: over budget, but nothing may go.
    assert.equal(cache.stats().bytes, 18);
    for (const x of [a, b, c]) assert.ok(await exists(cache.pathOf(x, false)));

    cache.unpinFile(pinA); // a is unpinned while over budget: evicted at once
    await cache.evictionsSettled();
    assert.equal(await exists(cache.pathOf(a, false)), false);
    assert.equal(cache.stats().bytes, 12);

    cache.unpinFile(pinB);
    cache.unpinFile(pinC);
    cache.unpinFile(await cache.pin(INSTANCE, b, false)); // b is now more recently used than c
    await cache.pin(INSTANCE, d, false);
    await cache.evictionsSettled();
    assert.equal(await exists(cache.pathOf(c, false)), false, 'c was the least recently used');
    assert.ok(await exists(cache.pathOf(b, false)));
    assert.ok(await exists(cache.pathOf(d, false)));
    assert.deepEqual([cache.stats().bytes, cache.stats().files, cache.stats().pinnedFiles], [12, 2, 1]);

    // Evicted content comes back on demand (fetched again).
    const fetches = cache.stats().fetches;
    await cache.pin(INSTANCE, a, false);
    assert.equal(await fs.readFile(cache.pathOf(a, false), 'utf8'), 'aaaaaa');
    assert.equal(cache.stats().fetches, fetches + 1);
    assert.throws(() => cache.unpinFile(pinC), /not pinned/);
  });

  test('a new cache on the same directory adopts complete files and drops debris', async () => {
    const dir = await freshDir('cache');
    const digest = await putBlob('survives restarts');
    await new FileCache(dir, access).pin(INSTANCE, digest, true);
    await fs.writeFile(path.join(dir, 'tmp', 'partial.tmp'), 'x');
    await fs.writeFile(path.join(dir, digest.hash.slice(0, 2), 'garbage'), 'x');
    const again = new FileCache(dir, access);
    await again.pin(INSTANCE, digest, true);
    assert.equal(again.stats().fetches, 0);
    assert.deepEqual(await fs.readdir(path.join(dir, 'tmp')), []);
    assert.deepEqual(await fs.readdir(path.join(dir, digest.hash.slice(0, 2))), [`${digest.hash}-${digest.sizeBytes}.x`]);
  });
});

describe('materializeInputRoot', () => {
  test('lays out files, executables, directories and symlinks', async () => {
    const cache = new FileCache(await freshDir('cache'), access);
    const hello = await putBlob('hello\n');
    const script = await putBlob('#!/bin/sh\necho hi\n');
    const empty = await putBlob('');
    const leaf = await putDirectory({ files: [{ name: 'b.txt', digest: hello }] });
    const sub = await putDirectory({
      files: [{ name: 'b.txt', digest: hello }],
      directories: [{ name: 'deeper', digest: leaf }],
      symlinks: [{ name: 'up', target: '../a.txt' }],
    });
    const root = await putDirectory({
      files: [
        { name: 'a.txt', digest: hello },
        { name: 'empty', digest: empty },
        { name: 'run.sh', digest: script, isExecutable: true },
      ],
      directories: [
        { name: 'sub', digest: sub },
        { name: 'sub2', digest: sub },
      ],
      symlinks: [{ name: 'link', target: 'sub/b.txt' }],
    });
    const directoryCache = new DirectoryCache();
    const { dest, staged } = await materialize(root, cache, { directoryCache });
    assert.equal(staged.files, 7);
    assert.equal(staged.bytes, 6 * 5 + 18);

    assert.equal(await fs.readFile(path.join(dest, 'a.txt'), 'utf8'), 'hello\n');
    assert.equal(await fs.readFile(path.join(dest, 'sub2/deeper/b.txt'), 'utf8'), 'hello\n');
    assert.equal(await fs.readFile(path.join(dest, 'empty'), 'utf8'), '');
    assert.equal((await fs.stat(path.join(dest, 'a.txt'))).mode & 0o7777, 0o444);
    assert.equal((await fs.stat(path.join(dest, 'run.sh'))).mode & 0o7777, 0o555);

    // Hardlinked from the cache: same inode, no copy.
    const linked = await fs.stat(path.join(dest, 'sub/b.txt'));
    assert.equal(linked.ino, (await fs.stat(cache.pathOf(hello, false))).ino);
    assert.equal(linked.nlink, 7); // the CAS file (which the cache file is too), a.txt, and b.txt in sub, sub2 and both deeper/
    assert.equal((await fs.stat(path.join(dest, 'run.sh'))).ino, (await fs.stat(cache.pathOf(script, true))).ino);

    assert.equal(await fs.readlink(path.join(dest, 'link')), 'sub/b.txt');
    assert.equal(await fs.readlink(path.join(dest, 'sub2/up')), '../a.txt');
    assert.equal(await fs.readFile(path.join(dest, 'sub/up'), 'utf8'), 'hello\n');

    for (const dir of ['.', 'sub', 'sub2/deeper']) {
      const st = await fs.stat(path.join(dest, dir));
      assert.equal(st.mode & 0o7777, 0o755, dir);
      if (isRoot) assert.deepEqual([st.uid, st.gid], [1000, 1000], dir);
    }
    if (isRoot) {
      assert.equal((await fs.stat(path.join(dest, 'a.txt'))).uid, 0, 'cache files stay root-owned');
      assert.equal((await fs.lstat(path.join(dest, 'link'))).uid, 1000);
    }

    // Every distinct (digest, mode) is pinned exactly once until release().
    assert.equal(cache.stats().pinnedFiles, 3);
    staged.release();
    staged.release(); // idempotent
    assert.equal(cache.stats().pinnedFiles, 0);

    // Checked Directories are cached across actions; the second layout fetches no file either.
    assert.equal(directoryCache.size, 3);
    const fetches = cache.stats().fetches;
    const second = await materialize(root, cache, { directoryCache });
    assert.equal(await fs.readFile(path.join(second.dest, 'sub/deeper/b.txt'), 'utf8'), 'hello\n');
    assert.equal(cache.stats().fetches, fetches);
    second.staged.release();
  });

  test('an empty input root is an empty directory', async () => {
    const cache = new FileCache(await freshDir('cache'), access);
    const { dest, staged } = await materialize(await putDirectory({}), cache);
    assert.deepEqual(await fs.readdir(dest), []);
    assert.deepEqual([staged.files, staged.bytes], [0, 0]);
  });

  describe('rejects invalid directories with INVALID_ARGUMENT', () => {
    const cases: [string, () => Promise<rex.Directory.$Properties>, string][] = [
      ['a ".." name', async () => ({ files: [{ name: '..', digest: await putBlob('x') }] }), '".."'],
      ['a "." name', async () => ({ directories: [{ name: '.', digest: await putDirectory({}) }] }), '"."'],
      ['a "/" in a name', async () => ({ files: [{ name: 'a/b', digest: await putBlob('x') }] }), '"a/b"'],
      ['an empty name', async () => ({ files: [{ name: '', digest: await putBlob('x') }] }), '""'],
      ['a NUL in a name', async () => ({ files: [{ name: 'a\0b', digest: await putBlob('x') }] }), 'single path component'],
      ['unsorted files', async () => ({ files: [{ name: 'b', digest: await putBlob('x') }, { name: 'a', digest: await putBlob('x') }] }), 'not sorted'],
      ['duplicate files', async () => ({ files: [{ name: 'a', digest: await putBlob('x') }, { name: 'a', digest: await putBlob('x') }] }), 'more than once'],
      ['a name used by a file and a directory', async () => ({ files: [{ name: 'a', digest: await putBlob('x') }], directories: [{ name: 'a', digest: await putDirectory({}) }] }), 'more than once'],
      ['a name used by a directory and a symlink', async () => ({ directories: [{ name: 'a', digest: await putDirectory({}) }], symlinks: [{ name: 'a', target: 'b' }] }), 'more than once'],
      ['a symlink leaving the root', async () => ({ symlinks: [{ name: 'out', target: '../x' }] }), 'points outside'],
      ['an absolute symlink', async () => ({ symlinks: [{ name: 'abs', target: '/etc/passwd' }] }), 'absolute'],
      ['an empty symlink target', async () => ({ symlinks: [{ name: 'nothing', target: '' }] }), 'empty'],
      ['a file without digest', async () => ({ files: [{ name: 'a' }] }), 'file "a"'],
      ['a nested symlink leaving the root', async () => ({ directories: [{ name: 'd', digest: await putDirectory({ symlinks: [{ name: 'l', target: 'x/../../../etc' }] }) }] }), '"l"'],
      [
        'a symlink escaping through another symlink',
        async () => ({ directories: [{ name: 'd', digest: await putDirectory({ symlinks: [{ name: 'esc', target: 'up/..' }, { name: 'up', target: '..' }] }) }] }),
        '"esc"',
      ],
      ['a symlink loop', async () => ({ symlinks: [{ name: 'a', target: 'b/x' }, { name: 'b', target: 'a/x' }] }), 'loops'],
    ];
    for (const [name, build, mentions] of cases) {
      test(name, async () => {
        const cache = new FileCache(await freshDir('cache'), access);
        const directory = await build();
        const digest = await putDirectory(directory);
        const dest = await freshDir('root');
        // The message names the offending directory (the root here, or its child).
        const err = await rpcFailure(materializeInputRoot({ instanceName: INSTANCE, rootDigest: digest, access, cache, dest }), status.INVALID_ARGUMENT, [mentions]);
        assert.match(err.message, /input directory [0-9a-f]{64}\/\d+/);
        assert.deepEqual(await fs.readdir(dest), [], 'nothing is created for an invalid tree');
        assert.equal(cache.stats().pinnedFiles, 0);
      });
    }

    test('symlinks that stay inside are accepted, even through other symlinks', async () => {
      const cache = new FileCache(await freshDir('cache'), access);
      const d = await putDirectory({ symlinks: [{ name: 'ok', target: 'up/d/../d' }, { name: 'up', target: '..' }, { name: 'x', target: '../d/./missing/..' }] });
      const { dest } = await materialize(await putDirectory({ directories: [{ name: 'd', digest: d }] }), cache);
      assert.equal(await fs.readlink(path.join(dest, 'd/ok')), 'up/d/../d');
    });
  });

  test('missing blobs are all reported at once as FAILED_PRECONDITION', async () => {
    const cache = new FileCache(await freshDir('cache'), access);
    const present = await putBlob('present');
    const absentFile1 = digestOf(Buffer.from('absent one'));
    const absentFile2 = digestOf(Buffer.from('absent two'));
    const absentDirectory = encodeDirectory({ files: [{ name: 'z', digest: present }] }).digest;
    const sub = await putDirectory({ files: [{ name: 'two', digest: absentFile2 }, { name: 'two-again', digest: absentFile2 }] });
    const root = await putDirectory({
      files: [
        { name: 'one', digest: absentFile1 },
        { name: 'present', digest: present },
      ],
      directories: [
        { name: 'gone', digest: absentDirectory },
        { name: 'sub', digest: sub },
      ],
    });
    const dest = await freshDir('root');
    const err = await rpcFailure(materializeInputRoot({ instanceName: INSTANCE, rootDigest: root, access, cache, dest }), status.FAILED_PRECONDITION);
    assert.deepEqual(err.missing, [absentFile1, absentFile2, absentDirectory].map(digestKey).sort());
    assert.deepEqual(await fs.readdir(dest), []);
    assert.equal(cache.stats().fetches, 0);

    // A missing root is reported the same way; another instance's blobs do not count.
    const missingRoot = encodeDirectory({ symlinks: [{ name: 'x', target: 'y' }] }).digest;
    const err2 = await rpcFailure(
      materializeInputRoot({ instanceName: 'other-instance', rootDigest: root, access, cache, dest, directoryCache: new DirectoryCache() }),
      status.FAILED_PRECONDITION,
    );
    assert.deepEqual(err2.missing, [digestKey(root)]);
    const err3 = await rpcFailure(materializeInputRoot({ instanceName: INSTANCE, rootDigest: missingRoot, access, cache, dest }), status.FAILED_PRECONDITION);
    assert.deepEqual(err3.missing, [digestKey(missingRoot)]);
  });

  test('a cached Directory is still checked for presence in this instance', async () => {
    const cache = new FileCache(await freshDir('cache'), access);
    const directoryCache = new DirectoryCache();
    const root = await putDirectory({ files: [{ name: 'f', digest: await putBlob('shared') }] });
    (await materialize(root, cache, { directoryCache })).staged.release();
    const err = await rpcFailure(
      materializeInputRoot({ instanceName: 'another', rootDigest: root, access, cache, dest: await freshDir('root'), directoryCache }),
      status.FAILED_PRECONDITION,
    );
    assert.ok(err.missing.includes(digestKey(root)));
  });

  test('the Directory cache holds a bounded number of entries, and a cached tree is laid out the same', async () => {
    const cache = new FileCache(await freshDir('cache'), access);
    const content = await putBlob('bounded');
    const small = await putDirectory({ files: [{ name: 'f', digest: content }] }); // 2 entries with itself
    const big = await putDirectory({ files: ['a', 'b', 'c', 'd'].map((name) => ({ name, digest: content })) }); // 5
    const directoryCache = new DirectoryCache(6);
    (await materialize(small, cache, { directoryCache })).staged.release();
    assert.equal(directoryCache.size, 1);
    (await materialize(big, cache, { directoryCache })).staged.release(); // 2 + 5 > 6: emptied first
    assert.equal(directoryCache.size, 1);
    assert.ok(directoryCache.get(digestKey(big)));
    assert.equal(directoryCache.get(digestKey(small)), undefined);
    const again = await materialize(big, cache, { directoryCache });
    assert.deepEqual((await fs.readdir(again.dest)).sort(), ['a', 'b', 'c', 'd']);
    again.staged.release();
  });

  test('createOutputParents makes the parents (not the outputs) owned by the action user', async () => {
    const root = await freshDir('root');
    await fs.mkdir(path.join(root, 'w/existing'), { recursive: true });
    await createOutputParents(root, 'w', ['out/deep/file.o', 'existing/x', 'top', 'gen/dir'], 1000, 1000);
    for (const dir of ['w/out', 'w/out/deep', 'w/gen']) {
      const st = await fs.stat(path.join(root, dir));
      assert.ok(st.isDirectory());
      if (isRoot) assert.deepEqual([st.uid, st.gid, st.mode & 0o777], [1000, 1000, 0o755], dir);
    }
    assert.equal(await exists(path.join(root, 'w/out/deep/file.o')), false);
    assert.equal(await exists(path.join(root, 'w/gen/dir')), false);
    await fs.writeFile(path.join(root, 'w/blocker'), '');
    await rpcFailure(createOutputParents(root, 'w', ['blocker/x'], 1000, 1000), status.INVALID_ARGUMENT, ['blocker']);
    await fs.symlink('/tmp', path.join(root, 'w/escape'));
    await rpcFailure(createOutputParents(root, 'w', ['escape/x'], 1000, 1000), status.INVALID_ARGUMENT, ['outside']);
  });
});

describe('a reused input root', () => {
  /** Every path under root with its content (files), link target (symlinks) or mode (directories). */
  async function listing(root: string): Promise<string[]> {
    const out: string[] = [];
    const visit = async (dir: string, rel: string) => {
      for (const name of (await fs.readdir(dir)).sort()) {
        const at = path.join(dir, name);
        const st = await fs.lstat(at);
        const p = rel ? `${rel}/${name}` : name;
        if (st.isDirectory()) {
          out.push(`${p}/ ${(st.mode & 0o7777).toString(8)}`);
          await visit(at, p);
        } else if (st.isSymbolicLink()) out.push(`${p} -> ${await fs.readlink(at)}`);
        else out.push(`${p}: ${await fs.readFile(at, 'utf8')}`);
      }
    };
    await visit(root, '');
    return out;
  }

  async function tree(files: Record<string, string>): Promise<Digest> {
    const { root, blobs } = inputTree(Object.entries(files));
    for (const b of [root, ...blobs]) await access.uploadBlob(INSTANCE, b.digest, b.data);
    return root.digest;
  }

  test('the staging remembers the tree it left, and trusts none of it that was changed since', async () => {
    // Staged again and again into one directory, as in a container's own input root. The staging
    // skips listing directories nothing changed since it left them (their mtime and ctime show
    // it); what the "actions" here do between stagings must show up all the same, also a change
    // made and then dated back with touch (ctime), and the next tree must come out exact.
    const cache = new FileCache(await freshDir('cache'), access);
    const slot = await freshDir('slot');
    const dest = path.join(slot, 'root');
    const stage = async (files: Record<string, string>) =>
      (await materializeInputRoot({ instanceName: INSTANCE, rootDigest: await tree(files), access, cache, dest, uid: 1000, gid: 1000, timestampProbe: path.join(slot, 'probe') })).release();
    const first = { 'inc/a.h': 'A', 'inc/b.h': 'B', 'inc/sub/c.h': 'C', 'src/x.c': 'X' };
    await stage(first);
    await stage(first);
    const inc = path.join(dest, 'inc');
    execFileSync('sh', ['-c', 'touch -r "$1" "$1/../when" && echo junk > "$1/junk.h" && touch -m -r "$1/../when" "$1" && rm "$1/../when"', 'sh', inc]);
    await fs.chmod(path.join(inc, 'sub'), 0o700);
    await fs.writeFile(path.join(dest, 'src/x.o'), 'output');
    await stage({ 'inc/a.h': 'A2', 'inc/b.h': 'B', 'inc/new.h': 'N', 'src/x.c': 'X', 'inc/sub/c.h': 'C' });
    assert.deepEqual(await listing(dest), ['inc/ 755', 'inc/a.h: A2', 'inc/b.h: B', 'inc/new.h: N', 'inc/sub/ 755', 'inc/sub/c.h: C', 'src/ 755', 'src/x.c: X']);
    // Untouched since: the remembered tree gives way to the next plan's.
    await stage({ 'inc/b.h': 'B', 'src/x.c': 'X2', 'src/y.c': 'Y' });
    assert.deepEqual(await listing(dest), ['inc/ 755', 'inc/b.h: B', 'src/ 755', 'src/x.c: X2', 'src/y.c: Y']);
    await stage(first);
    assert.deepEqual(await listing(dest), ['inc/ 755', 'inc/a.h: A', 'inc/b.h: B', 'inc/sub/ 755', 'inc/sub/c.h: C', 'src/ 755', 'src/x.c: X']);
  });

  test('a probe that cannot be written costs the memory, not the staging', async () => {
    const cache = new FileCache(await freshDir('cache'), access);
    const dest = path.join(await freshDir('slot'), 'root');
    const stage = async (files: Record<string, string>) =>
      (await materializeInputRoot({ instanceName: INSTANCE, rootDigest: await tree(files), access, cache, dest, uid: 1000, gid: 1000, timestampProbe: path.join(tmp, 'no-such-dir', 'probe') })).release();
    await stage({ 'a/x.h': 'X', 'b.c': 'B' });
    await fs.writeFile(path.join(dest, 'a/junk.h'), 'junk');
    await stage({ 'a/x.h': 'X', 'a/y.h': 'Y' });
    assert.deepEqual(await listing(dest), ['a/ 755', 'a/x.h: X', 'a/y.h: Y']);
  });
});

describe('collectOutputs', () => {
  function command(fields: rex.Command.$Properties): rex.Command {
    return rex.Command.create({ arguments: ['true'], ...fields });
  }

  /** An input root as an action might leave it, working directory "w". */
  async function actionRoot(): Promise<string> {
    const root = await freshDir('ran');
    const w = path.join(root, 'w');
    await fs.mkdir(path.join(w, 'out'), { recursive: true });
    await fs.writeFile(path.join(w, 'out/a.txt'), 'output a');
    await fs.writeFile(path.join(w, 'out/tool'), '#!/bin/sh\n', { mode: 0o755 });
    await fs.mkdir(path.join(w, 'gen/x'), { recursive: true });
    await fs.mkdir(path.join(w, 'gen/x2'), { recursive: true });
    await fs.mkdir(path.join(w, 'gen/empty'));
    await fs.writeFile(path.join(w, 'gen/x/y.txt'), 'same');
    await fs.writeFile(path.join(w, 'gen/x2/y.txt'), 'same');
    await fs.writeFile(path.join(w, 'gen/top.txt'), 'top');
    await fs.symlink('../../../../etc/passwd', path.join(w, 'gen/escape'));
    await fs.symlink('out/a.txt', path.join(w, 'link'));
    await fs.symlink('gen', path.join(w, 'dirlink'));
    return root;
  }

  async function decodeTree(d: rex.Digest.$Properties | null | undefined): Promise<rex.Tree> {
    return rex.Tree.decode(await readBlob(d));
  }

  test('output_paths: files, directories and symlinks, each as what it turned out to be', async () => {
    const root = await actionRoot();
    const result = await collectOutputs({
      instanceName: INSTANCE,
      access,
      root,
      workingDirectory: 'w',
      command: command({ workingDirectory: 'w', outputPaths: ['out/a.txt', 'out/tool', 'gen', 'link', 'never/made', 'missing'] }),
    });
    assert.deepEqual(
      result.outputFiles?.map((f) => [f.path, f.digest?.hash, f.isExecutable]),
      [
        ['out/a.txt', digestOf(Buffer.from('output a')).hash, false],
        ['out/tool', digestOf(Buffer.from('#!/bin/sh\n')).hash, true],
      ],
    );
    assert.equal((await readBlob(result.outputFiles?.[0].digest)).toString(), 'output a');
    assert.deepEqual(result.outputSymlinks, [{ path: 'link', target: 'out/a.txt' }]);
    assert.deepEqual([result.outputFileSymlinks, result.outputDirectorySymlinks], [[], []]);

    assert.equal(result.outputDirectories?.length, 1);
    const out = result.outputDirectories![0];
    assert.equal(out.path, 'gen');
    const tree = await decodeTree(out.treeDigest);
    const rootDir = tree.root as rex.Directory;
    assert.deepEqual(rootDir.directories.map((d) => d.name), ['empty', 'x', 'x2']);
    assert.deepEqual(rootDir.files.map((f) => [f.name, f.digest?.hash]), [['top.txt', digestOf(Buffer.from('top')).hash]]);
    // The escaping symlink is recorded as a symlink, never followed.
    assert.deepEqual(rootDir.symlinks.map((s) => [s.name, s.target]), [['escape', '../../../../etc/passwd']]);
    // x and x2 are identical: stored once. Plus the empty directory.
    assert.equal(tree.children.length, 2);
    assert.deepEqual(rootDir.directories[1].digest, rootDir.directories[2].digest);
    // root_directory_digest is the encoded root, and every Directory is in the CAS too.
    assert.deepEqual(out.rootDirectoryDigest, encodeDirectory(rootDir).digest);
    assert.deepEqual(rex.Directory.decode(await readBlob(out.rootDirectoryDigest)).files[0].name, 'top.txt');
    for (const child of tree.children) assert.ok(await readBlob(encodeDirectory(child).digest));
    assert.equal((await readBlob((tree.children as rex.Directory[]).find((c) => c.files.length)!.files[0].digest)).toString(), 'same');
  });

  test('output_files / output_directories: the pre-2.1 fields and their symlink lists', async () => {
    const root = await actionRoot();
    const result = await collectOutputs({
      instanceName: INSTANCE,
      access,
      root,
      workingDirectory: 'w',
      command: command({ workingDirectory: 'w', outputFiles: ['out/a.txt', 'link', 'absent.o'], outputDirectories: ['gen/x', 'dirlink', 'absent.d'] }),
    });
    assert.deepEqual(result.outputFiles?.map((f) => f.path), ['out/a.txt']);
    assert.deepEqual(result.outputFileSymlinks, [{ path: 'link', target: 'out/a.txt' }]);
    assert.deepEqual(result.outputDirectorySymlinks, [{ path: 'dirlink', target: 'gen' }]);
    assert.deepEqual(result.outputSymlinks, []);
    const tree = await decodeTree(result.outputDirectories?.[0].treeDigest);
    assert.deepEqual((tree.root as rex.Directory).files.map((f) => f.name), ['y.txt']);
    assert.equal(tree.children.length, 0);

    await rpcFailure(
      collectOutputs({ instanceName: INSTANCE, access, root, workingDirectory: 'w', command: command({ outputFiles: ['gen'] }) }),
      status.FAILED_PRECONDITION,
      ['"gen"', 'directory'],
    );
    await rpcFailure(
      collectOutputs({ instanceName: INSTANCE, access, root, workingDirectory: 'w', command: command({ outputDirectories: ['out/a.txt'] }) }),
      status.FAILED_PRECONDITION,
      ['"out/a.txt"'],
    );
  });

  test('an output at the root, without a working directory', async () => {
    const root = await freshDir('ran');
    await fs.writeFile(path.join(root, 'result'), 'r');
    const result = await collectOutputs({ instanceName: INSTANCE, access, root, workingDirectory: '', command: command({ outputPaths: ['result'] }) });
    assert.deepEqual(result.outputFiles?.map((f) => f.path), ['result']);
  });

  test('refuses FIFOs, absolute symlinks and outputs reached through a symlink', async () => {
    const root = await freshDir('ran');
    execFileSync('mkfifo', [path.join(root, 'fifo')]);
    await fs.mkdir(path.join(root, 'dir'));
    execFileSync('mkfifo', [path.join(root, 'dir/pipe')]);
    await fs.symlink('/etc/passwd', path.join(root, 'abs'));
    await fs.symlink('/etc', path.join(root, 'etc'));
    const collect = (outputPaths: string[]) => collectOutputs({ instanceName: INSTANCE, access, root, workingDirectory: '', command: command({ outputPaths }) });
    await rpcFailure(collect(['fifo']), status.FAILED_PRECONDITION, ['"fifo"', 'FIFO']);
    await rpcFailure(collect(['dir']), status.FAILED_PRECONDITION, ['"dir/pipe"', 'FIFO']);
    await rpcFailure(collect(['abs']), status.FAILED_PRECONDITION, ['"abs"', 'absolute']);
    await rpcFailure(collect(['etc/passwd']), status.FAILED_PRECONDITION, ['"etc"', 'symlink']);
    // The symlink itself as an output is fine to record... except this one is absolute.
    await rpcFailure(collect(['etc']), status.FAILED_PRECONDITION, ['absolute']);
  });
});

async function exists(file: string): Promise<boolean> {
  return fs.lstat(file).then(
    () => true,
    () => false,
  );
}
