import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { checkMemberNames, describeNameProblem, firstNameProblem, RESERVED_MEMBER_NAMES, type NameProblem } from "../../src/protocol/strict-json.ts";

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };
type Path = (string | number)[];

const dup = (name: string, path: Path = []): NameProblem => ({ kind: "duplicate", name, path });
const reserved = (name: string, path: Path = []): NameProblem => ({ kind: "reserved", name, path });

describe("firstNameProblem", () => {
  it.each<[string, string, NameProblem | null]>([
    ["a payload with unique names", '{"v":1,"type":"ping","id":"a1","body":{"echo":"hi"}}', null],
    ["a duplicate at the top level", '{"id":"a1","type":"ping","id":"a2"}', dup("id")],
    ["a duplicate nested in body", '{"id":"a1","body":{"amountMinor":1,"amountMinor":1000}}', dup("amountMinor", ["body"])],
    ["a duplicate in an object inside an array", '{"body":{"ids":[{"a":1},{"b":1,"b":2}]}}', dup("b", ["body", "ids", 1])],
    ["a duplicate in an object of a top-level array", '[1,[2,{"x":1,"x":1}]]', dup("x", [1, 1])],
    ["an escaped name equal to a plain one", '{"id":"a1","\\u0069d":"a2"}', dup("id")],
    ["two differently escaped spellings of one name", '{"\\u0069\\u0064":1,"i\\u0064":2}', dup("id")],
    ["a surrogate pair written escaped and literally", '{"\\ud83d\\ude00":1,"😀":2}', dup("😀")],
    ["names that differ only in an escaped quote", '{"a\\"":1,"a":2}', null],
    ["a name with an escaped backslash before the closing quote", '{"a\\\\":1,"a\\\\":2}', dup("a\\")],
    ["the same name in sibling objects", '{"a":{"id":1},"b":{"id":2},"c":[{"id":3},{"id":4}]}', null],
    ["the same name at two depths", '{"id":"a1","body":{"id":"a1","body":{"id":1}}}', null],
    ["a string value that holds JSON with a duplicate", '{"note":"{\\"a\\":1,\\"a\\":2}","a":"}{,:\\"a\\":"}', null],
    ["a string value with braces, colons and commas before a real name", '{"a":"x\\",\\"a\\":{","b":[",{"],"c":1}', null],
    ["__proto__ at the top level", '{"__proto__":{"admin":true}}', reserved("__proto__")],
    ["__proto__ deep in body", '{"body":{"items":[{"ok":1},{"__proto__":null}]}}', reserved("__proto__", ["body", "items", 1])],
    ["__proto__ written with escapes", '{"\\u005f_proto__":1}', reserved("__proto__")],
    ["constructor", '{"body":{"constructor":{"prototype":{}}}}', reserved("constructor", ["body"])],
    ["prototype", '{"a":[{"prototype":1}]}', reserved("prototype", ["a", 0])],
    ["__proto__ as a string value only", '{"key":"__proto__","list":["constructor","prototype"]}', null],
    ["an empty name once, then twice", '{"":1,"x":{"":2,"":3}}', dup("", ["x"])],
    ["the first of several problems", '{"body":{"k":1,"k":2},"id":"a","id":"b"}', dup("k", ["body"])],
    ["JSON that is not an object", '"just a string"', null],
  ])("%s", (_label, text, expected) => {
    expect(JSON.parse(text)).toBeDefined(); // every case is valid JSON: the rules are on top of it
    expect(firstNameProblem(text)).toEqual(expected);
  });

  it.each([
    ["a top-level id twice, after an earlier problem", '{"body":{"k":1,"k":2},"id":"a","id":"b"}', ["id"]],
    ["an id repeated only inside body", '{"id":"a","body":{"id":1,"id":2}}', []],
    ["an id once and a repeated type", '{"id":"a","type":"x","type":"y"}', ["type"]],
    ["a repeated name in an object of a top-level array", '[{"id":1,"id":2}]', []],
  ])("lists the names repeated in the top-level object: %s", (_label, text, expected) => {
    expect([...checkMemberNames(text).repeatedAtTop]).toEqual(expected);
  });

  it.each([
    "",
    "{",
    '{"a',
    '{"a\\',
    '{"\\u00',
    '{"\\uZZZZ":1,"\\uZZZZ":2}',
    "}}]]{",
    ',,,"a":"b"',
    '{"a":1}}}{"a":1,"a":2',
    "\uD800\uFFFF\u0000",
  ])("ends without throwing on text that is not JSON: %j", (text) => {
    expect(() => firstNameProblem(text)).not.toThrow();
  });

  it("takes time linear in the size, even 32768 levels deep (it does not recurse)", () => {
    const deep = "[".repeat(32_768) + "]".repeat(32_768);
    expect(firstNameProblem(deep)).toBeNull();
    const deepDup = '{"a":'.repeat(30_000) + '{"x":1,"x":2}' + "}".repeat(30_000);
    expect(firstNameProblem(deepDup)).toEqual(dup("x", Array<string>(30_000).fill("a")));
    const wide = "{" + Array.from({ length: 6000 }, (_, i) => `"k${i}":${i}`).join(",") + ',"k0":0}';
    expect(firstNameProblem(wide)).toEqual(dup("k0"));
  });

  it("describes problems for an error detail, with the place of the object", () => {
    expect(describeNameProblem(dup("id"))).toBe('duplicate member name "id"');
    expect(describeNameProblem(dup("b", ["body", "ids", 1]))).toBe('duplicate member name "b" in body.ids[1]');
    expect(describeNameProblem(reserved("__proto__", ["body"]))).toBe('member name "__proto__" in body is not allowed');
  });
});

/** True when some object in `v` has an own member with a reserved name. */
function hasReservedName(v: Json): boolean {
  if (Array.isArray(v)) return v.some(hasReservedName);
  if (v === null || typeof v !== "object") return false;
  return Object.keys(v).some((k) => RESERVED_MEMBER_NAMES.has(k) || hasReservedName(v[k]!));
}

/** Every object in `v` with its path, in the order JSON.stringify writes them. */
function objectsOf(v: Json, path: Path = []): { node: { [k: string]: Json }; path: Path }[] {
  if (Array.isArray(v)) return v.flatMap((x, i) => objectsOf(x, [...path, i]));
  if (v === null || typeof v !== "object") return [];
  return [{ node: v, path }, ...Object.keys(v).flatMap((k) => objectsOf(v[k]!, [...path, k]))];
}

/** A name written with every character as a \uXXXX escape: the same name to any JSON parser. */
const escapedName = (name: string) => '"' + [...Array(name.length).keys()].map((i) => "\\u" + name.charCodeAt(i).toString(16).padStart(4, "0")).join("") + '"';

/**
 * JSON.stringify, except that `target` gets the member `name` written twice (once if it already
 * has it): the first copy at `at` among its members, the second at the end, spelled with escapes
 * when `escape` is set.
 */
function stringifyWithDuplicate(v: Json, target: object, name: string, extra: Json, at: number, escape: boolean): string {
  if (Array.isArray(v)) return "[" + v.map((x) => stringifyWithDuplicate(x, target, name, extra, at, escape)).join(",") + "]";
  if (v === null || typeof v !== "object") return JSON.stringify(v);
  const members = Object.keys(v).map((k) => JSON.stringify(k) + ":" + stringifyWithDuplicate(v[k]!, target, name, extra, at, escape));
  if (v === target) {
    if (!Object.hasOwn(v, name)) members.splice(at % (members.length + 1), 0, JSON.stringify(name) + ":" + JSON.stringify(extra));
    members.push((escape ? escapedName(name) : JSON.stringify(name)) + ":" + JSON.stringify(extra));
  }
  return "{" + members.join(",") + "}";
}

/** JSON values whose member names are often the reserved ones, `id`, or need escapes. */
const namedJson: fc.Arbitrary<Json> = fc.letrec<{ value: Json }>((tie) => ({
  value: fc.oneof(
    { depthSize: "small", withCrossShrink: true },
    fc.oneof(fc.constant(null), fc.boolean(), fc.integer(), fc.string()),
    fc.array(tie("value"), { maxLength: 4 }),
    fc
      .array(fc.tuple(fc.oneof(fc.constantFrom("id", "a", "", "__proto__", "constructor", "prototype", '"', "\\", "\n"), fc.string({ unit: "binary" })), tie("value")), { maxLength: 5 })
      .map((entries) => Object.fromEntries(entries)),
  ),
})).value;

describe("firstNameProblem on generated JSON", () => {
  it("finds nothing in JSON.stringify output unless a member name is reserved, then names one", () => {
    fc.assert(
      fc.property(fc.oneof(fc.jsonValue() as fc.Arbitrary<Json>, namedJson), (v) => {
        const problem = firstNameProblem(JSON.stringify(v));
        if (hasReservedName(v)) expect(problem).toMatchObject({ kind: "reserved", name: expect.toSatisfy((n: string) => RESERVED_MEMBER_NAMES.has(n)) });
        else expect(problem).toBeNull();
      }),
      { numRuns: 2000 },
    );
  });

  it("always finds a member name written twice into any object, with that object's path", () => {
    const allowed = fc.string({ unit: "binary" }).filter((n) => !RESERVED_MEMBER_NAMES.has(n));
    fc.assert(
      fc.property(fc.oneof(fc.jsonValue() as fc.Arbitrary<Json>, namedJson), fc.nat(), fc.nat(), fc.oneof(allowed, fc.constantFrom("id", "a", "")), fc.jsonValue() as fc.Arbitrary<Json>, fc.boolean(), (value, pick, at, name, extra, escape) => {
        fc.pre(!hasReservedName(value) && !hasReservedName(extra));
        const objects = objectsOf(value);
        const root = objects.length > 0 ? value : { wrapped: value };
        const all = objectsOf(root);
        const { node, path } = all[pick % all.length]!;
        const text = stringifyWithDuplicate(root, node, name, extra, at, escape);
        expect(() => JSON.parse(text)).not.toThrow();
        const report = checkMemberNames(text);
        expect(report.first).toEqual(dup(name, path));
        expect(report.repeatedAtTop.has(name)).toBe(path.length === 0);
      }),
      { numRuns: 2000 },
    );
  });
});
