// Binary wire format spoken with worker/runner/runner.c (see the comment at the top of that file).
import { SandboxError } from './sandbox-error';

const REQUEST_MAGIC = 0x31765152; // "RQv1"
const REPLY_MAGIC = 0x31765052; // "RPv1"
const REPLY_HEADER_BYTES = 36;
const MAX_U32 = 0xffffffff;

export interface RunnerRequest {
  argv: string[];
  env: Record<string, string>;
  cwd: string;
  stdoutPath: string;
  stderrPath: string;
  /** 0 = no timeout */
  timeoutMs: number;
  /** 0 = unlimited */
  maxOutputBytes: number;
}

export interface RunnerReply {
  /** false: the runner could not even start the action (e.g. stdout path not writable) */
  started: boolean;
  exitCode: number;
  termSignal: number;
  timedOut: boolean;
  outputLimitExceeded: boolean;
  /** processes survived the post-action sweep: the container is no longer clean */
  straysSurvived: boolean;
  wallMicros: number;
  message: string;
}

function checkNoNul(what: string, s: string): void {
  if (s.includes('\0')) throw new SandboxError(`${what} contains a NUL byte: ${JSON.stringify(s)}`);
}

export function encodeRequest(req: RunnerRequest): Buffer {
  if (req.argv.length === 0) throw new SandboxError('argv is empty');
  const envEntries = Object.entries(req.env);
  for (const [k, v] of envEntries) {
    if (k === '' || k.includes('=')) throw new SandboxError(`invalid environment variable name ${JSON.stringify(k)}`);
    checkNoNul(`environment variable ${k}`, k + v);
  }
  req.argv.forEach((a, i) => checkNoNul(`argv[${i}]`, a));
  for (const [what, p] of [['cwd', req.cwd], ['stdout path', req.stdoutPath], ['stderr path', req.stderrPath]] as const) {
    checkNoNul(what, p);
  }
  const strings = [...req.argv, ...envEntries.map(([k, v]) => `${k}=${v}`), req.cwd, req.stdoutPath, req.stderrPath];
  const body = Buffer.from(strings.join('\0') + '\0', 'utf8');
  const out = Buffer.alloc(4 + 24 + body.length);
  out.writeUInt32LE(24 + body.length, 0);
  out.writeUInt32LE(REQUEST_MAGIC, 4);
  out.writeUInt32LE(Math.min(Math.max(0, Math.ceil(req.timeoutMs)), MAX_U32), 8);
  out.writeBigUInt64LE(BigInt(Math.max(0, Math.floor(req.maxOutputBytes))), 12);
  out.writeUInt32LE(req.argv.length, 20);
  out.writeUInt32LE(envEntries.length, 24);
  body.copy(out, 28);
  return out;
}

/** Returns null if the buffer is not a complete, well-formed reply. */
export function decodeReply(buf: Buffer): RunnerReply | null {
  if (buf.length < REPLY_HEADER_BYTES || buf.readUInt32LE(0) !== REPLY_MAGIC) return null;
  const msgLen = buf.readUInt32LE(32);
  if (buf.length !== REPLY_HEADER_BYTES + msgLen) return null;
  const flags = buf.readUInt32LE(16);
  return {
    started: buf.readUInt32LE(4) === 0,
    exitCode: buf.readInt32LE(8),
    termSignal: buf.readInt32LE(12),
    timedOut: (flags & 1) !== 0,
    outputLimitExceeded: (flags & 2) !== 0,
    straysSurvived: (flags & 4) !== 0,
    wallMicros: Number(buf.readBigUInt64LE(24)),
    message: buf.toString('utf8', REPLY_HEADER_BYTES),
  };
}
