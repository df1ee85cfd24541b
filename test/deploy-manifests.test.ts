// deploy/ checked offline: every Kubernetes object against its schema (kubernetes-models, KEDA's
// CRD model), the kustomize base and overlay rendered (test/helpers/kustomize-lite.ts) and checked
// for what a cluster would only tell at run time, and the compose file and Dockerfiles for
// references that do not exist. No cluster, no Docker, no registry.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { Namespace, Secret, Service } from 'kubernetes-models/v1';
import { Deployment, StatefulSet } from 'kubernetes-models/apps/v1';
import { Job } from 'kubernetes-models/batch/v1';
import { PodDisruptionBudget } from 'kubernetes-models/policy/v1';
import { NetworkPolicy } from 'kubernetes-models/networking.k8s.io/v1';
import { ScaledObject } from '@kubernetes-models/keda/keda.sh/v1alpha1';
import { SERVE_USAGE } from '../bin/serve';
import { WORKER_COMMAND_USAGE } from '../bin/worker';
import { type KubeObject, readYamlDocuments, renderKustomization, strategicMerge } from './helpers/kustomize-lite';
import { REPO_ROOT } from './helpers/server-process';

const DEPLOY = path.join(REPO_ROOT, 'deploy');
const K8S = path.join(DEPLOY, 'k8s');
const BASE = path.join(K8S, 'base');
const DIND = path.join(K8S, 'overlays', 'docker-in-docker');

/** Flags the manifests may use before the command knows them (none now: --metrics-listen exists). */
const ANNOUNCED_FLAGS = new Set<string>();

type Model = { validate(): void };
const MODELS: Record<string, new (data: never) => Model> = {
  'v1/Namespace': Namespace,
  'v1/Secret': Secret,
  'v1/Service': Service,
  'apps/v1/Deployment': Deployment,
  'apps/v1/StatefulSet': StatefulSet,
  'batch/v1/Job': Job,
  'policy/v1/PodDisruptionBudget': PodDisruptionBudget,
  'networking.k8s.io/v1/NetworkPolicy': NetworkPolicy,
  'keda.sh/v1alpha1/ScaledObject': ScaledObject,
};

// Loose shapes of what the checks read; the schemas above vouch for the rest.
interface Container {
  name: string;
  image: string;
  args?: string[];
  env?: { name: string; value?: string; valueFrom?: { secretKeyRef?: { name: string; key: string } } }[];
  ports?: { name?: string; containerPort: number }[];
  livenessProbe?: unknown;
  readinessProbe?: unknown;
  startupProbe?: unknown;
  restartPolicy?: string;
  resources?: { requests?: Record<string, string>; limits?: Record<string, string> };
  securityContext?: { privileged?: boolean; allowPrivilegeEscalation?: boolean; capabilities?: { drop?: string[]; add?: string[] } };
  volumeMounts?: { name: string; mountPath: string }[];
}
interface PodSpec {
  containers: Container[];
  initContainers?: Container[];
  volumes?: { name: string; secret?: { secretName: string; defaultMode?: number } }[];
  terminationGracePeriodSeconds?: number;
  automountServiceAccountToken?: boolean;
}
interface Workload extends KubeObject {
  spec: { selector: { matchLabels: Record<string, string> }; template: { metadata: { labels: Record<string, string> }; spec: PodSpec } };
}

function yamlFilesUnder(dir: string): string[] {
  return fs.readdirSync(dir, { withFileTypes: true, recursive: true }).filter((e) => e.isFile() && /\.ya?ml$/.test(e.name)).map((e) => path.join(e.parentPath, e.name));
}

function validate(o: KubeObject, where: string): void {
  const Model = MODELS[`${o.apiVersion}/${o.kind}`];
  assert.ok(Model, `${where}: no schema for ${o.apiVersion} ${o.kind} (add it to MODELS)`);
  assert.doesNotThrow(() => new Model(o as never).validate(), `${where}: ${o.kind}/${o.metadata?.name} does not match its schema`);
}

function find<T extends KubeObject>(objects: KubeObject[], kind: string, name: string): T {
  const found = objects.find((o) => o.kind === kind && o.metadata.name === name);
  assert.ok(found, `no ${kind}/${name}`);
  return found as T;
}

const workloads = (objects: KubeObject[]) => objects.filter((o): o is Workload => o.kind === 'Deployment' || o.kind === 'StatefulSet');
const podContainers = (pod: PodSpec): Container[] => [...pod.containers, ...(pod.initContainers ?? []).filter((c) => c.restartPolicy === 'Always')];
const selects = (selector: Record<string, string> | undefined, labels: Record<string, string>) =>
  !!selector && Object.keys(selector).length > 0 && Object.entries(selector).every(([k, v]) => labels[k] === v);

function flagValue(args: string[] | undefined, flag: string): string | undefined {
  const prefix = `${flag}=`;
  return args?.find((a) => a.startsWith(prefix))?.slice(prefix.length);
}

/** Every --flag in a reapi command line must be one `reapi serve` or `reapi worker` knows. */
function checkFlagsKnown(args: string[], where: string): void {
  const [command, ...rest] = args;
  const usage = command === 'serve' ? SERVE_USAGE : command === 'worker' ? WORKER_COMMAND_USAGE : assert.fail(`${where}: reapi ${command}?`);
  for (const arg of rest) {
    assert.match(arg, /^--[a-z-]+(=|$)/, `${where}: write flags as --name=value (${arg})`);
    const flag = arg.split('=')[0]!;
    if (ANNOUNCED_FLAGS.has(flag)) continue;
    assert.match(usage, new RegExp(`(?<![\\w-])${flag}(?![\\w-])`), `${where}: reapi ${command} has no flag ${flag}`);
  }
}

/** grpc://HOST:PORT, redis://HOST:PORT, s3://HOST:PORT/...: HOST must be a Service with PORT. */
function checkServiceUrl(objects: KubeObject[], url: string | undefined, where: string): string {
  const m = /^[a-z0-9]+:\/\/([a-z0-9-]+):(\d+)(\/|\?|$)/.exec(url ?? '');
  assert.ok(m, `${where}: ${url} does not name HOST:PORT`);
  const service = find<KubeObject & { spec: { ports: { port: number }[] } }>(objects, 'Service', m[1]!);
  assert.ok(service.spec.ports.some((p) => p.port === Number(m[2])), `${where}: Service ${m[1]} has no port ${m[2]}`);
  return m[1]!;
}

function checkImageTag(image: string, where: string): void {
  const tag = /:([^/:@]+)$/.exec(image)?.[1];
  assert.ok(tag, `${where}: image ${image} has no tag`);
  assert.notEqual(tag, 'latest', `${where}: image ${image} uses latest`);
}

/** The checks every rendering (base and overlays) must pass. */
function checkRendering(objects: KubeObject[], label: string): void {
  for (const o of objects) validate(o, label);
  const ids = objects.map((o) => `${o.kind}/${o.metadata.namespace ?? ''}/${o.metadata.name}`);
  assert.deepEqual(ids.filter((id, i) => ids.indexOf(id) !== i), [], `${label}: duplicate objects`);
  const namespaced = objects.filter((o) => o.kind !== 'Namespace');
  assert.ok(namespaced.every((o) => o.metadata.namespace === 'reapi'), `${label}: everything lives in the namespace reapi`);

  const pdbs = objects.filter((o) => o.kind === 'PodDisruptionBudget') as (KubeObject & { spec: { selector: { matchLabels: Record<string, string> } } })[];
  for (const w of workloads(objects)) {
    const where = `${label}: ${w.kind}/${w.metadata.name}`;
    const pod = w.spec.template.spec;
    assert.ok(selects(w.spec.selector.matchLabels, w.spec.template.metadata.labels), `${where}: its selector does not select its own pods`);
    if (w.kind === 'Deployment') assert.ok(pdbs.some((p) => selects(p.spec.selector.matchLabels, w.spec.template.metadata.labels)), `${where}: no PodDisruptionBudget selects it`);
    const volumes = new Set((pod.volumes ?? []).map((v) => v.name));
    const claims = new Set(((w.spec as { volumeClaimTemplates?: { metadata: { name: string } }[] }).volumeClaimTemplates ?? []).map((c) => c.metadata.name));
    for (const c of [...pod.containers, ...(pod.initContainers ?? [])]) {
      const at = `${where} container ${c.name}`;
      checkImageTag(c.image, at);
      for (const m of c.volumeMounts ?? []) assert.ok(volumes.has(m.name) || claims.has(m.name), `${at}: mounts ${m.name}, which the pod does not define`);
      for (const e of c.env ?? []) {
        const ref = e.valueFrom?.secretKeyRef;
        if (ref) assert.ok(key(find<Secret & KubeObject>(objects, 'Secret', ref.name), ref.key) !== undefined, `${at}: Secret ${ref.name} has no key ${ref.key}`);
      }
      assert.ok(c.securityContext, `${at}: no securityContext`);
    }
    for (const c of podContainers(pod)) {
      const at = `${where} container ${c.name}`;
      assert.ok(c.livenessProbe, `${at}: no liveness probe`);
      assert.ok(c.readinessProbe, `${at}: no readiness probe`);
      for (const kind of ['requests', 'limits'] as const) {
        for (const resource of ['cpu', 'memory']) assert.ok(c.resources?.[kind]?.[resource], `${at}: no ${resource} ${kind}`);
      }
    }
    for (const v of pod.volumes ?? []) if (v.secret) find(objects, 'Secret', v.secret.secretName);
  }

  for (const s of objects.filter((o) => o.kind === 'Service') as (KubeObject & { spec: { selector: Record<string, string>; ports: { port: number; targetPort?: string | number }[] } })[]) {
    const backing = workloads(objects).filter((w) => selects(s.spec.selector, w.spec.template.metadata.labels));
    assert.equal(backing.length, 1, `${label}: Service ${s.metadata.name} selects ${backing.length} workloads`);
    const ports = backing[0]!.spec.template.spec.containers.flatMap((c) => c.ports ?? []);
    for (const p of s.spec.ports) {
      const target = p.targetPort ?? p.port;
      assert.ok(ports.some((cp) => cp.name === target || cp.containerPort === target), `${label}: Service ${s.metadata.name} targets port ${target}, which its pods do not have`);
    }
  }

  // The servers: schedule only, on the shared Redis and bucket, trusting only the farm's results.
  const server = find<Workload>(objects, 'Deployment', 'reapi-server');
  assert.ok(selects(find<KubeObject & { spec: { selector: Record<string, string> } }>(objects, 'Service', 'reapi-server').spec.selector, server.spec.template.metadata.labels));
  const serverArgs = server.spec.template.spec.containers[0]!.args!;
  checkFlagsKnown(serverArgs, `${label} reapi-server`);
  assert.equal(checkServiceUrl(objects, flagValue(serverArgs, '--redis'), 'server --redis'), 'redis');
  assert.equal(checkServiceUrl(objects, flagValue(serverArgs, '--storage'), 'server --storage'), 'minio');
  assert.equal(flagValue(serverArgs, '--worker'), 'off');
  assert.ok(serverArgs.includes('--no-ac-updates'), 'the servers refuse clients\' results');
  checkTokens(objects, server, find<Workload>(objects, 'Deployment', 'reapi-worker'));

  // The workers: on the same Redis, talking to the server Service, draining long enough.
  for (const w of workloads(objects).filter((o) => o.metadata.name.startsWith('reapi-worker'))) {
    const worker = w.spec.template.spec.containers.find((c) => c.name === 'worker')!;
    const where = `${label} ${w.metadata.name}`;
    checkFlagsKnown(worker.args!, where);
    assert.equal(checkServiceUrl(objects, flagValue(worker.args, '--redis'), `${where} --redis`), 'redis');
    assert.equal(checkServiceUrl(objects, flagValue(worker.args, '--server'), `${where} --server`), 'reapi-server');
    assert.ok((w.spec.template.spec.terminationGracePeriodSeconds ?? 30) >= 15 * 60, `${where}: too short a grace period to drain a 15-minute action`);
    assert.equal(w.spec.template.spec.automountServiceAccountToken, false, `${where}: actions would get the service account token`);
  }

  // Autoscaling: one ScaledObject per worker Deployment, on the queue gauge.
  const scaled = objects.filter((o) => o.kind === 'ScaledObject') as (KubeObject & { spec: { scaleTargetRef: { name: string; kind?: string }; triggers: { type: string; metadata: Record<string, string> }[] } })[];
  assert.ok(scaled.length > 0, `${label}: no ScaledObject`);
  const targets = scaled.map((s) => s.spec.scaleTargetRef.name);
  assert.deepEqual([...new Set(targets)], targets, `${label}: two ScaledObjects scale one Deployment`);
  for (const s of scaled) {
    find(objects, s.spec.scaleTargetRef.kind ?? 'Deployment', s.spec.scaleTargetRef.name);
    for (const t of s.spec.triggers) {
      assert.equal(t.type, 'prometheus', `${label}: ScaledObject ${s.metadata.name} scales on ${t.type}`);
      assert.match(t.metadata.query ?? '', /reapi_queue_waiting_actions\{/);
      assert.ok(Number(t.metadata.threshold) > 0, 'a threshold of waiting actions per pod');
    }
  }
}

function key(secret: KubeObject, name: string): string | undefined {
  const s = secret as { stringData?: Record<string, string>; data?: Record<string, string> };
  return s.stringData?.[name] ?? (s.data?.[name] === undefined ? undefined : Buffer.from(s.data[name]!, 'base64').toString('utf8'));
}

/** The server's tokens file has the worker's token, with the role worker: else no result is stored. */
function checkTokens(objects: KubeObject[], server: Workload, worker: Workload): void {
  const tokensPath = flagValue(server.spec.template.spec.containers[0]!.args, '--tokens');
  const tokenPath = flagValue(worker.spec.template.spec.containers.find((c) => c.name === 'worker')!.args, '--token-file');
  assert.ok(tokensPath && tokenPath, 'serve --tokens and worker --token-file');
  const secretAt = (w: Workload, container: string, file: string) => {
    const mount = w.spec.template.spec.containers.find((c) => c.name === container)!.volumeMounts!.find((m) => m.mountPath === path.posix.dirname(file))!;
    assert.ok(mount, `${file} is not on a mounted volume`);
    const volume = w.spec.template.spec.volumes!.find((v) => v.name === mount.name)!;
    return { secret: find(objects, 'Secret', volume.secret!.secretName), key: path.posix.basename(file), mode: volume.secret!.defaultMode };
  };
  const tokens = secretAt(server, 'server', tokensPath);
  const workerToken = secretAt(worker, 'worker', tokenPath);
  assert.equal(workerToken.mode, 0o400, 'the worker token is readable by root only, not by the action users');
  const file = JSON.parse(key(tokens.secret, tokens.key)!) as { tokens: { token: string; role?: string }[] };
  const hash = `sha256:${createHash('sha256').update(key(workerToken.secret, workerToken.key)!, 'utf8').digest('hex')}`;
  assert.equal(file.tokens.find((t) => t.token === hash)?.role, 'worker', "the worker's token is in the tokens file with the role worker");
}

describe('Kubernetes manifests', () => {
  it('every object in every file parses and matches its schema', () => {
    const files = yamlFilesUnder(K8S);
    assert.ok(files.length >= 8, `found only ${files.length} YAML files under deploy/k8s`);
    for (const file of files) {
      for (const doc of readYamlDocuments(file) as KubeObject[]) {
        if (doc.kind === 'Kustomization') continue;
        // A patch is a partial object: its schema check happens on the rendered result.
        if (path.dirname(file) === DIND) continue;
        validate(doc, path.relative(REPO_ROOT, file));
      }
    }
  });

  it('the base renders into a complete farm: in-pod workers, probes, budgets, services, trust', () => {
    const objects = renderKustomization(BASE);
    checkRendering(objects, 'base');
    const pod = find<Workload>(objects, 'Deployment', 'reapi-worker').spec.template.spec;
    const worker = pod.containers[0]!;
    assert.equal(pod.containers.length, 1, 'in-pod mode: no sidecar');
    assert.equal(flagValue(worker.args, '--sandbox'), 'process');
    assert.match(worker.image, /^reapi-worker-in-pod:/);
    assert.notEqual(worker.securityContext?.privileged, true);
    assert.equal(worker.securityContext?.allowPrivilegeEscalation, false);
    assert.deepEqual(worker.securityContext?.capabilities?.drop, ['ALL']);
    assert.deepEqual([...(worker.securityContext?.capabilities?.add ?? [])].sort(), ['CHOWN', 'DAC_OVERRIDE', 'FOWNER', 'KILL', 'SETGID', 'SETUID']);
    find(objects, 'StatefulSet', 'minio');
    find(objects, 'StatefulSet', 'redis');
  });

  it('the docker-in-docker overlay gives the worker a privileged dockerd sharing its work dir', () => {
    const objects = renderKustomization(DIND);
    checkRendering(objects, 'docker-in-docker');
    const pod = find<Workload>(objects, 'Deployment', 'reapi-worker').spec.template.spec;
    const worker = pod.containers.find((c) => c.name === 'worker')!;
    const dockerd = pod.initContainers?.find((c) => c.name === 'dockerd');
    assert.equal(pod.containers.length, 1);
    assert.equal(flagValue(worker.args, '--sandbox'), 'docker');
    assert.match(worker.image, /^reapi-worker:/);
    assert.ok(dockerd, 'a dockerd sidecar');
    assert.equal(dockerd.restartPolicy, 'Always', 'a native sidecar, running before the worker');
    assert.equal(dockerd.securityContext?.privileged, true);
    // dockerd resolves bind-mount sources in its own container: the work dir, TMPDIR and
    // XDG_CACHE_HOME must be the same paths there, on a shared volume; the socket too.
    const workDir = flagValue(worker.args, '--work-dir')!;
    const env = Object.fromEntries((worker.env ?? []).map((e) => [e.name, e.value]));
    for (const dir of [workDir, env.TMPDIR, env.XDG_CACHE_HOME]) {
      assert.ok(dir, 'work dir, TMPDIR and XDG_CACHE_HOME are set');
      const shared = (worker.volumeMounts ?? []).find((m) => dir.startsWith(m.mountPath + '/'));
      assert.ok(shared, `${dir} is on a volume`);
      assert.ok(dockerd.volumeMounts?.some((m) => m.name === shared.name && m.mountPath === shared.mountPath), `dockerd does not see ${dir} at the same path`);
    }
    assert.ok(dockerd.volumeMounts?.some((m) => m.mountPath === '/var/run' && worker.volumeMounts?.some((w) => w.name === m.name && w.mountPath === '/var/run')), 'the Docker socket is shared');
    const ns = find<KubeObject>(objects, 'Namespace', 'reapi');
    assert.equal((ns.metadata.labels as Record<string, string>)['pod-security.kubernetes.io/enforce'], 'privileged');
  });

  it('the renderer merges keyed lists and refuses what it does not implement', () => {
    const base = { containers: [{ name: 'a', image: 'x:1', args: ['1', '2'] }, { name: 'b', image: 'y:1' }] };
    const merged = strategicMerge(base, { containers: [{ name: 'a', args: ['3'] }, { name: 'c', image: 'z:1' }] });
    assert.deepEqual(merged, { containers: [{ name: 'a', image: 'x:1', args: ['3'] }, { name: 'b', image: 'y:1' }, { name: 'c', image: 'z:1' }] });
    assert.throws(() => strategicMerge(base, { containers: [{ name: 'a', $patch: 'delete' }] }), /not supported/);
  });
});

describe('docker compose file', () => {
  interface ComposeService {
    image?: string;
    build?: { context: string; dockerfile: string };
    command?: string[];
    depends_on?: Record<string, { condition: string }>;
    volumes?: string[];
    environment?: Record<string, string>;
  }
  const file = path.join(DEPLOY, 'compose', 'docker-compose.yml');
  const [compose] = readYamlDocuments(file) as { services: Record<string, ComposeService>; volumes?: Record<string, unknown> }[];

  it('references only services, volumes and Dockerfiles that exist', () => {
    const services = compose!.services;
    for (const [name, s] of Object.entries(services)) {
      for (const dep of Object.keys(s.depends_on ?? {})) assert.ok(services[dep], `${name} depends on ${dep}, which is not a service`);
      if (s.image) checkImageTag(s.image, `compose ${name}`);
      if (s.build) assert.ok(fs.existsSync(path.join(path.dirname(file), s.build.context, s.build.dockerfile)), `${name}: ${s.build.dockerfile} does not exist`);
      for (const v of s.volumes ?? []) {
        const source = v.split(':')[0]!;
        if (!source.startsWith('/')) assert.ok(compose!.volumes && source in compose!.volumes, `${name} mounts the undeclared volume ${source}`);
      }
    }
  });

  it('wires two servers and two Docker-mode workers to Redis, MinIO and each other', () => {
    const services = compose!.services;
    const hostPort = (url: string | undefined, where: string) => {
      const m = /^[a-z0-9]+:\/\/([a-z0-9-]+):(\d+)/.exec(url ?? '');
      assert.ok(m && services[m[1]!], `${where}: ${url} names no service`);
      return m[1]!;
    };
    const servers = Object.entries(services).filter(([, s]) => s.command?.[0] === 'serve');
    const workers = Object.entries(services).filter(([, s]) => s.command?.[0] === 'worker');
    assert.equal(servers.length, 2);
    assert.equal(workers.length, 2);
    for (const [name, s] of [...servers, ...workers]) {
      checkFlagsKnown(s.command!, `compose ${name}`);
      assert.equal(hostPort(flagValue(s.command, '--redis'), name), 'redis');
    }
    for (const [name, s] of servers) assert.equal(hostPort(flagValue(s.command, '--storage'), name), 'minio');
    for (const [name, s] of workers) {
      assert.match(hostPort(flagValue(s.command, '--server'), name), /^server-/);
      assert.equal(flagValue(s.command, '--sandbox'), 'docker');
      assert.ok(s.volumes?.includes('/var/run/docker.sock:/var/run/docker.sock'), `${name}: the host's Docker socket`);
      // The host's dockerd resolves bind mounts on the host: same path inside and outside.
      const workDir = flagValue(s.command, '--work-dir')!;
      for (const dir of [workDir, s.environment?.TMPDIR, s.environment?.XDG_CACHE_HOME]) {
        assert.ok(dir && s.volumes?.some((v) => { const [src, dst] = v.split(':'); return src === dst && dir.startsWith(src + '/'); }), `${name}: ${dir} is not a host path mounted at the same path`);
      }
    }
  });
});

describe('Dockerfiles', () => {
  const images = path.join(DEPLOY, 'images');
  for (const name of ['server', 'worker', 'worker-in-pod']) {
    it(`${name}.Dockerfile builds in stages from pinned bases and copies what exists`, () => {
      const text = fs.readFileSync(path.join(images, `${name}.Dockerfile`), 'utf8');
      const froms = [...text.matchAll(/^FROM\s+(\S+)/gm)].map((m) => m[1]!);
      assert.ok(froms.length >= 2, 'multi-stage');
      const args = Object.fromEntries([...text.matchAll(/^ARG\s+(\w+)=(\S+)/gm)].map((m) => [m[1]!, m[2]!]));
      for (const from of froms) checkImageTag(from.replace(/^\$\{(\w+)\}$/, (_, arg: string) => args[arg] ?? from), `${name}.Dockerfile`);
      assert.match(text, /npm ci/);
      assert.match(text, /npm run build/);
      for (const m of text.matchAll(/^COPY --from=build \/src\/(\S+)/gm)) {
        const copied = m[1]!;
        if (!['dist', 'node_modules'].includes(copied)) assert.ok(fs.existsSync(path.join(REPO_ROOT, copied)), `${name}.Dockerfile copies ${copied}, which does not exist`);
      }
      if (name === 'worker-in-pod') assert.match(text, /^ARG TOOLCHAIN_IMAGE=reapi-toolchain:bookworm$/m);
    });
  }
});
