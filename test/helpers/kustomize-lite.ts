// Renders a kustomization the way `kubectl kustomize` does, for the small subset deploy/k8s uses:
// `resources` (files, or directories holding a kustomization.yaml), `namespace`, and `patches`
// given as strategic-merge patch files. Anything else is refused, so a manifest that starts using
// more of kustomize fails the test instead of being rendered wrongly. No npm package does this
// offline (kustomize itself is a Go binary), hence these ~100 lines.
import fs from 'node:fs';
import path from 'node:path';
import { parseAllDocuments } from 'yaml';

export type KubeObject = { apiVersion: string; kind: string; metadata: { name: string; namespace?: string; [k: string]: unknown }; [k: string]: unknown };

const SUPPORTED_KEYS = new Set(['apiVersion', 'kind', 'namespace', 'resources', 'patches']);

/** Lists whose items merge by a key (from the Kubernetes API's patchMergeKey); others are replaced. */
const MERGE_KEYS: Record<string, string> = {
  containers: 'name',
  initContainers: 'name',
  volumes: 'name',
  volumeMounts: 'mountPath',
  env: 'name',
  ports: 'containerPort',
  imagePullSecrets: 'name',
};

/** Kinds without a namespace, which `namespace:` leaves alone. */
const CLUSTER_SCOPED = new Set(['Namespace', 'ClusterRole', 'ClusterRoleBinding', 'CustomResourceDefinition', 'PersistentVolume', 'StorageClass']);

/** Every YAML document of a file, parsed; a syntax error names the file. */
export function readYamlDocuments(file: string): unknown[] {
  const docs = parseAllDocuments(fs.readFileSync(file, 'utf8'));
  return docs
    .map((doc) => {
      if (doc.errors.length) throw new Error(`${file}: ${doc.errors.map((e) => e.message).join('; ')}`);
      return doc.toJS();
    })
    .filter((d) => d !== null && d !== undefined);
}

export function renderKustomization(dir: string): KubeObject[] {
  const file = path.join(dir, 'kustomization.yaml');
  const [k] = readYamlDocuments(file) as Record<string, unknown>[];
  if (!k || k.kind !== 'Kustomization') throw new Error(`${file} is not a Kustomization`);
  for (const key of Object.keys(k)) if (!SUPPORTED_KEYS.has(key)) throw new Error(`${file}: "${key}" is not supported by this renderer`);

  const objects: KubeObject[] = [];
  for (const ref of (k.resources as string[] | undefined) ?? []) {
    const target = path.resolve(dir, ref);
    objects.push(...(fs.statSync(target).isDirectory() ? renderKustomization(target) : (readYamlDocuments(target) as KubeObject[])));
  }
  for (const patchRef of (k.patches as { path?: string }[] | undefined) ?? []) {
    if (!patchRef.path || Object.keys(patchRef).length !== 1) throw new Error(`${file}: only "patches: - path: FILE" is supported`);
    for (const patch of readYamlDocuments(path.resolve(dir, patchRef.path)) as KubeObject[]) {
      const matches = objects.filter((o) => o.kind === patch.kind && o.apiVersion === patch.apiVersion && o.metadata.name === patch.metadata.name);
      if (matches.length !== 1) throw new Error(`${patchRef.path}: ${patch.kind}/${patch.metadata.name} matches ${matches.length} objects`);
      const index = objects.indexOf(matches[0]!);
      const { namespace } = matches[0]!.metadata;
      objects[index] = strategicMerge(matches[0], { ...patch, metadata: { ...patch.metadata, ...(namespace ? { namespace } : {}) } }) as KubeObject;
    }
  }
  if (typeof k.namespace === 'string') {
    for (const o of objects) if (!CLUSTER_SCOPED.has(o.kind)) o.metadata = { ...o.metadata, namespace: k.namespace };
  }
  return objects;
}

/** Strategic merge: maps merge recursively (null deletes), keyed lists merge by key, other lists are replaced. */
export function strategicMerge(base: unknown, patch: unknown, field = ''): unknown {
  if (isMap(patch) && '$patch' in patch) throw new Error('$patch directives are not supported by this renderer');
  if (Array.isArray(patch)) {
    const key = MERGE_KEYS[field];
    if (!key || !Array.isArray(base) || !patch.every(isMap)) return structuredClone(patch);
    const merged = base.map((item) => structuredClone(item));
    for (const item of patch) {
      const at = merged.findIndex((m) => isMap(m) && m[key] === item[key]);
      if (at >= 0) merged[at] = strategicMerge(merged[at], item, field);
      else merged.push(structuredClone(item));
    }
    return merged;
  }
  if (isMap(patch) && isMap(base)) {
    const out: Record<string, unknown> = { ...base };
    for (const [name, value] of Object.entries(patch)) {
      if (value === null) delete out[name];
      else out[name] = name in base ? strategicMerge(base[name], value, name) : structuredClone(value);
    }
    return out;
  }
  return structuredClone(patch);
}

function isMap(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
