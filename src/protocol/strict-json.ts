/**
 * Member-name rules that JSON.parse does not enforce (docs/protocol.md §Envelope): every member
 * name is unique within its object, and no member is named `__proto__`, `constructor` or
 * `prototype`.
 *
 * Why: JSON.parse keeps the *last* of two equal names, other parsers keep the first or refuse,
 * so a signed payload with `"id":"a1","id":"a2"` would mean two different messages to two
 * verifiers of the same bytes. The three reserved names are JavaScript's prototype keys
 * (`__proto__` on an object, `constructor.prototype` through it); no message of the protocol
 * has a member of those names (src/protocol/messages.ts, docs/protocol.md §Messages), so
 * refusing them costs nothing and keeps payloads away from prototype pollution in any code,
 * ours or a device's, that copies members around.
 *
 * Pure, and never throws. One pass over the text with a tiny tokenizer: a stack of open
 * containers, each object with the Set of its names so far; no regex, no recursion, so the
 * time is linear and deep nesting cannot overflow the call stack. It does not validate JSON
 * (run JSON.parse too, first); on invalid text it still ends and still does not throw.
 * Names are compared after their escapes are decoded, so `"id"` and `"\u0069d"` are one name.
 */

/** The names no object may have. */
export const RESERVED_MEMBER_NAMES: ReadonlySet<string> = new Set(["__proto__", "constructor", "prototype"]);

export interface NameProblem {
  readonly kind: "duplicate" | "reserved";
  /** The member name, escapes decoded. */
  readonly name: string;
  /** Where the object holding it sits: member names and array indices from the top; [] is the top level. */
  readonly path: readonly (string | number)[];
}

export interface NameReport {
  /** The first problem in text order, or null when every object keeps the rules. */
  readonly first: NameProblem | null;
  /** Every name that occurs more than once in the top-level object (a scan goes on past the first problem for this). */
  readonly repeatedAtTop: ReadonlySet<string>;
}

interface Frame {
  readonly parent: Frame | null;
  /** This container's place in its parent: a member name, an array index, or null at the top. */
  readonly key: string | number | null;
  /** The names seen so far, for an object; null for an array. */
  readonly names: Set<string> | null;
  /** Object: the next string is a member name. Array: unused. */
  expectName: boolean;
  /** Array: the index of the current element. Object: unused. */
  index: number;
  /** Object: the last member name, the key of a container that opens as its value. */
  lastName: string;
}

const QUOTE = 0x22;
const BACKSLASH = 0x5c;

/** The problem of a text as a short English phrase for an error detail. */
export function describeNameProblem(p: NameProblem): string {
  const where = p.path.length === 0 ? "" : ` in ${p.path.map((k, i) => (typeof k === "number" ? `[${k}]` : i === 0 ? k : `.${k}`)).join("")}`;
  return p.kind === "duplicate" ? `duplicate member name ${JSON.stringify(p.name)}${where}` : `member name ${JSON.stringify(p.name)}${where} is not allowed`;
}

/** Checks every object of a JSON text against the member-name rules. Never throws. */
export function checkMemberNames(text: string): NameReport {
  let first: NameProblem | null = null;
  const repeatedAtTop = new Set<string>();
  let top: Frame | null = null;
  let depth = 0;
  const report = (kind: NameProblem["kind"], name: string, frame: Frame) => {
    if (kind === "duplicate" && depth === 1) repeatedAtTop.add(name);
    if (first === null) first = { kind, name, path: pathOf(frame) };
  };

  const n = text.length;
  for (let i = 0; i < n; i++) {
    const c = text.charCodeAt(i);
    if (c === QUOTE) {
      const start = i + 1;
      let escaped = false;
      for (i = start; i < n; i++) {
        const d = text.charCodeAt(i);
        if (d === QUOTE) break;
        if (d === BACKSLASH) {
          escaped = true;
          i++; // the escaped character, a quote or a backslash included, cannot end the string
        }
      }
      if (top === null || top.names === null || !top.expectName) continue; // a value string
      const name = escaped ? decodeEscapes(text.slice(start, Math.min(i, n))) : text.slice(start, i);
      top.expectName = false;
      top.lastName = name;
      if (RESERVED_MEMBER_NAMES.has(name)) report("reserved", name, top);
      if (top.names.has(name)) report("duplicate", name, top);
      else top.names.add(name);
    } else if (c === 0x7b /* { */ || c === 0x5b /* [ */) {
      const key: string | number | null = top === null ? null : top.names === null ? top.index : top.lastName;
      top = { parent: top, key, names: c === 0x7b ? new Set() : null, expectName: c === 0x7b, index: 0, lastName: "" };
      depth++;
    } else if (c === 0x7d /* } */ || c === 0x5d /* ] */) {
      if (top !== null) {
        top = top.parent;
        depth--;
      }
    } else if (c === 0x2c /* , */ && top !== null) {
      if (top.names === null) top.index++;
      else top.expectName = true;
    }
    // Anything else (colons, numbers, literals, whitespace) says nothing about names.
  }
  return { first, repeatedAtTop };
}

/** The first problem of a JSON text, or null. Never throws. */
export function firstNameProblem(text: string): NameProblem | null {
  return checkMemberNames(text).first;
}

function pathOf(frame: Frame): (string | number)[] {
  const path: (string | number)[] = [];
  for (let f: Frame | null = frame; f !== null && f.key !== null; f = f.parent) path.push(f.key);
  return path.reverse();
}

const SIMPLE_ESCAPES: Readonly<Record<string, string>> = { '"': '"', "\\": "\\", "/": "/", b: "\b", f: "\f", n: "\n", r: "\r", t: "\t" };

/** Undoes JSON string escapes. On a broken escape (invalid JSON) it keeps the characters as they are. */
function decodeEscapes(raw: string): string {
  let out = "";
  for (let i = 0; i < raw.length; i++) {
    const ch = raw[i]!;
    if (ch !== "\\" || i + 1 >= raw.length) {
      out += ch;
      continue;
    }
    const e = raw[i + 1]!;
    const hex = raw.slice(i + 2, i + 6);
    if (e === "u" && /^[0-9a-fA-F]{4}$/.test(hex)) {
      // One UTF-16 code unit each: a surrogate pair written as two escapes joins up again here.
      out += String.fromCharCode(parseInt(hex, 16));
      i += 5;
    } else {
      out += SIMPLE_ESCAPES[e] ?? "\\" + e;
      i += 1;
    }
  }
  return out;
}
