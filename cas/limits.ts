// Sizes the server advertises and enforces. One place, so Capabilities never promises more
// than the handlers accept.

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
