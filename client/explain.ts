// Why an action key differs from the previous one of the same object. Pure.

/** Everything an action key is made of, in comparable form. */
export interface KeyParts {
  argv: string[];
  env: Record<string, string>;
  platform: Record<string, string>;
  outputs: string[];
  workingDirectory: string;
  /** Input path -> "hash/size" (with "+x" when executable). */
  inputs: Record<string, string>;
}

/** Human-readable differences, most telling first; empty when the parts are equal. */
export function explainDifference(previous: KeyParts | undefined, current: KeyParts): string[] {
  if (!previous) return ['no previous build of this object is recorded'];
  const reasons: string[] = [];
  for (const [p, d] of Object.entries(current.inputs)) {
    const before = previous.inputs[p];
    if (before === undefined) reasons.push(`input added: ${p}`);
    else if (before !== d) reasons.push(`input changed: ${p}`);
  }
  for (const p of Object.keys(previous.inputs)) if (!(p in current.inputs)) reasons.push(`input removed: ${p}`);
  if (JSON.stringify(previous.argv) !== JSON.stringify(current.argv)) reasons.push('command changed');
  for (const name of new Set([...Object.keys(previous.env), ...Object.keys(current.env)])) {
    if (previous.env[name] !== current.env[name]) reasons.push(`environment changed: ${name}`);
  }
  for (const name of new Set([...Object.keys(previous.platform), ...Object.keys(current.platform)])) {
    if (previous.platform[name] !== current.platform[name]) reasons.push(`platform changed: ${name}=${current.platform[name] ?? '(unset)'}`);
  }
  if (JSON.stringify(previous.outputs) !== JSON.stringify(current.outputs)) reasons.push('outputs changed');
  if (previous.workingDirectory !== current.workingDirectory) reasons.push('working directory changed');
  return reasons;
}
