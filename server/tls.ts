// TLS for the gRPC endpoint, from PEM files: the server's certificate and key and, for mutual
// TLS, the CA whose certificates clients must present; on the client side the CA to trust and
// an optional client certificate. Files are read once, at start, with errors naming the file.
import * as grpc from '@grpc/grpc-js';
import { readFileSync } from 'node:fs';

export interface ServerTlsFiles {
  /** PEM certificate chain of the server. */
  cert: string;
  /** PEM private key of the server. */
  key: string;
  /** PEM CA certificate(s): when given, clients must present a certificate signed by one of them. */
  clientCa?: string;
}

export interface ClientTlsFiles {
  /** PEM CA certificate(s) to trust for the server; the system's roots when absent. */
  ca?: string;
  /** PEM client certificate and key, for a server that requires mutual TLS. */
  clientCert?: string;
  clientKey?: string;
}

export function serverCredentials(files: ServerTlsFiles | undefined): grpc.ServerCredentials {
  if (!files) return grpc.ServerCredentials.createInsecure();
  const clientCa = files.clientCa ? readPem(files.clientCa, '--tls-client-ca', 'CERTIFICATE') : null;
  return grpc.ServerCredentials.createSsl(
    clientCa,
    [{ cert_chain: readPem(files.cert, '--tls-cert', 'CERTIFICATE'), private_key: readPem(files.key, '--tls-key', 'PRIVATE KEY') }],
    // With a client CA, a client without a certificate signed by it does not get past the handshake.
    clientCa !== null,
  );
}

export function channelCredentials(files: ClientTlsFiles): grpc.ChannelCredentials {
  if ((files.clientCert === undefined) !== (files.clientKey === undefined)) {
    throw new Error('--tls-client-cert and --tls-client-key go together');
  }
  return grpc.credentials.createSsl(
    files.ca ? readPem(files.ca, '--tls-ca', 'CERTIFICATE') : null,
    files.clientKey ? readPem(files.clientKey, '--tls-client-key', 'PRIVATE KEY') : null,
    files.clientCert ? readPem(files.clientCert, '--tls-client-cert', 'CERTIFICATE') : null,
  );
}

/** A PEM file's bytes, refusing early (and by name) a file that holds no such PEM block. */
function readPem(file: string, flag: string, kind: 'CERTIFICATE' | 'PRIVATE KEY'): Buffer {
  let data: Buffer;
  try {
    data = readFileSync(file);
  } catch (err) {
    throw new Error(`${flag} ${file}: ${(err as Error).message}`);
  }
  // "PRIVATE KEY" also matches "RSA PRIVATE KEY" and "EC PRIVATE KEY".
  if (!new RegExp(`-----BEGIN [A-Z ]*${kind}-----`).test(data.toString('latin1'))) {
    throw new Error(`${flag} ${file}: no PEM ${kind.toLowerCase()} in it`);
  }
  return data;
}
