// Digest math and validation. Pure: no I/O beyond hashing buffers.
import { createHash } from 'node:crypto';
import { invalidArgument } from '../server/rpc-error';

/** A blob's identity: lower-case hex SHA-256 and length in bytes. */
export interface Digest {
  hash: string;
  sizeBytes: number;
}

export const SHA256_EMPTY = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855';
const SHA256_HEX = /^[0-9a-f]{64}$/;

export function digestOf(data: Uint8Array): Digest {
  return { hash: createHash('sha256').update(data).digest('hex'), sizeBytes: data.length };
}

export function isEmptyDigest(d: Digest): boolean {
  return d.sizeBytes === 0 && d.hash === SHA256_EMPTY;
}

export function digestKey(d: Digest): string {
  return `${d.hash}/${d.sizeBytes}`;
}

/**
 * Checks a digest as it arrives from a client and returns it normalized. Rejects what could
 * never name a SHA-256 blob: wrong hash length or alphabet, negative, fractional or absurd sizes.
 */
export function validateDigest(d: { hash?: string | null; sizeBytes?: number | null } | null | undefined, what: Label = 'digest'): Digest {
  if (!d) throw invalidArgument(`${labelText(what)} is missing`);
  const hash = d.hash ?? '';
  const sizeBytes = d.sizeBytes ?? 0;
  if (!SHA256_HEX.test(hash)) {
    throw invalidArgument(`${labelText(what)} ${JSON.stringify(hash)}/${sizeBytes}: hash must be 64 lower-case hex digits (SHA-256)`);
  }
  if (!Number.isSafeInteger(sizeBytes) || sizeBytes < 0) {
    throw invalidArgument(`${labelText(what)} ${hash}/${sizeBytes}: size_bytes must be a non-negative integer`);
  }
  if (sizeBytes === 0 && hash !== SHA256_EMPTY) {
    throw invalidArgument(`${labelText(what)} ${hash}/0: a zero-length blob must have the SHA-256 of the empty string`);
  }
  return { hash, sizeBytes };
}

/**
 * What a checked value is, for an error message: given, or made only when a message is needed
 * (a request names thousands of digests, each with its own label, and nearly all are fine).
 */
export type Label = string | (() => string);

export function labelText(what: Label): string {
  return typeof what === 'string' ? what : what();
}

/** Verifies that data matches the digest the client claimed for it. */
export function verifyBlob(expected: Digest, data: Uint8Array): void {
  if (data.length !== expected.sizeBytes) {
    throw invalidArgument(`blob ${digestKey(expected)}: received ${data.length} bytes, digest says ${expected.sizeBytes}`);
  }
  const actual = createHash('sha256').update(data).digest('hex');
  if (actual !== expected.hash) {
    throw invalidArgument(`blob ${digestKey(expected)}: content hashes to ${actual}, not ${expected.hash}`);
  }
}
