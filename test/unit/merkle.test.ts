// src/core/merkle.ts against a second implementation written here straight from RFC 6962 §2.1's
// recursive definitions (MTH, PATH, PROOF/SUBPROOF) over lists of entries, and against
// certificate-transparency's published test tree.
import { createHash } from "node:crypto";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  consistencyProof,
  EMPTY_ROOT,
  headSignedBytes,
  inclusionPath,
  leafHash,
  nodeHash,
  rootOf,
  subtreeFromComplete,
  verifyConsistency,
  verifyInclusion,
  type SubtreeHash,
} from "../../src/core/merkle.ts";

// ---- The reference: RFC 6962 §2.1, recursion on lists, node:crypto's SHA-256. ----
const sha = (...parts: Uint8Array[]): Buffer => createHash("sha256").update(Buffer.concat(parts)).digest();
const ONE = Uint8Array.of(1);
const ZERO = Uint8Array.of(0);
function k(n: number): number {
  let p = 1;
  while (p * 2 < n) p *= 2;
  return p;
}
function MTH(D: readonly Uint8Array[]): Buffer {
  const n = D.length;
  if (n === 0) return sha();
  if (n === 1) return sha(ZERO, D[0]!);
  return sha(ONE, MTH(D.slice(0, k(n))), MTH(D.slice(k(n))));
}
function PATH(m: number, D: readonly Uint8Array[]): Buffer[] {
  const n = D.length;
  if (n === 1) return [];
  const s = k(n);
  return m < s ? [...PATH(m, D.slice(0, s)), MTH(D.slice(s))] : [...PATH(m - s, D.slice(s)), MTH(D.slice(0, s))];
}
function SUBPROOF(m: number, D: readonly Uint8Array[], b: boolean): Buffer[] {
  const n = D.length;
  if (m === n) return b ? [] : [MTH(D)];
  const s = k(n);
  return m <= s ? [...SUBPROOF(m, D.slice(0, s), b), MTH(D.slice(s))] : [...SUBPROOF(m - s, D.slice(s), false), MTH(D.slice(0, s))];
}
const PROOF = (m: number, D: readonly Uint8Array[]): Buffer[] => SUBPROOF(m, D, true);

// Reference verifiers: undo PATH and SUBPROOF's recursion, taking proof hashes from the end.
function refRootFromPath(m: number, n: number, leaf: Uint8Array, path: readonly Uint8Array[]): Uint8Array | null {
  if (n === 1) return path.length === 0 ? leaf : null;
  if (path.length === 0) return null;
  const s = k(n);
  const last = path[path.length - 1]!;
  const rest = path.slice(0, -1);
  if (m < s) {
    const left = refRootFromPath(m, s, leaf, rest);
    return left === null ? null : sha(ONE, left, last);
  }
  const right = refRootFromPath(m - s, n - s, leaf, rest);
  return right === null ? null : sha(ONE, last, right);
}
function refVerifyConsistency(m: number, n: number, root1: Uint8Array, root2: Uint8Array, proof: readonly Uint8Array[]): boolean {
  // Returns [the old tree's part, the new tree's part, hashes consumed] for SUBPROOF(m, D[n], b).
  const undo = (m: number, n: number, b: boolean, end: number): [Uint8Array, Uint8Array, number] | null => {
    if (m === n) {
      if (b) return [root1, root1, 0];
      return end > 0 ? [proof[end - 1]!, proof[end - 1]!, 1] : null;
    }
    if (end === 0) return null;
    const h = proof[end - 1]!;
    const s = k(n);
    if (m <= s) {
      const inner = undo(m, s, b, end - 1);
      return inner === null ? null : [inner[0], sha(ONE, inner[1], h), inner[2] + 1];
    }
    const inner = undo(m - s, n - s, false, end - 1);
    return inner === null ? null : [sha(ONE, h, inner[0]), sha(ONE, h, inner[1]), inner[2] + 1];
  };
  const r = undo(m, n, true, proof.length);
  return r !== null && r[2] === proof.length && hex(r[0]) === hex(root1) && hex(r[1]) === hex(root2);
}

const hex = (b: Uint8Array): string => Buffer.from(b).toString("hex");
const hexes = (bs: readonly Uint8Array[]): string[] => bs.map(hex);
const entriesOf = (n: number): Uint8Array[] => Array.from({ length: n }, (_, i) => new TextEncoder().encode(`{"index":${i}}`));
const subtreeOver = (leaves: readonly Uint8Array[]): SubtreeHash => (start, size) => rootOf(leaves.slice(start, start + size));

const MAX = 70;
const D = entriesOf(MAX);
const LEAVES = D.map(leafHash);
const SUB = subtreeOver(LEAVES);
const ROOTS = Array.from({ length: MAX + 1 }, (_, n) => MTH(D.slice(0, n)));

describe("merkle hashes", () => {
  it("hashes a leaf and a node with the RFC's 0x00 and 0x01 prefixes, and the empty tree as SHA-256 of nothing", () => {
    expect(hex(leafHash(D[3]!))).toBe(hex(sha(ZERO, D[3]!)));
    expect(hex(nodeHash(LEAVES[0]!, LEAVES[1]!))).toBe(hex(sha(ONE, LEAVES[0]!, LEAVES[1]!)));
    expect(hex(EMPTY_ROOT)).toBe("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  });

  it("computes the same root as the recursive MTH for every size up to 70", () => {
    for (let n = 0; n <= MAX; n++) expect(hex(rootOf(LEAVES.slice(0, n))), `size ${n}`).toBe(hex(ROOTS[n]!));
  });

  it("answers every subtree a proof needs from complete subtrees alone", () => {
    const complete = (level: number, pos: number) => rootOf(LEAVES.slice(pos * 2 ** level, (pos + 1) * 2 ** level));
    const fromComplete = subtreeFromComplete(complete);
    for (let n = 1; n <= MAX; n++) expect(hex(fromComplete(0, n)), `size ${n}`).toBe(hex(ROOTS[n]!));
    // The right part of a split, which is what proofs ask for: [k, n) with k a power of two.
    expect(hex(fromComplete(64, 6))).toBe(hex(MTH(D.slice(64, 70))));
    expect(hex(fromComplete(48, 13))).toBe(hex(MTH(D.slice(48, 61))));
    expect(() => fromComplete(3, 2)).toThrow(/not aligned/);
  });
});

describe("inclusion proofs (RFC 9162 §2.1.3)", () => {
  it("generates the RFC's PATH for every index of every size up to 70, and it verifies", () => {
    for (let n = 1; n <= MAX; n++) {
      for (let m = 0; m < n; m++) {
        const path = inclusionPath(m, n, SUB);
        expect(hexes(path), `PATH(${m}, D[${n}])`).toEqual(hexes(PATH(m, D.slice(0, n))));
        expect(verifyInclusion(LEAVES[m]!, m, n, path, ROOTS[n]!), `verify ${m} in ${n}`).toBe(true);
      }
    }
  });

  it("rejects a path with any hash altered, dropped, or added", () => {
    fc.assert(
      fc.property(fc.integer({ min: 2, max: MAX }), fc.nat(), fc.nat(), fc.integer({ min: 0, max: 255 }), (n, mi, pi, bit) => {
        const m = mi % n;
        const path = PATH(m, D.slice(0, n));
        const p = pi % path.length;
        const altered = path.map((h, i) => (i === p ? flip(h, bit) : h));
        expect(verifyInclusion(LEAVES[m]!, m, n, altered, ROOTS[n]!)).toBe(false);
        expect(verifyInclusion(LEAVES[m]!, m, n, path.slice(0, -1), ROOTS[n]!)).toBe(false);
        expect(verifyInclusion(LEAVES[m]!, m, n, [...path, path[0]!], ROOTS[n]!)).toBe(false);
        expect(verifyInclusion(flip(LEAVES[m]!, bit), m, n, path, ROOTS[n]!)).toBe(false);
        expect(verifyInclusion(LEAVES[m]!, m, n, path, flip(ROOTS[n]!, bit))).toBe(false);
      }),
    );
  });

  it("rejects a valid path presented with another index of the same tree", () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: MAX }), fc.nat(), fc.nat(), (n, mi, oi) => {
        const m = mi % n;
        const other = oi % (n + 3);
        if (other !== m) expect(verifyInclusion(LEAVES[m]!, other, n, PATH(m, D.slice(0, n)), ROOTS[n]!)).toBe(false);
      }),
    );
  });

  it("decides any claimed index and size exactly as the RFC 6962 recursion does", () => {
    // The root does not commit to the size: leaf 0's path in a tree of 65 also proves it in a
    // claimed tree of 66 (same shape along the path). So the property is agreement with the
    // reference, which also fails every claimed size that changes the path's shape.
    fc.assert(
      fc.property(fc.integer({ min: 1, max: MAX }), fc.nat(), fc.integer({ min: 0, max: MAX + 5 }), fc.integer({ min: 0, max: MAX + 5 }), (n, mi, claimedIndex, claimedSize) => {
        const m = mi % n;
        const path = PATH(m, D.slice(0, n));
        const expected = claimedIndex < claimedSize && hex(refRootFromPath(claimedIndex, claimedSize, LEAVES[m]!, path) ?? new Uint8Array()) === hex(ROOTS[n]!);
        expect(verifyInclusion(LEAVES[m]!, claimedIndex, claimedSize, path, ROOTS[n]!)).toBe(expected);
      }),
    );
    expect(verifyInclusion(LEAVES[0]!, 0, 64, PATH(0, D.slice(0, 65)), ROOTS[65]!)).toBe(false);
    expect(verifyInclusion(LEAVES[64]!, 64, 66, PATH(64, D.slice(0, 65)), ROOTS[65]!)).toBe(false);
  });

  it("rejects an index at or past the tree size, and a negative one", () => {
    expect(verifyInclusion(LEAVES[0]!, 0, 0, [], EMPTY_ROOT)).toBe(false);
    expect(verifyInclusion(LEAVES[5]!, 5, 5, PATH(4, D.slice(0, 5)), ROOTS[5]!)).toBe(false);
    expect(verifyInclusion(LEAVES[0]!, -1, 5, PATH(0, D.slice(0, 5)), ROOTS[5]!)).toBe(false);
    expect(() => inclusionPath(5, 5, SUB)).toThrow();
  });
});

describe("consistency proofs (RFC 9162 §2.1.4)", () => {
  it("generates the RFC's PROOF for every pair of sizes up to 70, and it verifies", () => {
    for (let n = 1; n <= MAX; n++) {
      for (let m = 1; m <= n; m++) {
        const proof = consistencyProof(m, n, SUB);
        expect(hexes(proof), `PROOF(${m}, D[${n}])`).toEqual(hexes(PROOF(m, D.slice(0, n))));
        expect(verifyConsistency(m, n, ROOTS[m]!, ROOTS[n]!, proof), `verify ${m} → ${n}`).toBe(true);
      }
    }
  });

  it("accepts the empty tree as a prefix of any tree, with an empty proof only", () => {
    expect(verifyConsistency(0, 7, EMPTY_ROOT, ROOTS[7]!, [])).toBe(true);
    expect(verifyConsistency(0, 7, EMPTY_ROOT, ROOTS[7]!, [ROOTS[7]!])).toBe(false);
    expect(verifyConsistency(0, 7, ROOTS[1]!, ROOTS[7]!, [])).toBe(false);
  });

  it("rejects a proof with any hash altered, dropped, or added, or either root altered", () => {
    fc.assert(
      fc.property(fc.integer({ min: 2, max: MAX }), fc.nat(), fc.nat(), fc.integer({ min: 0, max: 255 }), (n, mi, pi, bit) => {
        const m = 1 + (mi % (n - 1)); // 1 ≤ m < n: a proof is never empty
        const proof = PROOF(m, D.slice(0, n));
        const p = pi % proof.length;
        const altered = proof.map((h, i) => (i === p ? flip(h, bit) : h));
        expect(verifyConsistency(m, n, ROOTS[m]!, ROOTS[n]!, altered)).toBe(false);
        expect(verifyConsistency(m, n, ROOTS[m]!, ROOTS[n]!, proof.slice(0, -1))).toBe(false);
        expect(verifyConsistency(m, n, ROOTS[m]!, ROOTS[n]!, [...proof, proof[0]!])).toBe(false);
        expect(verifyConsistency(m, n, flip(ROOTS[m]!, bit), ROOTS[n]!, proof)).toBe(false);
        expect(verifyConsistency(m, n, ROOTS[m]!, flip(ROOTS[n]!, bit), proof)).toBe(false);
      }),
    );
  });

  it("decides any claimed pair of sizes exactly as the RFC 6962 recursion does", () => {
    // As for inclusion, roots do not commit to sizes (PROOF(1, D[5]) also proves 1 → a claimed 6),
    // so the property is agreement with the reference verifier below.
    fc.assert(
      fc.property(fc.integer({ min: 2, max: MAX }), fc.nat(), fc.integer({ min: 0, max: MAX }), fc.integer({ min: 0, max: MAX }), (n, mi, m2, n2) => {
        const m = 1 + (mi % (n - 1));
        const proof = PROOF(m, D.slice(0, n));
        const expected = m2 >= 1 && m2 < n2 && refVerifyConsistency(m2, n2, ROOTS[m]!, ROOTS[n]!, proof);
        expect(verifyConsistency(m2, n2, ROOTS[m]!, ROOTS[n]!, proof), `claimed ${m2} → ${n2}`).toBe(expected);
      }),
    );
    expect(verifyConsistency(6, 8, ROOTS[5]!, ROOTS[8]!, PROOF(5, D.slice(0, 8)))).toBe(false);
    expect(verifyConsistency(5, 16, ROOTS[5]!, ROOTS[8]!, PROOF(5, D.slice(0, 8)))).toBe(false);
  });

  it("rejects a tree that shrank, and equal sizes with different roots or a non-empty proof", () => {
    expect(verifyConsistency(5, 4, ROOTS[5]!, ROOTS[4]!, PROOF(4, D.slice(0, 5)))).toBe(false);
    expect(verifyConsistency(5, 5, ROOTS[5]!, ROOTS[5]!, [])).toBe(true);
    expect(verifyConsistency(5, 5, ROOTS[5]!, ROOTS[6]!, [])).toBe(false);
    expect(verifyConsistency(5, 5, ROOTS[5]!, ROOTS[5]!, [ROOTS[5]!])).toBe(false);
    expect(verifyConsistency(3, 6, ROOTS[3]!, ROOTS[6]!, [])).toBe(false);
  });
});

describe("certificate-transparency's published test tree", () => {
  // merkle_tree_test.cc: the eight leaves and the roots of their first 1..8.
  const CT = ["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"].map((h) => Uint8Array.from(Buffer.from(h, "hex")));
  const CT_LEAVES = CT.map(leafHash);
  const CT_SUB = subtreeOver(CT_LEAVES);
  const ROOTS_CT = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
  ];

  it.each(ROOTS_CT.map((root, i) => [i + 1, root] as const))("has the published root for the first %i leaves", (n, root) => {
    expect(hex(rootOf(CT_LEAVES.slice(0, n)))).toBe(root);
  });

  it.each([
    [0, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7", "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e", "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]],
    [5, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b", "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0", "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]],
    [2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]],
    [1, 5, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d", "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e", "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]],
  ] as const)("has the published inclusion path of leaf %i in the tree of %i", (m, n, path) => {
    expect(hexes(inclusionPath(m, n, CT_SUB))).toEqual(path);
    expect(verifyInclusion(CT_LEAVES[m]!, m, n, path.map((h) => Uint8Array.from(Buffer.from(h, "hex"))), Buffer.from(ROOTS_CT[n - 1]!, "hex"))).toBe(true);
  });

  it.each([
    [1, 1, []],
    [1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7", "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e", "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]],
    [6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a", "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0", "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]],
    [2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e", "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]],
  ] as const)("has the published consistency proof from %i to %i leaves", (m, n, proof) => {
    expect(hexes(consistencyProof(m, n, CT_SUB))).toEqual(proof);
    const h = (x: string) => Uint8Array.from(Buffer.from(x, "hex"));
    expect(verifyConsistency(m, n, h(ROOTS_CT[m - 1]!), h(ROOTS_CT[n - 1]!), proof.map(h))).toBe(true);
  });
});

describe("headSignedBytes", () => {
  it("is the prefix, size, base64 root and time on their own lines", () => {
    const root = Uint8Array.from(Buffer.from(ROOTS[5]!));
    expect(new TextDecoder().decode(headSignedBytes(5, root, 1700000000123))).toBe(`hp-audit-head-v1\n5\n${Buffer.from(root).toString("base64")}\n1700000000123`);
    expect(new TextDecoder().decode(headSignedBytes(0, EMPTY_ROOT, 0))).toBe("hp-audit-head-v1\n0\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n0");
  });

  it("encodes any root as Node's base64 does", () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 32, maxLength: 32 }), (root) => {
        expect(new TextDecoder().decode(headSignedBytes(1, root, 1)).split("\n")[2]).toBe(Buffer.from(root).toString("base64"));
      }),
    );
  });
});

function flip(h: Uint8Array, bit: number): Uint8Array {
  const out = Uint8Array.from(h);
  out[(bit >> 3) % out.length]! ^= 1 << (bit & 7);
  return out;
}
