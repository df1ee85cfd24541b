// The HTTP side of a reapi process (--metrics-listen HOST:PORT), for Prometheus and Kubernetes:
//   GET /metrics  Prometheus text format
//   GET /healthz  200 while the process is alive (liveness: nothing but the event loop is asked)
//   GET /readyz   200 when every dependency answers, else 503; both with a JSON body naming
//                 each check, e.g. {"ready":false,"failing":["redis"],"checks":{"redis":"...","storage":"ok"}}
// Quiet: nothing is logged per request.
import * as http from 'node:http';
import { AddressInfo } from 'node:net';
import { Metrics } from './metrics';
import { ReadinessCheck, runChecks } from './readiness';
import { log } from './log';

export interface HttpEndpointsOptions {
  metrics: Metrics;
  /** What /readyz checks; none: ready whenever alive. */
  checks: readonly ReadinessCheck[];
}

export interface RunningHttpEndpoints {
  /** HOST:PORT it listens on, with the port chosen when asked for port 0. */
  address: string;
  port: number;
  /** Stops listening and closes the checks' connections. */
  close(): Promise<void>;
}

/** HOST:PORT, [IPv6]:PORT; port 0 picks a free one. */
export function parseListenAddress(listen: string, flag = '--metrics-listen'): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d+)$/.exec(listen);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) throw new Error(`${flag} ${JSON.stringify(listen)} is not HOST:PORT`);
  return { host: m[1] ?? m[2], port };
}

export async function startHttpEndpoints(listen: string, opts: HttpEndpointsOptions): Promise<RunningHttpEndpoints> {
  const { host, port } = parseListenAddress(listen);
  const server = http.createServer((req, res) => {
    handle(req, res, opts).catch((err: unknown) => {
      log.error('metrics endpoint failed', { path: req.url, err });
      if (!res.headersSent) res.writeHead(500, { 'content-type': 'text/plain' });
      res.end('internal error\n');
    });
  });
  server.keepAliveTimeout = 65_000; // longer than Prometheus's scrape interval: one connection
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const bound = (server.address() as AddressInfo).port;
  return {
    address: `${host.includes(':') ? `[${host}]` : host}:${bound}`,
    port: bound,
    async close() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await Promise.allSettled(opts.checks.map((c) => c.close?.()));
    },
  };
}

async function handle(req: http.IncomingMessage, res: http.ServerResponse, opts: HttpEndpointsOptions): Promise<void> {
  const path = (req.url ?? '/').split('?')[0];
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    res.writeHead(405, { allow: 'GET, HEAD', 'content-type': 'text/plain' }).end('only GET\n');
    return;
  }
  switch (path) {
    case '/metrics': {
      const body = await opts.metrics.scrape();
      res.writeHead(200, { 'content-type': opts.metrics.contentType }).end(body);
      return;
    }
    case '/healthz':
      res.writeHead(200, { 'content-type': 'text/plain' }).end('ok\n');
      return;
    case '/readyz': {
      const report = await runChecks(opts.checks);
      res.writeHead(report.ready ? 200 : 503, { 'content-type': 'application/json' }).end(JSON.stringify(report) + '\n');
      return;
    }
    default:
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: try /metrics, /healthz or /readyz\n');
  }
}
