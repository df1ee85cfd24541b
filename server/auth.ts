// Who is calling, and may they do this? Every handler asks before it touches any data.
//
// Without a tokens file the server is open, as before: every caller may do everything (the
// ActionCache write policy, --no-ac-updates, still applies). With one, every call must carry
// `authorization: Bearer <token>`; no token or an unknown one is UNAUTHENTICATED, a known token
// lacking the instance or the permission is PERMISSION_DENIED. Each refusal is one warn log line
// naming the method, the peer and the reason, never the token.
import * as grpc from '@grpc/grpc-js';
import { createHash, timingSafeEqual } from 'node:crypto';
import { RpcError, permissionDenied, unauthenticated } from './rpc-error';
import { ANY_INSTANCE, Role, TokenGrant } from './auth-tokens';
import { log } from './log';

/** What a call wants to do on an instance. */
export type Need =
  /** Read and write the CAS, read the ActionCache and operations, ask for capabilities. */
  | 'use'
  /** Write the ActionCache directly (UpdateActionResult). */
  | 'updateActionCache'
  /** Execute, and cancel or delete operations. */
  | 'execute';

export interface Caller {
  /** The token's name from the tokens file, or "anonymous" on an open server. */
  readonly name: string;
  readonly role: Role;
  /** Whether the caller may do `need` on `instance`; a worker may always store results of its instances. */
  may(instance: string, need: Need): boolean;
}

/** The parts of a server call that say who is calling. */
export interface CallIdentity {
  metadata: grpc.Metadata;
  getPeer(): string;
}

const ANONYMOUS: Caller = { name: 'anonymous', role: 'client', may: () => true };

export class AccessControl {
  /** No tokens: everyone may do everything, as before tokens existed. */
  static open(): AccessControl {
    return new AccessControl([]);
  }

  static withTokens(grants: TokenGrant[]): AccessControl {
    if (grants.length === 0) throw new Error('a tokens file must list at least one token');
    return new AccessControl(grants);
  }

  private constructor(private readonly grants: readonly TokenGrant[]) {}

  get requiresTokens(): boolean {
    return this.grants.length > 0;
  }

  /** The caller of `call`; throws UNAUTHENTICATED (and logs it) when a token is required and none valid came. */
  authenticate(call: CallIdentity, method: string): Caller {
    if (!this.requiresTokens) return ANONYMOUS;
    const presented = bearerToken(call.metadata);
    if (!presented.ok) throw this.refuse(unauthenticated(presented.error), call, method);
    const grant = this.find(presented.token);
    if (!grant) throw this.refuse(unauthenticated('the token presented is not valid on this server'), call, method);
    return callerOf(grant);
  }

  /** Throws PERMISSION_DENIED (and logs it) unless the caller may do `need` on `instance`. */
  authorize(caller: Caller, call: CallIdentity, method: string, instance: string, need: Need): void {
    if (caller.may(instance, need)) return;
    throw this.refuse(permissionDenied(deniedMessage(caller, instance, need)), call, method);
  }

  /** authenticate, then authorize: the usual check of a call that names its instance. */
  check(call: CallIdentity, method: string, instance: string, need: Need): Caller {
    const caller = this.authenticate(call, method);
    this.authorize(caller, call, method, instance, need);
    return caller;
  }

  /**
   * Looks the token up by its hash. Every entry is compared, each in constant time, so how long
   * this takes says nothing about how close a guess came or which entry matched.
   */
  private find(token: string): TokenGrant | undefined {
    const digest = createHash('sha256').update(token, 'utf8').digest();
    let found: TokenGrant | undefined;
    for (const grant of this.grants) {
      const equal = timingSafeEqual(grant.sha256, digest);
      if (equal && !found) found = grant;
    }
    return found;
  }

  private refuse(err: RpcError, call: CallIdentity, method: string): RpcError {
    log.warn('request refused', { method, peer: call.getPeer(), code: grpc.status[err.code], reason: err.message });
    return err;
  }
}

function callerOf(grant: TokenGrant): Caller {
  const instanceAllowed = (instance: string) => grant.instances.has(ANY_INSTANCE) || grant.instances.has(instance);
  return {
    name: grant.name,
    role: grant.role,
    may(instance, need) {
      if (!instanceAllowed(instance)) return false;
      switch (need) {
        case 'use':
          return true;
        case 'updateActionCache':
          return grant.updateActionCache || grant.role === 'worker';
        case 'execute':
          return grant.execute;
      }
    },
  };
}

function deniedMessage(caller: Caller, instance: string, need: Need): string {
  const who = `token ${JSON.stringify(caller.name)}`;
  const where = `instance ${JSON.stringify(instance)}`;
  if (!caller.may(instance, 'use')) return `${who} may not use ${where}`;
  if (need === 'updateActionCache') return `${who} may not write the ActionCache (UpdateActionResult) of ${where}`;
  return `${who} may not execute actions or change operations on ${where}`;
}

/** The token of an `authorization: Bearer <token>` header, or why there is none. */
function bearerToken(metadata: grpc.Metadata): { ok: true; token: string } | { ok: false; error: string } {
  const values = metadata.get('authorization');
  const howTo = 'send the header "authorization: Bearer <token>" (Bazel: --remote_header=Authorization=Bearer <token>)';
  if (values.length === 0) return { ok: false, error: `this server requires a token: ${howTo}` };
  if (values.length > 1) return { ok: false, error: `more than one authorization header: ${howTo}` };
  const value = typeof values[0] === 'string' ? values[0] : values[0].toString('utf8');
  const match = /^\s*Bearer\s+(\S+)\s*$/i.exec(value);
  if (!match) return { ok: false, error: `the authorization header is not "Bearer <token>": ${howTo}` };
  return { ok: true, token: match[1] };
}
