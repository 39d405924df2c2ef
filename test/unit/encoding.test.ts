/**
 * src/crypto/encoding.ts has two paths: Node's Buffer (the broker, the simulator) and btoa/atob
 * (a page, where Buffer does not exist). A page and the broker must agree on every byte, so the
 * page's path is held to Buffer's for random bytes, and the module is loaded once without Buffer
 * to see that it then takes that path.
 */
import fc from "fast-check";
import { afterEach, describe, expect, it, vi } from "vitest";
import { fromBase64, fromBase64Portable, toBase64, toBase64Portable, uuidV7 } from "../../src/crypto/encoding.ts";

/** Bytes, sometimes as a view into a larger buffer (byteOffset > 0), as subarray() gives them. */
const bytesArb = fc.oneof(
  fc.uint8Array({ maxLength: 300 }),
  fc.tuple(fc.uint8Array({ minLength: 1, maxLength: 300 }), fc.nat(), fc.nat()).map(([b, i, j]) => {
    const from = i % b.length;
    return b.subarray(from, from + (j % (b.length - from + 1)));
  }),
);

describe("base64 without Buffer (a page's path)", () => {
  afterEach(() => {
    vi.unstubAllGlobals();
  });

  it("encodes any bytes to exactly what Buffer encodes", () => {
    fc.assert(
      fc.property(bytesArb, (bytes) => {
        expect(toBase64Portable(bytes)).toBe(Buffer.from(bytes).toString("base64"));
        expect(toBase64Portable(bytes)).toBe(toBase64(bytes));
      }),
    );
  });

  it("decodes any strict base64 to exactly the bytes Buffer decodes", () => {
    fc.assert(
      fc.property(bytesArb, (bytes) => {
        const text = Buffer.from(bytes).toString("base64");
        expect(fromBase64Portable(text)).toEqual(new Uint8Array(Buffer.from(text, "base64")));
        expect(fromBase64Portable(text)).toEqual(fromBase64(text));
        expect(fromBase64Portable(text)).toEqual(Uint8Array.from(bytes));
      }),
    );
  });

  it("is the path toBase64 and fromBase64 take when there is no Buffer, with the same strictness", async () => {
    vi.stubGlobal("Buffer", undefined);
    // A second instance of the module, loaded while Buffer is absent, as in a page's bundle.
    const fresh = "../../src/crypto/encoding.ts?without-buffer";
    const page = (await import(/* @vite-ignore */ fresh)) as typeof import("../../src/crypto/encoding.ts");
    vi.unstubAllGlobals();
    const bytes = Uint8Array.from({ length: 256 }, (_, i) => 255 - i);
    const text = Buffer.from(bytes).toString("base64");
    expect(page.toBase64(bytes)).toBe(text);
    expect(page.fromBase64(text)).toEqual(bytes);
    // The pattern check runs before either path: atob would accept these, fromBase64 must not.
    for (const loose of ["AQI", "AQ I=", "AQI=\n", "AQ-_"]) expect(page.fromBase64(loose), loose).toBeNull();
  });
});

describe("uuidV7", () => {
  const V7 = /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
  const random = fc.uint8Array({ minLength: 10, maxLength: 10 });
  const ms = fc.integer({ min: 0, max: 2 ** 48 - 1 });

  it("puts the millisecond time in the first 48 bits, then version 7, the variant, and the 74 random bits (RFC 9562 §5.7)", () => {
    fc.assert(
      fc.property(ms, random, (t, r) => {
        const id = uuidV7(t, r);
        expect(id).toMatch(V7);
        const b = Buffer.from(id.replace(/-/g, ""), "hex");
        expect(b.readUIntBE(0, 6)).toBe(t);
        expect(b[6]! & 0x0f).toBe(r[0]! & 0x0f);
        expect(b[7]).toBe(r[1]);
        expect(b[8]! & 0x3f).toBe(r[2]! & 0x3f);
        expect(Buffer.from(b.subarray(9)).equals(Buffer.from(r.subarray(3)))).toBe(true);
      }),
    );
  });

  it("sorts as text in the order of its times, whatever the random bits", () => {
    fc.assert(
      fc.property(ms, ms, random, random, (a, b, ra, rb) => {
        if (a < b) expect(uuidV7(a, ra) < uuidV7(b, rb)).toBe(true);
        if (a > b) expect(uuidV7(a, ra) > uuidV7(b, rb)).toBe(true);
      }),
    );
  });
});
