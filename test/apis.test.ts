import test from 'node:test';
import assert from 'node:assert/strict';
import * as grpc from '@grpc/grpc-js';
import { bytestream, longrunning, protobuf, rex, rpc, semver } from '../apis';
import {
  ActionCacheService,
  ByteStreamService,
  CapabilitiesService,
  CasService,
  ExecutionService,
  OperationsService,
  addService,
  allServices,
  createClient,
  unary,
} from '../apis/services';
import { compareUtf8 } from '../apis/name-order';

/** Minimal protobuf wire reader: yields [fieldNumber, wireType, value] for varint and length-delimited fields. */
function* wireFields(buf: Uint8Array): Generator<[number, number, number | Uint8Array]> {
  let pos = 0;
  const varint = (): number => {
    let result = 0;
    let mul = 1;
    for (;;) {
      const b = buf[pos++]!;
      result += (b & 0x7f) * mul;
      if (b < 0x80) return result;
      mul *= 128;
    }
  };
  while (pos < buf.length) {
    const tag = varint();
    const field = Math.floor(tag / 8);
    const wireType = tag & 7;
    if (wireType === 0) yield [field, wireType, varint()];
    else if (wireType === 2) {
      const len = varint();
      yield [field, wireType, buf.subarray(pos, pos + len)];
      pos += len;
    } else throw new Error(`unexpected wire type ${wireType}`);
  }
}

const HASH = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855';
const BIG = 2 ** 40 + 12345; // > 2^32, exercises int64 as number

test('Directory name order is UTF-8 byte order, also where UTF-16 order differs', () => {
  // U+E000..U+FFFF sort before supplementary characters in UTF-8 but after them in UTF-16.
  const names = ['a', 'ab', 'b', 'B', '_', 'é', 'z\u00ff', '\uE000', '\uFFFD', '\u{1F600}', '\u{10000}', 'x\u{1F600}', 'x\uFFFF', 'x', '', 'é\u{1F600}', 'é\uE001'];
  const byBytes = (a: string, b: string) => Buffer.compare(Buffer.from(a), Buffer.from(b));
  for (const a of names) {
    for (const b of names) assert.equal(Math.sign(compareUtf8(a, b)), byBytes(a, b), `${JSON.stringify(a)} vs ${JSON.stringify(b)}`);
  }
  assert.deepEqual([...names].sort(compareUtf8), [...names].sort(byBytes));
  assert.notDeepEqual([...names].sort(), [...names].sort(byBytes)); // the case the correction is for
});

test('Digest round-trips with sizeBytes > 2^32 as a plain number', () => {
  const d: rex.IDigest = { hash: HASH, sizeBytes: BIG };
  const bytes = rex.Digest.encode(d).finish();
  const back = rex.Digest.decode(bytes);
  assert.equal(back.hash, HASH);
  assert.equal(typeof back.sizeBytes, 'number');
  assert.equal(back.sizeBytes, BIG);
  // unset int64 decodes to 0 (number), not a Long
  assert.equal(rex.Digest.decode(rex.Digest.encode({ hash: HASH }).finish()).sizeBytes, 0);
});

test('Digest wire format: hash is field 1 (bytes), size_bytes is field 2 (varint)', () => {
  const fields = [...wireFields(rex.Digest.encode({ hash: 'ab', sizeBytes: BIG }).finish())];
  assert.equal(fields.length, 2);
  const [f1, f2] = fields;
  assert.deepEqual(f1!.slice(0, 2), [1, 2]);
  assert.equal(Buffer.from(f1![2] as Uint8Array).toString(), 'ab');
  assert.deepEqual(f2, [2, 0, BIG]);
});

test('other field numbers on the wire: OutputFile.is_executable=4, Command.output_paths=7, ReadResponse.data=10', () => {
  const of = [...wireFields(rex.OutputFile.encode({ path: 'p', isExecutable: true }).finish())];
  assert.deepEqual(of, [[1, 2, Buffer.from('p')], [4, 0, 1]].map(([f, w, v]) => [f, w, v]));
  const cmd = [...wireFields(rex.Command.encode({ outputPaths: ['out'] }).finish())];
  assert.equal(cmd[0]![0], 7);
  const rr = [...wireFields(bytestream.ReadResponse.encode({ data: Buffer.from('x') }).finish())];
  assert.equal(rr[0]![0], 10);
});

test('Action round-trips (nested digests, Duration, Platform, bytes)', () => {
  const action: rex.IAction = {
    commandDigest: { hash: HASH, sizeBytes: 142 },
    inputRootDigest: { hash: HASH.replace(/e/g, 'f'), sizeBytes: BIG },
    timeout: { seconds: 3600, nanos: 5 },
    doNotCache: true,
    salt: Buffer.from([1, 2, 3]),
    platform: { properties: [{ name: 'OSFamily', value: 'linux' }, { name: 'container-image', value: 'docker://x' }] },
  };
  const back = rex.Action.decode(rex.Action.encode(action).finish());
  assert.deepEqual(rex.Action.toObject(back, { bytes: Array }), {
    ...action,
    salt: [1, 2, 3],
  });
  assert.equal(back.inputRootDigest?.sizeBytes, BIG);
  assert.equal(back.timeout?.seconds, 3600);
});

test('enums and newer fields are present', () => {
  assert.equal(rex.DigestFunction.Value.SHA256, 1);
  assert.equal(rex.DigestFunction.Value.BLAKE3, 9);
  assert.equal(rex.Compressor.Value.ZSTD, 1);
  assert.equal(rex.ExecutionStage.Value.COMPLETED, 4);
  assert.equal(rpc.Code.NOT_FOUND, 5);
  const caps: rex.IServerCapabilities = {
    cacheCapabilities: {
      digestFunctions: [rex.DigestFunction.Value.SHA256],
      maxBatchTotalSizeBytes: 4 * 1024 * 1024,
      supportedCompressors: [rex.Compressor.Value.ZSTD],
      symlinkAbsolutePathStrategy: rex.SymlinkAbsolutePathStrategy.Value.ALLOWED,
    },
    executionCapabilities: { digestFunction: rex.DigestFunction.Value.SHA256, execEnabled: true },
    lowApiVersion: { major: 2 },
    highApiVersion: { major: 2, minor: 3 },
  };
  const back = rex.ServerCapabilities.decode(rex.ServerCapabilities.encode(caps).finish());
  assert.deepEqual(back.cacheCapabilities?.supportedCompressors, [rex.Compressor.Value.ZSTD]);
  assert.equal(back.highApiVersion?.minor, 3);
  assert.ok(semver.SemVer.decode(semver.SemVer.encode({ major: 2 }).finish()).major === 2);
  const req = rex.FindMissingBlobsRequest.decode(
    rex.FindMissingBlobsRequest.encode({ digestFunction: rex.DigestFunction.Value.SHA256 }).finish(),
  );
  assert.equal(req.digestFunction, rex.DigestFunction.Value.SHA256);
});

test('Operation packs ExecuteResponse in Any', () => {
  const response: rex.IExecuteResponse = { result: { exitCode: 3 }, status: { code: rpc.Code.OK } };
  const op: longrunning.IOperation = {
    name: 'operations/abc',
    done: true,
    response: {
      type_url: rex.ExecuteResponse.getTypeUrl(), // protobufjs keeps Any's field name as-is
      value: rex.ExecuteResponse.encode(response).finish(),
    },
  };
  const back = longrunning.Operation.decode(longrunning.Operation.encode(op).finish());
  assert.equal(back.result, 'response');
  assert.equal(back.response?.type_url, 'type.googleapis.com/build.bazel.remote.execution.v2.ExecuteResponse');
  assert.equal(rex.ExecuteResponse.decode(back.response!.value!).result?.exitCode, 3);
  assert.equal(protobuf.Empty.encode({}).finish().length, 0);
});

test('service definitions have the expected method paths and streaming flags', () => {
  // [path, requestStream, responseStream]
  const expected: Record<string, [string, boolean, boolean][]> = {
    'build.bazel.remote.execution.v2.Capabilities': [['GetCapabilities', false, false]],
    'build.bazel.remote.execution.v2.ContentAddressableStorage': [
      ['FindMissingBlobs', false, false],
      ['BatchUpdateBlobs', false, false],
      ['BatchReadBlobs', false, false],
      ['GetTree', false, true],
      ['SplitBlob', false, false],
      ['SpliceBlob', false, false],
    ],
    'build.bazel.remote.execution.v2.ActionCache': [
      ['GetActionResult', false, false],
      ['UpdateActionResult', false, false],
    ],
    'build.bazel.remote.execution.v2.Execution': [
      ['Execute', false, true],
      ['WaitExecution', false, true],
    ],
    'google.bytestream.ByteStream': [
      ['Read', false, true],
      ['Write', true, false],
      ['QueryWriteStatus', false, false],
    ],
    'google.longrunning.Operations': [
      ['ListOperations', false, false],
      ['GetOperation', false, false],
      ['DeleteOperation', false, false],
      ['CancelOperation', false, false],
      ['WaitOperation', false, false],
    ],
  };
  assert.deepEqual(
    allServices.map((s) => s.serviceName),
    [CapabilitiesService, CasService, ActionCacheService, ExecutionService, ByteStreamService, OperationsService].map(
      (s) => s.serviceName,
    ),
  );
  assert.deepEqual(allServices.map((s) => s.serviceName).sort(), Object.keys(expected).sort());
  for (const service of allServices) {
    const actual = Object.entries(service.definition).map(
      ([name, m]) => [name, m.path, m.requestStream, m.responseStream] as const,
    );
    assert.deepEqual(
      actual,
      expected[service.serviceName]!.map(([name, rs, ss]) => [name, `/${service.serviceName}/${name}`, rs, ss]),
    );
  }
});

test('gRPC round trip: unary, server streaming and client streaming through the definitions', async (t) => {
  const server = new grpc.Server();
  addService(server, CasService, {
    FindMissingBlobs(call, callback) {
      assert.ok(call.request instanceof rex.FindMissingBlobsRequest);
      callback(null, { missingBlobDigests: call.request.blobDigests.filter((d) => d.sizeBytes === BIG) });
    },
    GetTree(call) {
      call.write({ directories: [{ files: [{ name: 'a', digest: { hash: HASH, sizeBytes: 1 } }] }], nextPageToken: 'n' });
      call.write({ directories: [] });
      call.end();
    },
    BatchUpdateBlobs: (_c, cb) => cb({ code: grpc.status.UNIMPLEMENTED }),
    BatchReadBlobs: (_c, cb) => cb({ code: grpc.status.UNIMPLEMENTED }),
    SplitBlob: (_c, cb) => cb({ code: grpc.status.UNIMPLEMENTED }),
    SpliceBlob: (_c, cb) => cb({ code: grpc.status.UNIMPLEMENTED }),
  });
  addService(server, ByteStreamService, {
    Read(call) {
      call.end();
    },
    Write(call, callback) {
      let size = 0;
      call.on('data', (req: bytestream.WriteRequest) => (size += req.data.length));
      call.on('end', () => callback(null, { committedSize: size }));
    },
    QueryWriteStatus: (_c, cb) => cb(null, { committedSize: BIG, complete: true }),
  });
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
  );
  t.after(() => server.forceShutdown());

  const cas = createClient(CasService, `127.0.0.1:${port}`);
  const bs = createClient(ByteStreamService, `127.0.0.1:${port}`);
  t.after(() => {
    cas.close();
    bs.close();
  });

  const missing = await unary(cas, 'FindMissingBlobs', {
    blobDigests: [
      { hash: HASH, sizeBytes: 1 },
      { hash: HASH, sizeBytes: BIG },
    ],
  });
  assert.ok(missing instanceof rex.FindMissingBlobsResponse);
  assert.deepEqual(missing.missingBlobDigests.map((d) => d.sizeBytes), [BIG]);

  const unimplemented = await unary(cas, 'SplitBlob', {}).catch((e: grpc.ServiceError) => e.code);
  assert.equal(unimplemented, grpc.status.UNIMPLEMENTED);

  const pages: rex.GetTreeResponse[] = [];
  for await (const page of cas.GetTree({ rootDigest: { hash: HASH, sizeBytes: 1 } })) pages.push(page as rex.GetTreeResponse);
  assert.equal(pages.length, 2);
  assert.equal(pages[0]!.directories[0]!.files?.[0]?.name, 'a');
  assert.equal(pages[0]!.nextPageToken, 'n');

  const written = await new Promise<bytestream.WriteResponse>((resolve, reject) => {
    const w = bs.Write((err, res) => (err ? reject(err) : resolve(res!)));
    w.write({ resourceName: 'uploads/u/blobs/x/6', writeOffset: 0, data: Buffer.from('abc') });
    w.write({ writeOffset: 3, data: Buffer.from('def'), finishWrite: true });
    w.end();
  });
  assert.equal(written.committedSize, 6);
  const status = await unary(bs, 'QueryWriteStatus', { resourceName: 'x' });
  assert.equal(status.committedSize, BIG);
  assert.equal(status.complete, true);

  // Compile-time checks: streaming methods are not accepted by unary().
  // @ts-expect-error GetTree is server-streaming
  void (() => unary(cas, 'GetTree', {}));
  // @ts-expect-error Write is client-streaming
  void (() => unary(bs, 'Write', {}));
});
