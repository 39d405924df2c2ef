/** The browser phone: pairs with terminals, approves and executes payments. */
import { startPage } from "./common.ts";

await startPage({ role: "phone", title: "Phone", defaultName: "Browser phone", askUser: true });
