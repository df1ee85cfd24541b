// Where reapi-cc sends work and keeps its state; read once from flags and the environment.
import * as os from 'node:os';
import * as path from 'node:path';

export interface ClientConfig {
  /** grpc[s]://HOST:PORT, or embedded[:DIR] for the farm inside reapi-cc (see embeddedDataDir). */
  serverUrl: string;
  /** The container-image platform property of every action. */
  image: string;
  /** Digest cache, manifests and statistics. */
  stateDir: string;
  /** Environment variables (besides LC_*) an action receives, when the caller has them. */
  envAllowlist: string[];
  timeoutSeconds: number;
  /** Actions the embedded farm runs at once. */
  workerSlots: number;
}

/**
 * Without a server named, the farm runs inside reapi-cc: nothing to start first, and no second
 * process serializing every blob and result (on a cold kernel build, the gRPC layer cost more
 * CPU than any other part of reapi-cc).
 */
export const DEFAULT_SERVER = 'embedded';
export const DEFAULT_IMAGE = 'docker://reapi-toolchain:bookworm';

/**
 * What per-object recipes read from the environment: the tools' search path, locale, the names of
 * nm/awk kbuild passes down, objtool's extra arguments, gcc's own variables (honoured even with
 * -nostdinc), and the reproducibility knobs. Anything else (MAKEFLAGS with its jobserver fds,
 * terminal and session variables) would only make keys differ between identical builds.
 */
export const DEFAULT_ENV_ALLOWLIST = [
  'PATH', 'LANG', 'LANGUAGE', 'TZ', 'NM', 'AWK', 'OBJTOOL_ARGS',
  'CPATH', 'C_INCLUDE_PATH', 'CPLUS_INCLUDE_PATH', 'OBJC_INCLUDE_PATH', 'GCC_EXEC_PREFIX', 'COMPILER_PATH', 'LIBRARY_PATH',
  'DEPENDENCIES_OUTPUT', 'SUNPRO_DEPENDENCIES', 'GCC_COMPARE_DEBUG', 'SOURCE_DATE_EPOCH',
  'KBUILD_BUILD_TIMESTAMP', 'KBUILD_BUILD_USER', 'KBUILD_BUILD_HOST',
];

export function loadConfig(flags: { server?: string; image?: string } = {}, env: NodeJS.ProcessEnv = process.env): ClientConfig {
  const extra = (env.REAPI_CC_ENV ?? '').split(',').map((s) => s.trim()).filter(Boolean);
  return {
    serverUrl: flags.server ?? env.REAPI_SERVER ?? DEFAULT_SERVER,
    image: flags.image ?? env.REAPI_CC_IMAGE ?? DEFAULT_IMAGE,
    stateDir: env.REAPI_CC_STATE ?? path.join(env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache'), 'reapi-cc'),
    envAllowlist: [...DEFAULT_ENV_ALLOWLIST, ...extra],
    timeoutSeconds: Number(env.REAPI_CC_TIMEOUT ?? 600),
    // One action per core: make and the include scans share the cores with the compilers.
    workerSlots: Number(env.REAPI_CC_WORKER_SLOTS ?? os.cpus().length),
  };
}

/** The farm, as a warning names it. */
export function farmName(config: ClientConfig): string {
  const dir = embeddedDataDir(config);
  return dir === undefined ? `server ${config.serverUrl}` : `the embedded farm (${dir})`;
}

/** The embedded farm's data directory (embedded:DIR, or <state>/farm), or undefined for a server. */
export function embeddedDataDir(config: ClientConfig): string | undefined {
  const m = /^embedded(?::(.+))?$/.exec(config.serverUrl);
  if (!m) return undefined;
  return path.resolve(m[1] ?? path.join(config.stateDir, 'farm'));
}

/** The part of a recipe's environment that goes into its action. Pure. */
export function actionEnvironment(env: Record<string, string | undefined>, allowlist: string[], pwd: string): Record<string, string> {
  const out: Record<string, string> = {};
  const allowed = new Set(allowlist);
  for (const [name, value] of Object.entries(env)) {
    if (value === undefined) continue;
    if (allowed.has(name) || name.startsWith('LC_')) out[name] = value;
  }
  // gcc writes the working directory into debug info; the action runs at the same path.
  out.PWD = pwd;
  return out;
}
