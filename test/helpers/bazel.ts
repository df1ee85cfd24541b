// Helpers for tests that drive the real Bazel 4.2.3 client (Debian `bazel-bootstrap`, /usr/bin/bazel)
// against the offline fixture workspace in test/fixtures/bazel.
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import * as fs from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";

/** The bazel binary; override with REAPI_BAZEL. */
export const BAZEL = process.env.REAPI_BAZEL ?? "bazel";

/** Walks up from this file (dist/test/helpers when compiled) to the directory holding package.json. */
export function repoRoot(): string {
  let dir = __dirname;
  for (;;) {
    if (existsSync(path.join(dir, "package.json"))) return dir;
    const parent = path.dirname(dir);
    if (parent === dir) throw new Error(`no package.json above ${__dirname}`);
    dir = parent;
  }
}

/** Absolute path of the fixture workspace in the source tree (never build in it directly). */
export function fixtureDir(): string {
  return path.join(repoRoot(), "test", "fixtures", "bazel");
}

/** Copies test/fixtures/bazel to a fresh temp dir and returns its path. */
export async function copyWorkspace(): Promise<string> {
  const dest = await fs.mkdtemp(path.join(os.tmpdir(), "reapi-bzws-"));
  await fs.cp(await fs.realpath(fixtureDir()), dest, {
    recursive: true,
    // Skip convenience symlinks / stray output a manual run may have left behind.
    filter: (src) => !path.basename(src).startsWith("bazel-"),
  });
  return dest;
}

/** A fresh, short temp dir for --output_base (Bazel's server socket path must stay short). */
export async function makeOutputBase(): Promise<string> {
  return fs.mkdtemp(path.join(os.tmpdir(), "reapi-bzob-"));
}

export interface RunBazelOptions {
  workspace: string;
  outputBase: string;
  /** Command and its flags, e.g. ["build", "--remote_executor=grpc://127.0.0.1:1234", "//..."]. */
  args: string[];
  /** Kill the client after this long (default 5 minutes); the promise then rejects. */
  timeoutMs?: number;
  /** Extra environment for the client. */
  env?: NodeJS.ProcessEnv;
}

export interface BazelResult {
  code: number;
  stdout: string;
  /** Bazel prints progress, errors and the "INFO: N processes: ..." summary here. */
  stderr: string;
}

/** Runs `bazel --output_base=... --max_idle_secs=30 <args>` in the workspace; resolves with any exit code. */
export function runBazel(opts: RunBazelOptions): Promise<BazelResult> {
  const timeoutMs = opts.timeoutMs ?? 5 * 60_000;
  const argv = [`--output_base=${opts.outputBase}`, "--max_idle_secs=30", ...opts.args];
  return new Promise((resolve, reject) => {
    const child = spawn(BAZEL, argv, {
      cwd: opts.workspace,
      env: { ...process.env, ...opts.env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on("data", (b: Buffer) => out.push(b));
    child.stderr.on("data", (b: Buffer) => err.push(b));
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill("SIGTERM"); // the client forwards this to its server as an interrupt
      setTimeout(() => child.kill("SIGKILL"), 10_000).unref();
    }, timeoutMs);
    child.on("error", (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      const stdout = Buffer.concat(out).toString("utf8");
      const stderr = Buffer.concat(err).toString("utf8");
      if (timedOut) {
        reject(
          new Error(
            `bazel ${opts.args.join(" ")} timed out after ${timeoutMs} ms; stderr tail:\n${stderr.slice(-4000)}`,
          ),
        );
        return;
      }
      resolve({ code: code ?? (signal ? 128 : -1), stdout, stderr });
    });
  });
}

export interface ProcessSummary {
  /** N in "INFO: N processes: ...". */
  total: number;
  /** "remote cache hit": AC hits (GetActionResult, or ExecuteResponse.cached_result) and --disk_cache hits. */
  remoteCacheHit: number;
  /** "remote": actions executed remotely. */
  remote: number;
  /** "local": run unsandboxed (e.g. --spawn_strategy=local). */
  local: number;
  /** "internal": Bazel's own actions (symlinks, stamp files, ...); never sent anywhere. */
  internal: number;
  /** "linux-sandbox": Bazel's default local strategy on Linux. */
  linuxSandbox: number;
  /** Any other runner name (e.g. "processwrapper-sandbox", "worker"), by name. */
  other: Record<string, number>;
}

const SUMMARY_RE = /^INFO: (\d+) process(?:es)?(?:: (.*))?\.$/;

/**
 * Parses the last spawn summary line Bazel 4.2.3 prints to stderr, e.g.
 *   "INFO: 21 processes: 9 internal, 12 local."
 *   "INFO: 22 processes: 14 remote cache hit, 8 internal."
 *   "INFO: 1 process: 1 internal."
 * Throws if there is none (e.g. the build failed during loading/analysis).
 */
export function parseProcessSummary(stderr: string): ProcessSummary {
  const lines = stderr.split(/\r?\n/).map((l) => l.trim());
  let match: RegExpMatchArray | null = null;
  for (let i = lines.length - 1; i >= 0 && !match; i--) match = lines[i].match(SUMMARY_RE);
  if (!match) throw new Error(`no "INFO: N processes" line in bazel output:\n${stderr.slice(-2000)}`);
  const summary: ProcessSummary = {
    total: Number(match[1]),
    remoteCacheHit: 0,
    remote: 0,
    local: 0,
    internal: 0,
    linuxSandbox: 0,
    other: {},
  };
  for (const part of (match[2] ?? "").split(", ").filter((p) => p !== "")) {
    const m = part.match(/^(\d+) (.+)$/);
    if (!m) throw new Error(`unparseable process summary part "${part}" in "${match[0]}"`);
    const n = Number(m[1]);
    switch (m[2]) {
      case "remote cache hit":
        summary.remoteCacheHit += n;
        break;
      case "remote":
        summary.remote += n;
        break;
      case "local":
        summary.local += n;
        break;
      case "internal":
        summary.internal += n;
        break;
      case "linux-sandbox":
        summary.linuxSandbox += n;
        break;
      default:
        summary.other[m[2]] = (summary.other[m[2]] ?? 0) + n;
    }
  }
  return summary;
}

/** `bazel --output_base=... shutdown` in the workspace; never throws. */
export async function shutdownBazel(workspace: string, outputBase: string): Promise<void> {
  if (!existsSync(workspace) || !existsSync(outputBase)) return;
  try {
    await runBazel({ workspace, outputBase, args: ["shutdown"], timeoutMs: 60_000 });
  } catch {
    // best effort: --max_idle_secs=30 ends the server anyway
  }
}

/** Shuts the server down and deletes the workspace copy and the output base. */
export async function cleanupBazel(workspace: string, outputBase: string): Promise<void> {
  await shutdownBazel(workspace, outputBase);
  // Bazel leaves read-only dirs in the output base; as root rm still works, else chmod first.
  for (const dir of [outputBase, workspace]) {
    try {
      await fs.rm(dir, { recursive: true, force: true });
    } catch {
      await new Promise<void>((resolve) => {
        const c = spawn("sh", ["-c", 'chmod -R u+w "$1" && rm -rf "$1"', "sh", dir], { stdio: "ignore" });
        c.on("close", () => resolve());
        c.on("error", () => resolve());
      });
    }
  }
}
