// Which #include lines of a file can be reached, judged only from macros whose value is the
// same at every line of the compile: those the compiler predefines or the command line sets,
// and those nothing defines at all, provided no file the compile may read #defines or #undefs
// them. `#ifdef __clang__`, `#ifdef CONFIG_X86_32` (with CONFIG_X86_32 set nowhere) or `#if 0`
// is decided; a condition on anything else is not, and what it guards stays an input. So the
// include scanner drops headers no compile with these flags can open (a kernel object: 86 of
// 518), and its answer stays a superset of what the preprocessor reads.
// Pure.

/** A macro's standing for the whole compile: fixed undefined, fixed defined (with an integer value if it has one), or not fixed (undefined). */
export type MacroFact = { defined: false } | { defined: true; value?: bigint };
export type MacroFacts = (name: string) => MacroFact | undefined;

export type Expr =
  | { op: 'number'; value: bigint }
  | { op: 'name'; name: string }
  | { op: 'defined'; name: string }
  | { op: 'unknown' }
  | { op: 'unary'; operator: string; operand: Expr }
  | { op: 'binary'; operator: string; left: Expr; right: Expr }
  | { op: 'ternary'; test: Expr; then: Expr; otherwise: Expr };

/**
 * One enclosing branch of a directive: taken only if `test` holds (absent for #else) and none
 * of the chain's earlier conditions held.
 */
export interface Gate {
  test?: Expr;
  earlier: Expr[];
}

export interface ConditionalLine {
  /** The line's directive name (`include`, `if`, `define`...) and the rest of the line, continuations joined. */
  directive: string;
  rest: string;
  /** The branches the line is inside, outermost first. */
  gates: Gate[];
  /** For #if/#elif lines: the gates the condition itself is read under (its chain excluded). */
  conditionGates?: Gate[];
}

const LINE = /^[ \t]*#[ \t]*([A-Za-z_]\w*)(.*)$/gm;

/**
 * Every preprocessor line of a file (comments already blanked) with the branches it is inside;
 * where the #if/#endif nesting does not balance, nothing can be judged: every line is ungated.
 */
export function conditionalLines(code: string): ConditionalLine[] {
  const joined = code.replace(/\\\r?\n/g, '');
  const lines: ConditionalLine[] = [];
  // The open chains, innermost last: the current branch's gate and the chain's conditions so far.
  const chains: { gate: Gate; conditions: Expr[] }[] = [];
  const gates = () => chains.map((c) => c.gate);
  for (const m of joined.matchAll(LINE)) {
    const directive = m[1];
    const rest = m[2];
    switch (directive) {
      case 'if':
      case 'ifdef':
      case 'ifndef': {
        const outer = gates();
        const test = directive === 'if' ? parseCondition(rest) : definedTest(rest, directive === 'ifndef');
        chains.push({ gate: { test, earlier: [] }, conditions: [test] });
        lines.push({ directive, rest, gates: gates(), conditionGates: outer });
        break;
      }
      case 'elif':
      case 'elifdef':
      case 'elifndef': {
        const chain = chains.at(-1);
        if (!chain) return ungated(joined);
        const test = directive === 'elif' ? parseCondition(rest) : definedTest(rest, directive === 'elifndef');
        chain.gate = { test, earlier: [...chain.conditions] };
        chain.conditions.push(test);
        lines.push({ directive, rest, gates: gates(), conditionGates: gates().slice(0, -1) });
        break;
      }
      case 'else': {
        const chain = chains.at(-1);
        if (!chain) return ungated(joined);
        chain.gate = { earlier: [...chain.conditions] };
        lines.push({ directive, rest, gates: gates() });
        break;
      }
      case 'endif':
        if (!chains.pop()) return ungated(joined);
        lines.push({ directive, rest, gates: gates() });
        break;
      default:
        lines.push({ directive, rest, gates: gates() });
    }
  }
  return chains.length === 0 ? lines : ungated(joined);
}

function ungated(joined: string): ConditionalLine[] {
  return Array.from(joined.matchAll(LINE), (m) => ({ directive: m[1], rest: m[2], gates: [] }));
}

/** Whether some gate is certainly closed: then the line is never read by the compile. */
export function certainlySkipped(gates: Gate[], facts: MacroFacts): boolean {
  for (const gate of gates) {
    if (gate.test && evaluate(gate.test, facts) === 0n) return true;
    for (const e of gate.earlier) {
      const v = evaluate(e, facts);
      if (v !== undefined && v !== 0n) return true;
    }
  }
  return false;
}

/**
 * Whether a gate can never be judged closed while the names in `unknowable` are unknown: every
 * leaf of its conditions is such a name (or unknown), so each evaluates to unknown. A file's
 * include guard is this for the file's own #define: whenever the file is read, so is that line.
 */
export function neverDecided(gate: Gate, unknowable: ReadonlySet<string>): boolean {
  const open = (e: Expr): boolean => {
    switch (e.op) {
      case 'number':
        return false;
      case 'unknown':
        return true;
      case 'name':
      case 'defined':
        return unknowable.has(e.name);
      case 'unary':
        return open(e.operand);
      case 'binary':
        return open(e.left) && open(e.right);
      case 'ternary':
        return open(e.test) && open(e.then) && open(e.otherwise);
    }
  };
  return (!gate.test || open(gate.test)) && gate.earlier.every(open);
}

function definedTest(rest: string, negated: boolean): Expr {
  const name = /^\s*([A-Za-z_]\w*)\s*$/.exec(rest);
  if (!name) return { op: 'unknown' };
  const test: Expr = { op: 'defined', name: name[1] };
  return negated ? { op: 'unary', operator: '!', operand: test } : test;
}

const TOKEN = /\s*(?:([A-Za-z_]\w*)|(\.?\d(?:[eEpP][+-]|[\w.])*)|('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")|(\|\||&&|==|!=|<=|>=|<<|>>|[-+*/%&|^~!<>?:(),])|(\S))/y;

/** Longer conditions are left undecided: their trees would be deep enough to exhaust the stack. */
const MAX_TOKENS = 1000;

/** A #if expression as a tree; what it does not model (a macro call, a character constant) is 'unknown'. */
export function parseCondition(text: string): Expr {
  const tokens: string[] = [];
  TOKEN.lastIndex = 0;
  for (let m = TOKEN.exec(text); m; m = TOKEN.exec(text)) {
    if (m[5] !== undefined || m[3] !== undefined || tokens.length === MAX_TOKENS) return { op: 'unknown' };
    tokens.push(m[1] ?? m[2] ?? m[4]);
  }
  if (tokens.length === 0) return { op: 'unknown' };
  let at = 0;
  const peek = () => tokens[at];
  const fail = (): never => {
    throw new SyntaxError();
  };
  const expect = (t: string) => (tokens[at] === t ? at++ : fail());

  const primary = (): Expr => {
    const t = tokens[at++] ?? fail();
    if (t === '(') {
      const e = ternary();
      expect(')');
      return e;
    }
    if (t === 'defined') {
      const paren = peek() === '(';
      if (paren) at++;
      const name = tokens[at++] ?? fail();
      if (!/^[A-Za-z_]\w*$/.test(name)) fail();
      if (paren) expect(')');
      return { op: 'defined', name };
    }
    if (/^[A-Za-z_]/.test(t)) {
      if (peek() === '(') {
        // A function-like macro or a built-in (__has_attribute...): its answer is not modelled.
        let depth = 0;
        do {
          const u = tokens[at++] ?? fail();
          if (u === '(') depth++;
          else if (u === ')') depth--;
        } while (depth > 0);
        return { op: 'unknown' };
      }
      return { op: 'name', name: t };
    }
    if (/^\.?\d/.test(t)) return integerLiteral(t) ?? { op: 'unknown' };
    return fail();
  };
  const unary = (): Expr => {
    const t = peek();
    if (t === '!' || t === '~' || t === '-' || t === '+') {
      at++;
      return { op: 'unary', operator: t, operand: unary() };
    }
    return primary();
  };
  const levels = [['||'], ['&&'], ['|'], ['^'], ['&'], ['==', '!='], ['<', '>', '<=', '>='], ['<<', '>>'], ['+', '-'], ['*', '/', '%']];
  const binary = (level: number): Expr => {
    if (level === levels.length) return unary();
    let left = binary(level + 1);
    while (levels[level].includes(peek())) {
      const operator = tokens[at++];
      left = { op: 'binary', operator, left, right: binary(level + 1) };
    }
    return left;
  };
  const ternary = (): Expr => {
    const test = binary(0);
    if (peek() !== '?') return test;
    at++;
    const then = ternary();
    expect(':');
    return { op: 'ternary', test, then, otherwise: ternary() };
  };
  try {
    const e = ternary();
    return at === tokens.length ? e : { op: 'unknown' };
  } catch {
    return { op: 'unknown' };
  }
}

const INT64_MIN = -(2n ** 63n);
const INT64_MAX = 2n ** 63n - 1n;

/** A signed integer constant; undefined for anything else (unsigned, floating, out of range). */
function integerLiteral(text: string): Expr | undefined {
  const m = /^(0[xX][0-9a-fA-F]+|0[bB][01]+|0[0-7]*|[1-9]\d*)(?:[lL]{1,2})?$/.exec(text);
  if (!m) return undefined;
  const digits = m[1];
  const value = /^0[0-7]+$/.test(digits) ? BigInt(`0o${digits.slice(1)}`) : BigInt(digits);
  return value <= INT64_MAX ? { op: 'number', value } : undefined;
}

/** A macro's value as a number, when its definition is one integer constant. */
export function integerValue(body: string): bigint | undefined {
  const e = integerLiteral(body.trim());
  return e?.op === 'number' ? e.value : undefined;
}

/** The expression's value as the preprocessor computes it (intmax_t), or undefined if it depends on what is not fixed. */
export function evaluate(e: Expr, facts: MacroFacts): bigint | undefined {
  switch (e.op) {
    case 'number':
      return e.value;
    case 'unknown':
      return undefined;
    case 'defined': {
      const fact = facts(e.name);
      return fact === undefined ? undefined : fact.defined ? 1n : 0n;
    }
    case 'name': {
      const fact = facts(e.name);
      // An identifier that is no macro is 0 in #if.
      return fact === undefined ? undefined : fact.defined ? fact.value : 0n;
    }
    case 'unary': {
      const v = evaluate(e.operand, facts);
      if (v === undefined) return undefined;
      return inRange(e.operator === '!' ? (v === 0n ? 1n : 0n) : e.operator === '~' ? ~v : e.operator === '-' ? -v : v);
    }
    case 'ternary': {
      const test = evaluate(e.test, facts);
      if (test !== undefined) return evaluate(test !== 0n ? e.then : e.otherwise, facts);
      const a = evaluate(e.then, facts);
      return a !== undefined && a === evaluate(e.otherwise, facts) ? a : undefined;
    }
    case 'binary':
      return binaryValue(e.operator, e.left, e.right, facts);
  }
}

function binaryValue(operator: string, left: Expr, right: Expr, facts: MacroFacts): bigint | undefined {
  const a = evaluate(left, facts);
  if (operator === '&&' || operator === '||') {
    // Either side alone can decide: 0 for &&, non-zero for ||.
    const decides = (v: bigint | undefined) => v !== undefined && (operator === '&&' ? v === 0n : v !== 0n);
    if (decides(a)) return operator === '&&' ? 0n : 1n;
    const b = evaluate(right, facts);
    if (decides(b)) return operator === '&&' ? 0n : 1n;
    return a === undefined || b === undefined ? undefined : operator === '&&' ? 1n : 0n;
  }
  const b = evaluate(right, facts);
  if (a === undefined || b === undefined) return undefined;
  switch (operator) {
    case '*': return inRange(a * b);
    case '/': return b === 0n ? undefined : inRange(a / b);
    case '%': return b === 0n ? undefined : inRange(a % b);
    case '+': return inRange(a + b);
    case '-': return inRange(a - b);
    case '<<': return b < 0n || b > 63n ? undefined : inRange(a << b);
    case '>>': return b < 0n || b > 63n ? undefined : a >> b;
    case '<': return a < b ? 1n : 0n;
    case '>': return a > b ? 1n : 0n;
    case '<=': return a <= b ? 1n : 0n;
    case '>=': return a >= b ? 1n : 0n;
    case '==': return a === b ? 1n : 0n;
    case '!=': return a !== b ? 1n : 0n;
    case '&': return a & b;
    case '^': return a ^ b;
    case '|': return a | b;
  }
  return undefined;
}

/** Overflow is the compiler's business, not ours to guess: an out-of-range result decides nothing. */
function inRange(v: bigint): bigint | undefined {
  return v < INT64_MIN || v > INT64_MAX ? undefined : v;
}
