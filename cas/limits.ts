// Sizes the server advertises and enforces. One place, so Capabilities never promises more
// than the handlers accept.
import { resourceExhausted } from '../server/rpc-error';
import { Label, labelText } from './digest';

/** Total blob bytes in one BatchUpdateBlobs / BatchReadBlobs call (what Capabilities advertises). */
export const MAX_BATCH_TOTAL_BYTES = 4 * 1024 * 1024;
/** gRPC message ceiling: a full batch plus its per-blob framing. */
export const MAX_GRPC_MESSAGE_BYTES = MAX_BATCH_TOTAL_BYTES + 1024 * 1024;
/** Largest Directory or Tree blob the server decodes in memory. */
export const MAX_DIRECTORY_BYTES = 64 * 1024 * 1024;
/** GetTree page size when the client asks for none, and the most it may ask for. */
export const DEFAULT_TREE_PAGE = 1000;
export const MAX_TREE_PAGE = 10_000;
/** ByteStream Read chunk: well under the 4 MiB gRPC default of most clients. */
export const READ_CHUNK_BYTES = 1024 * 1024;

/**
 * Limits on what one client may make the server hold. Each has a flag of `reapi serve`
 * (docs/security.md, "Resource limits"); over a limit a call fails with RESOURCE_EXHAUSTED
 * naming it, before the server reads or stores what the call describes.
 */
export interface ClientLimits {
  /** Largest blob accepted (ByteStream Write, BatchUpdateBlobs) or asked about (FindMissingBlobs). */
  maxBlobBytes: number;
  /** A Write stream that sends nothing for this long is cancelled; its bytes are kept for a resume. */
  writeIdleMs: number;
  /** HTTP/2 streams (calls) one connection may have open at once. */
  maxConcurrentStreams: number;
}

export const DEFAULT_CLIENT_LIMITS: ClientLimits = {
  maxBlobBytes: 64 * 1024 ** 3,
  writeIdleMs: 60_000,
  maxConcurrentStreams: 256,
};

/** Directory bytes one GetTree walk may load; a bigger tree is RESOURCE_EXHAUSTED. */
export const MAX_TREE_WALK_BYTES = 256 * 1024 * 1024;
/** Walks at most this big are kept for paging; bigger ones are walked again per page. */
export const MAX_REMEMBERED_WALK_BYTES = 16 * 1024 * 1024;
/** Encoded Directory bytes per GetTree page (at least one directory per page). */
export const MAX_TREE_PAGE_BYTES = MAX_BATCH_TOTAL_BYTES;

/** stdout and stderr of an action, each: beyond this the action is killed (worker --max-output-bytes). */
export const DEFAULT_MAX_ACTION_OUTPUT_BYTES = 1024 ** 3;

/** RESOURCE_EXHAUSTED, naming the limit and its flag, for a digest over --max-blob-bytes. */
export function checkBlobSize(digest: { hash: string; sizeBytes: number }, maxBlobBytes: number, what: Label = 'blob'): void {
  if (digest.sizeBytes > maxBlobBytes) {
    throw resourceExhausted(`${labelText(what)} ${digest.hash}/${digest.sizeBytes} is larger than this server's maximum blob size of ${maxBlobBytes} bytes (--max-blob-bytes)`);
  }
}
