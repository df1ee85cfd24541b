#!/usr/bin/env node
// Regenerates apis/generated/proto.{js,d.ts} from apis/proto/**/*.proto with
// protobufjs-cli (static code, CommonJS, int64 as JS number). Offline; run by `npm run build`.
'use strict';

const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const protoRoot = path.join(__dirname, 'proto');
const outDir = path.join(__dirname, 'generated');
const outJs = path.join(outDir, 'proto.js');
const outDts = path.join(outDir, 'proto.d.ts');

function listProtos(dir) {
  return fs
    .readdirSync(dir, { withFileTypes: true })
    .flatMap((e) => {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) return listProtos(p);
      return e.name.endsWith('.proto') ? [p] : [];
    })
    .sort();
}

function bin(name) {
  return path.join(path.dirname(require.resolve('protobufjs-cli/package.json')), 'bin', name);
}

function readOutDir() {
  const tsconfig = JSON.parse(fs.readFileSync(path.join(__dirname, '..', 'tsconfig.json'), 'utf8'));
  return (tsconfig.compilerOptions && tsconfig.compilerOptions.outDir) || 'dist';
}

function run(name, args) {
  execFileSync(process.execPath, [bin(name), ...args], { stdio: 'inherit' });
}

fs.rmSync(outDir, { recursive: true, force: true });
fs.mkdirSync(outDir, { recursive: true });

const protos = listProtos(protoRoot);
run('pbjs', [
  '-t', 'static-module',
  '-w', 'commonjs',
  '--force-number',
  '--no-service', // gRPC services are defined in apis/services.ts
  '-p', protoRoot,
  '-o', outJs,
  ...protos,
]);

// --force-number only types int64 as number; protobufjs still decodes int64 to
// Long objects whenever the `long` package is installed (it is a dependency of
// protobufjs 8). Drop Long before any generated prototype default is created so
// int64 fields decode as plain numbers (exact up to 2^53).
const anchor = 'var $protobuf = require("protobufjs/minimal");\n';
const js = fs.readFileSync(outJs, 'utf8');
if (!js.includes(anchor)) throw new Error(`apis/generate.js: cannot find "${anchor.trim()}" in ${outJs}`);
fs.writeFileSync(
  outJs,
  js.replace(anchor, `${anchor}\n// reapi: int64 as JS number (see apis/generate.js)\n$protobuf.util.Long = undefined;\n$protobuf.configure();\n`),
);

run('pbts', ['-o', outDts, outJs]);

// tsc (allowJs off) does not copy the generated JS; place it next to the compiled apis/index.js.
const distOutDir = path.join(path.dirname(__dirname), readOutDir(), 'apis', 'generated');
fs.rmSync(distOutDir, { recursive: true, force: true });
fs.mkdirSync(distOutDir, { recursive: true });
fs.copyFileSync(outJs, path.join(distOutDir, 'proto.js'));

console.log(`apis/generate.js: ${protos.length} protos -> apis/generated/proto.{js,d.ts} (+ ${path.relative(path.dirname(__dirname), distOutDir)}/proto.js)`);
