// Capabilities: what this server really implements, nothing more.
import { rex } from '../apis';
import { MAX_BATCH_TOTAL_BYTES } from '../cas/limits';
import { validateInstanceName } from '../cas/resource-name';

export interface ExecutionOffer {
  /** Inclusive range of ExecutionPolicy.priority values the scheduler orders by. */
  minPriority: number;
  maxPriority: number;
}

export interface CapabilitiesOptions {
  allowActionCacheUpdates: boolean;
  /** Present once an Execution service is running behind this server. */
  execution?: ExecutionOffer;
}

export class CapabilitiesService {
  constructor(private readonly options: CapabilitiesOptions) {}

  getCapabilities(req: rex.GetCapabilitiesRequest): rex.ServerCapabilities.$Properties {
    validateInstanceName(req.instanceName);
    const { SHA256 } = rex.DigestFunction.Value;
    const { ZSTD } = rex.Compressor.Value;
    const execution = this.options.execution;
    return {
      cacheCapabilities: {
        digestFunctions: [SHA256],
        actionCacheUpdateCapabilities: { updateEnabled: this.options.allowActionCacheUpdates },
        maxBatchTotalSizeBytes: MAX_BATCH_TOTAL_BYTES,
        // Absolute symlinks would point outside the input root of a hermetic action.
        symlinkAbsolutePathStrategy: rex.SymlinkAbsolutePathStrategy.Value.DISALLOWED,
        supportedCompressors: [ZSTD],
        supportedBatchUpdateCompressors: [ZSTD],
      },
      executionCapabilities: execution
        ? {
            digestFunction: SHA256,
            digestFunctions: [SHA256],
            execEnabled: true,
            executionPriorityCapabilities: { priorities: [{ minPriority: execution.minPriority, maxPriority: execution.maxPriority }] },
            supportedNodeProperties: [],
          }
        : { digestFunction: SHA256, digestFunctions: [SHA256], execEnabled: false },
      // 2.1 output_paths and node properties, 2.2 compressed blobs, 2.3 digest_function on
      // requests and in resource names (SHA-256 being the one function offered).
      lowApiVersion: { major: 2, minor: 0 },
      highApiVersion: { major: 2, minor: 3 },
    };
  }
}
