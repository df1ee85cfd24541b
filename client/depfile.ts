// Reads make-style dependency output (`gcc -M`, `-MD` files). Pure.

/** The prerequisites of every rule in the text, in order, without duplicates. */
export function parseDepfile(text: string): string[] {
  const deps: string[] = [];
  const seen = new Set<string>();
  // Join continuation lines; each logical line is "targets: prerequisites".
  const logical = text.replace(/\\\r?\n/g, ' ').split('\n');
  for (const line of logical) {
    const colon = findRuleColon(line);
    if (colon < 0) continue;
    for (const dep of splitEscapedWords(line.slice(colon + 1))) {
      if (!seen.has(dep)) {
        seen.add(dep);
        deps.push(dep);
      }
    }
  }
  return deps;
}

/** The colon that ends the targets: not one escaped, and not a drive-letter-like `c:\`. */
function findRuleColon(line: string): number {
  for (let i = 0; i < line.length; i++) {
    if (line[i] === '\\') {
      i++;
      continue;
    }
    if (line[i] === ':' && (line[i + 1] === ' ' || line[i + 1] === '\t' || i === line.length - 1)) return i;
  }
  return -1;
}

/** Words separated by blanks; `\ ` is a space inside a name, `$$` a dollar sign. */
function splitEscapedWords(text: string): string[] {
  const words: string[] = [];
  let word = '';
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === '\\' && (text[i + 1] === ' ' || text[i + 1] === '#' || text[i + 1] === '\\')) {
      word += text[++i];
    } else if (c === '$' && text[i + 1] === '$') {
      word += '$';
      i++;
    } else if (c === ' ' || c === '\t') {
      if (word) words.push(word);
      word = '';
    } else {
      word += c;
    }
  }
  if (word) words.push(word);
  return words;
}
