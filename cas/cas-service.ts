// ContentAddressableStorage: FindMissingBlobs, BatchUpdateBlobs, BatchReadBlobs, GetTree.
// Works on decoded protobuf messages; the gRPC layer only adapts calls and maps errors.
import { status } from '@grpc/grpc-js';
import { rex } from '../apis';
import { Storage } from './blob-store';
import { Digest, digestKey, validateDigest } from './digest';
import { requireSha256 } from './digest-function';
import { DEFAULT_CLIENT_LIMITS, DEFAULT_TREE_PAGE, MAX_BATCH_TOTAL_BYTES, MAX_TREE_PAGE, MAX_TREE_PAGE_BYTES, checkBlobSize } from './limits';
import { validateInstanceName } from './resource-name';
import { TreeWalker } from './tree-walker';
import { decompressExact } from './zstd';
import { asRpcError, invalidArgument } from '../server/rpc-error';

type Compressor = rex.Compressor.Value;

export class CasService {
  private readonly trees: TreeWalker;

  constructor(
    private readonly storage: Storage,
    private readonly limits: { maxBlobBytes: number } = DEFAULT_CLIENT_LIMITS,
  ) {
    this.trees = new TreeWalker(storage);
  }

  async findMissingBlobs(req: rex.FindMissingBlobsRequest): Promise<rex.FindMissingBlobsResponse.$Properties> {
    requireSha256(req.digestFunction);
    const instance = validateInstanceName(req.instanceName);
    const digests = req.blobDigests.map((d, i) => {
      const what = () => `blob_digests[${i}]`;
      const digest = validateDigest(d, what);
      // A blob this server would refuse to store can never be uploaded: say so instead of "missing".
      checkBlobSize(digest, this.limits.maxBlobBytes, what);
      return digest;
    });
    return { missingBlobDigests: await this.storage.cas(instance).findMissing(digests) };
  }

  async batchUpdateBlobs(req: rex.BatchUpdateBlobsRequest): Promise<rex.BatchUpdateBlobsResponse.$Properties> {
    requireSha256(req.digestFunction);
    const instance = validateInstanceName(req.instanceName);
    const total = req.requests.reduce((sum, r) => sum + (r.data?.length ?? 0), 0);
    if (total > MAX_BATCH_TOTAL_BYTES) {
      throw invalidArgument(`BatchUpdateBlobs carries ${total} bytes, over the ${MAX_BATCH_TOTAL_BYTES}-byte limit; send large blobs with ByteStream.Write`);
    }
    const cas = this.storage.cas(instance);
    const responses = await Promise.all(
      req.requests.map(async (r, i) => {
        const digest = r.digest ?? undefined;
        try {
          const what = () => `requests[${i}].digest`;
          const d = validateDigest(r.digest, what);
          checkBlobSize(d, this.limits.maxBlobBytes, what);
          await cas.put(d, decodeBatchData(d, Buffer.from(r.data ?? []), r.compressor ?? 0));
          return { digest, status: { code: status.OK } };
        } catch (err) {
          const e = asRpcError(err);
          return { digest, status: { code: e.code, message: e.message } };
        }
      }),
    );
    return { responses };
  }

  async batchReadBlobs(req: rex.BatchReadBlobsRequest): Promise<rex.BatchReadBlobsResponse.$Properties> {
    requireSha256(req.digestFunction);
    const instance = validateInstanceName(req.instanceName);
    const digests = req.digests.map((d, i) => validateDigest(d, () => `digests[${i}]`));
    const total = digests.reduce((sum, d) => sum + d.sizeBytes, 0);
    if (total > MAX_BATCH_TOTAL_BYTES) {
      throw invalidArgument(`BatchReadBlobs asks for ${total} bytes, over the ${MAX_BATCH_TOTAL_BYTES}-byte limit; read large blobs with ByteStream.Read`);
    }
    const cas = this.storage.cas(instance);
    const responses = await Promise.all(
      digests.map(async (d) => {
        const data = await cas.read(d);
        return data
          ? { digest: d, data, compressor: rex.Compressor.Value.IDENTITY, status: { code: status.OK } }
          : { digest: d, status: { code: status.NOT_FOUND, message: `blob ${digestKey(d)} is not in the CAS` } };
      }),
    );
    return { responses };
  }

  async getTree(req: rex.GetTreeRequest): Promise<rex.GetTreeResponse.$Properties> {
    requireSha256(req.digestFunction);
    const instance = validateInstanceName(req.instanceName);
    const root = validateDigest(req.rootDigest, 'root_digest');
    if (req.pageSize < 0) throw invalidArgument(`page_size ${req.pageSize} is negative`);
    const pageSize = Math.min(req.pageSize || DEFAULT_TREE_PAGE, MAX_TREE_PAGE);
    const start = parsePageToken(req.pageToken, root);
    const order = await this.trees.breadthFirst(instance, root);
    // Bounded in bytes too: a page of large Directory messages must still fit one gRPC message.
    const page: typeof order = [];
    let pageBytes = 0;
    for (const entry of order.slice(start, start + pageSize)) {
      if (page.length > 0 && pageBytes + entry.size > MAX_TREE_PAGE_BYTES) break;
      page.push(entry);
      pageBytes += entry.size;
    }
    const next = start + page.length;
    return {
      directories: page.map((entry) => entry.directory),
      nextPageToken: next < order.length ? makePageToken(root, next) : '',
    };
  }
}

/** Blob bytes of a BatchUpdateBlobs entry, decompressed when the client compressed them. */
function decodeBatchData(d: Digest, data: Buffer, compressor: Compressor): Buffer {
  if (compressor === rex.Compressor.Value.IDENTITY) return data;
  if (compressor !== rex.Compressor.Value.ZSTD) {
    throw invalidArgument(`blob ${digestKey(d)}: compressor ${rex.Compressor.Value[compressor] ?? compressor} is not supported (IDENTITY, ZSTD)`);
  }
  try {
    return decompressExact(data, d.sizeBytes);
  } catch (err) {
    throw invalidArgument(`blob ${digestKey(d)}: not zstd data of this blob (${(err as Error).message})`);
  }
}

// Page tokens name the root they belong to, so a token from another tree is refused rather
// than silently skipping directories.
function makePageToken(root: Digest, offset: number): string {
  return `${root.hash.slice(0, 16)}:${offset}`;
}

function parsePageToken(token: string, root: Digest): number {
  if (!token) return 0;
  const m = /^([0-9a-f]{16}):(\d{1,9})$/.exec(token);
  if (!m || m[1] !== root.hash.slice(0, 16)) {
    throw invalidArgument(`page_token ${JSON.stringify(token)} was not issued for root ${digestKey(root)}`);
  }
  return Number(m[2]);
}
