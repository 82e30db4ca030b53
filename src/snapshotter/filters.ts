/**
 * containerd's filter syntax (containerd/filters), the part List requests use: `field==value`,
 * `field!=value`, `field~=regexp` or a bare `field` (present), joined by `,` (all must hold); a list of
 * filters matches when any one does. Fields: name, parent, kind, labels.KEY or labels."KEY". Values are
 * bare words or double-quoted strings with Go escapes, as containerd writes them with %q.
 */
import { ErofsOciError } from '../errors.ts';

export interface FilterTarget {
  name: string;
  parent: string;
  /** 'View', 'Active', 'Committed' as containerd's Kind.String() spells them (compared case-insensitively). */
  kind: string;
  labels: Record<string, string>;
}

type Operator = '==' | '!=' | '~=' | 'present';

interface Selector {
  field: string[];
  operator: Operator;
  value: string;
}

export type Filter = (target: FilterTarget) => boolean;

function invalid(filter: string, why: string): ErofsOciError {
  return new ErofsOciError('usage', `Cannot parse filter ${JSON.stringify(filter)}: ${why}`);
}

/** Reads a quoted string at `text[start] === '"'`; returns the value and the index after the closing quote. */
function readQuoted(text: string, start: number, filter: string): [string, number] {
  let value = '';
  for (let i = start + 1; i < text.length; i++) {
    const c = text[i] as string;
    if (c === '"') return [value, i + 1];
    if (c !== '\\') {
      value += c;
      continue;
    }
    const next = text[++i];
    const escapes: Record<string, string> = { n: '\n', t: '\t', r: '\r', '\\': '\\', '"': '"', '/': '/' };
    if (next !== undefined && escapes[next] !== undefined) value += escapes[next];
    else if (next === 'x' || next === 'u') {
      const width = next === 'x' ? 2 : 4;
      const hex = text.slice(i + 1, i + 1 + width);
      if (!/^[0-9a-fA-F]+$/.test(hex) || hex.length !== width) throw invalid(filter, 'bad escape');
      value += String.fromCharCode(Number.parseInt(hex, 16));
      i += width;
    } else throw invalid(filter, `bad escape \\${next ?? ''}`);
  }
  throw invalid(filter, 'unterminated quote');
}

function parseSelector(text: string, filter: string): Selector {
  const field: string[] = [];
  let i = 0;
  // The field path: parts separated by '.', each bare or quoted.
  for (;;) {
    if (text[i] === '"') {
      const [part, end] = readQuoted(text, i, filter);
      field.push(part);
      i = end;
    } else {
      const match = /^[A-Za-z0-9_/-]+/.exec(text.slice(i));
      if (!match) throw invalid(filter, `expected a field name at ${JSON.stringify(text.slice(i))}`);
      field.push(match[0]);
      i += match[0].length;
    }
    if (text[i] !== '.') break;
    i++;
  }
  if (i === text.length) return { field, operator: 'present', value: '' };
  const operator = text.slice(i, i + 2);
  if (operator !== '==' && operator !== '!=' && operator !== '~=')
    throw invalid(filter, `expected ==, != or ~= at ${JSON.stringify(text.slice(i))}`);
  i += 2;
  let value: string;
  if (text[i] === '"') {
    const [quoted, end] = readQuoted(text, i, filter);
    if (end !== text.length) throw invalid(filter, 'text after the quoted value');
    value = quoted;
  } else {
    value = text.slice(i);
  }
  return { field, operator, value };
}

/** Splits at commas outside quotes. */
function splitSelectors(filter: string): string[] {
  const parts: string[] = [];
  let current = '';
  let quoted = false;
  for (let i = 0; i < filter.length; i++) {
    const c = filter[i] as string;
    if (c === '\\' && quoted) {
      current += c + (filter[++i] ?? '');
      continue;
    }
    if (c === '"') quoted = !quoted;
    if (c === ',' && !quoted) {
      parts.push(current.trim());
      current = '';
    } else current += c;
  }
  parts.push(current.trim());
  return parts.filter((p) => p !== '');
}

function fieldValue(target: FilterTarget, field: string[]): string | undefined {
  const [head, ...rest] = field;
  switch (head) {
    case 'name':
      return rest.length === 0 ? target.name : undefined;
    case 'parent':
      return rest.length === 0 ? target.parent : undefined;
    case 'kind':
      return rest.length === 0 ? target.kind.toLowerCase() : undefined;
    case 'labels':
      return rest.length === 0 ? undefined : target.labels[rest.join('.')];
    default:
      return undefined;
  }
}

export function parseFilter(filter: string): Filter {
  const selectors = splitSelectors(filter).map((s) => parseSelector(s, filter));
  const matchers = selectors.map((selector) => {
    const expected = selector.field[0] === 'kind' ? selector.value.toLowerCase() : selector.value;
    let pattern: RegExp | undefined;
    if (selector.operator === '~=') {
      try {
        pattern = new RegExp(selector.value);
      } catch (error) {
        throw invalid(filter, (error as Error).message);
      }
    }
    return (target: FilterTarget) => {
      const actual = fieldValue(target, selector.field);
      switch (selector.operator) {
        case 'present':
          return actual !== undefined;
        case '==':
          return actual === expected;
        case '!=':
          return actual !== expected;
        case '~=':
          return actual !== undefined && (pattern as RegExp).test(actual);
      }
    };
  });
  return (target) => matchers.every((m) => m(target));
}

/** Any of `filters` (all targets when there is none). */
export function parseFilters(filters: readonly string[]): Filter {
  const parsed = filters.filter((f) => f.trim() !== '').map(parseFilter);
  if (parsed.length === 0) return () => true;
  return (target) => parsed.some((f) => f(target));
}
