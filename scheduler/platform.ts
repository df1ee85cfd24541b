// Platform properties: which worker may run an action, and in which container image. Pure.
//
// An action's properties are requirements. A worker advertises the properties it has; it can run
// an action when it has every required name=value. Some properties do not select a worker but
// configure the run on any worker that can honour them (the container image, the input root's
// absolute path): those are "run properties", matched by capability rather than by value.

export interface PlatformProperty {
  name: string;
  value: string;
}

/** Properties every Docker-capable worker honours for any value. */
export const RUN_PROPERTIES = new Set(['container-image', 'InputRootAbsolutePath', 'dockerNetwork']);

/** Sorted, de-duplicated properties; REAPI requires clients to send them sorted, we don't rely on it. */
export function canonicalPlatform(props: ReadonlyArray<{ name?: string | null; value?: string | null }> | null | undefined): PlatformProperty[] {
  const seen = new Map<string, PlatformProperty>();
  for (const p of props ?? []) {
    const name = p.name ?? '';
    const value = p.value ?? '';
    seen.set(`${name}\0${value}`, { name, value });
  }
  return [...seen.values()].sort((a, b) => (a.name === b.name ? cmp(a.value, b.value) : cmp(a.name, b.name)));
}

function cmp(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** The properties that select workers, as one stable string: the name of the queue they share. */
export function queueKey(props: PlatformProperty[]): string {
  const selecting = props.filter((p) => !RUN_PROPERTIES.has(p.name));
  return selecting.length === 0 ? 'default' : selecting.map((p) => `${p.name}=${p.value}`).join(',');
}

/** Whether a worker with these properties satisfies the action's selecting properties. */
export function workerSatisfies(worker: PlatformProperty[], action: PlatformProperty[]): boolean {
  const has = new Set(worker.map((p) => `${p.name}\0${p.value}`));
  return action.every((p) => RUN_PROPERTIES.has(p.name) || has.has(`${p.name}\0${p.value}`));
}

/** The first value of a property, if present. */
export function propertyValue(props: PlatformProperty[], name: string): string | undefined {
  return props.find((p) => p.name === name)?.value;
}

/** The image to run in: `docker://` (as RBE spells it) is optional. */
export function containerImage(props: PlatformProperty[], fallback: string): string {
  const value = propertyValue(props, 'container-image') ?? fallback;
  return value.startsWith('docker://') ? value.slice('docker://'.length) : value;
}

/** Parses "k=v,k2=v2" (worker flags) into properties. */
export function parseProperties(text: string): PlatformProperty[] {
  if (!text.trim()) return [];
  return canonicalPlatform(
    text.split(',').map((pair) => {
      const at = pair.indexOf('=');
      if (at <= 0) throw new Error(`platform property ${JSON.stringify(pair)} is not name=value`);
      return { name: pair.slice(0, at).trim(), value: pair.slice(at + 1).trim() };
    }),
  );
}
