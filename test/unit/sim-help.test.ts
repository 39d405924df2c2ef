/**
 * `npm run sim -- --help` is where a person learns the simulator (README's walk-through starts
 * an interactive terminal with --login and --merchant): its Options section must describe every
 * option the parser accepts, and only those.
 */
import { describe, expect, it } from "vitest";
import { FLAGS, USAGE } from "../../device-sim/cli.ts";

/** The Options section: each line that starts an option, mapped to the text that describes it. */
function documentedOptions(): Map<string, string> {
  const section = USAGE.slice(USAGE.indexOf("\nOptions:\n"), USAGE.indexOf("\nExamples:\n"));
  const options = new Map<string, string>();
  let current: string | null = null;
  for (const line of section.split("\n").slice(2)) {
    const m = /^ {2}(?:-h, )?--([a-z-]+)(?: \S+)?\s*(.*)$/.exec(line);
    if (m !== null) {
      current = m[1]!;
      options.set(current, m[2]!.trim());
    } else if (current !== null && line.trim() !== "") options.set(current, `${options.get(current)!} ${line.trim()}`.trim());
  }
  return options;
}

describe("npm run sim -- --help", () => {
  it("lists in its Options section every option the parser accepts, -h/--help included, and no other", () => {
    expect([...documentedOptions().keys()].sort()).toEqual([...Object.keys(FLAGS), "help"].sort());
  });

  it("says what each option does", () => {
    for (const [option, text] of documentedOptions()) expect({ option, described: text.length >= 10 }).toEqual({ option, described: true });
  });

  it("shows the interactive terminal taking --login and --merchant, as README starts it", () => {
    expect(USAGE).toMatch(/^ {2}terminal --key FILE \[--login LOGIN\] \[--merchant ID\]/m);
  });
});
