// The tokens file of `reapi serve --tokens FILE`: who may call, on which instances, with which
// permissions. The file holds only SHA-256 hashes of the tokens, so reading it (a backup, a
// config repository, a leaked volume) does not let anyone call the server.
//
//   {
//     "tokens": [
//       { "name": "ci", "token": "sha256:<hex>", "instances": ["*"], "updateActionCache": true, "execute": true },
//       { "name": "developers", "token": "sha256:<hex>", "instances": ["", "team-a"], "execute": true },
//       { "name": "farm", "token": "sha256:<hex>", "role": "worker", "instances": ["*"] }
//     ]
//   }
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { validateInstanceName } from '../cas/resource-name';

export type Role = 'client' | 'worker';

/** What one token may do. */
export interface TokenGrant {
  /** Names the token in logs and error messages (the token itself never appears anywhere). */
  name: string;
  /** SHA-256 of the token's UTF-8 bytes. */
  sha256: Buffer;
  /** Instance names the token may use; "*" stands for every instance. */
  instances: ReadonlySet<string>;
  /** May write the ActionCache directly (UpdateActionResult). */
  updateActionCache: boolean;
  /** May Execute (and cancel or delete operations of its instances). */
  execute: boolean;
  /**
   * "worker": a farm worker, which stores the results of the actions it ran with
   * UpdateActionResult on any of its instances, even when clients may not write the ActionCache.
   */
  role: Role;
}

export const ANY_INSTANCE = '*';

/** The format in one line, for the usage text and error messages. */
export const TOKENS_FILE_FORMAT =
  '{"tokens": [{"name": "ci", "token": "sha256:<hex>", "instances": ["", "team-a"], "updateActionCache": true, "execute": true, "role": "client"}, ...]}';

const KNOWN_KEYS = new Set(['name', 'token', 'instances', 'updateActionCache', 'execute', 'role']);

/** "sha256:<hex>" of a token, the form the tokens file stores. */
export function hashToken(token: string): string {
  return `sha256:${createHash('sha256').update(token, 'utf8').digest('hex')}`;
}

/** A new random token: 32 bytes, URL-safe base64 (fits an HTTP header as it is). */
export function newToken(): string {
  return randomBytes(32).toString('base64url');
}

export function loadTokensFile(file: string): TokenGrant[] {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new Error(`tokens file ${file}: ${(err as Error).message}`);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw new Error(`tokens file ${file} is not JSON: ${(err as Error).message}`);
  }
  return parseTokens(parsed, file);
}

export function parseTokens(parsed: unknown, source: string): TokenGrant[] {
  const list = (parsed as { tokens?: unknown } | null)?.tokens;
  if (!Array.isArray(list) || list.length === 0) {
    throw new Error(`tokens file ${source}: expected a non-empty "tokens" list: ${TOKENS_FILE_FORMAT}`);
  }
  const grants = list.map((entry, i) => parseEntry(entry, `tokens file ${source}, entry ${i + 1}`));
  const seen = new Map<string, string>();
  for (const g of grants) {
    const hex = g.sha256.toString('hex');
    const other = seen.get(hex);
    if (other !== undefined) throw new Error(`tokens file ${source}: entries ${JSON.stringify(other)} and ${JSON.stringify(g.name)} have the same token`);
    seen.set(hex, g.name);
  }
  return grants;
}

function parseEntry(entry: unknown, where: string): TokenGrant {
  if (typeof entry !== 'object' || entry === null || Array.isArray(entry)) throw new Error(`${where}: not an object`);
  const e = entry as Record<string, unknown>;
  // A misspelt permission would otherwise silently grant less (or, for "role", more) than meant.
  const unknown = Object.keys(e).filter((k) => !KNOWN_KEYS.has(k));
  if (unknown.length > 0) throw new Error(`${where}: unknown key(s) ${unknown.join(', ')}; known: ${[...KNOWN_KEYS].join(', ')}`);

  const name = e.name;
  if (typeof name !== 'string' || name === '') throw new Error(`${where}: "name" must be a non-empty string`);
  const at = `${where} (${JSON.stringify(name)})`;

  const token = e.token;
  const match = typeof token === 'string' ? /^sha256:([0-9a-fA-F]{64})$/.exec(token) : null;
  if (!match) {
    throw new Error(`${at}: "token" must be "sha256:<64 hex digits>", the hash of the token, never the token itself (reapi token hash, or printf %s TOKEN | sha256sum)`);
  }

  const instances = e.instances;
  if (!Array.isArray(instances) || instances.length === 0 || !instances.every((i) => typeof i === 'string')) {
    throw new Error(`${at}: "instances" must be a non-empty list of instance names ("" is the default instance, "*" every instance)`);
  }
  for (const instance of instances as string[]) {
    if (instance !== ANY_INSTANCE) {
      try {
        validateInstanceName(instance);
      } catch (err) {
        throw new Error(`${at}: ${(err as Error).message}`);
      }
    }
  }

  const flag = (key: 'updateActionCache' | 'execute'): boolean => {
    if (e[key] === undefined) return false;
    if (typeof e[key] !== 'boolean') throw new Error(`${at}: "${key}" must be true or false`);
    return e[key] as boolean;
  };
  const role = e.role ?? 'client';
  if (role !== 'client' && role !== 'worker') throw new Error(`${at}: "role" must be "client" or "worker"`);

  return {
    name,
    sha256: Buffer.from(match[1], 'hex'),
    instances: new Set(instances as string[]),
    updateActionCache: flag('updateActionCache'),
    execute: flag('execute'),
    role,
  };
}
