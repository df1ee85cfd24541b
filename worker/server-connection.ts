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
 * All the calls a worker makes are idempotent (content-addressed writes, cache updates).
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
