// The header names a computed include (`#include TRACE_INCLUDE(TRACE_INCLUDE_FILE)`) may stand
// for, found by expanding its macros with every definition the scanned files hold: conditionals
// and #undef are ignored, so each macro may have several definitions, or none where it is used,
// and every combination is tried. The answer is meant as a superset, like the include scanner's:
// a name that does not exist is dropped by the caller. Where the expansion needs what this does
// not model (token pasting, too many combinations), it says so and the preprocessor decides.
// Pure.

export interface MacroDefinition {
  name: string;
  /** Parameter names of a function-like macro (`...` or `x...` last for a variadic one). */
  params?: string[];
  body: string;
}

export type HeaderName = { name: string; quoted: boolean };

interface Token {
  text: string;
  kind: 'identifier' | 'string' | 'other';
  /** Whitespace came before it (kept by stringification and in <...> names). */
  space: boolean;
  /** Macros whose expansion produced it, which it must not expand again. */
  hidden: ReadonlySet<string>;
}

/** More combinations than this: the preprocessor is cheaper than the guessing. */
const MAX_ALTERNATIVES = 256;

class Unsure extends Error {}

const DEFINE = /^[ \t]*#[ \t]*define[ \t]+([A-Za-z_]\w*)(?:\(([^)]*)\))?(.*)$/gm;

/** Every #define of a file's text (comments already blanked out, continuations joined here). */
export function parseDefinitions(text: string): MacroDefinition[] {
  const joined = text.replace(/\\\r?\n/g, '');
  const found: MacroDefinition[] = [];
  for (const m of joined.matchAll(DEFINE)) {
    const params = m[2]?.split(',').map((p) => p.trim());
    found.push({ name: m[1], params: m[2] !== undefined ? params!.filter((p) => p !== '') : undefined, body: m[3].trim() });
  }
  return found;
}

/** -D options as definitions (`-DX` defines X as 1, like the compiler). */
export function commandLineDefinitions(args: string[]): MacroDefinition[] {
  const found: MacroDefinition[] = [];
  for (let i = 0; i < args.length; i++) {
    if (args[i] === '-D') found.push(defineOption(args[++i] ?? ''));
    else if (args[i].startsWith('-D')) found.push(defineOption(args[i].slice(2)));
  }
  return found;
}

/** The definition one -D option makes: `X`, `X=body` or `F(a,b)=body`. */
export function defineOption(value: string): MacroDefinition {
  const eq = value.indexOf('=');
  const head = eq < 0 ? value : value.slice(0, eq);
  const body = eq < 0 ? '1' : value.slice(eq + 1);
  const fn = /^([A-Za-z_]\w*)\(([^)]*)\)$/.exec(head);
  if (fn) return { name: fn[1], params: fn[2].split(',').map((p) => p.trim()).filter((p) => p !== ''), body };
  return { name: head, body };
}

/**
 * The names `expression` (what follows `#include`) may expand to, given every definition of each
 * macro; `{ unsure }` when that cannot be told.
 */
export function computedHeaderNames(expression: string, definitions: (name: string) => MacroDefinition[] | undefined): HeaderName[] | { unsure: string } {
  try {
    const names = new Map<string, HeaderName>();
    for (const tokens of new Expander(definitions).expand(tokenize(expression, new Set()))) {
      const name = headerName(tokens);
      if (name) names.set(`${name.quoted}${name.name}`, name);
    }
    if (names.size === 0) return { unsure: `computed include ${expression} names no header` };
    return [...names.values()];
  } catch (err) {
    if (err instanceof Unsure) return { unsure: `computed include ${expression}: ${err.message}` };
    throw err;
  }
}

class Expander {
  constructor(private readonly definitions: (name: string) => MacroDefinition[] | undefined) {}

  /** Every expansion of the token list, each macro taken as each of its definitions or as undefined. */
  expand(tokens: Token[]): Token[][] {
    for (let i = 0; i < tokens.length; i++) {
      const t = tokens[i];
      const defs = t.kind === 'identifier' && !t.hidden.has(t.text) ? this.definitions(t.text) : undefined;
      if (!defs?.length) continue;
      const before = tokens.slice(0, i);
      const out: Token[][] = [];
      // Undefined here: the identifier stays (later tokens may still expand). Not worth trying
      // for a call of a function-like macro: `NAME(...)` names no header.
      if (!(defs.every((d) => d.params) && tokens[i + 1]?.text === '(')) {
        for (const rest of this.expand(tokens.slice(i + 1))) out.push([...before, t, ...rest]);
      }
      for (const def of defs) {
        const hidden = new Set([...t.hidden, t.text]);
        if (!def.params) {
          const body = tokenize(def.body, hidden, t.space);
          for (const rest of this.expand([...body, ...tokens.slice(i + 1)])) out.push([...before, ...rest]);
          continue;
        }
        const call = parseCall(tokens, i + 1);
        if (!call) continue; // a function-like macro without arguments is not expanded
        for (const body of this.substitute(def, call.args, hidden, t.space)) {
          for (const rest of this.expand([...body, ...tokens.slice(call.end)])) out.push([...before, ...rest]);
        }
        this.check(out.length);
      }
      this.check(out.length);
      return out;
    }
    return [tokens];
  }

  /** The body of a function-like macro with its arguments in, one list per combination. */
  private substitute(def: MacroDefinition, args: Token[][], hidden: ReadonlySet<string>, space: boolean): Token[][] {
    const params = def.params!;
    const variadic = params.length > 0 && params[params.length - 1].endsWith('...');
    const names = params.map((p) => (p === '...' ? '__VA_ARGS__' : p.replace(/\.\.\.$/, '')));
    if (variadic && args.length > names.length) {
      const last = args.slice(names.length - 1);
      args = [...args.slice(0, names.length - 1), last.flatMap((a, k) => (k === 0 ? a : [comma(), ...a]))];
    }
    if (args.length === 1 && args[0].length === 0 && names.length === 0) args = [];
    if (args.length !== names.length && !(variadic && args.length === names.length - 1)) throw new Unsure(`${def.name} takes ${names.length} arguments`);
    const body = tokenize(def.body, hidden, space);
    if (body.some((b) => b.text === '##')) throw new Unsure(`${def.name} pastes tokens`);
    let results: Token[][] = [[]];
    for (let k = 0; k < body.length; k++) {
      const b = body[k];
      const param = b.kind === 'identifier' ? names.indexOf(b.text) : -1;
      if (b.text === '#' && body[k + 1]?.kind === 'identifier' && names.includes(body[k + 1].text)) {
        const arg = args[names.indexOf(body[++k].text)] ?? [];
        const literal: Token = { text: `"${spell(arg).replace(/[\\"]/g, '\\$&')}"`, kind: 'string', space: b.space, hidden };
        results = results.map((r) => [...r, literal]);
      } else if (param >= 0) {
        const expanded = this.expand(args[param] ?? []);
        results = results.flatMap((r) => expanded.map((e) => [...r, ...e.map((x, j) => (j === 0 ? { ...x, space: b.space } : x))]));
      } else {
        results = results.map((r) => [...r, b]);
      }
      this.check(results.length);
    }
    return results;
  }

  private check(n: number): void {
    if (n > MAX_ALTERNATIVES) throw new Unsure(`more than ${MAX_ALTERNATIVES} combinations of definitions`);
  }
}

/** The arguments of a call whose '(' should be at `at`, and the index after its ')'. */
function parseCall(tokens: Token[], at: number): { args: Token[][]; end: number } | undefined {
  if (tokens[at]?.text !== '(') return undefined;
  const args: Token[][] = [[]];
  let depth = 0;
  for (let i = at + 1; i < tokens.length; i++) {
    const t = tokens[i];
    if (t.text === '(') depth++;
    else if (t.text === ')' && depth-- === 0) return { args, end: i + 1 };
    else if (t.text === ',' && depth === 0) {
      args.push([]);
      continue;
    }
    args[args.length - 1].push(t);
  }
  throw new Unsure('unbalanced parentheses');
}

function comma(): Token {
  return { text: ',', kind: 'other', space: false, hidden: new Set() };
}

/** The tokens' spelling, one space where the source had whitespace. */
function spell(tokens: Token[]): string {
  return tokens.map((t, i) => (i > 0 && t.space ? ' ' : '') + t.text).join('');
}

/** `"name"` or `< ... >`, as the preprocessor reads the expanded tokens; undefined for anything else. */
function headerName(tokens: Token[]): HeaderName | undefined {
  if (tokens.length === 1 && tokens[0].kind === 'string' && tokens[0].text.startsWith('"')) {
    return { name: tokens[0].text.slice(1, -1), quoted: true };
  }
  if (tokens.length >= 3 && tokens[0].text === '<' && tokens[tokens.length - 1].text === '>') {
    return { name: spell(tokens.slice(1, -1)).trim(), quoted: false };
  }
  return undefined;
}

const TOKEN = /\s*(?:([A-Za-z_]\w*)|("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')|(\.?\d(?:[\w.]|[eEpP][+-])*)|(##|\.\.\.|[^\s]))/y;

function tokenize(text: string, hidden: ReadonlySet<string>, firstSpace = false): Token[] {
  const tokens: Token[] = [];
  TOKEN.lastIndex = 0;
  let m: RegExpExecArray | null;
  while (TOKEN.lastIndex < text.length && (m = TOKEN.exec(text))) {
    const space = tokens.length === 0 ? firstSpace : /^\s/.test(m[0]);
    if (m[1]) tokens.push({ text: m[1], kind: 'identifier', space, hidden });
    else if (m[2]) tokens.push({ text: m[2], kind: 'string', space, hidden });
    else if (m[3] || m[4]) tokens.push({ text: (m[3] ?? m[4])!, kind: 'other', space, hidden });
    else break;
  }
  return tokens;
}
