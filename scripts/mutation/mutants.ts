// The mutant generator of `npm run mutate`: from one function's definition (pg_get_functiondef), every mutant the
// systematic operators make, each a complete `create or replace function` text with exactly one small change.
// Only code is mutated: comments, string literals ('…', E'…'), quoted identifiers and the function's header are left
// as they are (they are masked before matching, so a `<` or an `and` inside them never matches).

export type Operator =
  | 'plus-minus'
  | 'relational'
  | 'least-greatest'
  | 'min-max'
  | 'and-or'
  | 'distinct-ne'
  | 'not-distinct-eq'
  | 'drop-conjunct'
  | 'swap-coalesce'
  | 'negate-interval-setting';

export const operators: readonly Operator[] = [
  'plus-minus',
  'relational',
  'least-greatest',
  'min-max',
  'and-or',
  'distinct-ne',
  'not-distinct-eq',
  'drop-conjunct',
  'swap-coalesce',
  'negate-interval-setting',
];

export interface Mutant {
  /** stable across runs while the mutated line does not change: function|operator|line text|nth on that line */
  key: string;
  /** regprocedure, e.g. mixpanel_sync.fail_run(bigint,text) */
  fn: string;
  operator: Operator;
  /** 1-based line in the definition */
  line: number;
  original: string;
  replacement: string;
  /** the complete create or replace text */
  sql: string;
}

interface Edit {
  operator: Operator;
  start: number;
  end: number;
  replacement: string;
}

/** Start and end (exclusive) of the body between the dollar quotes of AS $tag$ … $tag$. */
export function bodyRange(definition: string): [number, number] {
  const open = /\bas\s+(\$[A-Za-z_0-9]*\$)/i.exec(definition);
  if (!open) throw new Error('mutants: no dollar-quoted body in the definition (expected AS $function$ … $function$)');
  const start = open.index + open[0].length;
  const end = definition.indexOf(open[1]!, start);
  if (end < 0) throw new Error(`mutants: the body's closing ${open[1]} is missing`);
  return [start, end];
}

/**
 * The body with comments blanked (spaces) and the insides of string literals and quoted identifiers replaced by 'x'
 * (quotes kept), same length as the input: offsets in the mask are offsets in the text.
 */
export function maskBody(body: string): string {
  const out = body.split('');
  let i = 0;
  const blank = (from: number, to: number, ch: string): void => {
    for (let k = from; k < to; k++) if (out[k] !== '\n') out[k] = ch;
  };
  while (i < body.length) {
    const c = body[i]!;
    const next = body[i + 1];
    if (c === '-' && next === '-') {
      const end = body.indexOf('\n', i);
      const stop = end < 0 ? body.length : end;
      blank(i, stop, ' ');
      i = stop;
    } else if (c === '/' && next === '*') {
      const end = body.indexOf('*/', i + 2);
      const stop = end < 0 ? body.length : end + 2;
      blank(i, stop, ' ');
      i = stop;
    } else if (c === "'") {
      const escaped = i > 0 && /[eE]/.test(body[i - 1]!) && !/[A-Za-z_0-9]/.test(body[i - 2] ?? ' ');
      let k = i + 1;
      for (; k < body.length; k++) {
        if (escaped && body[k] === '\\') {
          k++;
          continue;
        }
        if (body[k] === "'") {
          if (body[k + 1] === "'") {
            k++;
            continue;
          }
          break;
        }
      }
      blank(i + 1, k, 'x');
      i = k + 1;
    } else if (c === '"') {
      let k = i + 1;
      for (; k < body.length; k++) {
        if (body[k] === '"') {
          if (body[k + 1] === '"') {
            k++;
            continue;
          }
          break;
        }
      }
      blank(i + 1, k, 'x');
      i = k + 1;
    } else if (c === '$') {
      // a nested dollar quote ($x$ … $x$, not a parameter such as $1): its contents are a literal
      const tag = /^\$[A-Za-z_][A-Za-z_0-9]*\$|^\$\$/.exec(body.slice(i));
      if (!tag) {
        i++;
        continue;
      }
      const end = body.indexOf(tag[0], i + tag[0].length);
      const stop = end < 0 ? body.length : end;
      blank(i + tag[0].length, stop, 'x');
      i = stop + tag[0].length;
    } else {
      i++;
    }
  }
  return out.join('');
}

/** Index of the parenthesis closing the one at open, in masked text; -1 when unbalanced. */
function closingParen(masked: string, open: number): number {
  let depth = 0;
  for (let k = open; k < masked.length; k++) {
    if (masked[k] === '(') depth++;
    else if (masked[k] === ')' && --depth === 0) return k;
  }
  return -1;
}

/** Top-level comma-separated argument ranges inside the parentheses [open, close]. */
function argumentRanges(masked: string, open: number, close: number): [number, number][] {
  const ranges: [number, number][] = [];
  let depth = 0;
  let from = open + 1;
  for (let k = open + 1; k < close; k++) {
    const c = masked[k];
    if (c === '(' || c === '[') depth++;
    else if (c === ')' || c === ']') depth--;
    else if (c === ',' && depth === 0) {
      ranges.push([from, k]);
      from = k + 1;
    }
  }
  ranges.push([from, close]);
  return ranges;
}

function trimRange(text: string, [from, to]: [number, number]): [number, number] {
  while (from < to && /\s/.test(text[from]!)) from++;
  while (to > from && /\s/.test(text[to - 1]!)) to--;
  return [from, to];
}

// Words that end the condition of a where clause at its own parenthesis depth.
const clauseEnd =
  /^(group|order|returning|limit|offset|union|except|intersect|window|having|for|loop|then|on|into|select|insert|update|delete|with)\b/i;

function isAssignment(masked: string, at: number): boolean {
  // `col = value` in an update's SET list or an ON CONFLICT … DO UPDATE SET: the left side is the line's first token
  // (and the options of a PL/pgSQL RAISE … USING errcode = …, and GET DIAGNOSTICS x = …)
  const lineStart = masked.lastIndexOf('\n', at) + 1;
  const before = masked.slice(lineStart, at);
  return (
    /^\s*(set\s+)?[a-z_][a-z_0-9]*\s*$/i.test(before) ||
    /\b(errcode|message|hint|detail|column|constraint|datatype|table|schema)\s*$/i.test(before) ||
    /\bdiagnostics\s+[a-z_]+\s*$/i.test(before)
  );
}

function isBetweenAnd(masked: string, at: number): boolean {
  const before = masked.slice(Math.max(0, at - 200), at).toLowerCase();
  const between = before.lastIndexOf('between');
  if (between < 0) return false;
  return !/\band\b/.test(before.slice(between));
}

/** Every edit of one operator in the masked body (offsets in the body). */
function editsOf(masked: string, operator: Operator): Edit[] {
  const edits: Edit[] = [];
  const each = (pattern: RegExp, replace: (m: RegExpExecArray) => Edit | undefined): void => {
    for (const m of masked.matchAll(pattern)) {
      const edit = replace(m as RegExpExecArray);
      if (edit) edits.push(edit);
    }
  };
  switch (operator) {
    case 'plus-minus':
      // binary + and - written with a space on both sides (unary minus, ->, ->>, #- and -- never match)
      each(/(?<=\s)[+-](?=\s)/g, (m) => ({ operator, start: m.index, end: m.index + 1, replacement: m[0] === '+' ? '-' : '+' }));
      break;
    case 'relational':
      each(/(?<=\s)(<=|>=|<|>)(?=\s)/g, (m) => ({
        operator,
        start: m.index,
        end: m.index + m[0].length,
        replacement: ({ '<': '<=', '<=': '<', '>': '>=', '>=': '>' } as Record<string, string>)[m[0]]!,
      }));
      break;
    case 'least-greatest':
      each(/\b(least|greatest)(?=\s*\()/gi, (m) => ({
        operator,
        start: m.index,
        end: m.index + m[0].length,
        replacement: m[0].toLowerCase() === 'least' ? 'greatest' : 'least',
      }));
      break;
    case 'min-max':
      each(/(?<![.\w])(min|max)(?=\s*\()/gi, (m) => ({
        operator,
        start: m.index,
        end: m.index + m[0].length,
        replacement: m[0].toLowerCase() === 'min' ? 'max' : 'min',
      }));
      break;
    case 'and-or':
      each(/\b(and|or)\b/gi, (m) => {
        const word = m[0].toLowerCase();
        if (word === 'and' && isBetweenAnd(masked, m.index)) return undefined;
        return { operator, start: m.index, end: m.index + m[0].length, replacement: word === 'and' ? 'or' : 'and' };
      });
      break;
    case 'distinct-ne':
      each(/\bis\s+distinct\s+from\b/gi, (m) => ({ operator, start: m.index, end: m.index + m[0].length, replacement: '<>' }));
      each(/(?<=\s)<>(?=\s)/g, (m) => ({ operator, start: m.index, end: m.index + 2, replacement: 'is distinct from' }));
      break;
    case 'not-distinct-eq':
      each(/\bis\s+not\s+distinct\s+from\b/gi, (m) => ({ operator, start: m.index, end: m.index + m[0].length, replacement: '=' }));
      each(/(?<=\s)=(?=\s)/g, (m) =>
        isAssignment(masked, m.index) ? undefined : { operator, start: m.index, end: m.index + 1, replacement: 'is not distinct from' },
      );
      break;
    case 'drop-conjunct':
      each(/\bwhere\b/gi, (m) => {
        // the condition runs to the first clause word, ';' or unmatched ')' at its depth
        let depth = 0;
        let end = m.index + m[0].length;
        for (; end < masked.length; end++) {
          const c = masked[end]!;
          if (c === '(') depth++;
          else if (c === ')') {
            if (depth === 0) break;
            depth--;
          } else if (c === ';' && depth === 0) break;
          else if (depth === 0 && /\s/.test(masked[end - 1]!) && clauseEnd.test(masked.slice(end, end + 10))) break;
        }
        const start = m.index + m[0].length;
        // top-level "and" separators (not the and of a between)
        const separators: [number, number][] = [];
        depth = 0;
        for (let k = start; k < end; k++) {
          const c = masked[k]!;
          if (c === '(') depth++;
          else if (c === ')') depth--;
          else if (
            depth === 0 &&
            /and/i.test(masked.slice(k, k + 3)) &&
            /\W/.test(masked[k - 1]!) &&
            /\W/.test(masked[k + 3] ?? ' ') &&
            !isBetweenAnd(masked, k)
          )
            separators.push([k, k + 3]);
        }
        if (separators.length === 0) return undefined;
        // one edit per conjunct; several per where, so they are pushed here and undefined returned
        // a dropped conjunct becomes `true` (its "and" stays): comments between conjuncts stay where they are
        for (let c = 0; c <= separators.length; c++) {
          const from = c === 0 ? start : separators[c - 1]![1];
          const to = c < separators.length ? separators[c]![0] : end;
          const [a, b] = trimRange(masked, [from, to]);
          if (b > a) edits.push({ operator, start: a, end: b, replacement: 'true' });
        }
        return undefined;
      });
      break;
    case 'swap-coalesce':
      each(/\bcoalesce\s*\(/gi, (m) => {
        const open = m.index + m[0].length - 1;
        const close = closingParen(masked, open);
        if (close < 0) return undefined;
        const args = argumentRanges(masked, open, close);
        if (args.length < 2) return undefined;
        const first = trimRange(masked, args[0]!);
        const second = trimRange(masked, args[1]!);
        return { operator, start: first[0], end: second[1], replacement: `\u0000swap:${first[0]}:${first[1]}:${second[0]}:${second[1]}` };
      });
      break;
    case 'negate-interval-setting':
      // (the setting's project first: a variable or a qualified parameter, e.g. pid, prune_history.project_id)
      each(/\bmixpanel_sync\.setting\s*\(\s*[a-z_][a-z0-9_.]*\s*,\s*'x*'\s*\)\s*::\s*interval\b/gi, (m) => ({
        operator,
        start: m.index,
        end: m.index + m[0].length,
        replacement: `\u0000negate`,
      }));
      break;
  }
  return edits;
}

function applyEdit(body: string, edit: Edit): string {
  let replacement = edit.replacement;
  if (replacement.startsWith('\u0000swap:')) {
    const [a, b, c, d] = replacement.slice(6).split(':').map(Number) as [number, number, number, number];
    replacement = `${body.slice(c, d)}${body.slice(b, c)}${body.slice(a, b)}`;
  } else if (replacement === '\u0000negate') {
    replacement = `(- ${body.slice(edit.start, edit.end)})`;
  }
  return body.slice(0, edit.start) + replacement + body.slice(edit.end);
}

/** Every mutant of one function definition (as pg_get_functiondef prints it), for the operators given. */
export function generateMutants(fn: string, definition: string, wanted: readonly Operator[] = operators): Mutant[] {
  const [bodyStart, bodyEnd] = bodyRange(definition);
  const body = definition.slice(bodyStart, bodyEnd);
  const masked = maskBody(body);
  const mutants: Mutant[] = [];
  const seenOnLine = new Map<string, number>();
  for (const operator of wanted) {
    const edits = editsOf(masked, operator).sort((x, y) => x.start - y.start || x.end - y.end);
    for (const edit of edits) {
      const mutatedBody = applyEdit(body, edit);
      const lineStartInBody = body.lastIndexOf('\n', edit.start) + 1;
      const lineEndInBody = body.indexOf('\n', edit.start);
      const lineText = body.slice(lineStartInBody, lineEndInBody < 0 ? body.length : lineEndInBody).trim();
      const base = `${fn}|${operator}|${lineText}`;
      const nth = (seenOnLine.get(base) ?? 0) + 1;
      seenOnLine.set(base, nth);
      const original = body.slice(edit.start, edit.end);
      const replaced = applyEdit(body, edit).slice(edit.start, edit.start + (mutatedBody.length - body.length) + (edit.end - edit.start));
      mutants.push({
        key: `${base}|${nth}`,
        fn,
        operator,
        line: definition.slice(0, bodyStart + edit.start).split('\n').length,
        original: original.replace(/\s+/g, ' ').trim(),
        replacement: replaced.replace(/\s+/g, ' ').trim(),
        sql: definition.slice(0, bodyStart) + mutatedBody + definition.slice(bodyEnd),
      });
    }
  }
  return mutants;
}
