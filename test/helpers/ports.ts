// A TCP port on 127.0.0.1 that nothing listens on right now, for servers that must be given a
// fixed address (a restart on the same port, a Redis on a known port).
import { createServer } from 'node:net';

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}
