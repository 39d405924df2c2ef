/**
 * src/crypto/encoding.ts has two paths: Node's Buffer (the broker, the simulator) and btoa/atob
 * (a page, where Buffer does not exist). A page and the broker must agree on every byte, so the
 * page's path is held to Buffer's for random bytes, and the module is loaded once without Buffer
 * to see that it then takes that path.
 */
import fc from "fast-check";
import { afterEach, describe, expect, it, vi } from "vitest";
import { fromBase64, fromBase64Portable, toBase64, toBase64Portable } from "../../src/crypto/encoding.ts";

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
