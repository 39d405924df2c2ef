/** The browser terminal: binds to a user's phone and asks for payments. */
import { startPage } from "./common.ts";

await startPage({ role: "terminal", title: "Terminal", defaultName: "Browser terminal" });
