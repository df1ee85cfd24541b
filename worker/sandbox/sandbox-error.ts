/** What went wrong and where: every sandbox failure names the image (and container/action when known). */
export interface SandboxErrorContext {
  image?: string;
  container?: string;
  argv0?: string;
}

/** An infrastructure failure of the sandbox (not a failing action: those come back as a result). */
export class SandboxError extends Error {
  constructor(
    message: string,
    readonly context: SandboxErrorContext = {},
    options?: { cause?: unknown },
  ) {
    super(`${message}${describeContext(context)}`, options);
    this.name = 'SandboxError';
  }
}

function describeContext(ctx: SandboxErrorContext): string {
  const parts: string[] = [];
  if (ctx.image) parts.push(`image ${ctx.image}`);
  if (ctx.container) parts.push(`container ${ctx.container.slice(0, 12)}`);
  if (ctx.argv0) parts.push(`action ${ctx.argv0}`);
  return parts.length ? ` (${parts.join(', ')})` : '';
}
