/**
 * Binding: a terminal asks for a pairing code, the user's phone confirms it with the limits the
 * user chose, and the broker seals an agreement binding terminal, login, user and phone.
 * Managing: the phone lists its agreements and changes limits; either side unbinds.
 *
 * Each handler runs inside its message's transaction (src/service/inbox.ts); the decisions are
 * the pure functions of src/core/pairing.ts and src/core/agreement.ts.
 */
import type { Logger } from "pino";
import { limitsProblem, newAgreement, withLimits, type Agreement, type Limits } from "../core/agreement.ts";
import { SELECTOR_LENGTH, decideConfirm, displayCode, normalizeCode } from "../core/pairing.ts";
import type { Keyring } from "../crypto/keyring.ts";
import { randomId, randomPairingCode } from "../crypto/random.ts";
import type { UpBody } from "../protocol/messages.ts";
import { appendAudit } from "../store/audit.ts";
import { AgreementRepo, PairingRepo, type AgreementRow } from "../store/binding.ts";
import type { Db } from "../store/db.ts";
import { DeviceRepo } from "../store/devices.ts";
import { messageTrigger, sealedDigest } from "./audit-trail.ts";
import { deviceUserId } from "./devices.ts";
import { Refusal, type HandlerContext, type Inbox } from "./inbox.ts";
import { agreementLookup, openAgreement, openJson, pairingVerifierHash, sameBytes, sealAgreement, sealJson } from "./sealing.ts";

export interface BindingOptions {
  readonly keyring: () => Keyring;
  readonly log: Logger;
  /** How long a pairing code lives. */
  readonly pairingTtlMs: number;
  /** Bind requests one terminal may make per window. */
  readonly bindRequestsPerWindow: number;
  readonly bindWindowMs: number;
  /** Called, inside the transaction of the message that ends it, for every agreement that ends (unbound or replaced). */
  readonly onUnbound?: (ctx: HandlerContext, agreementId: string) => void;
}

export const BINDING_DEFAULTS = { pairingTtlMs: 5 * 60_000, bindRequestsPerWindow: 5, bindWindowMs: 10 * 60_000 } as const;

/** What the sealed pairing request holds: the terminal's login and device info. */
interface PairingRequest {
  readonly pairingId: string;
  readonly login: string;
  readonly terminal: { deviceId: string; model: string; serial: string; displayName: string };
}

export function registerBinding(inbox: Inbox, db: Db, o: BindingOptions): void {
  const pairings = new PairingRepo(db);
  const agreements = new AgreementRepo(db);
  const devices = new DeviceRepo(db);

  const requireKind = (ctx: HandlerContext, kind: "terminal" | "phone") => {
    if (ctx.device.kind !== kind) throw new Refusal("wrong_device_kind", `${ctx.msg.type} is sent by a ${kind}, and this device is a ${ctx.device.kind}`);
  };

  /** Opens an agreement; a failure is logged once and refused with its documented code. */
  const open = (ctx: HandlerContext, row: AgreementRow): Agreement => {
    const opened = openAgreement(o.keyring(), row);
    if (!opened.ok) {
      if (opened.code !== "agreement_not_found") o.log.error({ agreement: row.id, code: opened.code, detail: opened.detail }, "agreement cannot be opened");
      throw new Refusal(opened.code, opened.detail);
    }
    return opened.value;
  };

  /** The active agreement `id`, if this device is one of its two sides. */
  const ownRow = (ctx: HandlerContext, id: string): AgreementRow => {
    const row = agreements.get(id);
    if (row === null || row.status !== "active" || (row.phoneId !== ctx.device.id && row.terminalId !== ctx.device.id)) {
      throw new Refusal("agreement_not_found", `no active agreement ${id} belongs to this device`);
    }
    return row;
  };

  const view = (a: Agreement) => ({
    agreementId: a.id,
    terminalId: a.terminal.deviceId,
    terminalName: a.terminal.displayName,
    phoneId: a.phoneId,
    // No login here: messages are kept in the outbox, and the login is never stored in clear.
    limits: a.limits,
    boundAtMs: a.boundAtMs,
  });

  const checkLimits = (limits: Limits) => {
    const problem = limitsProblem(limits);
    if (problem !== null) throw new Refusal("invalid_limits", problem);
  };

  inbox.on("bind_request", (ctx, raw) => {
    requireKind(ctx, "terminal");
    const body = raw as UpBody<"bind_request">;
    if (pairings.countSince(ctx.device.id, ctx.nowMs - o.bindWindowMs) >= o.bindRequestsPerWindow) {
      throw new Refusal("rate_limited", `at most ${o.bindRequestsPerWindow} bind requests per ${o.bindWindowMs / 60_000} minutes; wait and try again`);
    }
    // A terminal holds at most one live code: a new request replaces the old one.
    for (const live of pairings.liveForTerminal(ctx.device.id)) pairings.update(live.id, "replaced", live.wrongTries);
    let code = randomPairingCode();
    // Selectors are unique among live codes; with 160,000 of them a clash is rare, so a few redraws suffice.
    for (let i = 0; i < 20 && pairings.bySelector(code.slice(0, SELECTOR_LENGTH)).some((p) => p.status === "live"); i++) code = randomPairingCode();
    const pairingId = randomId("pr");
    const request: PairingRequest = { pairingId, login: body.login, terminal: { deviceId: ctx.device.id, ...body.terminal } };
    const keyring = o.keyring();
    pairings.insert({
      id: pairingId,
      terminalId: ctx.device.id,
      selector: code.slice(0, SELECTOR_LENGTH),
      verifierHash: pairingVerifierHash(keyring, pairingId, code.slice(SELECTOR_LENGTH)),
      requestSealed: sealJson(keyring, request).sealed,
      createdMs: ctx.nowMs,
      expiresAtMs: ctx.nowMs + o.pairingTtlMs,
    });
    const shown = displayCode(code);
    ctx.reply("bind_code", {
      pairingId,
      code: shown,
      expiresAtMs: ctx.nowMs + o.pairingTtlMs,
      ttlMs: o.pairingTtlMs,
      display: `To pay with your phone, open Handoff Pay on it and enter ${shown}`,
    });
  });

  inbox.on("bind_confirm", (ctx, raw) => {
    requireKind(ctx, "phone");
    const body = raw as UpBody<"bind_confirm">;
    const code = normalizeCode(body.code);
    if (code === null) throw new Refusal("pairing_code_invalid", "a pairing code is 8 letters like BCDF-GHJK");
    checkLimits(body.limits);
    const keyring = o.keyring();
    const candidates = pairings.bySelector(code.slice(0, SELECTOR_LENGTH));
    const verifier = code.slice(SELECTOR_LENGTH);
    const matched = candidates.find((p) => sameBytes(p.verifierHash, pairingVerifierHash(keyring, p.id, verifier)));
    const target = matched ?? candidates.find((p) => p.status === "live");
    if (target === undefined) throw new Refusal("pairing_code_invalid", "no live pairing code matches; check the code on the terminal's screen");
    const decision = decideConfirm(target, matched !== undefined, ctx.nowMs);
    if (!decision.ok) {
      // The wrong try is kept (it counts toward voiding the code), so this is an answer, not a rollback.
      if (decision.pairing !== target) pairings.update(target.id, decision.pairing.status, decision.pairing.wrongTries);
      ctx.reply("error", { code: decision.code, detail: decision.detail, inReplyTo: ctx.msg.id });
      return;
    }
    const request = openJson<PairingRequest>(keyring, target.requestSealed);
    if (!request.ok || request.value.pairingId !== target.id) {
      o.log.error({ pairing: target.id }, "sealed pairing request cannot be opened");
      throw new Refusal("agreement_tampered", "the stored pairing request failed its integrity check");
    }
    const userId = deviceUserId(keyring, ctx.device);
    if (userId === null) {
      o.log.error({ device: ctx.device.id }, "phone's sealed user id cannot be opened");
      throw new Refusal("agreement_key_unavailable", "this phone's registration cannot be read with the broker's keys");
    }
    pairings.update(target.id, "used", target.wrongTries);
    const { login, terminal } = request.value;
    const lookup = agreementLookup(keyring, terminal.deviceId, login);
    // One phone per terminal + login: confirming a new phone ends the old agreement.
    const previous = agreements.byLookup(lookup);
    const trigger = messageTrigger(ctx);
    if (previous !== null) {
      agreements.shred(previous.id, "replaced", ctx.nowMs);
      appendAudit(db, ctx.nowMs, "agreement.unbound", previous.id, { by: "replaced", terminalId: previous.terminalId, phoneId: previous.phoneId, trigger });
      o.onUnbound?.(ctx, previous.id);
      if (previous.phoneId !== ctx.device.id) ctx.send(previous.phoneId, "unbound", { agreementId: previous.id, by: "replaced", terminalName: terminal.displayName });
    }
    const agreement = newAgreement({ id: randomId("ag"), terminal, login, userId, phoneId: ctx.device.id, limits: body.limits, nowMs: ctx.nowMs });
    const { sealed, keyVersion } = sealAgreement(keyring, agreement);
    agreements.insert({ id: agreement.id, lookup, terminalId: terminal.deviceId, phoneId: ctx.device.id, sealed, keyVersion, version: agreement.version, createdMs: ctx.nowMs });
    // The login, user, serial and limits are sealed (and shredded by unbinding): a digest names them.
    appendAudit(db, ctx.nowMs, "agreement.bound", agreement.id, {
      terminalId: terminal.deviceId,
      phoneId: ctx.device.id,
      pairingId: target.id,
      version: agreement.version,
      keyVersion,
      sealedDigest: sealedDigest(sealed),
      trigger,
    });
    ctx.reply("bound", view(agreement));
    ctx.send(terminal.deviceId, "bound", view(agreement));
  });

  inbox.on("agreements_list", (ctx) => {
    requireKind(ctx, "phone");
    const keyring = o.keyring();
    const items = agreements.activeForPhone(ctx.device.id).map((row) => {
      const opened = openAgreement(keyring, row);
      if (!opened.ok) {
        o.log.error({ agreement: row.id, code: opened.code }, "agreement cannot be opened");
        return { agreementId: row.id, terminalId: row.terminalId, unreadable: opened.code };
      }
      return { ...view(opened.value), usage: opened.value.usage };
    });
    ctx.reply("agreements", { items });
  });

  inbox.on("set_limits", (ctx, raw) => {
    requireKind(ctx, "phone");
    const body = raw as UpBody<"set_limits">;
    const row = ownRow(ctx, body.agreementId);
    if (row.phoneId !== ctx.device.id) throw new Refusal("agreement_not_found", `no active agreement ${body.agreementId} belongs to this phone`);
    checkLimits(body.limits);
    const next = withLimits(open(ctx, row), body.limits);
    const { sealed, keyVersion } = sealAgreement(o.keyring(), next);
    agreements.reseal(row.id, sealed, keyVersion, next.version, row.version);
    appendAudit(db, ctx.nowMs, "agreement.limits_changed", row.id, { version: next.version, keyVersion, sealedDigest: sealedDigest(sealed), trigger: messageTrigger(ctx) });
    ctx.reply("limits_updated", { agreementId: row.id, limits: next.limits });
    ctx.send(row.terminalId, "limits_updated", { agreementId: row.id, limits: next.limits });
  });

  inbox.on("unbind", (ctx, raw) => {
    const body = raw as UpBody<"unbind">;
    const row = ownRow(ctx, body.agreementId);
    // The name is only for the message; a broken seal must not stop anyone from unbinding.
    const opened = openAgreement(o.keyring(), row);
    const terminalName = opened.ok ? opened.value.terminal.displayName : (devices.get(row.terminalId)?.name ?? null);
    const by = ctx.device.id === row.phoneId ? "phone" : "terminal";
    appendAudit(db, ctx.nowMs, "agreement.unbound", row.id, { by, terminalId: row.terminalId, phoneId: row.phoneId, trigger: messageTrigger(ctx) });
    agreements.shred(row.id, by, ctx.nowMs);
    o.onUnbound?.(ctx, row.id);
    const message = { agreementId: row.id, by, terminalName } as const;
    ctx.reply("unbound", message);
    ctx.send(ctx.device.id === row.phoneId ? row.terminalId : row.phoneId, "unbound", message);
  });
}
