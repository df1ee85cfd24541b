// Structured, quiet-by-default logging: one JSON object per line on stderr.
// REAPI_LOG=debug|info|warn|error chooses the threshold (default: warn).

type Level = 'debug' | 'info' | 'warn' | 'error';
const rank: Record<Level, number> = { debug: 10, info: 20, warn: 30, error: 40 };

function threshold(): number {
  const wanted = (process.env.REAPI_LOG ?? 'warn').toLowerCase() as Level;
  return rank[wanted] ?? rank.warn;
}

let minimum = threshold();

/** Re-read REAPI_LOG; tests that change it call this. */
export function reloadLogLevel(): void {
  minimum = threshold();
}

export type Fields = Record<string, unknown>;

function emit(level: Level, msg: string, fields?: Fields): void {
  if (rank[level] < minimum) return;
  const line = { time: new Date().toISOString(), level, msg, ...fields };
  process.stderr.write(JSON.stringify(line, errorReplacer) + '\n');
}

function errorReplacer(_key: string, value: unknown): unknown {
  return value instanceof Error ? { message: value.message, code: (value as { code?: unknown }).code } : value;
}

export const log = {
  debug: (msg: string, fields?: Fields) => emit('debug', msg, fields),
  info: (msg: string, fields?: Fields) => emit('info', msg, fields),
  warn: (msg: string, fields?: Fields) => emit('warn', msg, fields),
  error: (msg: string, fields?: Fields) => emit('error', msg, fields),
};
