// TLS, mutual TLS and tokens end to end: certificates made here with the openssl CLI, real
// `reapi serve` processes, the real Bazel 4.2.3 client, and the worker's own gRPC connection
// (grpcs:// with a CA, a client certificate and a token), also as a `reapi worker` process.
//
//   TLS + tokens server:  Bazel builds //... with grpcs:// + the CA + the token header, a clean
//                         rebuild is all cache hits; without the header the build fails and the
//                         server logged UNAUTHENTICATED.
//   mutual TLS server:    Bazel without a client certificate is refused; with one it builds.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import * as grpc from '@grpc/grpc-js';
import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { ExecutionService, createClient, unary } from '../apis/services';
import { hashToken } from '../server/auth-tokens';
import { channelCredentials } from '../server/tls';
import { connectToServer } from '../worker/server-connection';
import { buildAction, executeToEnd } from './helpers/actions';
import { BAZEL, BazelResult, cleanupBazel, copyWorkspace, makeOutputBase, parseProcessSummary, runBazel } from './helpers/bazel';
import { TestRedis, startRedis } from './helpers/redis';
import { ServerProcess, WorkerProcess, startServerProcess, startWorkerProcess, tempDir } from './helpers/server-process';

const haveBazel = spawnSync(BAZEL, ['--version'], { stdio: 'ignore' }).status === 0;
const skipBazel = haveBazel ? false : `no ${BAZEL} on PATH`;

const TOKEN = `ci-${randomBytes(24).toString('base64url')}`;

interface Certs {
  ca: string;
  serverCert: string;
  serverKey: string;
  clientCert: string;
  clientKey: string;
  /** A client certificate from a CA the server does not know. */
  strangerCert: string;
  strangerKey: string;
}

let dir: string;
let certs: Certs;
let redis: TestRedis;
/** TLS, tokens required. */
let tokenServer: ServerProcess;
/** Mutual TLS, no tokens; schedules for workers on Redis. */
let mtlsServer: ServerProcess;
const workers: WorkerProcess[] = [];
const bazelClients: { workspace: string; outputBase: string }[] = [];

/** 127.0.0.1:PORT as printed -> localhost:PORT, the name the server certificate carries. */
const localhost = (s: ServerProcess) => s.address.replace(/^127\.0\.0\.1:/, 'localhost:');

function openssl(...args: string[]): void {
  execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
}

/** A CA, a server certificate for localhost and 127.0.0.1, a client certificate, and a stranger's. */
function makeCerts(): Certs {
  const file = (name: string) => path.join(dir, name);
  const ca = (name: string) => openssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', `/CN=${name}`, '-keyout', `${name}.key`, '-out', `${name}.pem`);
  const signed = (name: string, by: string, extensions: string) => {
    writeFileSync(file(`${name}.ext`), `${extensions}\nbasicConstraints=CA:FALSE\n`);
    openssl('req', '-newkey', 'rsa:2048', '-nodes', '-subj', `/CN=${name}`, '-keyout', `${name}.key`, '-out', `${name}.csr`);
    openssl('x509', '-req', '-in', `${name}.csr`, '-CA', `${by}.pem`, '-CAkey', `${by}.key`, '-CAcreateserial', '-days', '2', '-extfile', `${name}.ext`, '-out', `${name}.pem`);
  };
  ca('test-ca');
  ca('stranger-ca');
  signed('server', 'test-ca', 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth');
  signed('client', 'test-ca', 'extendedKeyUsage=clientAuth');
  signed('stranger', 'stranger-ca', 'extendedKeyUsage=clientAuth');
  return {
    ca: file('test-ca.pem'),
    serverCert: file('server.pem'),
    serverKey: file('server.key'),
    clientCert: file('client.pem'),
    clientKey: file('client.key'),
    strangerCert: file('stranger.pem'),
    strangerKey: file('stranger.key'),
  };
}

/**
 * Startup options Bazel needs for grpcs://. Debian's Bazel 4.2.3 has a Netty without JDK ALPN, so
 * its TLS works only through netty-tcnative (Debian: libnetty-tcnative-jni), which Netty loads by
 * the name libnetty_tcnative.so from java.library.path, and which refuses to run from a file of
 * another name (a symlink would not do). A Bazel that brings its own TLS needs nothing.
 */
function bazelStartupOptions(): string[] {
  const debianLib = readdirSync('/usr/lib')
    .map((d) => path.join('/usr/lib', d, 'jni', 'libnetty-tcnative.so'))
    .find((f) => existsSync(f));
  if (!debianLib) return [];
  const jni = path.join(dir, 'jni');
  mkdirSync(jni, { recursive: true });
  copyFileSync(debianLib, path.join(jni, 'libnetty_tcnative.so'));
  return [`--host_jvm_args=-Djava.library.path=${jni}:/usr/share/bazel/`];
}
let startup: string[] = [];

before(async () => {
  dir = tempDir('trust-tls');
  certs = makeCerts();
  startup = bazelStartupOptions();
  const tokens = path.join(dir, 'tokens.json');
  await fs.writeFile(tokens, JSON.stringify({ tokens: [{ name: 'ci', token: hashToken(TOKEN), instances: ['*'], updateActionCache: true, execute: true }] }));
  redis = await startRedis();
  tokenServer = await startServerProcess({ args: ['--worker', 'off', '--tls-cert', certs.serverCert, '--tls-key', certs.serverKey, '--tokens', tokens] });
  mtlsServer = await startServerProcess({
    args: ['--worker', 'off', '--redis', redis.url, '--tls-cert', certs.serverCert, '--tls-key', certs.serverKey, '--tls-client-ca', certs.ca],
  });
});

after(async () => {
  for (const c of bazelClients) {
    await runBazel({ ...c, args: [...startup, 'shutdown'], timeoutMs: 60_000 }).catch(() => undefined);
    await cleanupBazel(c.workspace, c.outputBase);
  }
  await Promise.all(workers.map((w) => w.stop()));
  await Promise.all([tokenServer?.stop(), mtlsServer?.stop()]);
  await redis?.stop();
  if (dir) await fs.rm(dir, { recursive: true, force: true });
});

async function bazelClient() {
  if (bazelClients.length === 0) bazelClients.push({ workspace: await copyWorkspace(), outputBase: await makeOutputBase() });
  return bazelClients[0];
}

async function bazel(args: string[]): Promise<BazelResult> {
  const c = await bazelClient();
  return runBazel({ ...c, args: [...startup, ...args] });
}

function describe(r: BazelResult, server: ServerProcess): string {
  return `exit ${r.code}\n--- bazel stderr tail ---\n${r.stderr.slice(-4000)}\n--- reapi stderr tail ---\n${server.stderr().slice(-2000)}`;
}

async function clean(): Promise<void> {
  const r = await bazel(['clean']);
  assert.equal(r.code, 0, r.stderr.slice(-2000));
}

const tlsFlags = (server: ServerProcess) => [`--remote_cache=grpcs://${localhost(server)}`, `--tls_certificate=${certs.ca}`, '--spawn_strategy=local'];
const tokenHeader = `--remote_header=Authorization=Bearer ${TOKEN}`;

test('Bazel builds the fixture over TLS with a token, and after clean it is all remote cache hits', { skip: skipBazel }, async () => {
  const cold = await bazel(['build', ...tlsFlags(tokenServer), tokenHeader, '//...']);
  assert.equal(cold.code, 0, describe(cold, tokenServer));
  const first = parseProcessSummary(cold.stderr);
  assert.ok(first.local > 0, `cold build ran nothing locally: ${JSON.stringify(first)}`);

  await clean();
  const warm = await bazel(['build', ...tlsFlags(tokenServer), tokenHeader, '//...']);
  assert.equal(warm.code, 0, describe(warm, tokenServer));
  const s = parseProcessSummary(warm.stderr);
  assert.equal(s.remoteCacheHit, s.total - s.internal, `not all cache hits: ${JSON.stringify(s)}\n${describe(warm, tokenServer)}`);
  assert.ok(s.remoteCacheHit > 0);
});

test('the same build without the token fails, and the server logged UNAUTHENTICATED', { skip: skipBazel }, async () => {
  await clean();
  const r = await bazel(['build', ...tlsFlags(tokenServer), '//...']);
  assert.notEqual(r.code, 0, describe(r, tokenServer));
  assert.match(r.stderr, /UNAUTHENTICATED: this server requires a token/);
  const refused = tokenServer
    .stderr()
    .split('\n')
    .filter((l) => l.includes('"msg":"request refused"') && l.includes('"code":"UNAUTHENTICATED"'));
  assert.ok(refused.length > 0, tokenServer.stderr());
  assert.ok(refused.every((l) => /"method":"\w+","peer":"[^"]+"/.test(l)), refused.join('\n'));
  assert.ok(!tokenServer.stderr().includes(TOKEN), 'the token is never logged');
});

test('mutual TLS: Bazel without a client certificate is refused, with one it builds', { skip: skipBazel }, async () => {
  await clean();
  const target = ['//gen:hello_txt', '//gen:chained'];
  const refused = await bazel(['build', ...tlsFlags(mtlsServer), ...target]);
  assert.notEqual(refused.code, 0, describe(refused, mtlsServer));
  assert.match(refused.stderr, /Failed to query remote execution capabilities/);

  const clientCert = [`--tls_client_certificate=${certs.clientCert}`, `--tls_client_key=${certs.clientKey}`];
  const built = await bazel(['build', ...tlsFlags(mtlsServer), ...clientCert, ...target]);
  assert.equal(built.code, 0, describe(built, mtlsServer));
  await clean();
  const again = await bazel(['build', ...tlsFlags(mtlsServer), ...clientCert, ...target]);
  assert.equal(again.code, 0, describe(again, mtlsServer));
  const s = parseProcessSummary(again.stderr);
  assert.equal(s.remoteCacheHit, s.total - s.internal, JSON.stringify(s));
});

test("the worker's connection: grpcs:// with the CA and its token; plain text and no token are refused", async () => {
  const capabilities = async (url: string, options: Parameters<typeof connectToServer>[1]) => {
    const server = connectToServer(url, options);
    try {
      const caps = await unary(server.caps, 'GetCapabilities', {}, new grpc.Metadata(), { deadline: Date.now() + 10_000 });
      return { code: grpc.status.OK, caps };
    } catch (err) {
      return { code: (err as grpc.ServiceError).code };
    } finally {
      server.close();
    }
  };
  const url = `grpcs://${localhost(tokenServer)}`;
  const ok = await capabilities(url, { tls: { ca: certs.ca }, token: TOKEN });
  assert.equal(ok.code, grpc.status.OK);
  assert.equal(ok.caps?.cacheCapabilities?.actionCacheUpdateCapabilities?.updateEnabled, true);
  assert.equal((await capabilities(url, { tls: { ca: certs.ca } })).code, grpc.status.UNAUTHENTICATED);
  assert.equal((await capabilities(url, { tls: { ca: certs.ca }, token: 'wrong' })).code, grpc.status.UNAUTHENTICATED);
  // Without the CA the server's certificate is not trusted; plain text gets no answer from a TLS port.
  assert.equal((await capabilities(url, { token: TOKEN })).code, grpc.status.UNAVAILABLE);
  assert.equal((await capabilities(`grpc://${localhost(tokenServer)}`, { token: TOKEN })).code, grpc.status.UNAVAILABLE);
  assert.throws(() => connectToServer(`grpc://${localhost(tokenServer)}`, { tls: { ca: certs.ca } }), /not a grpcs:\/\/ address/);

  const mtls = `grpcs://${localhost(mtlsServer)}`;
  assert.equal((await capabilities(mtls, { tls: { ca: certs.ca } })).code, grpc.status.UNAVAILABLE, 'no client certificate');
  assert.equal((await capabilities(mtls, { tls: { ca: certs.ca, clientCert: certs.strangerCert, clientKey: certs.strangerKey } })).code, grpc.status.UNAVAILABLE, "a certificate of a CA the server doesn't know");
  assert.equal((await capabilities(mtls, { tls: { ca: certs.ca, clientCert: certs.clientCert, clientKey: certs.clientKey } })).code, grpc.status.OK);
});

test('reapi worker over mutual TLS: refused without its certificate, runs actions with it', async () => {
  const server = `grpcs://${localhost(mtlsServer)}`;
  await assert.rejects(
    startWorkerProcess({ server, redis: redis.url, name: 'worker-without-cert', args: ['--tls-ca', certs.ca] }),
    (err: Error) => /does not answer/.test(err.message),
  );
  const tlsArgs = ['--tls-ca', certs.ca, '--tls-client-cert', certs.clientCert, '--tls-client-key', certs.clientKey];
  workers.push(await startWorkerProcess({ server, redis: redis.url, name: 'mtls-worker', args: tlsArgs }));

  // A client over mutual TLS too: upload an action, execute it on the worker, read the result.
  const credentials = channelCredentials({ ca: certs.ca, clientCert: certs.clientCert, clientKey: certs.clientKey });
  const client = connectToServer(server, { tls: { ca: certs.ca, clientCert: certs.clientCert, clientKey: certs.clientKey } });
  const exec = createClient(ExecutionService, localhost(mtlsServer), credentials);
  try {
    const marker = randomUUID();
    const action = buildAction({ args: ['sh', '-c', `echo over-mtls ${marker}`], salt: marker });
    await unary(client.cas, 'BatchUpdateBlobs', { requests: action.blobs.map((b) => ({ digest: b.digest, data: b.data })) });
    const response = await executeToEnd(exec, { actionDigest: action.actionDigest });
    assert.equal(response.status?.code ?? 0, 0, `${response.status?.message}\n${workers[0].stderr()}`);
    assert.equal(response.result?.executionMetadata?.worker, 'mtls-worker');
    const cached = await unary(client.ac, 'GetActionResult', { actionDigest: action.actionDigest, inlineStdout: true });
    assert.equal(Buffer.from(cached.stdoutRaw).toString(), `over-mtls ${marker}\n`);
  } finally {
    exec.close();
    client.close();
  }
});
