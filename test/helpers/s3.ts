// A private, throw-away S3 for a test file: s3rver (an S3-compatible server on the local
// filesystem) in this process, on a free 127.0.0.1 port, with its own temp dir and one bucket.
//
// What s3rver needs to serve the `minio` client:
// - ListMultipartUploads (`GET /BUCKET?uploads`) answers NotImplemented in s3rver, and minio asks
//   it before every multipart upload (to resume an earlier one). A small HTTP front in this helper
//   answers it with an empty listing and hands every other request to s3rver unchanged.
// - It does not check V4 signatures (the only kind minio sends): any secret passes. The access
//   key must still name one of its accounts, S3RVER, so tests use S3RVER / S3RVER. Credentials
//   are therefore not really tested here.
// The front also records each request's method and URL, so a test can see which S3 calls a
// storage made (say, that a large blob went up as a multipart upload).
import { mkdtempSync, rmSync } from 'node:fs';
import { IncomingMessage, ServerResponse, createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { Client } from 'minio';

// s3rver ships no types; this is the part of it used here.
interface S3rverApp {
  configureBuckets(): Promise<void>;
  callback(): (req: IncomingMessage, res: ServerResponse) => void;
  logger: { close(): void };
}
const S3rver = require('s3rver') as new (options: Record<string, unknown>) => S3rverApp;

export const S3_ACCESS_KEY = 'S3RVER';
export const S3_SECRET_KEY = 'S3RVER';

export interface TestS3 {
  bucket: string;
  /** Where s3rver keeps buckets and objects. */
  dir: string;
  /** "METHOD /path?query" of every request so far, in order. */
  requests: string[];
  /** A `--storage` flag value for this S3 (http, the test credentials). */
  storageUrl(prefix: string, query?: Record<string, string | number>): string;
  /** Where and how to reach it, as S3Storage.open() and a storage config file take them. */
  settings(prefix: string): { endpoint: string; bucket: string; prefix: string; accessKey: string; secretKey: string; useSSL: false };
  /** A plain minio client, to look at the bucket behind a storage's back. */
  client(): Client;
  stop(): Promise<void>;
}

export async function startS3(bucket = 'reapi-test'): Promise<TestS3> {
  const dir = mkdtempSync(path.join(tmpdir(), 'reapi-s3-'));
  const app = new S3rver({
    silent: true,
    directory: dir,
    vhostBuckets: false,
    configureBuckets: [{ name: bucket }],
  });
  await app.configureBuckets();
  const handle = app.callback();
  const requests: string[] = [];
  const server = createServer((req, res) => {
    requests.push(`${req.method} ${req.url}`);
    const url = new URL(req.url ?? '/', 'http://s3');
    const bucketOnly = /^\/[^/]+\/?$/.test(url.pathname);
    if (req.method === 'GET' && bucketOnly && url.searchParams.has('uploads')) {
      listNoMultipartUploads(url, res);
      return;
    }
    handle(req, res);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  const host = '127.0.0.1';
  return {
    bucket,
    dir,
    requests,
    storageUrl(prefix, query = {}) {
      const params = new URLSearchParams({ secure: 'false', ...Object.fromEntries(Object.entries(query).map(([k, v]) => [k, String(v)])) });
      return `s3://${S3_ACCESS_KEY}:${S3_SECRET_KEY}@${host}:${port}/${bucket}/${prefix}?${params}`;
    },
    settings(prefix) {
      return { endpoint: `${host}:${port}`, bucket, prefix, accessKey: S3_ACCESS_KEY, secretKey: S3_SECRET_KEY, useSSL: false };
    },
    client() {
      return new Client({ endPoint: host, port, useSSL: false, accessKey: S3_ACCESS_KEY, secretKey: S3_SECRET_KEY, pathStyle: true });
    },
    async stop() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      app.logger.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** An empty ListMultipartUploadsResult: no upload in progress to resume. */
function listNoMultipartUploads(url: URL, res: ServerResponse): void {
  const bucket = url.pathname.replace(/^\/|\/$/g, '');
  const prefix = url.searchParams.get('prefix') ?? '';
  const xml =
    '<?xml version="1.0" encoding="UTF-8"?>\n' +
    '<ListMultipartUploadsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">' +
    `<Bucket>${escapeXml(bucket)}</Bucket><KeyMarker></KeyMarker><UploadIdMarker></UploadIdMarker>` +
    `<Prefix>${escapeXml(prefix)}</Prefix><MaxUploads>1000</MaxUploads><IsTruncated>false</IsTruncated>` +
    '</ListMultipartUploadsResult>';
  res.writeHead(200, { 'Content-Type': 'application/xml', 'Content-Length': Buffer.byteLength(xml) });
  res.end(xml);
}

function escapeXml(s: string): string {
  return s.replace(/[<>&'"]/g, (c) => `&#${c.charCodeAt(0)};`);
}
