// Encode+decode throughput: static protobufjs module (apis/generated) vs protobufjs reflection
// (loadSync of the same .proto files). Run: npm run build && node dist/bench/proto-codec.js
import fs from 'node:fs';
import path from 'node:path';
import protobufjs from 'protobufjs';
import { rex } from '../apis';

const PROTO_ROOT = [path.resolve(__dirname, '..', 'apis', 'proto'), path.resolve(__dirname, '..', '..', 'apis', 'proto')].find(
  (p) => fs.existsSync(p),
);
if (!PROTO_ROOT) throw new Error('apis/proto not found');

function loadReflection(): protobufjs.Root {
  const root = new protobufjs.Root();
  root.resolvePath = (_origin, target) => path.join(PROTO_ROOT!, target);
  return root.loadSync('build/bazel/remote/execution/v2/remote_execution.proto');
}

function hash(i: number): string {
  return i.toString(16).padStart(8, '0').repeat(8);
}

function directory(files: number): rex.IDirectory {
  return {
    files: Array.from({ length: files }, (_, i) => ({
      name: `source_file_${i}.ts`,
      digest: { hash: hash(i), sizeBytes: 1000 + i * 37 },
      isExecutable: i % 10 === 0,
    })),
    directories: [{ name: 'sub', digest: { hash: hash(999), sizeBytes: 312 } }],
  };
}

function actionResult(outputs: number): rex.IActionResult {
  const ts = (s: number) => ({ seconds: 1_700_000_000 + s, nanos: 123_456_789 });
  return {
    outputFiles: Array.from({ length: outputs }, (_, i) => ({
      path: `bazel-out/k8-fastbuild/bin/pkg/lib_${i}.o`,
      digest: { hash: hash(i + 5000), sizeBytes: 5_000_000_000 + i },
      isExecutable: false,
    })),
    exitCode: 0,
    stdoutDigest: { hash: hash(1), sizeBytes: 120 },
    stderrDigest: { hash: hash(2), sizeBytes: 0 },
    executionMetadata: {
      worker: 'worker-1',
      queuedTimestamp: ts(0),
      workerStartTimestamp: ts(1),
      workerCompletedTimestamp: ts(9),
      executionStartTimestamp: ts(2),
      executionCompletedTimestamp: ts(8),
    },
  };
}

interface Codec {
  encode(message: object): { finish(): Uint8Array };
  decode(data: Uint8Array): object;
}

/** encode+decode round trips per second over ~`ms`. */
function opsPerSecond(codec: Codec, message: object, ms: number): number {
  let ops = 0;
  const start = process.hrtime.bigint();
  const deadline = start + BigInt(ms) * 1_000_000n;
  let now = start;
  while (now < deadline) {
    for (let i = 0; i < 200; i++) codec.decode(codec.encode(message).finish());
    ops += 200;
    now = process.hrtime.bigint();
  }
  return ops / (Number(now - start) / 1e9);
}

/** Median ops/s of each codec over interleaved rounds (reduces noise from other load). */
function compare(a: Codec, b: Codec, message: object, rounds = 7, ms = 400): [number, number] {
  for (let i = 0; i < 2000; i++) {
    a.decode(a.encode(message).finish());
    b.decode(b.encode(message).finish());
  }
  const ra: number[] = [];
  const rb: number[] = [];
  for (let i = 0; i < rounds; i++) {
    ra.push(opsPerSecond(a, message, ms));
    rb.push(opsPerSecond(b, message, ms));
  }
  const median = (xs: number[]) => xs.sort((x, y) => x - y)[xs.length >> 1]!;
  return [median(ra), median(rb)];
}

function main(): void {
  const root = loadReflection();
  const cases: { name: string; message: object; staticCodec: Codec; reflectionCodec: Codec }[] = [
    {
      name: 'Directory (100 FileNodes)',
      message: directory(100),
      staticCodec: rex.Directory as unknown as Codec,
      reflectionCodec: root.lookupType('build.bazel.remote.execution.v2.Directory'),
    },
    {
      name: 'ActionResult (50 OutputFiles)',
      message: actionResult(50),
      staticCodec: rex.ActionResult as unknown as Codec,
      reflectionCodec: root.lookupType('build.bazel.remote.execution.v2.ActionResult'),
    },
  ];
  for (const c of cases) {
    const bytes = c.staticCodec.encode(c.message).finish();
    const reflected = c.reflectionCodec.encode(c.message).finish();
    if (Buffer.compare(Buffer.from(bytes), Buffer.from(reflected)) !== 0) throw new Error(`${c.name}: encodings differ`);
    const [s, r] = compare(c.staticCodec, c.reflectionCodec, c.message);
    const fmt = (n: number) => Math.round(n).toLocaleString('en-US');
    console.log(
      `${c.name}, ${bytes.length} B: static ${fmt(s)} ops/s, reflection ${fmt(r)} ops/s, static/reflection ${(s / r).toFixed(2)}x (median of 7 interleaved rounds)`,
    );
  }
}

main();
