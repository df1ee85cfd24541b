// `reapi token`: make a token, or hash one for the server's tokens file. The token is read from
// stdin, never from the command line, so it stays out of shell history and process listings.
import { hashToken, newToken } from '../server/auth-tokens';

export const TOKEN_USAGE = `  reapi token new     print a new random token, then the "sha256:<hex>" line for the tokens file
  reapi token hash    read a token on stdin, print "sha256:<hex>" for the tokens file
                      (the same as: printf %s TOKEN | sha256sum)`;

export async function token(argv: string[]): Promise<void> {
  const [sub, ...rest] = argv;
  if (rest.length > 0) throw new Error(`reapi token ${sub}: unexpected arguments ${rest.join(' ')} (the token comes on stdin)`);
  switch (sub) {
    case 'new': {
      const fresh = newToken();
      process.stdout.write(`${fresh}\n${hashToken(fresh)}\n`);
      return;
    }
    case 'hash': {
      // `echo TOKEN |` adds a newline that is not part of the token.
      const text = (await readStdin()).replace(/\r?\n$/, '');
      if (text === '') throw new Error('reapi token hash: no token on stdin');
      process.stdout.write(`${hashToken(text)}\n`);
      return;
    }
    default:
      throw new Error(`reapi token: expected "new" or "hash", not ${JSON.stringify(sub ?? '')}\n${TOKEN_USAGE}`);
  }
}

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}
