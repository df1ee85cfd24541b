// The gRPC clients a standalone worker uses to reach its reapi server: one address, one set of
// channel options, so every call gets the same message limits and the same retry policy.
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

/** "grpc://host:port" (or a bare "host:port") -> "host:port"; TLS is not offered yet. */
export function parseServerAddress(url: string): string {
  const match = /^(?:grpc:\/\/)?([^/]+:\d+)\/?$/.exec(url.trim());
  if (!match) throw new Error(`server address ${JSON.stringify(url)} is not grpc://HOST:PORT`);
  return match[1];
}

export function connectToServer(url: string): ServerClients {
  const address = parseServerAddress(url);
  const options: grpc.ClientOptions = {
    'grpc.max_receive_message_length': MAX_MESSAGE_BYTES,
    'grpc.max_send_message_length': MAX_MESSAGE_BYTES,
    'grpc.service_config': SERVICE_CONFIG,
  };
  const caps = createClient(CapabilitiesService, address, undefined, options);
  // One channel for all services: one connection to the server, not four.
  const shared = { ...options, channelOverride: caps.getChannel() };
  const cas = createClient(CasService, address, undefined, shared);
  const ac = createClient(ActionCacheService, address, undefined, shared);
  const bs = createClient(ByteStreamService, address, undefined, shared);
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
