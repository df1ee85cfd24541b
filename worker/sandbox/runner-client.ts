// One request/reply exchange with a container's runner over its Unix socket.
import net from 'node:net';

/** Where the exchange failed: before the runner got the request it is safe to retry elsewhere. */
export type RunnerFailurePhase = 'connect' | 'reply';

export class RunnerConnectionError extends Error {
  constructor(
    message: string,
    readonly phase: RunnerFailurePhase,
  ) {
    super(message);
    this.name = 'RunnerConnectionError';
  }
}

/** Sends the request and resolves with everything the runner wrote before closing the connection. */
export function exchangeWithRunner(socketPath: string, request: Buffer, replyTimeoutMs: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let connected = false;
    let timer: NodeJS.Timeout | undefined;
    const sock = net.createConnection({ path: socketPath });
    const fail = (message: string) => {
      if (timer) clearTimeout(timer);
      sock.destroy();
      reject(new RunnerConnectionError(message, connected ? 'reply' : 'connect'));
    };
    sock.on('connect', () => {
      connected = true;
      sock.end(request); // half-close: the runner reads exactly one request anyway
      if (replyTimeoutMs > 0) timer = setTimeout(() => fail(`no reply from runner within ${replyTimeoutMs} ms`), replyTimeoutMs);
    });
    sock.on('data', (c: Buffer) => chunks.push(c));
    sock.on('error', (err) => fail(`runner socket ${socketPath}: ${err.message}`));
    sock.on('end', () => {
      if (timer) clearTimeout(timer);
      resolve(Buffer.concat(chunks));
    });
  });
}
