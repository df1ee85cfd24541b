// The one digest function this server speaks. Requests may name it or leave it unset.
import { rex } from '../apis';
import { invalidArgument } from '../server/rpc-error';

export function requireSha256(fn: rex.DigestFunction.Value | null | undefined): void {
  if (fn && fn !== rex.DigestFunction.Value.SHA256) {
    const name = rex.DigestFunction.Value[fn] ?? String(fn);
    throw invalidArgument(`digest function ${name} is not supported; this server uses SHA256`);
  }
}
