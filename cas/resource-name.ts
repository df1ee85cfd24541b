// ByteStream resource names, parsed strictly. Pure.
//   read:  {instance}/blobs/{hash}/{size}[/...]
//          {instance}/compressed-blobs/{compressor}/{hash}/{size}[/...]
//   write: {instance}/uploads/{uuid}/blobs/{hash}/{size}[/...]
//          {instance}/uploads/{uuid}/compressed-blobs/{compressor}/{hash}/{size}[/...]
// The instance name may itself contain slashes; it ends where the first reserved segment starts.
import { Digest, validateDigest } from './digest';
import { invalidArgument } from '../server/rpc-error';

export type Compressor = 'identity' | 'zstd';

export interface BlobResource {
  instanceName: string;
  compressor: Compressor;
  /** Digest of the uncompressed blob. */
  digest: Digest;
  /** Only for uploads: the client-chosen id that makes a resumable write session. */
  uploadId?: string;
}

/** Path segments REAPI reserves; none may appear inside an instance name. */
const RESERVED = new Set(['blobs', 'uploads', 'compressed-blobs', 'actions', 'actionResults', 'operations', 'capabilities']);
const SUPPORTED_COMPRESSORS = new Set<string>(['identity', 'zstd']);

export function validateInstanceName(name: string): string {
  if (name === '') return name;
  const segments = name.split('/');
  for (const s of segments) {
    if (s === '' || s === '.' || s === '..' || s.includes('\0')) {
      throw invalidArgument(`instance name ${JSON.stringify(name)} has an empty, '.', '..' or NUL path segment`);
    }
    if (RESERVED.has(s)) {
      throw invalidArgument(`instance name ${JSON.stringify(name)} contains the reserved segment '${s}'`);
    }
  }
  return name;
}

export function parseReadResource(resourceName: string): BlobResource {
  const segments = splitResource(resourceName);
  const at = segments.findIndex((s) => RESERVED.has(s));
  if (at < 0 || (segments[at] !== 'blobs' && segments[at] !== 'compressed-blobs')) {
    throw malformed(resourceName, '{instance}/blobs/{hash}/{size} or {instance}/compressed-blobs/{compressor}/{hash}/{size}');
  }
  return parseBlobPart(resourceName, instancePart(resourceName, segments, at), segments.slice(at));
}

export function parseWriteResource(resourceName: string): BlobResource & { uploadId: string } {
  const segments = splitResource(resourceName);
  const at = segments.findIndex((s) => RESERVED.has(s));
  const expected = '{instance}/uploads/{uuid}/blobs/{hash}/{size} or {instance}/uploads/{uuid}/compressed-blobs/{compressor}/{hash}/{size}';
  if (at < 0 || segments[at] !== 'uploads' || segments.length < at + 2) throw malformed(resourceName, expected);
  const uploadId = segments[at + 1];
  if (!/^[A-Za-z0-9._-]{1,128}$/.test(uploadId) || uploadId === '.' || uploadId === '..') {
    throw invalidArgument(`resource name ${JSON.stringify(resourceName)}: upload id ${JSON.stringify(uploadId)} must be 1-128 characters of [A-Za-z0-9._-]`);
  }
  const rest = segments.slice(at + 2);
  if (rest[0] !== 'blobs' && rest[0] !== 'compressed-blobs') throw malformed(resourceName, expected);
  return { ...parseBlobPart(resourceName, instancePart(resourceName, segments, at), rest), uploadId };
}

export function readResourceName(instanceName: string, digest: Digest, compressor: Compressor = 'identity'): string {
  const prefix = instanceName ? `${instanceName}/` : '';
  const kind = compressor === 'identity' ? 'blobs' : `compressed-blobs/${compressor}`;
  return `${prefix}${kind}/${digest.hash}/${digest.sizeBytes}`;
}

export function writeResourceName(instanceName: string, uploadId: string, digest: Digest, compressor: Compressor = 'identity'): string {
  const prefix = instanceName ? `${instanceName}/` : '';
  return `${prefix}uploads/${uploadId}/${readResourceName('', digest, compressor)}`;
}

/** The instance name before the reserved segment at `at`; "/blobs/..." names no instance, not the default one. */
function instancePart(resourceName: string, segments: string[], at: number): string {
  const instance = segments.slice(0, at).join('/');
  if (at > 0 && instance === '') throw invalidArgument(`resource name ${JSON.stringify(resourceName)} starts with '/'; the default instance is named by nothing ("blobs/...")`);
  return instance;
}

function splitResource(resourceName: string): string[] {
  if (typeof resourceName !== 'string' || resourceName.length === 0) {
    throw invalidArgument('resource_name is empty');
  }
  if (resourceName.length > 4096 || resourceName.includes('\0')) {
    throw invalidArgument('resource_name is longer than 4096 characters or contains NUL');
  }
  return resourceName.split('/');
}

/** Parses "blobs/{hash}/{size}..." or "compressed-blobs/{compressor}/{hash}/{size}...". */
function parseBlobPart(resourceName: string, instanceName: string, part: string[]): BlobResource {
  validateInstanceName(instanceName);
  let compressor: Compressor = 'identity';
  let rest = part.slice(1);
  if (part[0] === 'compressed-blobs') {
    const name = rest[0] ?? '';
    if (!SUPPORTED_COMPRESSORS.has(name)) {
      throw invalidArgument(`resource name ${JSON.stringify(resourceName)}: compressor ${JSON.stringify(name)} is not supported (identity, zstd)`);
    }
    compressor = name as Compressor;
    rest = rest.slice(1);
  }
  // REAPI 2.3 allows a digest function segment before the hash; SHA-256 is the only one we serve.
  if (rest[0] === 'sha256') rest = rest.slice(1);
  if (rest.length < 2) throw malformed(resourceName, 'a hash and a size after blobs/');
  const [hash, sizeText] = rest;
  if (!/^\d{1,16}$/.test(sizeText)) {
    throw invalidArgument(`resource name ${JSON.stringify(resourceName)}: size ${JSON.stringify(sizeText)} is not a non-negative integer`);
  }
  const digest = validateDigest({ hash, sizeBytes: Number(sizeText) }, `resource name ${JSON.stringify(resourceName)}: digest`);
  return { instanceName, compressor, digest };
}

function malformed(resourceName: string, expected: string): Error {
  return invalidArgument(`resource name ${JSON.stringify(resourceName)} is malformed: expected ${expected}`);
}
