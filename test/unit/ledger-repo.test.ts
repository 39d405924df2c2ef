/** LedgerRepo's reads that the broker makes on every payment. */
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { Db } from "../../src/store/db.ts";
import { LedgerRepo } from "../../src/store/ledger.ts";
import { openTempDb } from "../helpers.ts";

describe("LedgerRepo", () => {
  let db: Db;
  let dispose: () => void;
  beforeEach(() => ({ db, dispose } = openTempDb("hp-ledger-")));
  afterEach(() => dispose());

  it("reads a merchant once (merchants are only ever added) and asks again for one it did not find", () => {
    const ledger = new LedgerRepo(db);
    const reads = () => (db.prepare("SELECT count(*) AS n FROM merchants").get() as { n: number }).n;
    expect(ledger.merchant("shop")).toBeNull();
    new LedgerRepo(db).addMerchant({ id: "shop", name: "Shop", createdMs: 1 });
    // Added by another repository (the admin command's): found on the next ask, not a cached miss.
    expect(ledger.merchant("shop")).toEqual({ id: "shop", name: "Shop", createdMs: 1 });
    // Kept: the row is not read again (seen here by removing it behind the repository's back).
    db.prepare("DELETE FROM merchants WHERE id = 'shop'").run();
    expect(reads()).toBe(0);
    expect(ledger.merchant("shop")).toEqual({ id: "shop", name: "Shop", createdMs: 1 });
    expect(new LedgerRepo(db).merchant("shop")).toBeNull();
  });

  it("creates an account with a zero balance on first use and returns the same account afterwards", () => {
    const ledger = new LedgerRepo(db);
    const a = ledger.account("merchant", Buffer.from("shop"), "EUR", 5);
    expect(a).toEqual({ id: "merchant:shop:EUR", kind: "merchant", currency: "EUR", balanceMinor: 0 });
    expect(ledger.account("merchant", Buffer.from("shop"), "EUR", 9)).toEqual(a);
    expect(ledger.accounts().map((x) => x.id)).toEqual(["merchant:shop:EUR"]);
  });
});
