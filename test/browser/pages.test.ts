/**
 * The browser terminal and phone, driven in Debian's chromium through playwright-core, against a
 * real broker on free ports: registered with the commands the pages show, bound, paying (auto,
 * approved by a click, declined by keyboard, expired), unbound; then the ledger read through the
 * admin CLI. A screenshot of each page at each step goes to SCREENSHOTS (printed at the end).
 *
 * `npm run test:browser` runs this file alone; `npm test` runs it with the rest. .ci/run installs
 * chromium with apt where it is missing.
 */
import { execFile } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import { chromium, type Browser, type Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { startTestBroker, type TestBroker } from "../helpers.ts";
import { RawDevice } from "../wire.ts";

const run = promisify(execFile);
const ROOT = new URL("../..", import.meta.url).pathname;
/** Where the screenshots go: <step>-terminal.png and <step>-phone.png. */
export const SCREENSHOTS = join(ROOT, "artifacts", "browser");
const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
/** The phone has this long to answer a prompt: long enough for a click, short enough to wait out. */
const PROMPT_TTL_MS = 12_000;
const WAIT = { timeout: 20_000 };

let broker: TestBroker;
let browser: Browser;
let terminal: Page;
let phone: Page;
let step = 0;
/** The 88.00 payment approved on the phone: its receipt is downloaded and verified after. */
let approvedId = "";
const pageErrors: string[] = [];

/** Runs a command a page shows, as a person would paste it into a shell at the repository root. */
async function shell(command: string): Promise<string> {
  const { stdout } = await run("bash", ["-c", command], { cwd: ROOT, env: { ...process.env, HANDOFF_DATA_DIR: broker.dataDir, NO_COLOR: "1" }, timeout: 60_000 });
  return stdout;
}

async function admin(args: string): Promise<string> {
  return shell(`npm run --silent admin -- ${args}`);
}

async function snap(name: string): Promise<void> {
  step += 1;
  const prefix = `${String(step).padStart(2, "0")}-${name}`;
  await terminal.screenshot({ path: join(SCREENSHOTS, `${prefix}-terminal.png`), fullPage: true });
  await phone.screenshot({ path: join(SCREENSHOTS, `${prefix}-phone.png`), fullPage: true });
}

async function pay(amount: string): Promise<string> {
  const before = await terminal.getByTestId("payment").count();
  await terminal.getByTestId("pay-amount").fill(amount);
  await terminal.getByTestId("pay-submit").click();
  await expect.poll(() => terminal.getByTestId("payment").count(), WAIT).toBe(before + 1);
  const id = await terminal.getByTestId("payment").first().getAttribute("data-payment-id");
  expect(id).toMatch(/^pay_[a-z2-7]{20}$/);
  return id!;
}

const card = (id: string) => terminal.locator(`[data-testid="payment"][data-payment-id="${id}"]`);
const prompt = (id: string) => phone.locator(`[data-testid="prompt"][data-payment-id="${id}"]`);
const phoneHistory = (id: string) => phone.locator(`[data-testid="history-item"][data-payment-id="${id}"]`);

describe.sequential("the browser terminal and phone", () => {
  beforeAll(async () => {
    if (!existsSync(CHROMIUM)) throw new Error(`no browser at ${CHROMIUM}: install Debian's chromium (apt-get install chromium; .ci/run does) or set CHROMIUM_PATH`);
    rmSync(SCREENSHOTS, { recursive: true, force: true });
    mkdirSync(SCREENSHOTS, { recursive: true });
    broker = await startTestBroker({ wsPort: 0, promptTtlMs: PROMPT_TTL_MS, busyAfterMs: 100 });
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      // As root (CI) chromium needs --no-sandbox; the closed network refuses its calls home.
      args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"],
    });
    // Two contexts: two browsers as far as storage goes, each with its own IndexedDB key.
    const base = broker.listeners.ws!.url.replace(/^ws/, "http");
    terminal = await (await browser.newContext({ viewport: { width: 1100, height: 900 } })).newPage();
    phone = await (await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true })).newPage();
    for (const [name, page] of [["terminal", terminal], ["phone", phone]] as const) {
      page.on("pageerror", (err) => pageErrors.push(`${name}: ${err.message}`));
      await page.goto(`${base}/${name}`);
    }
  }, 60_000);

  afterAll(async () => {
    await browser?.close();
    await broker?.stop();
    process.stderr.write(`browser test: screenshots of every step in ${SCREENSHOTS}\n`);
  });

  test("shows each page's device id, public key and the exact command that registers it, and registers with it", async () => {
    for (const page of [terminal, phone]) {
      await expect.poll(() => page.getByTestId("connection-state").textContent(), WAIT).toContain("Not registered");
      expect(await page.getByTestId("device-id").textContent()).toMatch(/^d[a-z2-7]{19}$/);
      expect(await page.getByTestId("register-command").textContent()).toContain(`--public-key ${await page.getByTestId("public-key").textContent()}`);
      expect(await page.getByTestId("broker-key").textContent()).toBe(Buffer.from(broker.publicKey).toString("base64"));
    }
    await snap("unregistered");
    await phone.getByTestId("register-user").fill("alice");
    for (const page of [terminal, phone]) await shell((await page.getByTestId("register-command").textContent())!);
    await admin(`merchant add --id coffee-corner --name "Coffee Corner"`);
    await admin("ledger credit --user alice --amount 500.00 --currency CNY");
    for (const page of [terminal, phone]) await expect.poll(() => page.getByTestId("connection-state").textContent(), WAIT).toBe("Connected");
    await snap("connected");
  }, 120_000);

  test("binds: the terminal shows the code large and as a QR code, the phone takes it in lower case without its dash", async () => {
    await terminal.getByTestId("login").fill("alice");
    await terminal.getByTestId("bind").click();
    // The element may be there before the broker's bind_code fills it.
    await expect.poll(async () => (await terminal.getByTestId("pairing-code").textContent())?.trim(), WAIT).toMatch(/^[A-Z]{4}-[A-Z]{4}$/);
    const code = (await terminal.getByTestId("pairing-code").textContent())!.trim();
    await expect.poll(() => terminal.getByTestId("pairing-qr").isVisible(), WAIT).toBe(true);
    // The QR code opens the phone page with the code filled in.
    expect(await terminal.getByTestId("pairing-url").textContent()).toContain(`/phone#code=${code}`);
    await snap("pairing-code");
    await phone.getByTestId("pair-code").fill(code.replace("-", "").toLowerCase());
    await phone.getByTestId("pair-submit").click();
    await expect.poll(() => phone.getByTestId("agreement").count(), WAIT).toBe(1);
    expect(await phone.getByTestId("agreement-terminal").textContent()).toContain("Browser terminal");
    await expect.poll(() => terminal.getByTestId("bound-info").isVisible(), WAIT).toBe(true);
    await snap("bound");
  }, 60_000);

  test("pays 12.00 without asking the phone: every step shown with its time, completed on both pages", async () => {
    const id = await pay("12.00");
    await expect.poll(() => card(id).getAttribute("data-status"), WAIT).toBe("completed");
    expect(await card(id).getByTestId("step-result").getAttribute("data-done")).toBe("true");
    expect(await card(id).getByTestId("step-accepted").textContent()).toMatch(/\d\d:\d\d:\d\d/);
    await expect.poll(() => phoneHistory(id).getAttribute("data-status"), WAIT).toBe("completed");
    await snap("auto-payment");
  }, 60_000);

  test("pays 15.00 while the broker is behind: the page says it is busy, asks again by itself after the wait, and one payment completes", async () => {
    // Another device's messages arrive 3 s late: to the broker that is a backlog, so it is behind.
    const late = await RawDevice.connect(broker.url, broker.register("phone"), broker.publicKey, true);
    try {
      const ping = async (ageMs: number) => {
        const { id, bytes } = late.seal("ping", {}, { ts: Date.now() - ageMs });
        await late.publish(bytes);
        await late.waitFor((m) => m.payload?.re === id);
      };
      await ping(0); // the broker learns this device's clock
      for (let i = 0; i < 3; i++) await ping(3000);
    } finally {
      await late.close();
    }
    const before = await terminal.getByTestId("payment").count();
    await terminal.getByTestId("pay-amount").fill("15.00");
    await terminal.getByTestId("pay-submit").click();
    await expect.poll(() => terminal.getByTestId("notice").textContent(), WAIT).toContain("busy");
    expect(await terminal.getByTestId("notice").textContent()).toContain("will not be made twice");
    expect(await terminal.getByTestId("payment").count()).toBe(before);
    await snap("busy");
    // The broker catches up (a second without late messages); the page's retry is admitted.
    await expect.poll(() => terminal.getByTestId("payment").count(), WAIT).toBe(before + 1);
    const id = (await terminal.getByTestId("payment").first().getAttribute("data-payment-id"))!;
    await expect.poll(() => card(id).getAttribute("data-status"), WAIT).toBe("completed");
    expect(await terminal.getByTestId("notice").isHidden()).toBe(true);
  }, 60_000);

  test("asks the phone for 88.00, above its auto-confirm limit, and completes when Approve is clicked", async () => {
    const id = await pay("88.00");
    await expect.poll(() => prompt(id).isVisible(), WAIT).toBe(true);
    expect(await prompt(id).getByTestId("prompt-amount").textContent()).toContain("88.00");
    expect(await prompt(id).getByTestId("prompt-merchant").textContent()).toContain("Coffee Corner");
    expect(await prompt(id).getByTestId("prompt-terminal").textContent()).toContain("Browser terminal");
    await expect.poll(() => card(id).getByTestId("step-prompt_delivered").getAttribute("data-done"), WAIT).toBe("true");
    await snap("prompt");
    await prompt(id).getByTestId("prompt-approve").click();
    await expect.poll(() => card(id).getAttribute("data-status"), WAIT).toBe("completed");
    for (const s of ["accepted", "prompt_delivered", "confirmed", "executing", "result"]) expect(await card(id).getByTestId(`step-${s}`).getAttribute("data-done")).toBe("true");
    await expect.poll(() => phoneHistory(id).getAttribute("data-status"), WAIT).toBe("completed");
    await snap("approved");
    approvedId = id;
  }, 60_000);

  test("the terminal adds the audit log's proof to the 88.00 payment's receipt and downloads it; admin receipt verify accepts it, and refuses it with the amount changed", async () => {
    const id = approvedId;
    expect(id).not.toBe("");
    const row = terminal.locator(`[data-testid="history-item"][data-payment-id="${id}"]`);
    await expect.poll(() => row.getByTestId("history-proof").isVisible(), WAIT).toBe(true);
    // The phone kept its own receipt of the same result, and gets the same proof.
    await expect.poll(() => phoneHistory(id).getByTestId("history-proof").isVisible(), WAIT).toBe(true);
    await phoneHistory(id).getByTestId("history-proof").click();
    await expect.poll(() => phoneHistory(id).getByTestId("history-proof-status").textContent(), WAIT).toMatch(/^In the signed audit log: entry \d+ of \d+/);
    await row.getByTestId("history-proof").click();
    await expect.poll(() => row.getByTestId("history-proof-status").textContent(), WAIT).toMatch(/^In the signed audit log: entry \d+ of \d+ \(head signed \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\)$/);
    await snap("receipt-proof");
    const [download] = await Promise.all([terminal.waitForEvent("download", WAIT), row.getByTestId("history-receipt").click()]);
    expect(download.suggestedFilename()).toBe(`${id}.terminal.json`);
    const file = join(broker.dataDir, download.suggestedFilename());
    await download.saveAs(file);
    const brokerKey = Buffer.from(broker.publicKey).toString("base64");
    const out = await admin(`receipt verify ${file} --broker-key ${brokerKey}`);
    expect(out).toContain(`payment     ${id}`);
    expect(out).toMatch(/status\s+completed/);
    expect(out).toMatch(/inclusion\s+entry \d+ is in the signed log/);
    // The same file with another amount: the broker's signature no longer covers it.
    const receipt = JSON.parse(readFileSync(file, "utf8")) as { envelope: { payload: string } };
    expect(receipt.envelope.payload).toContain(`"amountMinor":8800`);
    receipt.envelope.payload = receipt.envelope.payload.replace(`"amountMinor":8800`, `"amountMinor":880`);
    const tampered = join(broker.dataDir, `tampered.${id}.terminal.json`);
    writeFileSync(tampered, JSON.stringify(receipt));
    const refused = await admin(`receipt verify ${tampered} --broker-key ${brokerKey}`).then(
      () => null,
      (err: unknown) => err as { code?: number; stderr?: string },
    );
    expect(refused?.code).toBe(1);
    expect(refused?.stderr).toContain("does not verify");
  }, 60_000);

  test("declines 66.00 from the keyboard alone: the prompt takes focus on Approve, Shift+Tab reaches Decline (left of it)", async () => {
    const id = await pay("66.00");
    await expect.poll(() => prompt(id).isVisible(), WAIT).toBe(true);
    await expect.poll(() => phone.evaluate(() => (document.activeElement as HTMLElement | null)?.dataset.testid), WAIT).toBe("prompt-approve");
    await phone.keyboard.press("Shift+Tab");
    expect(await phone.evaluate(() => (document.activeElement as HTMLElement | null)?.dataset.testid)).toBe("prompt-decline");
    await phone.keyboard.press("Enter");
    await expect.poll(() => card(id).getAttribute("data-status"), WAIT).toBe("declined");
    await expect.poll(() => phoneHistory(id).getAttribute("data-status"), WAIT).toBe("declined");
    await snap("declined");
  }, 60_000);

  test("lets a prompt for 77.00 run out: the phone's countdown ends, both pages say expired", async () => {
    const id = await pay("77.00");
    await expect.poll(() => prompt(id).isVisible(), WAIT).toBe(true);
    await expect.poll(() => card(id).getAttribute("data-status"), { timeout: PROMPT_TTL_MS + 20_000 }).toBe("expired");
    await expect.poll(() => phoneHistory(id).getAttribute("data-status"), WAIT).toBe("expired");
    await snap("expired");
  }, 60_000);

  test("unbinds from the phone after an inline confirmation; the terminal's next payment is refused with the sentence for not_bound", async () => {
    await phone.getByTestId("agreement-unbind").click();
    await phone.getByTestId("agreement-unbind-confirm").click();
    await expect.poll(() => phone.getByTestId("agreement").count(), WAIT).toBe(0);
    await terminal.getByTestId("pay-amount").fill("5.00");
    await terminal.getByTestId("pay-submit").click();
    await expect.poll(() => terminal.getByTestId("notice-code").textContent(), WAIT).toBe("not_bound");
    expect(await terminal.getByTestId("notice").textContent()).toContain("bind it to the user's phone first");
    await snap("unbound");
  }, 60_000);

  test("the ledger, read through the admin CLI, moved exactly 12.00 + 15.00 + 88.00 from alice to the merchant", async () => {
    const wallet = JSON.parse(await admin("ledger balance --user alice --json")) as { wallets: { currency: string; balanceMinor: number }[] };
    expect(wallet.wallets).toEqual([{ currency: "CNY", balanceMinor: 50_000 - 1_200 - 1_500 - 8_800 }]);
    const all = JSON.parse(await admin("ledger balance --json")) as { sums: Record<string, number> };
    expect(all.sums).toEqual({ CNY: 0 });
  }, 60_000);

  test("refuses to connect when the broker's key is not the one pinned on first use, and says so", async () => {
    const other = Buffer.alloc(32, 7).toString("base64");
    // The same page, but its shell names another broker key: what an impostor on this address would serve.
    await terminal.route("**/terminal", async (route) => {
      const res = await route.fetch();
      await route.fulfill({ response: res, body: (await res.text()).replace(Buffer.from(broker.publicKey).toString("base64"), other) });
    });
    await terminal.reload();
    await expect.poll(() => terminal.getByTestId("connection-state").getAttribute("data-state"), WAIT).toBe("key-changed");
    expect(await terminal.getByTestId("broker-identity").textContent()).toContain(other);
    expect(await terminal.getByTestId("trust-new-broker-key").isVisible()).toBe(true);
    await snap("broker-key-changed");
    await terminal.unroute("**/terminal");
    await terminal.reload();
    await expect.poll(() => terminal.getByTestId("connection-state").textContent(), WAIT).toBe("Connected");
  }, 60_000);

  test("forgets the phone's key on request: the page comes back as a new, unregistered device", async () => {
    const before = await phone.getByTestId("device-id").textContent();
    phone.once("dialog", (d) => void d.accept());
    await phone.getByTestId("device-card").locator("summary").click();
    await phone.getByTestId("forget-device").click();
    await expect.poll(() => phone.getByTestId("connection-state").textContent(), WAIT).toContain("Not registered");
    expect(await phone.getByTestId("device-id").textContent()).not.toBe(before);
    await expect.poll(() => phone.getByTestId("history-item").count(), WAIT).toBe(0);
  }, 60_000);

  test("fits a 390 px phone screen without sideways scrolling, and no page threw", async () => {
    expect(await phone.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth)).toBe(true);
    expect(pageErrors).toEqual([]);
  });
});
