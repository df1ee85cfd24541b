// The gRPC clients a standalone worker uses to reach its reapi server: one address, one set of
// channel options, so every call gets the same message limits, retry policy, TLS and token.
import * as grpc from '@grpc/grpc-js';
import {
  ActionCacheClient,
  ActionCacheService,
  ByteStreamClient,
  ByteStreamService,
  CapabilitiesClient,
  CapabilitiesService,
  ContentAddressableStorageClient,
  CasService,
  createClient,
} from '../apis/services';
import { log } from '../server/log';
import { ClientTlsFiles, channelCredentials } from '../server/tls';

export interface ServerClients {
  /** HOST:PORT, as grpc-js wants it. */
  readonly address: string;
  readonly caps: CapabilitiesClient;
  readonly cas: ContentAddressableStorageClient;
  readonly ac: ActionCacheClient;
  readonly bs: ByteStreamClient;
  close(): void;
}

/** Large enough for a full batch (4 MiB of blobs plus framing) from any server we talk to. */
const MAX_MESSAGE_BYTES = 64 * 1024 * 1024;

/**
 * A server restarting or a connection dropping mid-build should cost a retry, not an action:
 * every call that failed with UNAVAILABLE before any response arrived is retried a few times.
 * All the calls a worker makes are idempotent (content-addressed writes, cache updates). Those
 * retries span at most 3 s (jittered backoffs of up to 0.2+0.4+0.8+1.6 s; grpc-js allows no more
 * than 5 attempts); untilReachable waits out a whole restart.
 */
const SERVICE_CONFIG = JSON.stringify({
  methodConfig: [
    {
      name: [{}],
      retryPolicy: {
        maxAttempts: 5,
        initialBackoff: '0.2s',
        maxBackoff: '3s',
        backoffMultiplier: 2,
        retryableStatusCodes: ['UNAVAILABLE'],
      },
    },
  ],
});

export interface ServerAddress {
  /** HOST:PORT, as grpc-js wants it. */
  address: string;
  /** grpcs://: TLS. */
  secure: boolean;
}

/** "grpc://host:port" (or a bare "host:port") is plain text, "grpcs://host:port" TLS. */
export function parseServerAddress(url: string): ServerAddress {
  const match = /^(?:(grpcs?):\/\/)?([^/]+:\d+)\/?$/.exec(url.trim());
  if (!match) throw new Error(`server address ${JSON.stringify(url)} is not grpc://HOST:PORT or grpcs://HOST:PORT`);
  return { address: match[2], secure: match[1] === 'grpcs' };
}

export interface ConnectOptions {
  /** For a grpcs:// server: the CA to trust (system roots without) and a client certificate for mutual TLS. */
  tls?: ClientTlsFiles;
  /** Sent as "authorization: Bearer <token>" on every call. */
  token?: string;
}

export function connectToServer(url: string, connect: ConnectOptions = {}): ServerClients {
  const { address, secure } = parseServerAddress(url);
  const tls = connect.tls ?? {};
  if (!secure && (tls.ca || tls.clientCert || tls.clientKey)) {
    throw new Error(`TLS options given, but ${url} is not a grpcs:// address`);
  }
  const credentials = secure ? channelCredentials(tls) : grpc.credentials.createInsecure();
  const options: grpc.ClientOptions = {
    'grpc.max_receive_message_length': MAX_MESSAGE_BYTES,
    'grpc.max_send_message_length': MAX_MESSAGE_BYTES,
    'grpc.service_config': SERVICE_CONFIG,
    // An interceptor rather than call credentials: grpc-js sends those only over TLS, and a token
    // on a plain-text channel inside a trusted network is the operator's call to make.
    interceptors: connect.token ? [bearerToken(connect.token)] : [],
  };
  const caps = createClient(CapabilitiesService, address, credentials, options);
  // One channel for all services: one connection to the server, not four.
  const shared = { ...options, channelOverride: caps.getChannel() };
  const cas = createClient(CasService, address, credentials, shared);
  const ac = createClient(ActionCacheService, address, credentials, shared);
  const bs = createClient(ByteStreamService, address, credentials, shared);
  return {
    address,
    caps,
    cas,
    ac,
    bs,
    close() {
      caps.close(); // closes the shared channel
    },
  };
}

/** Sends "authorization: Bearer <token>" on every call, as Bazel's --remote_header does. */
export function bearerToken(token: string): grpc.Interceptor {
  return (options, nextCall) =>
    new grpc.InterceptingCall(nextCall(options), {
      start(metadata, listener, next) {
        metadata.set('authorization', `Bearer ${token}`);
        next(metadata, listener);
      },
    });
}

/** How long a worker's unary call keeps trying while its server is unreachable. */
const UNAVAILABLE_PATIENCE_MS = 30_000;

/**
 * Runs a unary call to the server, again with growing pauses while it fails UNAVAILABLE (after
 * the channel's own retries), for up to UNAVAILABLE_PATIENCE_MS: a server restarting delays its
 * workers' actions instead of failing them back to their clients, or leaving their results
 * uncached. Other failures, and the last UNAVAILABLE, are thrown as they came.
 */
export async function untilReachable<T>(server: ServerClients, what: string, run: () => Promise<T>): Promise<T> {
  const giveUpAt = Date.now() + UNAVAILABLE_PATIENCE_MS;
  for (let pause = 500; ; pause = Math.min(pause * 2, 4000)) {
    try {
      return await run();
    } catch (err) {
      if ((err as { code?: number }).code !== grpc.status.UNAVAILABLE || Date.now() + pause > giveUpAt) throw err;
      log.warn('server unreachable; trying again', { server: server.address, call: what, inMs: pause });
      await new Promise((r) => setTimeout(r, pause));
    }
  }
}
