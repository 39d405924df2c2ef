import fc from "fast-check";
import nacl from "tweetnacl";
import { describe, expect, it } from "vitest";
import { generateKeyPair, keyPairFromSeed, Signer, verify } from "../../src/crypto/ed25519.ts";
import { toBase64 } from "../../src/crypto/encoding.ts";
import { Keyring } from "../../src/crypto/keyring.ts";
import { makeToken, parseToken, tokenSignedBytes } from "../../src/protocol/token.ts";
import { deviceOfUpTopic, downTopic, mayPublish, maySubscribe, upTopic } from "../../src/protocol/topics.ts";

const hex = (h: string) => Uint8Array.from(Buffer.from(h, "hex"));
const toHex = (b: Uint8Array) => Buffer.from(b).toString("hex");
const utf8 = new TextEncoder();

/** nacl's 64-byte secret key (seed ‖ public key) for a seed. */
const naclSecret = (seed: Uint8Array) => nacl.sign.keyPair.fromSeed(seed).secretKey;

describe("Ed25519: node:crypto (Signer, verify) and tweetnacl agree", () => {
  // RFC 8032 §7.1, tests 1-3.
  const RFC8032 = [
    {
      name: "RFC 8032 test 1 (empty message)",
      seed: "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
      publicKey: "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
      message: "",
      signature: "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    },
    {
      name: "RFC 8032 test 2 (one byte)",
      seed: "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
      publicKey: "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
      message: "72",
      signature: "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    },
    {
      name: "RFC 8032 test 3 (two bytes)",
      seed: "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
      publicKey: "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
      message: "af82",
      signature: "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
    },
  ];

  it.each(RFC8032)("$name: both libraries derive the public key and signature of the RFC", ({ seed, publicKey, message, signature }) => {
    const pair = keyPairFromSeed(hex(seed));
    expect(toHex(pair.publicKey)).toBe(publicKey);
    expect(toHex(new Signer(pair).sign(hex(message)))).toBe(signature);
    expect(toHex(nacl.sign.detached(hex(message), naclSecret(hex(seed))))).toBe(signature);
    expect(verify(hex(publicKey), hex(message), hex(signature))).toBe(true);
    expect(nacl.sign.detached.verify(hex(message), hex(signature), hex(publicKey))).toBe(true);
  });

  const SEEDS = [
    ["all zero", new Uint8Array(32)],
    ["all 0xff", new Uint8Array(32).fill(0xff)],
    ["0, 1, 2, ... 31", Uint8Array.from({ length: 32 }, (_, i) => i)],
    ["RFC 8032 test 1", hex(RFC8032[0]!.seed)],
  ] as const;
  const MESSAGES = [new Uint8Array(0), utf8.encode('{"v":1,"type":"ping"}'), new Uint8Array(1000).fill(7), utf8.encode("hp-connect-v1\nd\n0\nnonce")];

  it.each(SEEDS)("seed %s: Signer and nacl.sign.detached make byte-identical signatures that each other verifies", (_label, seed) => {
    const pair = keyPairFromSeed(seed);
    expect(pair.publicKey).toEqual(nacl.sign.keyPair.fromSeed(seed).publicKey);
    const signer = new Signer(pair);
    for (const message of MESSAGES) {
      const ours = signer.sign(message);
      const theirs = nacl.sign.detached(message, naclSecret(seed));
      expect(toHex(ours)).toBe(toHex(theirs));
      expect(nacl.sign.detached.verify(message, ours, pair.publicKey)).toBe(true);
      expect(verify(pair.publicKey, message, theirs)).toBe(true);
    }
  });

  it("agrees with tweetnacl on arbitrary seeds and messages", () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 32, maxLength: 32 }), fc.uint8Array({ maxLength: 256 }), (seed, message) => {
        const pair = keyPairFromSeed(seed);
        const ours = new Signer(pair).sign(message);
        expect(toHex(ours)).toBe(toHex(nacl.sign.detached(message, naclSecret(seed))));
        expect(nacl.sign.detached.verify(message, ours, pair.publicKey)).toBe(true);
      }),
      // tweetnacl signs in pure JavaScript (~10 ms each); the fixed vectors above carry the weight.
      { numRuns: 25 },
    );
  });

  it("uses a generated key pair the same way tweetnacl does", () => {
    const pair = generateKeyPair();
    expect(pair.seed).toHaveLength(32);
    expect(pair.publicKey).toEqual(nacl.sign.keyPair.fromSeed(pair.seed).publicKey);
  });

  it("refuses a seed that is not 32 bytes", () => {
    expect(() => keyPairFromSeed(new Uint8Array(31))).toThrow(/32 bytes/);
    expect(() => keyPairFromSeed(new Uint8Array(64))).toThrow(/32 bytes/);
  });

  describe("verify", () => {
    const pair = keyPairFromSeed(hex(RFC8032[1]!.seed));
    const message = utf8.encode("pay 10");
    const signature = new Signer(pair).sign(message);
    const flipped = (b: Uint8Array, at: number) => {
      const c = Uint8Array.from(b);
      c[at] = c[at]! ^ 0x01;
      return c;
    };

    it.each([
      ["a 31-byte public key", pair.publicKey.subarray(0, 31), message, signature],
      ["a 33-byte public key", Uint8Array.of(...pair.publicKey, 0), message, signature],
      ["an empty public key", new Uint8Array(0), message, signature],
      ["a public key that is not a curve point", new Uint8Array(32).fill(0xff), message, signature],
      ["a 63-byte signature", pair.publicKey, message, signature.subarray(0, 63)],
      ["a 65-byte signature", pair.publicKey, message, Uint8Array.of(...signature, 0)],
      ["an empty signature", pair.publicKey, message, new Uint8Array(0)],
      ["a signature with a flipped bit", pair.publicKey, message, flipped(signature, 5)],
      ["a signature with a flipped bit in S", pair.publicKey, message, flipped(signature, 40)],
      ["another message", pair.publicKey, utf8.encode("pay 99"), signature],
      ["another key", keyPairFromSeed(new Uint8Array(32)).publicKey, message, signature],
      ["an all-zero signature", pair.publicKey, message, new Uint8Array(64)],
    ])("returns false, without throwing, for %s", (_label, publicKey, msg, sig) => {
      const check = () => verify(publicKey, msg, sig);
      expect(check).not.toThrow();
      expect(check()).toBe(false);
    });

    it("returns true for the untouched signature (the control for the table above)", () => {
      expect(verify(pair.publicKey, message, signature)).toBe(true);
    });
  });
});

describe("Keyring", () => {
  const key1 = new Uint8Array(32).fill(1);
  const key2 = new Uint8Array(32).fill(2);
  const ring = new Keyring(new Map([[1, key1]]), 1);
  const plaintext = utf8.encode('{"deviceId":"dx","userId":"alice"}');

  it("opens what it sealed and names the key version", () => {
    const sealed = ring.seal(plaintext);
    expect(ring.open(sealed)).toEqual({ ok: true, plaintext, keyVersion: 1 });
  });

  it("seals the same plaintext differently each time (fresh nonce)", () => {
    expect(toHex(ring.seal(plaintext))).not.toBe(toHex(ring.seal(plaintext)));
  });

  it("opens a seal that sits inside a larger buffer (non-zero byteOffset)", () => {
    const sealed = ring.seal(plaintext);
    const big = new Uint8Array(sealed.length + 16);
    big.set(sealed, 16);
    expect(ring.open(big.subarray(16))).toMatchObject({ ok: true, keyVersion: 1 });
  });

  it("reports seal_broken for every single flipped byte after the header", () => {
    const sealed = ring.seal(plaintext);
    // Byte 0 is the format and bytes 1-4 the version; from byte 5 on (nonce, tag, box) any flip breaks the seal.
    for (let at = 5; at < sealed.length; at++) {
      const copy = Uint8Array.from(sealed);
      copy[at] = copy[at]! ^ 0x80;
      expect(ring.open(copy)).toEqual({ ok: false, reason: "seal_broken" });
    }
  });

  it("reports seal_broken for a seal made under another key with the same version number", () => {
    const other = new Keyring(new Map([[1, key2]]), 1);
    expect(ring.open(other.seal(plaintext))).toEqual({ ok: false, reason: "seal_broken" });
  });

  it("reports key_version_unknown for a seal naming a version it does not hold", () => {
    const sealed = ring.seal(plaintext);
    new DataView(sealed.buffer).setUint32(1, 7);
    expect(ring.open(sealed)).toEqual({ ok: false, reason: "key_version_unknown" });
  });

  it.each([
    ["an empty input", new Uint8Array(0)],
    ["a header only", new Uint8Array(29).fill(1)],
    ["one byte short of header and tag (44 bytes)", Uint8Array.of(1, 0, 0, 0, 1, ...new Uint8Array(39))],
  ])("reports sealed_malformed for %s", (_label, bytes) => {
    expect(ring.open(bytes)).toEqual({ ok: false, reason: "sealed_malformed" });
  });

  it("reads a seal of exactly header and tag (45 bytes) as broken, not malformed", () => {
    expect(ring.open(Uint8Array.of(1, 0, 0, 0, 1, ...new Uint8Array(40)))).toEqual({ ok: false, reason: "seal_broken" });
  });

  it("reports sealed_malformed for an unknown format byte", () => {
    const sealed = ring.seal(plaintext);
    sealed[0] = 2;
    expect(ring.open(sealed)).toEqual({ ok: false, reason: "sealed_malformed" });
  });

  describe("rotation", () => {
    const rotated = ring.rotated(key2);
    const oldSeal = ring.seal(plaintext);

    it("makes the new version current and seals with it", () => {
      expect(rotated.current).toBe(2);
      expect(rotated.versions).toEqual([1, 2]);
      expect(rotated.open(rotated.seal(plaintext))).toEqual({ ok: true, plaintext, keyVersion: 2 });
    });

    it("still opens seals made before the rotation", () => {
      expect(rotated.open(oldSeal)).toEqual({ ok: true, plaintext, keyVersion: 1 });
    });

    it("leaves the old keyring unable to open new seals", () => {
      expect(ring.open(rotated.seal(plaintext))).toEqual({ ok: false, reason: "key_version_unknown" });
    });

    it("cannot open old seals once their version is removed", () => {
      expect(rotated.without(1).open(oldSeal)).toEqual({ ok: false, reason: "key_version_unknown" });
    });

    it("refuses to remove the current version", () => {
      expect(() => rotated.without(2)).toThrow(/current/);
    });
  });

  describe("derive", () => {
    it("derives the same subkey for the same label and version, another for another label or version", () => {
      const rotated = ring.rotated(key2);
      expect(rotated.derive("a", 1)).toEqual(ring.derive("a"));
      expect(toHex(ring.derive("a"))).not.toBe(toHex(ring.derive("b")));
      expect(toHex(rotated.derive("a"))).not.toBe(toHex(rotated.derive("a", 1)));
    });

    it("refuses a version it does not hold", () => {
      expect(() => ring.derive("a", 9)).toThrow(/version 9/);
    });
  });

  describe("files and environment", () => {
    it("reads back the key file it writes", () => {
      const rotated = ring.rotated(key2);
      const back = Keyring.fromFileJson(rotated.toFileJson());
      expect(back.current).toBe(2);
      expect(back.versions).toEqual([1, 2]);
      expect(back.open(rotated.seal(plaintext))).toMatchObject({ ok: true, keyVersion: 2 });
      expect(back.open(ring.seal(plaintext))).toMatchObject({ ok: true, keyVersion: 1 });
    });

    it.each([
      ["one base64 key as version 1", toBase64(key1), 1, [1]],
      ["numbered keys, the highest current", `1:${toBase64(key1)},2:${toBase64(key2)}`, 2, [1, 2]],
      ["numbered keys in any order", `2:${toBase64(key2)},1:${toBase64(key1)}`, 2, [1, 2]],
    ])("parses HANDOFF_MASTER_KEY given as %s", (_label, text, current, versions) => {
      const parsed = Keyring.fromEnv(text);
      expect(parsed.current).toBe(current);
      expect(parsed.versions).toEqual(versions);
    });

    it.each([
      ["a short key", toBase64(new Uint8Array(16))],
      ["a version 0", `0:${toBase64(key1)}`],
      ["a missing key after the colon", "1:"],
      ["text that is not base64", "not-a-key"],
    ])("refuses HANDOFF_MASTER_KEY with %s", (_label, text) => {
      expect(() => Keyring.fromEnv(text)).toThrow(/HANDOFF_MASTER_KEY/);
    });

    it("never puts key material in a key file error message", () => {
      const secret = toBase64(new Uint8Array(31).fill(9));
      const text = JSON.stringify({ format: 1, current: 1, keys: { "1": secret } });
      expect(() => Keyring.fromFileJson(text)).toThrow(/version 1/);
      try {
        Keyring.fromFileJson(text);
      } catch (err) {
        expect((err as Error).message).not.toContain(secret);
      }
    });
  });
});

describe("connect token", () => {
  const pair = keyPairFromSeed(new Uint8Array(32).fill(3));
  const signer = new Signer(pair);
  const deviceId = "dabcdefghijklmnopqrs";
  const nonce = "0123456789abcdef_-XY";
  const token = makeToken(deviceId, 1_700_000_000_000, nonce, (b) => signer.sign(b));

  it("parses what makeToken makes, and the signature covers the documented text", () => {
    const parsed = parseToken(token);
    expect(parsed).not.toBeNull();
    expect(parsed).toMatchObject({ deviceId, tsMs: 1_700_000_000_000, nonce });
    expect(new TextDecoder().decode(parsed!.signedBytes)).toBe(`hp-connect-v1\n${deviceId}\n1700000000000\n${nonce}`);
    expect(parsed!.signedBytes).toEqual(tokenSignedBytes(deviceId, 1_700_000_000_000, nonce));
    expect(verify(pair.publicKey, parsed!.signedBytes, parsed!.signature)).toBe(true);
  });

  it("accepts a timestamp of 0 and nonces of 16 and 64 characters", () => {
    expect(parseToken(makeToken(deviceId, 0, "a".repeat(16), (b) => signer.sign(b)))).toMatchObject({ tsMs: 0 });
    expect(parseToken(makeToken(deviceId, 1, "a".repeat(64), (b) => signer.sign(b)))).toMatchObject({ nonce: "a".repeat(64) });
  });

  const sig = toBase64(new Uint8Array(64).fill(5));
  it.each([
    ["an empty string", ""],
    ["free text", "hunter2"],
    ["another prefix", `hp2.${deviceId}.1.${nonce}.${sig}`],
    ["four parts", `hp1.${deviceId}.1.${nonce}`],
    ["six parts", `hp1.${deviceId}.1.${nonce}.${sig}.x`],
    ["a device id with a dot", `hp1.d.x.1.${nonce}.${sig}`],
    ["an empty device id", `hp1..1.${nonce}.${sig}`],
    ["a 65-character device id", `hp1.${"d".repeat(65)}.1.${nonce}.${sig}`],
    ["a timestamp with a leading zero", `hp1.${deviceId}.01.${nonce}.${sig}`],
    ["a negative timestamp", `hp1.${deviceId}.-1.${nonce}.${sig}`],
    ["a fractional timestamp", `hp1.${deviceId}.1e3.${nonce}.${sig}`],
    ["a 17-digit timestamp", `hp1.${deviceId}.${"1".repeat(17)}.${nonce}.${sig}`],
    ["an empty timestamp", `hp1.${deviceId}..${nonce}.${sig}`],
    ["a 15-character nonce", `hp1.${deviceId}.1.${"a".repeat(15)}.${sig}`],
    ["a 65-character nonce", `hp1.${deviceId}.1.${"a".repeat(65)}.${sig}`],
    ["a nonce with a slash", `hp1.${deviceId}.1.${"a".repeat(15)}/.${sig}`],
    ["a signature that is not base64", `hp1.${deviceId}.1.${nonce}.${"*".repeat(88)}`],
    ["a base64 signature without padding", `hp1.${deviceId}.1.${nonce}.${sig.replace(/=+$/, "")}`],
    ["a 63-byte signature", `hp1.${deviceId}.1.${nonce}.${toBase64(new Uint8Array(63))}`],
    ["a 65-byte signature", `hp1.${deviceId}.1.${nonce}.${toBase64(new Uint8Array(65))}`],
  ])("rejects %s", (_label, password) => {
    expect(parseToken(password)).toBeNull();
  });

  it("cannot be mistaken for a signed message: its signed text never starts with '{'", () => {
    expect(tokenSignedBytes(deviceId, 1, nonce)[0]).not.toBe("{".charCodeAt(0));
  });
});

describe("topic ACL rules", () => {
  const me = "dabcdefghijklmnopqrs";
  const them = "dzyxwvutsrqponmlkji2";

  it.each([
    [upTopic(me), true],
    [downTopic(me), false],
    [upTopic(them), false],
    [`${upTopic(me)}/x`, false],
    [`hp/v1/${me}/up/`, false],
    [`/hp/v1/${me}/up`, false],
    [`HP/v1/${me}/up`, false],
    ["$SYS/x", false],
    ["", false],
  ])("mayPublish(me, %j) is %s", (topic, allowed) => {
    expect(mayPublish(me, topic)).toBe(allowed);
  });

  it.each([
    [downTopic(me), true],
    [`${downTopic(me)}/#`, true],
    [`${downTopic(me)}/+`, true],
    [`${downTopic(me)}/+/x/#`, true],
    [`${downTopic(me)}/a/b`, true],
    [`${downTopic(me)}/#/x`, false],
    [`${downTopic(me)}/a#`, false],
    [`${downTopic(me)}/a+`, false],
    [`${downTopic(me)}/+x`, false],
    [downTopic(them), false],
    [upTopic(me), false],
    [upTopic(them), false],
    ["#", false],
    ["+", false],
    ["hp/#", false],
    ["hp/v1/#", false],
    [`hp/v1/${me}/#`, false],
    [`hp/v1/${me}/+`, false],
    ["hp/v1/+/down", false],
    ["hp/+/" + me + "/down", false],
    ["+/v1/" + me + "/down", false],
    ["+/+/+/+", false],
    ["$SYS/#", false],
    ["", false],
    [`hp/v1/${me}`, false],
  ])("maySubscribe(me, %j) is %s", (filter, allowed) => {
    expect(maySubscribe(me, filter)).toBe(allowed);
  });

  it.each([
    [upTopic(me), me],
    [downTopic(me), null],
    [`${upTopic(me)}/x`, null],
    [`hp/v2/${me}/up`, null],
    ["up", null],
  ])("deviceOfUpTopic(%j) is %j", (topic, device) => {
    expect(deviceOfUpTopic(topic)).toBe(device);
  });
});
