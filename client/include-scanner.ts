// Which files a compile may read, found without running the preprocessor: the #include
// directives of the source and of every header they reach, resolved along the compiler's own
// search path. Running `gcc -M` per object costs 40-100 ms on a kernel source (it preprocesses
// everything); this walk costs a few milliseconds, since every header is read once per session.
//
// The answer is a superset of what the preprocessor opens. Conditionals are judged only where
// the macros they test have one value for the whole compile (include-conditions.ts): a header
// behind `#ifdef __clang__` is left out, one behind a test of a macro some reached file defines
// is in. An include name gives the first file along the search path, as the compiler takes it;
// #include_next gives every one. So the remote compile finds exactly the file a local one would.
// A computed include (#include TRACE_INCLUDE(TRACE_INCLUDE_FILE), in every kernel source with
// trace events) is expanded with every definition of its macros the reached files hold
// (computed-include.ts). __has_include(<name>) is followed like an include, so the remote compile
// gets the same answer. Where a walk cannot be sure -- an expansion it does not model, an option
// that changes the search in ways not modelled -- it says so, and the caller runs the
// preprocessor instead.
import { spawn } from 'node:child_process';
import { Dirent, readdirSync, readFileSync, statSync } from 'node:fs';
import * as path from 'node:path';
import { CompileCommand } from './compile-args';
import { commandLineDefinitions, computedHeaderNames, defineOption, HeaderName, MacroDefinition, parseDefinitions } from './computed-include';
import { certainlySkipped, conditionalLines, Gate, integerValue, MacroFact, MacroFacts, neverDecided } from './include-conditions';
import { DigestCache, FileDigest, RACY_WINDOW_MS, statFile } from './digest-cache';

export type ScanResult =
  | {
      complete: true;
      /** Absolute paths: the source, the -include files and every header reached. */
      files: string[];
      /** Digests the scan learnt on the way, by path: the caller need not stat those files again. */
      digests: Map<string, FileDigest>;
    }
  | { complete: false; reason: string };

interface SearchPath {
  /** Stands for this search path in resolution keys. */
  id: number;
  /** Searched for "name" after the including file's own directory, then `bracket`. */
  quote: string[];
  bracket: string[];
}

/** Adds `file` to the walk unless it was reached before. */
function reach(file: string, found: Set<string>, pending: string[]): void {
  if (found.has(file)) return;
  found.add(file);
  pending.push(file);
}

/**
 * An include, or a __has_include operand; `next` for the _next forms, which search on past the
 * first match. Every directive has every field (see directive()): the walk reads them for
 * thousands of directives per scan, and one object shape keeps those reads monomorphic.
 */
interface Directive extends HeaderDirective {
  /** The macro expression of a computed include (#include MACRO(...)); its `name` is then ''. */
  computed: string | undefined;
  /** The branches it is inside, when the file's conditionals could be followed. */
  gates: Gate[] | undefined;
}

type HeaderDirective = HeaderName & {
  next?: boolean;
  /** Where it led, by search path: the shared resolution, checked once per generation for all its users. */
  resolved?: Map<number, Resolution>;
};

function directive(name: string, quoted: boolean, next: boolean, computed: string | undefined, gates: Gate[] | undefined): Directive {
  return { name, quoted, next, computed, gates, resolved: undefined };
}

/**
 * Like Directive, ParsedFile, Listing and ScanContext objects get every field when made: fields
 * added later give V8 new object shapes, and each new one met threw away the optimized walk (a
 * cold kernel build compiled it six times).
 */
interface ParsedFile {
  stamp: string;
  checkedIn: number;
  directives: Directive[] | { unsure: string };
  /** Names the file #defines or #undefs anywhere: not fixed for a compile that reads it. */
  defines: string[];
  /** Read when first asked for (definitionsOf). */
  definitions: Map<string, MacroDefinition[]> | undefined;
}

interface Listing {
  dir: string;
  stamp: string;
  checkedIn: number;
  /** Entries that may be files: regular files, and symlinks or untyped names to stat; undefined: no such directory. */
  entries: Map<string, 'file' | 'other'> | undefined;
}

/** Where one include name led along one search list, and the listings that decided it. */
interface Resolution {
  listings: Listing[];
  stamps: string[];
  files: string[];
  /** The first of `files`: what a plain #include opens. */
  first: string[];
  /** The generation that last found the listings unchanged. */
  checkedIn: number;
  /** A listing changed since: never valid again (stamps do not come back). */
  stale: boolean;
  /** False when a symlink decided it: a link can change where it points without its directory changing. */
  remembered: boolean;
}

/** One scan's view: its search path, and where its computed includes led. */
interface ScanContext {
  search: SearchPath;
  computedFiles: Map<string, Set<string>>;
  /** Set for the second walk: directives in branches these rule out are not followed. */
  facts: MacroFacts | undefined;
}

/** Options that decide where the compiler looks for headers: asked of the compiler with them. */
const SEARCH_OPTION = /^(?:-I.*|-iquote.*|-isystem.*|-idirafter.*|-isysroot.*|--sysroot.*|-nostdinc.*|-B.*|-m.*|--?target.*|--gcc-toolchain.*|-stdlib.*|-std=.*)$/;
const SEARCH_OPTION_WITH_VALUE = new Set(['-I', '-iquote', '-isystem', '-idirafter', '-isysroot', '--sysroot', '-B', '-target', '--gcc-toolchain']);
/** Options whose effect on the search this scanner does not model. */
const UNMODELLED = /^(?:-I-|-iprefix|-iwithprefix|-iwithprefixbefore|-imultilib|-fworking-directory|--include-directory|-traditional-cpp)/;
const INCLUDE = new Set(['include', 'include_next', 'import']);
/** A call of __has_include (not `#ifdef __has_include`), with its operand if that is a literal name. */
const HAS_INCLUDE = /__has_include(_next)?\s*\(\s*(?:"([^"\n]+)"|<([^>\n]+)>)?/g;
/** Options that leave the predefined macros as they are (or are taken care of here: -D, -U, the -include files). */
const NO_MACRO_EFFECT = /^(?:-c|-MD|-MMD|-MP|-W(?!p,).*|-g.*|-I.+|-iquote.+|-isystem.+|-idirafter.+|-D.+|-U.+|-pipe|-v)$/;
const NO_MACRO_EFFECT_WITH_VALUE = new Set(['-o', '-MF', '-MT', '-MQ', '-include', '-imacros', '-I', '-iquote', '-isystem', '-idirafter', '-D', '-U', '-x']);
/** Options after which the macros of a compile cannot be known from `cc -dM -E`. */
const MACROS_UNMODELLED = /^(?:-Wp,.*|-Xpreprocessor|-fdirectives-only|-fpreprocessed|-traditional.*)$/;
/** Names the preprocessor answers itself, which `-dM` does not list (true and false: in C++). */
const BUILT_IN = /^(?:true|false|__has_\w*|__FILE__|__LINE__|__COUNTER__|__INCLUDE_LEVEL__|__DATE__|__TIME__|__TIMESTAMP__|__BASE_FILE__|__FILE_NAME__|_Pragma|__VA_ARGS__|__VA_OPT__|defined)$/;

export class IncludeScanner {
  private readonly files = new Map<string, ParsedFile>();
  private readonly listings = new Map<string, Listing>();
  private readonly resolutions = new Map<string, Resolution>();
  private readonly searchPaths = new Map<string, Promise<SearchPath | { unsure: string }>>();
  private readonly predefined = new Map<string, Promise<Map<string, MacroFact> | undefined>>();
  /** Which files (as last parsed) #define or #undef each name. */
  private readonly definers = new Map<string, Set<string>>();
  /**
   * Cached files and directories are checked against the disk once per generation. A scan
   * starts a new one unless its job reached the session before the current one began (see
   * scan()); the digests the checks learnt are kept per generation.
   */
  private generation = 0;
  private generationStart = -Infinity;
  private digestsSeen = new Map<string, FileDigest>();

  /**
   * With a digest cache, a header is checked for change by the stat the digest cache makes
   * anyway (its content hash is the stamp), and the caller gets those digests with the answer.
   */
  constructor(private readonly digests?: DigestCache) {}

  /**
   * `receivedAt` (performance.now()) is when the job's recipe was known to have started: every
   * change it depends on came before. Checks made after it are then as good as new ones, so
   * jobs that were waiting together share one round of checks. Without it, every check is made
   * again.
   */
  async scan(compile: CompileCommand, cwd: string, env: NodeJS.ProcessEnv, receivedAt?: number): Promise<ScanResult> {
    const args = compile.argv.slice(1);
    const unmodelled = args.find((a) => UNMODELLED.test(a));
    if (unmodelled) return { complete: false, reason: `${unmodelled} is not modelled` };
    const [search, predefined] = await Promise.all([this.searchPathFor(compile, cwd, env), this.predefinedFor(compile, cwd, env)]);
    if ('unsure' in search) return { complete: false, reason: search.unsure };

    if (receivedAt === undefined || this.generationStart <= receivedAt) {
      this.generation++;
      this.generationStart = performance.now();
      this.digestsSeen = new Map();
    }
    // The first walk follows every directive: the files any branch may read. Their #defines
    // decide which macros are fixed; the second walk then leaves out what those rule out.
    const roots = [path.resolve(cwd, compile.source)];
    // -include and -imacros: looked for in the working directory first, then like "name".
    for (let i = 0; i < args.length; i++) {
      if (args[i] !== '-include' && args[i] !== '-imacros') continue;
      const name = args[++i] ?? '';
      const matches = this.matches(`i${search.id}\0${cwd}\0${name}`, name, () => [cwd, ...search.quote, ...search.bracket]);
      if (matches.length === 0) return { complete: false, reason: `${args[i - 1]} ${name} not found` };
      roots.push(matches[0]);
    }
    // GCC on glibc reads stdc-predef.h before anything else, wherever it is on the system path.
    if (!args.includes('-nostdinc')) roots.push(...this.matches(`b${search.id}\0stdc-predef.h`, 'stdc-predef.h', () => search.bracket).slice(0, 1));
    // Computed includes wait until every file is found: their macros may be defined anywhere.
    const computed = new Map<string, { file: string; expression: string }>();
    const ctx: ScanContext = { search, computedFiles: new Map(), facts: undefined };
    const found = new Set<string>();
    for (let next = roots; next.length > 0; ) {
      const walked = this.walk(next, ctx, found, computed);
      if (walked) return { complete: false, reason: walked.unsure };
      if (computed.size === 0) break;
      const definitions = this.definitionsIn([...found], args);
      next = [];
      for (const [key, { file, expression }] of computed) {
        const names = computedHeaderNames(expression, definitions);
        if ('unsure' in names) return { complete: false, reason: `${file}: ${names.unsure}` };
        // Names that exist nowhere are dropped, as for a plain #include: such an include is dead
        // code (the kernel's define_trace.h without CREATE_TRACE_POINTS), or the compile fails
        // remotely and runs again with the preprocessor's list.
        const files = ctx.computedFiles.get(key) ?? new Set<string>();
        ctx.computedFiles.set(key, files);
        // As directives: resolveHeader() then sees one object shape, whichever caller it has.
        for (const { name, quoted } of names) {
          for (const f of this.resolveHeader(search, path.dirname(file), directive(name, quoted, false, undefined, undefined))) files.add(f);
        }
        // Files found just now may define the macros differently: once more until nothing is new.
        for (const f of files) if (!found.has(f)) next.push(f);
      }
    }
    if (!predefined) return { complete: true, files: [...found], digests: this.digestsSeen };

    ctx.facts = this.factsFor(found, predefined, args);
    const reached = new Set<string>();
    this.walk(roots, ctx, reached, new Map());
    return { complete: true, files: [...reached], digests: this.digestsSeen };
  }

  /**
   * Adds to `found` every file reached from `roots` (files already found are not walked again),
   * and to `computed` the computed includes met, by directory and expression. A file that cannot
   * be scanned ends the walk. Methods, not closures made per scan: V8 then optimizes them once.
   */
  private walk(roots: string[], ctx: ScanContext, found: Set<string>, computed: Map<string, { file: string; expression: string }>): { unsure: string } | undefined {
    const pending: string[] = [];
    for (const root of roots) reach(root, found, pending);
    while (pending.length > 0) {
      const file = pending.pop()!;
      const parsed = this.directivesOf(file);
      if ('unsure' in parsed) return { unsure: `${file}: ${parsed.unsure}` };
      const dir = path.dirname(file);
      for (const d of parsed) {
        if (ctx.facts && d.gates && certainlySkipped(d.gates, ctx.facts)) continue;
        if (d.computed !== undefined) {
          const key = `${dir}\0${d.computed}`;
          computed.set(key, { file, expression: d.computed });
          for (const f of ctx.computedFiles.get(key) ?? []) reach(f, found, pending);
        } else {
          for (const f of this.resolveHeader(ctx.search, dir, d)) reach(f, found, pending);
        }
      }
    }
    return undefined;
  }

  /** Where a header directive in `dir` leads along `search`; the directive keeps the answer. */
  private resolveHeader(search: SearchPath, dir: string, d: HeaderDirective): string[] {
    let r = d.resolved?.get(search.id);
    if (!r || !this.current(r)) {
      r = d.quoted
        ? this.resolution(`q${search.id}\0${dir}\0${d.name}`, d.name, () => [dir, ...search.quote, ...search.bracket])
        : this.resolution(`b${search.id}\0${d.name}`, d.name, () => search.bracket);
      if (r.remembered) (d.resolved ??= new Map()).set(search.id, r);
    }
    // The compiler opens the first; #include_next goes on from where the including file was found.
    return d.next ? r.files : r.first;
  }

  /**
   * What each macro is for the whole compile: not fixed if a file it may read defines or
   * undefines it; else as the command line (-D, -U, in order) or the compiler's predefinitions
   * leave it; else undefined.
   */
  private factsFor(found: Set<string>, predefined: Map<string, MacroFact>, args: string[]): MacroFacts {
    const commandLine = new Map<string, MacroFact>();
    for (let i = 0; i < args.length; i++) {
      let a = args[i];
      if (a === '-D' || a === '-U') a += args[++i] ?? '';
      if (a.startsWith('-U')) commandLine.set(a.slice(2), { defined: false });
      else if (a.startsWith('-D')) {
        const d = defineOption(a.slice(2));
        commandLine.set(d.name, { defined: true, value: d.params ? undefined : integerValue(d.body) });
      }
    }
    const memo = new Map<string, MacroFact | undefined>();
    return (name) => {
      if (memo.has(name)) return memo.get(name);
      let fact: MacroFact | undefined = commandLine.get(name) ?? predefined.get(name) ?? { defined: false };
      if (BUILT_IN.test(name)) fact = undefined;
      for (const file of this.definers.get(name) ?? []) {
        if (!found.has(file)) continue;
        fact = undefined;
        break;
      }
      memo.set(name, fact);
      return fact;
    };
  }

  /** Looks up a macro's definitions in the given files (as last parsed) and the -D options. */
  private definitionsIn(files: string[], args: string[]): (name: string) => MacroDefinition[] | undefined {
    const byFile = files.map((f) => this.definitionsOf(f));
    const commandLine = groupByName(commandLineDefinitions(args));
    const memo = new Map<string, MacroDefinition[]>();
    return (name) => {
      let defs = memo.get(name);
      if (!defs) {
        defs = [...(commandLine.get(name) ?? []), ...byFile.flatMap((m) => m.get(name) ?? [])];
        memo.set(name, defs);
      }
      return defs;
    };
  }

  /** A file's #defines by name, read when first asked for (few scans meet a computed include). */
  private definitionsOf(file: string): Map<string, MacroDefinition[]> {
    const parsed = this.files.get(file);
    if (parsed?.definitions) return parsed.definitions;
    let text = '';
    try {
      text = readFileSync(file, 'latin1');
    } catch {
      // Unreadable now: it defines nothing we can see; the preprocessor is the fallback anyway.
    }
    const definitions = groupByName(parseDefinitions(withoutComments(text)));
    if (parsed) parsed.definitions = definitions;
    return definitions;
  }

  /** Every existing file `name` names along the directories (an absolute name: itself). */
  private matches(key: string, name: string, dirs: () => string[]): string[] {
    return this.resolution(key, name, dirs).files;
  }

  /** Where `name` leads along the directories, remembered under `key` (which names the question). */
  private resolution(key: string, name: string, dirs: () => string[]): Resolution {
    const known = this.resolutions.get(key);
    if (known && this.current(known)) return known;
    const candidates = path.isAbsolute(name) ? [name] : dirs().map((dir) => path.join(dir, name));
    const listings = candidates.map((c) => this.listing(path.dirname(c)));
    const files: string[] = [];
    let linked = false;
    candidates.forEach((candidate, i) => {
      const kind = listings[i].entries?.get(path.basename(candidate));
      if (kind === undefined || files.includes(candidate)) return;
      if (kind === 'file') return void files.push(candidate);
      // A symlink, or an entry listed without a type: only a stat says what it is, and a
      // symlink can change where it points without its directory changing: never remembered.
      linked = true;
      if (statSync(candidate, { throwIfNoEntry: false })?.isFile()) files.push(candidate);
    });
    const r: Resolution = { listings, stamps: listings.map((l) => l.stamp), files, first: files.slice(0, 1), checkedIn: this.generation, stale: false, remembered: !linked };
    if (r.remembered) this.resolutions.set(key, r);
    return r;
  }

  /** Whether a remembered resolution still holds: checked against its directories once per generation. */
  private current(r: Resolution): boolean {
    if (r.stale) return false;
    if (r.checkedIn === this.generation) return true;
    for (let i = 0; i < r.listings.length; i++) {
      if (this.fresh(r.listings[i]) !== r.stamps[i]) {
        r.stale = true;
        return false;
      }
    }
    r.checkedIn = this.generation;
    return true;
  }

  /** A directory's cached listing, checked against the disk once per generation. */
  private listing(dir: string): Listing {
    let listing = this.listings.get(dir);
    if (!listing) {
      listing = { dir, stamp: '', checkedIn: -1, entries: undefined };
      this.listings.set(dir, listing);
    }
    this.fresh(listing);
    return listing;
  }

  /** Brings a listing up to date (a stat per generation, a readdir when the directory changed); its stamp. */
  private fresh(listing: Listing): string {
    if (listing.checkedIn === this.generation) return listing.stamp;
    listing.checkedIn = this.generation;
    const dir = listing.dir;
    const stamp = stampOf(dir);
    if (stamp === listing.stamp) return stamp;
    listing.stamp = stamp;
    listing.entries = undefined;
    if (stamp !== 'absent') {
      try {
        listing.entries = new Map(readdirSync(dir, { withFileTypes: true }).filter(mayBeFile).map((e) => [e.name, e.isFile() ? 'file' : 'other']));
      } catch {
        listing.entries = undefined;
      }
    }
    return stamp;
  }

  private directivesOf(file: string): Directive[] | { unsure: string } {
    let parsed = this.files.get(file);
    if (parsed && parsed.checkedIn === this.generation) return parsed.directives;
    const digest = this.digests?.known(file);
    if (digest) this.digestsSeen.set(file, digest);
    const stamp = digest ? `sha256:${digest.hash}` : stampOf(file);
    // Parsed before the digest cache knew the file: the same stat means the same text.
    if (parsed && digest && parsed.stamp !== stamp && !parsed.stamp.startsWith('sha256:') && stampOf(file) === parsed.stamp) parsed.stamp = stamp;
    if (!parsed || parsed.stamp !== stamp) {
      for (const name of parsed?.defines ?? []) this.definers.get(name)?.delete(file);
      const { directives, defines } = parseFile(file);
      parsed = { stamp, checkedIn: this.generation, directives, defines, definitions: undefined };
      this.files.set(file, parsed);
      for (const name of parsed.defines) {
        const files = this.definers.get(name);
        if (files) files.add(file);
        else this.definers.set(name, new Set([file]));
      }
    }
    parsed.checkedIn = this.generation;
    return parsed.directives;
  }

  /** The compiler's own answer, once per compiler, working directory and search options. */
  private searchPathFor(compile: CompileCommand, cwd: string, env: NodeJS.ProcessEnv): Promise<SearchPath | { unsure: string }> {
    const options: string[] = [];
    const args = compile.argv.slice(1);
    for (let i = 0; i < args.length; i++) {
      if (SEARCH_OPTION_WITH_VALUE.has(args[i])) options.push(args[i], args[++i] ?? '');
      else if (SEARCH_OPTION.test(args[i])) options.push(args[i]);
    }
    const language = languageOf(compile.source);
    const key = JSON.stringify([compile.argv[0], cwd, language, options]);
    return once(this.searchPaths, key, () => askSearchPath(compile.argv[0], [...options, '-E', '-v', '-x', language, '/dev/null'], cwd, env));
  }

  /**
   * The macros the compiler defines before the first line with these options (`cc -dM -E`), once
   * per compiler, working directory and options that may change them; undefined where the
   * macros cannot be known so (then no conditional is judged).
   */
  private predefinedFor(compile: CompileCommand, cwd: string, env: NodeJS.ProcessEnv): Promise<Map<string, MacroFact> | undefined> {
    const options: string[] = [];
    const args = compile.argv.slice(1);
    let language = languageOf(compile.source);
    for (let i = 0; i < args.length; i++) {
      const a = args[i];
      if (/^-Wp,-M(M?)D,/.test(a)) continue;
      if (MACROS_UNMODELLED.test(a)) return Promise.resolve(undefined);
      if (a === '-x') language = args[i + 1] ?? language;
      if (NO_MACRO_EFFECT_WITH_VALUE.has(a)) i++;
      else if (!NO_MACRO_EFFECT.test(a) && a !== compile.source && !/^-o./.test(a)) options.push(a);
    }
    const key = JSON.stringify([compile.argv[0], cwd, language, options]);
    return once(this.predefined, key, () => askPredefined(compile.argv[0], [...options, '-dM', '-E', '-x', language, '/dev/null'], cwd, env));
  }
}

/** The compiler's answer to one question, asked once per key. */
function once<T>(answers: Map<string, Promise<T>>, key: string, ask: () => Promise<T>): Promise<T> {
  let answer = answers.get(key);
  if (!answer) answers.set(key, (answer = ask()));
  return answer;
}

/** The search lists `cc -E -v` prints, as absolute directories. */
function askSearchPath(compiler: string, args: string[], cwd: string, env: NodeJS.ProcessEnv): Promise<SearchPath | { unsure: string }> {
  return new Promise((resolve) => {
    const child = spawn(compiler, args, { cwd, env, stdio: ['ignore', 'ignore', 'pipe'] });
    let text = '';
    child.stderr.on('data', (d: Buffer) => (text += d.toString()));
    child.on('error', (e) => resolve({ unsure: `${compiler} -E -v: ${e.message}` }));
    child.on('close', (code) => {
      // The lists come before any complaint about the empty input (kernel flags, say, want
      // -fno-PIE with -mcmodel=kernel, which is no search option): printed lists are the answer.
      const lists = parseSearchLists(text, cwd);
      resolve(lists ? { id: ++searchPaths, ...lists } : { unsure: `${compiler} -E -v printed no search list (exit ${code})` });
    });
  });
}

/** The `#define` lines `cc -dM -E` prints, as facts; undefined if it fails. */
function askPredefined(compiler: string, args: string[], cwd: string, env: NodeJS.ProcessEnv): Promise<Map<string, MacroFact> | undefined> {
  return new Promise((resolve) => {
    const child = spawn(compiler, args, { cwd, env, stdio: ['ignore', 'pipe', 'ignore'] });
    let text = '';
    child.stdout.on('data', (d: Buffer) => (text += d.toString()));
    child.on('error', () => resolve(undefined));
    child.on('close', (code) => {
      if (code !== 0) return resolve(undefined);
      const facts = new Map<string, MacroFact>();
      for (const m of text.matchAll(/^#define ([A-Za-z_]\w*)(\()?[^ ]* ?(.*)$/gm)) {
        facts.set(m[1], { defined: true, value: m[2] ? undefined : integerValue(m[3]) });
      }
      resolve(facts);
    });
  });
}

function languageOf(source: string): string {
  return /\.(?:S|sx)$/.test(source) ? 'assembler-with-cpp' : /\.(?:cc|cpp|cxx|C|c\+\+)$/.test(source) ? 'c++' : 'c';
}

let searchPaths = 0;

export function parseSearchLists(text: string, cwd: string): Omit<SearchPath, 'id'> | undefined {
  const quoteAt = text.indexOf('#include "..." search starts here:');
  const bracketAt = text.indexOf('#include <...> search starts here:');
  const endAt = text.indexOf('End of search list.');
  if (quoteAt < 0 || bracketAt < quoteAt || endAt < bracketAt) return undefined;
  const dirs = (block: string) =>
    block
      .split('\n')
      .slice(1)
      .map((l) => l.trim())
      .filter((l) => l !== '')
      .map((l) => path.resolve(cwd, l.replace(/ \(framework directory\)$/, '')));
  return { quote: dirs(text.slice(quoteAt, bracketAt)), bracket: dirs(text.slice(bracketAt, endAt)) };
}

const DEFINE_OR_UNDEF = /^[ \t]*#[ \t]*(?:define|undef)[ \t]+([A-Za-z_]\w*)/gm;

/** The include directives of one file (or why it cannot be scanned), and the names it defines or undefines. */
function parseFile(file: string): { directives: Directive[] | { unsure: string }; defines: string[] } {
  let text: string;
  try {
    text = readFileSync(file, 'latin1');
  } catch (err) {
    return { directives: { unsure: `cannot read: ${(err as Error).message}` }, defines: [] };
  }
  const code = withoutComments(text);
  const joined = code.replace(/\\\r?\n/g, '');
  const defines = [...new Set(Array.from(joined.matchAll(DEFINE_OR_UNDEF), (m) => m[1]))];
  const directives: Directive[] = [];
  // Gates on this file's own macros (its include guard) are left out: they never close.
  const own = new Set(defines);
  const deciding = (gates: Gate[] | undefined) => {
    const kept = gates?.filter((g) => !neverDecided(g, own));
    return kept && kept.length > 0 ? kept : undefined;
  };
  // `__has_include(<name>)` answers from the file system: the file is an input if it exists, so
  // the remote compile gets the same answer. An operand made by a macro cannot be followed.
  const hasInclude = (text: string, gates: Gate[] | undefined): { unsure: string } | undefined => {
    for (const m of text.matchAll(HAS_INCLUDE)) {
      if (m[2] === undefined && m[3] === undefined) return { unsure: '__has_include with a computed operand' };
      directives.push(directive(m[2] ?? m[3], m[2] !== undefined, m[1] !== undefined, undefined, deciding(gates)));
    }
    return undefined;
  };
  const lines = conditionalLines(code);
  let judged = 0;
  for (const line of lines) {
    if (INCLUDE.has(line.directive)) {
      const rest = line.rest.trim();
      const name = /^"([^"]+)"|^<([^>]+)>/.exec(rest);
      const next = line.directive === 'include_next';
      if (name) directives.push(directive(name[1] ?? name[2], name[1] !== undefined, next, undefined, deciding(line.gates)));
      else directives.push(directive('', false, next, rest, deciding(line.gates)));
    } else if (line.rest.includes('__has_include')) {
      // In a condition it is read where the #if is; in a macro body, wherever the macro is used.
      judged += Array.from(line.rest.matchAll(HAS_INCLUDE)).length;
      const unsure = hasInclude(line.rest, line.directive === 'define' ? undefined : line.conditionGates ?? line.gates);
      if (unsure) return { directives: unsure, defines };
    }
  }
  // Anywhere else (outside a directive, or split oddly): followed whatever the conditionals say.
  if (joined.includes('__has_include') && Array.from(joined.matchAll(HAS_INCLUDE)).length !== judged) {
    const unsure = hasInclude(joined, undefined);
    if (unsure) return { directives: unsure, defines };
  }
  return { directives, defines };
}

/**
 * The text with every comment made one space (its newlines kept), so "#include" in prose is not
 * taken for a directive and a directive's trailing comment is not taken for its name. String
 * and character literals are skipped whole; like the compiler, a literal ends at the end of its
 * line.
 */
export function withoutComments(text: string): string {
  const special = /[/"']/g;
  let out = '';
  let copied = 0;
  let i = 0;
  while ((special.lastIndex = i), special.exec(text)) {
    const at = special.lastIndex - 1;
    const c = text[at];
    if (c === '"' || c === "'") {
      let j = at + 1;
      while (j < text.length && text[j] !== c && text[j] !== '\n') j += text[j] === '\\' ? 2 : 1;
      i = j + 1;
      continue;
    }
    const next = text[at + 1];
    if (next !== '*' && next !== '/') {
      i = at + 1;
      continue;
    }
    let end: number;
    if (next === '*') {
      const close = text.indexOf('*/', at + 2);
      end = close < 0 ? text.length : close + 2;
    } else {
      // A line comment goes on past a backslash-newline.
      end = at + 2;
      while (end < text.length && text[end] !== '\n') end += text[end] === '\\' ? 2 : 1;
    }
    // One space for the comment, as the compiler reads it, and its newlines to keep the lines.
    out += text.slice(copied, at) + ' ' + newlinesBetween(text, at, end);
    copied = i = end;
  }
  return out + text.slice(copied);
}

function newlinesBetween(text: string, from: number, to: number): string {
  let newlines = '';
  for (let at = text.indexOf('\n', from); at >= 0 && at < to; at = text.indexOf('\n', at + 1)) newlines += '\n';
  return newlines;
}

function groupByName(definitions: MacroDefinition[]): Map<string, MacroDefinition[]> {
  const byName = new Map<string, MacroDefinition[]>();
  for (const d of definitions) {
    const list = byName.get(d.name);
    if (list) list.push(d);
    else byName.set(d.name, [d]);
  }
  return byName;
}

function mayBeFile(e: Dirent): boolean {
  return e.isFile() || e.isSymbolicLink() || (!e.isDirectory() && !e.isFIFO() && !e.isSocket() && !e.isBlockDevice() && !e.isCharacterDevice());
}

let racyStamps = 0;

/** What tells a changed file or directory from an unchanged one; a racy one never matches again. */
function stampOf(p: string): string {
  const st = statFile(p);
  if (!st) return 'absent';
  const stamp = `${st.mtimeMs}/${st.ctimeMs}/${st.size}/${st.ino}`;
  return Date.now() - st.mtimeMs < RACY_WINDOW_MS ? `${stamp}/racy${++racyStamps}` : stamp;
}
