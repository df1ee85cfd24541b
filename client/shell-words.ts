// A small POSIX shell lexer: enough of the grammar to read what make hands to SHELL. Pure.
//
// It splits a script into simple commands (words and redirections) separated by operators. It
// does not expand anything; a word that contains an unquoted or double-quoted expansion is marked,
// so callers can refuse to reason about values they cannot know.

export interface Redirect {
  fd: number;
  op: '>' | '>>' | '<' | '>&' | '<&' | '<>' | '>|';
  target: string;
}

export interface SimpleCommand {
  words: string[];
  redirects: Redirect[];
}

export interface LexedScript {
  commands: SimpleCommand[];
  /** Command substitution, backquotes, here-documents or arithmetic: values we cannot know. */
  hasSubstitution: boolean;
}

const OPERATORS = ['&&', '||', ';;', ';', '&', '|', '(', ')', '\n'];

export function lexScript(script: string): LexedScript {
  const commands: SimpleCommand[] = [];
  let hasSubstitution = false;
  let current: SimpleCommand = { words: [], redirects: [] };
  let word = '';
  let inWord = false;
  let pendingRedirect: Omit<Redirect, 'target'> | undefined;

  const endWord = () => {
    if (!inWord) return;
    if (pendingRedirect) {
      current.redirects.push({ ...pendingRedirect, target: word });
      pendingRedirect = undefined;
    } else {
      current.words.push(word);
    }
    word = '';
    inWord = false;
  };
  const endCommand = () => {
    endWord();
    if (current.words.length || current.redirects.length) commands.push(current);
    current = { words: [], redirects: [] };
  };

  let i = 0;
  while (i < script.length) {
    const c = script[i];
    if (c === '\\') {
      if (script[i + 1] === '\n') {
        i += 2; // line continuation
        continue;
      }
      word += script[i + 1] ?? '';
      inWord = true;
      i += 2;
      continue;
    }
    if (c === "'") {
      const end = script.indexOf("'", i + 1);
      const stop = end < 0 ? script.length : end;
      word += script.slice(i + 1, stop);
      inWord = true;
      i = stop + 1;
      continue;
    }
    if (c === '"') {
      inWord = true;
      i++;
      while (i < script.length && script[i] !== '"') {
        if (script[i] === '\\' && '$`"\\\n'.includes(script[i + 1] ?? '')) {
          if (script[i + 1] !== '\n') word += script[i + 1];
          i += 2;
          continue;
        }
        if (script[i] === '`' || (script[i] === '$' && script[i + 1] === '(')) hasSubstitution = true;
        word += script[i++];
      }
      i++;
      continue;
    }
    if (c === '`' || (c === '$' && script[i + 1] === '(')) hasSubstitution = true;
    if (c === '#' && !inWord) {
      while (i < script.length && script[i] !== '\n') i++;
      continue;
    }
    if (c === ' ' || c === '\t') {
      endWord();
      i++;
      continue;
    }
    if (c === '<' || c === '>') {
      // A word made only of digits right before the operator is the file descriptor.
      let fd = c === '<' ? 0 : 1;
      if (inWord && /^\d+$/.test(word) && !pendingRedirect) {
        fd = Number(word);
        word = '';
        inWord = false;
      } else {
        endWord();
      }
      const two = script.slice(i, i + 2);
      if (two === '<<') hasSubstitution = true; // here-document: its body is not a command
      const op = (['>>', '>&', '<&', '<>', '>|'] as const).find((o) => o === two) ?? (c as '<' | '>');
      pendingRedirect = { fd, op };
      i += op.length;
      continue;
    }
    const op = OPERATORS.find((o) => script.startsWith(o, i));
    if (op) {
      endCommand();
      i += op.length;
      continue;
    }
    word += c;
    inWord = true;
    i++;
  }
  endCommand();
  return { commands, hasSubstitution };
}
