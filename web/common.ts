/**
 * What the terminal and phone pages share: the page shell (title, connection state, the
 * broker's pinned identity, this device's id, key and register command, notices), the device
 * key's life in IndexedDB, money formatting and the sentence for every refusal.
 *
 * The pages build their DOM with h() and textContent, never innerHTML: names and order
 * references come from other people's devices.
 */
import { formatAmount, parseAmount } from "../src/core/money.ts";
import { fromBase64, toBase64 } from "../src/crypto/encoding.ts";
import { BrowserDevice, browserKeyFromSeed, brokerUrlFor, generateBrowserKey, registerCommand, type BrowserKey, type DeviceKind } from "../src/device/browser.ts";
import { checkBrokerPin, forgetDevice, load, loadKey, repinBroker, save, saveKey } from "../src/device/browser-store.ts";
import { DeviceError } from "../src/device/client.ts";
import { ERROR_CODES, isErrorCode } from "../src/protocol/errors.ts";

export { formatAmount, parseAmount };

/** What the broker put in the page's shell (broker/pages.ts PageConfig). */
export interface PageConfig {
  readonly role: DeviceKind;
  readonly brokerPublicKey: string;
  readonly tlsFingerprint: string | null;
}

export function pageConfig(): PageConfig {
  const text = document.getElementById("hp-config")?.textContent;
  if (text === undefined || text === null) throw new Error("this page was not served by a Handoff Pay broker (no hp-config)");
  return JSON.parse(text) as PageConfig;
}

type Child = Node | string | null | undefined | false;

export interface Props {
  readonly class?: string;
  readonly text?: string;
  /** data-testid: what the browser test and assistive tools find the element by. */
  readonly testid?: string;
  readonly attrs?: Readonly<Record<string, string>>;
  readonly on?: Readonly<Partial<Record<keyof HTMLElementEventMap, (e: Event) => void>>>;
}

/** Creates an element: h("button", { text: "Pay", on: { click } }). Text is always text, never HTML. */
export function h<K extends keyof HTMLElementTagNameMap>(tag: K, props: Props = {}, ...children: Child[]): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  if (props.class !== undefined) el.className = props.class;
  if (props.text !== undefined) el.textContent = props.text;
  if (props.testid !== undefined) el.dataset.testid = props.testid;
  for (const [k, v] of Object.entries(props.attrs ?? {})) el.setAttribute(k, v);
  for (const [k, fn] of Object.entries(props.on ?? {})) el.addEventListener(k, fn as EventListener);
  for (const c of children) if (c !== null && c !== undefined && c !== false) el.append(c);
  return el;
}

/** A labelled input: the label wraps it, so a click or a screen reader finds it. */
export function field(label: string, input: HTMLInputElement | HTMLSelectElement, hint?: string): HTMLLabelElement {
  return h("label", { class: "field" }, h("span", { class: "label", text: label }), input, hint === undefined ? null : h("small", { class: "hint", text: hint }));
}

/** The sentence a person reads for a broker refusal code (docs/protocol.md §Errors). */
export function sentenceFor(code: string): string {
  return isErrorCode(code) ? ERROR_CODES[code] : `The broker refused this (${code}).`;
}

/** What to show for a failed action: the code's sentence for a refusal, else the error's own message. */
export function describeError(err: unknown): { code: string | null; text: string } {
  if (err instanceof DeviceError) return { code: err.code, text: sentenceFor(err.code) };
  return { code: null, text: err instanceof Error ? err.message : String(err) };
}

/** Two digits: two(7) === "07". */
export function two(n: number): string {
  return String(n).padStart(2, "0");
}

export function clockTime(ms: number): string {
  const d = new Date(ms);
  return `${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}`;
}

/** The local day: "2025-03-01". */
export function dayText(ms: number): string {
  const d = new Date(ms);
  return `${d.getFullYear()}-${two(d.getMonth() + 1)}-${two(d.getDate())}`;
}

/** "1:58", "0:07": the time left, rounded up to the second. */
export function countdownText(leftMs: number): string {
  const s = Math.max(0, Math.ceil(leftMs / 1000));
  return `${Math.floor(s / 60)}:${two(s % 60)}`;
}

/** Why an action waits: the page's device is not connected. */
export function notConnected(): Error {
  return new Error("not connected to the broker; wait until the state above says Connected");
}

/** Parameters in the page's URL fragment (#key=…&code=…): never sent to any server. */
export function fragmentParams(): URLSearchParams {
  return new URLSearchParams(location.hash.replace(/^#/, ""));
}

/** A small list kept in IndexedDB, newest first, at most `max` entries. */
export class StoredList<T extends { readonly id: string }> {
  #items: T[] = [];

  private constructor(
    readonly name: string,
    readonly max: number,
  ) {}

  static async open<T extends { readonly id: string }>(name: string, max = 50): Promise<StoredList<T>> {
    const list = new StoredList<T>(name, max);
    list.#items = (await load<T[]>(name)) ?? [];
    return list;
  }

  get items(): readonly T[] {
    return this.#items;
  }

  /** Adds or replaces the entry with this id (moved to the front), and saves. */
  async put(item: T): Promise<void> {
    this.#items = [item, ...this.#items.filter((i) => i.id !== item.id)].slice(0, this.max);
    await save(this.name, this.#items);
  }
}

export type ConnectionState = "connecting" | "connected" | "offline" | "unregistered" | "refused" | "key-changed";

export interface Session {
  readonly role: DeviceKind;
  readonly key: BrowserKey;
  readonly device: BrowserDevice;
  /** Where the page puts its own sections, under the shared ones. */
  readonly main: HTMLElement;
  readonly config: PageConfig;
  /** The phone's user id as typed in its register command (the terminal: undefined). */
  user(): string | undefined;
  /** Shows a refusal or failure in the notice area (role=alert), with the code when there is one. */
  showError(what: string, err: unknown): void;
  /** Shows a neutral line in the notice area. */
  notify(text: string): void;
  clearNotice(): void;
  /** Called on every (re)connection, once the device is subscribed. */
  onConnected(fn: () => void): void;
}

export interface StartOptions {
  readonly role: DeviceKind;
  readonly title: string;
  readonly defaultName: string;
  /** A phone's register command names the user whose wallet it pays from. */
  readonly askUser?: boolean;
}

const STATE_TEXT: Record<ConnectionState, string> = {
  connecting: "Connecting…",
  connected: "Connected",
  offline: "Offline — reconnecting…",
  unregistered: "Not registered yet — run the command under “This device”; retrying every 5 s",
  refused: "Refused by the broker",
  "key-changed": "Not connected: the broker's key changed",
};

/** Seconds between tries while the broker does not know this device yet (its connect budget allows far more). */
const UNREGISTERED_RETRY_MS = 5000;

/** The key this page is: imported from the fragment (the demo's links), stored, or new. */
async function deviceKey(role: DeviceKind, defaultName: string): Promise<BrowserKey> {
  const params = fragmentParams();
  const seedText = params.get("key");
  if (seedText !== null) {
    const seed = fromBase64(seedText.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(seedText.length / 4) * 4, "="));
    params.delete("key");
    const name = params.get("name") ?? defaultName;
    params.delete("name");
    // The seed is a private key: out of the address bar and the history at once.
    history.replaceState(null, "", `${location.pathname}${location.search}${params.size > 0 ? `#${params.toString()}` : ""}`);
    if (seed !== null && seed.length === 32) {
      const key = browserKeyFromSeed(role, name, seed);
      await saveKey(key);
      return key;
    }
  }
  const stored = await loadKey(role);
  if (stored !== undefined) return stored;
  const key = generateBrowserKey(role, defaultName);
  await saveKey(key);
  return key;
}

function copyButton(text: () => string, testid: string): HTMLButtonElement {
  const button = h("button", {
    text: "Copy",
    class: "secondary small",
    testid,
    attrs: { type: "button" },
    on: {
      click: () => {
        void navigator.clipboard?.writeText(text()).then(
          () => (button.textContent = "Copied"),
          () => (button.textContent = "Select and copy"),
        );
      },
    },
  });
  return button;
}

/** Builds the shared part of a page, pins the broker, and connects. */
export async function startPage(o: StartOptions): Promise<Session> {
  const config = pageConfig();
  const app = document.getElementById("app")!;
  app.replaceChildren();
  const key = await deviceKey(o.role, o.defaultName);

  const state = h("span", { class: "state", testid: "connection-state", attrs: { role: "status", "aria-live": "polite" } });
  const setState = (s: ConnectionState, detail?: string) => {
    state.dataset.state = s;
    state.textContent = detail === undefined ? STATE_TEXT[s] : `${STATE_TEXT[s]}: ${detail}`;
  };
  setState("connecting");
  const notice = h("div", { class: "notice", testid: "notice", attrs: { role: "alert", "aria-live": "assertive" } });
  notice.hidden = true;

  // The phone's user id, only for the register command (the broker knows it once registered).
  let user = o.askUser ? ((await load<string>(`user:${o.role}`)) ?? "alice") : undefined;
  const command = h("pre", { class: "command", testid: "register-command", text: registerCommand(key, user) });
  const userInput = h("input", { attrs: { value: user ?? "", autocomplete: "off", spellcheck: "false" }, testid: "register-user" });
  userInput.addEventListener("input", () => {
    user = userInput.value.trim();
    command.textContent = registerCommand(key, user);
    void save(`user:${o.role}`, user);
  });

  const brokerLine = h("p", { class: "broker", testid: "broker-identity" });
  const forget = h("button", {
    text: "Forget this device",
    class: "danger small",
    testid: "forget-device",
    attrs: { type: "button" },
    on: {
      click: () => {
        if (!confirm("Forget this device? Its key, its pinned broker key and its history are deleted from this browser; the broker must register a new key.")) return;
        void forgetDevice(o.role).then(() => location.replace(location.pathname));
      },
    },
  });
  const deviceSection = h(
    "details",
    { class: "card identity", testid: "device-card" },
    h("summary", {}, h("span", { text: "This device " }), h("code", { text: key.deviceId, testid: "device-id" })),
    h("dl", {}, h("dt", { text: "Name" }), h("dd", { text: key.name }), h("dt", { text: "Device id" }), h("dd", {}, h("code", { text: key.deviceId })), h("dt", { text: "Public key" }), h("dd", {}, h("code", { text: toBase64(key.publicKey), testid: "public-key" }))),
    o.askUser ? field("User id of this phone's wallet (for the command)", userInput) : null,
    h("p", { text: "Register it once, from the broker's directory (the broker may keep running):" }),
    command,
    h("div", { class: "row" }, copyButton(() => command.textContent ?? "", "copy-register-command"), forget),
    brokerLine,
  );
  const main = h("div", { class: "content" });
  app.append(h("header", { class: "top" }, h("h1", { text: o.title }), state), notice, deviceSection, main);

  const showNotice = (kind: "error" | "info", text: string, code: string | null) => {
    notice.hidden = false;
    notice.dataset.kind = kind;
    notice.replaceChildren(...[h("span", { text }), code === null ? null : h("code", { class: "code", text: code, testid: "notice-code" }), h("button", { text: "Dismiss", class: "secondary small", attrs: { type: "button", "aria-label": "Dismiss" }, on: { click: () => (notice.hidden = true) } })].filter((n) => n !== null));
  };

  const device = new BrowserDevice({ url: brokerUrlFor(location), key, brokerPublicKey: config.brokerPublicKey, reconnectMs: 2000 });
  const connectedFns: (() => void)[] = [];
  device.on("connect", () => {
    setState("connected");
    deviceSection.open = false;
    for (const fn of connectedFns) fn();
  });
  device.on("offline", () => setState("offline"));
  device.on("reconnecting", () => setState("offline"));
  device.on("error", () => {}); // a drop: the client reconnects by itself and the state says so
  device.on("rejected", (reason) => console.warn(`dropped a broker message: ${reason}`));

  const session: Session = {
    role: o.role,
    key,
    device,
    main,
    config,
    user: () => user,
    showError: (what, err) => {
      const d = describeError(err);
      showNotice("error", `${what}: ${d.text}`, d.code);
    },
    notify: (text) => showNotice("info", text, null),
    clearNotice: () => (notice.hidden = true),
    onConnected: (fn) => void connectedFns.push(fn),
  };

  const shortKey = config.brokerPublicKey.slice(0, 16);
  const tls = config.tlsFingerprint === null ? "" : ` · TLS certificate SHA-256 ${config.tlsFingerprint}`;
  const connect = async (): Promise<void> => {
    setState("connecting");
    try {
      await device.connect();
    } catch (err) {
      const code = (err as { code?: unknown }).code;
      if (code === 2 || code === 5) {
        setState("unregistered");
        deviceSection.open = true;
        setTimeout(() => void connect(), UNREGISTERED_RETRY_MS);
      } else if (typeof code === "number") {
        setState("refused", `CONNACK ${code}`);
      } else {
        setState("offline", (err as Error).message);
        setTimeout(() => void connect(), UNREGISTERED_RETRY_MS);
      }
    }
  };

  const pin = await checkBrokerPin(o.role, config.brokerPublicKey);
  if (pin.state === "changed") {
    setState("key-changed");
    brokerLine.dataset.pin = "changed";
    brokerLine.replaceChildren(
      h("strong", { text: "The broker's key changed. " }),
      h("span", { text: `Pinned ${pin.pinned}, now offered ${pin.offered}. Someone may be impersonating the broker; accept only if its operator rotated the key.` }),
      h("button", {
        text: "Trust the new key",
        class: "danger small",
        testid: "trust-new-broker-key",
        attrs: { type: "button" },
        on: { click: () => void repinBroker(o.role, pin.offered).then(() => location.reload()) },
      }),
    );
    deviceSection.open = true;
    return session;
  }
  brokerLine.dataset.pin = pin.state;
  brokerLine.replaceChildren(h("span", { text: `Broker key ${shortKey}… ${pin.state === "pinned-now" ? "pinned now (first use)" : "matches the pinned key"}${tls}` }), h("code", { class: "full-key", text: config.brokerPublicKey, testid: "broker-key" }));
  void connect();
  return session;
}
