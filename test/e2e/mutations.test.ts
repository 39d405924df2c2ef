/**
 * The quick form of `npm run test:mutations`: the bugs of test/mutations/list.ts marked quick
 * are planted one at a time in a scratch copy of the tree, and the tests named for each must
 * fail. A missed bug means a test whose name promises a rule does not hold it; a broken one
 * means the entry no longer applies to the code (update its search text) or its tests cannot
 * run. Times are printed, never asserted.
 */
import { describe, expect, it } from "vitest";
import { runMutations } from "../../scripts/mutations.ts";

describe("mutations", () => {
  it("has every quick planted bug caught by the tests named for it, on a scratch copy, leaving the tree untouched", async () => {
    const lines: string[] = [];
    const report = await runMutations({ quick: true, timeoutMs: 120_000, log: (l) => lines.push(l) });
    const output = `replay with: npm run test:mutations -- --quick\n${lines.join("\n")}`;
    expect(report.baselineOk, `${report.baselineDetail}\n${output}`).toBe(true);
    expect(report.planted, output).toBeGreaterThan(0);
    for (const r of report.results) {
      expect(r.outcome, `mutation ${r.id} was ${r.outcome}: ${r.rule}\n${r.detail}\n${output}`).toBe("caught");
    }
    expect(report.realTreeChanged, output).toBeNull();
    expect(report, output).toMatchObject({ missed: 0, broken: 0 });
  }, 300_000);
});
