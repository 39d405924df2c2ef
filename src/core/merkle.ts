/**
 * The audit log's Merkle tree: RFC 9162 §2.1 with SHA-256 (docs/protocol.md §Audit log).
 *
 *   leaf = SHA-256(0x00 ‖ entry bytes)      node = SHA-256(0x01 ‖ left ‖ right)
 *   root of the empty tree = SHA-256("")    MTH split: k = the largest power of two < n
 *
 * Pure: no I/O. Proof generation takes `subtree(start, size)`, the hash of the leaves
 * [start, start + size), so the store can answer it from the complete-subtree hashes it keeps
 * (src/store/audit.ts) instead of rehashing the whole log; `subtreeFromComplete` builds that
 * function from a lookup of complete (power-of-two, aligned) subtrees. Verification follows the
 * RFC's iterative procedures (§2.1.3.2, §2.1.4.2) word for word, so it can be checked against the
 * recursive definitions (test/unit/merkle.test.ts does).
 *
 * Sizes and indexes are plain numbers (exact up to 2^53): shifts are written as divisions
 * because JavaScript's bit operators truncate to 32 bits.
 */
import { sha256 } from "@noble/hashes/sha2.js";

export const HASH_BYTES = 32;

/** The hash of the leaves [start, start + size) of a tree; size ≥ 1. */
export type SubtreeHash = (start: number, size: number) => Uint8Array;

/** The hash of the complete subtree of 2^level leaves starting at leaf pos·2^level. */
export type CompleteSubtreeHash = (level: number, pos: number) => Uint8Array;

/** RFC 9162 §2.1.1: the root of the empty tree, SHA-256 of the empty string. */
export const EMPTY_ROOT: Uint8Array = sha256(new Uint8Array(0));

/** RFC 9162 §2.1.1 leaf hash: SHA-256(0x00 ‖ entry). */
export function leafHash(entry: Uint8Array): Uint8Array {
  const buf = new Uint8Array(entry.length + 1);
  buf.set(entry, 1);
  return sha256(buf);
}

/** RFC 9162 §2.1.1 interior node hash: SHA-256(0x01 ‖ left ‖ right). */
export function nodeHash(left: Uint8Array, right: Uint8Array): Uint8Array {
  const buf = new Uint8Array(1 + left.length + right.length);
  buf[0] = 1;
  buf.set(left, 1);
  buf.set(right, 1 + left.length);
  return sha256(buf);
}

/** The largest power of two strictly less than n (n ≥ 2): the MTH split point. */
export function splitPoint(n: number): number {
  assertSize(n, 2);
  let k = 1;
  while (k * 2 < n) k *= 2;
  return k;
}

/**
 * The root of a tree of the given leaf hashes (MTH). Iterative: a stack of complete subtrees,
 * merged as each leaf completes them, then folded right to left, which is what the recursive
 * split computes (the right part of every split is the rest of the binary decomposition of n).
 */
export function rootOf(leafHashes: readonly Uint8Array[]): Uint8Array {
  if (leafHashes.length === 0) return EMPTY_ROOT;
  const stack: Uint8Array[] = [];
  for (let i = 0; i < leafHashes.length; i++) {
    let h = leafHashes[i]!;
    // Leaf i completes one subtree per trailing one bit of i.
    for (let n = i; n % 2 === 1; n = (n - 1) / 2) h = nodeHash(stack.pop()!, h);
    stack.push(h);
  }
  let r = stack.pop()!;
  while (stack.length > 0) r = nodeHash(stack.pop()!, r);
  return r;
}

/**
 * A SubtreeHash from a lookup of complete subtrees. Any subtree a proof asks for starts at a
 * multiple of a power of two at least its size, so it splits into the complete subtrees of its
 * size's binary decomposition, largest first, and hashes as their right-to-left fold.
 */
export function subtreeFromComplete(complete: CompleteSubtreeHash): SubtreeHash {
  return (start, size) => {
    assertSize(size, 1);
    const parts = completeSubtrees(start, size, complete);
    let r = parts.pop()!;
    while (parts.length > 0) r = nodeHash(parts.pop()!, r);
    return r;
  };
}

/**
 * The complete subtrees that make up the leaves [start, start + size), largest first: those of
 * size's binary decomposition. With start 0, the right edge an append extends (src/store/audit.ts).
 */
export function completeSubtrees(start: number, size: number, complete: CompleteSubtreeHash): Uint8Array[] {
  assertSize(size, 0);
  const parts: Uint8Array[] = [];
  let at = start;
  for (let level = Math.floor(Math.log2(Math.max(size, 1))) + 1; level >= 0; level--) {
    const width = 2 ** level;
    if (width > size - (at - start)) continue;
    if (at % width !== 0) throw new Error(`subtree [${start}, ${start + size}) is not aligned to the tree`);
    parts.push(complete(level, at / width));
    at += width;
  }
  return parts;
}

/** RFC 9162 §2.1.3.1: the inclusion path of leaf `index` in the tree of the first `treeSize` leaves. */
export function inclusionPath(index: number, treeSize: number, subtree: SubtreeHash): Uint8Array[] {
  assertSize(treeSize, 1);
  if (!Number.isSafeInteger(index) || index < 0 || index >= treeSize) throw new Error(`leaf ${index} is not in a tree of ${treeSize}`);
  const path: Uint8Array[] = [];
  // PATH(m, D[start:start+n]), unrolled from the root down; the path lists siblings leaf-first.
  let start = 0;
  let n = treeSize;
  let m = index;
  while (n > 1) {
    const k = splitPoint(n);
    if (m < k) {
      path.push(subtree(start + k, n - k));
      n = k;
    } else {
      path.push(subtree(start, k));
      start += k;
      m -= k;
      n -= k;
    }
  }
  return path.reverse();
}

/** RFC 9162 §2.1.4.1: the consistency proof between the trees of the first `m` and `n` leaves (0 < m ≤ n). */
export function consistencyProof(m: number, n: number, subtree: SubtreeHash): Uint8Array[] {
  assertSize(m, 1);
  assertSize(n, m);
  const proof: Uint8Array[] = [];
  // SUBPROOF(m, D[start:start+n], b), unrolled.
  let start = 0;
  let complete = true;
  while (m !== n) {
    const k = splitPoint(n);
    if (m <= k) {
      proof.push(subtree(start + k, n - k));
      n = k;
    } else {
      proof.push(subtree(start, k));
      start += k;
      m -= k;
      n -= k;
      complete = false;
    }
  }
  if (!complete) proof.push(subtree(start, m));
  return proof.reverse();
}

/** RFC 9162 §2.1.3.2: does `path` lead from `leaf` at `index` to `root` in a tree of `treeSize`? */
export function verifyInclusion(leaf: Uint8Array, index: number, treeSize: number, path: readonly Uint8Array[], root: Uint8Array): boolean {
  if (!Number.isSafeInteger(index) || !Number.isSafeInteger(treeSize) || index < 0) return false;
  // 1. leaf_index ≥ tree_size fails.
  if (index >= treeSize) return false;
  // 2. fn = leaf_index, sn = tree_size − 1.  3. r = hash.
  let fn = index;
  let sn = treeSize - 1;
  let r = leaf;
  // 4. For each p in the path:
  for (const p of path) {
    // a. sn = 0 fails (the path is too long).
    if (sn === 0) return false;
    if (fn % 2 === 1 || fn === sn) {
      // b. r = HASH(0x01 ‖ p ‖ r); if LSB(fn) is not set, shift until it is or fn = 0.
      r = nodeHash(p, r);
      while (fn % 2 === 0 && fn !== 0) {
        fn /= 2;
        sn = Math.floor(sn / 2);
      }
    } else {
      // c. r = HASH(0x01 ‖ r ‖ p).
      r = nodeHash(r, p);
    }
    // d. shift once.
    fn = Math.floor(fn / 2);
    sn = Math.floor(sn / 2);
  }
  // 5. sn = 0 and r = root.
  return sn === 0 && equalBytes(r, root);
}

/** RFC 9162 §2.1.4.2: is the tree of `size2` with `root2` an append-only extension of the tree of `size1` with `root1`? */
export function verifyConsistency(size1: number, size2: number, root1: Uint8Array, root2: Uint8Array, path: readonly Uint8Array[]): boolean {
  if (!Number.isSafeInteger(size1) || !Number.isSafeInteger(size2) || size1 < 0 || size2 < size1) return false;
  // Equal sizes: nothing to prove, the roots must agree (as RFC 9162 §2.1.4 implementations do).
  if (size1 === size2) return path.length === 0 && equalBytes(root1, root2);
  // Every tree extends the empty one.
  if (size1 === 0) return path.length === 0 && equalBytes(root1, EMPTY_ROOT);
  // 1. An empty path fails.
  if (path.length === 0) return false;
  // 2. If first is an exact power of 2, prepend first_hash.
  const proof = isPowerOfTwo(size1) ? [root1, ...path] : path;
  // 3. fn = first − 1, sn = second − 1.
  let fn = size1 - 1;
  let sn = size2 - 1;
  // 4. While LSB(fn) is set, shift both.
  while (fn % 2 === 1) {
    fn = (fn - 1) / 2;
    sn = Math.floor(sn / 2);
  }
  // 5. fr = sr = the first value.
  let fr = proof[0]!;
  let sr = proof[0]!;
  // 6. For each subsequent value c:
  for (let i = 1; i < proof.length; i++) {
    const c = proof[i]!;
    // a. sn = 0 fails.
    if (sn === 0) return false;
    if (fn % 2 === 1 || fn === sn) {
      // b. fr = HASH(0x01 ‖ c ‖ fr), sr = HASH(0x01 ‖ c ‖ sr); if LSB(fn) is not set, shift until it is or fn = 0.
      fr = nodeHash(c, fr);
      sr = nodeHash(c, sr);
      while (fn % 2 === 0 && fn !== 0) {
        fn /= 2;
        sn = Math.floor(sn / 2);
      }
    } else {
      // Otherwise sr = HASH(0x01 ‖ sr ‖ c).
      sr = nodeHash(sr, c);
    }
    // c. shift once.
    fn = Math.floor(fn / 2);
    sn = Math.floor(sn / 2);
  }
  // 7. fr = first_hash, sr = second_hash, sn = 0.
  return sn === 0 && equalBytes(fr, root1) && equalBytes(sr, root2);
}

const HEAD_PREFIX = "hp-audit-head-v1\n";
const utf8 = new TextEncoder();

/**
 * The bytes a signed tree head's signature covers (docs/protocol.md §Audit log):
 *   "hp-audit-head-v1\n" + treeSize + "\n" + base64(rootHash) + "\n" + timestampMs
 * The prefix keeps a head signature apart from envelopes ("{") and connect tokens ("hp-connect-v1").
 */
export function headSignedBytes(treeSize: number, rootHash: Uint8Array, timestampMs: number): Uint8Array {
  assertSize(treeSize, 0);
  if (!Number.isSafeInteger(timestampMs) || timestampMs < 0) throw new Error(`a head's timestamp is a non-negative integer, got ${timestampMs}`);
  if (rootHash.length !== HASH_BYTES) throw new Error(`a root hash is ${HASH_BYTES} bytes, got ${rootHash.length}`);
  return utf8.encode(`${HEAD_PREFIX}${treeSize}\n${base64(rootHash)}\n${timestampMs}`);
}

export function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i]! ^ b[i]!;
  return diff === 0;
}

function isPowerOfTwo(n: number): boolean {
  let k = 1;
  while (k < n) k *= 2;
  return k === n;
}

function assertSize(n: number, min: number): void {
  if (!Number.isSafeInteger(n) || n < min) throw new Error(`tree size ${n} is not an integer ≥ ${min}`);
}

// Standard base64 with padding. btoa is a global in Node and in a page alike, so the core need not
// import src/crypto/encoding.ts (which it may not) to give a head the same bytes in both.
function base64(bytes: Uint8Array): string {
  return btoa(String.fromCharCode(...bytes));
}
