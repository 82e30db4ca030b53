/**
 * `WWW-Authenticate` parsing (RFC 9110 §11.6.1): one or more challenges, each a scheme followed by either a
 * token68 or comma-separated `name=value` parameters whose values may be quoted strings with `\` escapes.
 * A registry answers `Bearer realm="…",service="…",scope="…"` or `Basic realm="…"`, possibly with
 * `error="insufficient_scope"` (https://distribution.github.io/distribution/spec/auth/token/).
 */
export interface Challenge {
  /** Lowercased scheme: `bearer`, `basic`, … */
  readonly scheme: string;
  /** Parameters with lowercased names. */
  readonly params: Readonly<Record<string, string>>;
  readonly token68?: string | undefined;
}

const TCHAR = /[!#$%&'*+\-.^_`|~0-9A-Za-z]/;
const TOKEN68_CHAR = /[A-Za-z0-9\-._~+/]/;

class Scanner {
  readonly text: string;
  pos = 0;
  constructor(text: string) {
    this.text = text;
  }
  get done(): boolean {
    return this.pos >= this.text.length;
  }
  peek(): string {
    return this.text[this.pos] ?? '';
  }
  skipSpace(): void {
    while (this.peek() === ' ' || this.peek() === '\t') this.pos++;
  }
  token(): string {
    const start = this.pos;
    while (!this.done && TCHAR.test(this.peek())) this.pos++;
    return this.text.slice(start, this.pos);
  }
  quoted(): string {
    this.pos++; // opening quote
    let value = '';
    while (!this.done) {
      const c = this.peek();
      this.pos++;
      if (c === '"') return value;
      if (c === '\\' && !this.done) {
        value += this.peek();
        this.pos++;
      } else {
        value += c;
      }
    }
    return value; // unterminated: lenient, like Go's net/http and most clients
  }
  /** A token68 ends the challenge: it is followed only by spaces and then a comma or the end. */
  token68(): string | undefined {
    const start = this.pos;
    let end = start;
    while (end < this.text.length && TOKEN68_CHAR.test(this.text[end] ?? '')) end++;
    if (end === start) return undefined;
    while (this.text[end] === '=') end++;
    let after = end;
    while (this.text[after] === ' ' || this.text[after] === '\t') after++;
    if (after < this.text.length && this.text[after] !== ',') return undefined;
    this.pos = after;
    return this.text.slice(start, end);
  }
}

function parseOne(text: string, into: Challenge[]): void {
  const s = new Scanner(text);
  let current: { scheme: string; params: Record<string, string>; token68?: string } | undefined;
  while (!s.done) {
    s.skipSpace();
    if (s.peek() === ',') {
      s.pos++;
      continue;
    }
    const name = s.token();
    if (name === '') {
      s.pos++; // a stray character: skip it rather than fail the whole header
      continue;
    }
    s.skipSpace();
    if (current !== undefined && s.peek() === '=') {
      s.pos++;
      s.skipSpace();
      const value = s.peek() === '"' ? s.quoted() : s.token();
      current.params[name.toLowerCase()] = value;
      continue;
    }
    current = { scheme: name.toLowerCase(), params: {} };
    into.push(current);
    const token68 = s.token68();
    if (token68 !== undefined) {
      current.token68 = token68;
      current = undefined; // a token68 challenge has no parameters
    }
  }
}

/** Parses one or several `WWW-Authenticate` header values into challenges, in order. */
export function parseWwwAuthenticate(values: string | readonly string[] | undefined): Challenge[] {
  const challenges: Challenge[] = [];
  if (values === undefined) return challenges;
  for (const value of typeof values === 'string' ? [values] : values) parseOne(value, challenges);
  return challenges;
}
