// The sandboxer dashboard: plain JavaScript, no framework, no inline code (the page's
// Content-Security-Policy allows this origin's scripts only). It signs in with a token
// kept in sessionStorage, sends it as the bearer header, and renders the JSON API's
// answers with textContent only (nothing from the API is parsed as HTML).
"use strict";

const TOKEN_KEY = "sandboxer.token";
const STATEMENT_PAGE = 20;
const POLL_MS = 2000;
const SVG = "http://www.w3.org/2000/svg";

const $ = (id) => document.getElementById(id);
let timer = null;
// Cursors of the statement pages seen: cursors[i] is the `after` of page i (null: first).
let cursors = [null];
let pageIndex = 0;
let pickedSandbox = null;
const extensionOf = new Map();

/** An answer of the API that is not a success, in words. */
class ApiFailure extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(path) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  let resp;
  try {
    resp = await fetch(path, { headers: { Authorization: "Bearer " + token }, cache: "no-store" });
  } catch (e) {
    throw new ApiFailure(0, "network", "cannot reach the host: " + e.message);
  }
  let body = null;
  try { body = await resp.json(); } catch (_) { body = null; }
  if (!resp.ok) {
    const err = body && body.error ? body.error : {};
    const words = err.message || resp.statusText || "request failed";
    throw new ApiFailure(resp.status, err.code || "http_" + resp.status, words);
  }
  return body;
}

function showError(e) {
  const el = $("error");
  if (!e) { el.hidden = true; el.textContent = ""; return; }
  let text = e.message || String(e);
  if (e.status === 401) text = "Sign-in failed: " + text;
  el.textContent = text + (e.code ? " (" + e.code + ")" : "");
  el.hidden = false;
}

function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "" : String(text);
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}

function fill(tableId, rows, render, empty) {
  const tbody = $(tableId).querySelector("tbody");
  tbody.replaceChildren();
  if (rows.length === 0) {
    const tr = document.createElement("tr");
    const td = cell(tr, empty || "none");
    td.colSpan = $(tableId).querySelectorAll("th").length;
    tr.className = "empty";
    tbody.appendChild(tr);
    return;
  }
  for (const row of rows) {
    const tr = document.createElement("tr");
    render(tr, row);
    tbody.appendChild(tr);
  }
}

const money = (m) => (m ? m.amount + " " + m.currency : "");
const when = (s) => (s ? s.replace("T", " ").replace(/\.\d+Z$/, "Z") : "");

// ---- sign-in ----

async function signIn(token) {
  sessionStorage.setItem(TOKEN_KEY, token);
  showError(null);
  try {
    // The admin token reads the overview; a tenant's is refused it with 403.
    await api("/v1/admin/overview");
    start("admin");
  } catch (e) {
    if (e.status === 403) {
      try {
        const b = await api("/v1/credits");
        start("tenant", b.tenant);
      } catch (e2) { signOut(); showError(e2); }
    } else { signOut(); showError(e); }
  }
}

function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  if (timer) clearInterval(timer);
  timer = null;
  $("tenant").hidden = true;
  $("admin").hidden = true;
  $("signout").hidden = true;
  $("who").textContent = "";
  $("signin").hidden = false;
  document.body.dataset.view = "signin";
}

function start(role, tenant) {
  $("signin").hidden = true;
  $("signout").hidden = false;
  $("who").textContent = role === "admin" ? "operator (admin token)" : "tenant " + tenant;
  document.body.dataset.view = role;
  const refresh = role === "admin" ? refreshAdmin : refreshTenant;
  $(role).hidden = false;
  cursors = [null];
  pageIndex = 0;
  refresh(true);
  if (timer) clearInterval(timer);
  timer = setInterval(() => refresh(false), POLL_MS);
}

// ---- tenant ----

async function refreshTenant(full) {
  try {
    const [credits, list] = await Promise.all([api("/v1/credits"), api("/v1/sandboxes?limit=100")]);
    fill("balances", credits.balances, (tr, b) => {
      cell(tr, b.currency); cell(tr, b.posted, "num"); cell(tr, b.held, "num"); cell(tr, b.available, "num");
    }, "no credits yet");
    for (const s of list.sandboxes) extensionOf.set(s.id, s.extension_id);
    renderSandboxes(list.sandboxes);
    await loadStatementPage();
    await drawSpend();
    if (pickedSandbox) await showMeter(pickedSandbox);
    showError(null);
  } catch (e) {
    showError(e);
    if (e.status === 401) signOut();
  }
  void full;
}

function renderSandboxes(rows) {
  fill("sandboxes", rows, (tr, s) => {
    tr.className = "pick" + (s.id === pickedSandbox ? " picked" : "");
    tr.dataset.id = s.id;
    tr.dataset.state = s.state;
    tr.title = "show this sandbox's meter";
    tr.addEventListener("click", () => { pickedSandbox = s.id; showMeter(s.id).catch(showError); });
    cell(tr, s.id); cell(tr, s.profile); cell(tr, s.state, "state-" + s.state);
    cell(tr, s.extension_id); cell(tr, money(s.held), "num");
    cell(tr, s.meter ? money(s.meter.total) : "", "num"); cell(tr, when(s.created_at));
  }, "no sandboxes");
}

async function showMeter(id) {
  const s = await api("/v1/sandboxes/" + encodeURIComponent(id));
  $("meter").hidden = false;
  $("meter-id").textContent = s.id + " (" + s.state + ")";
  const m = s.meter;
  const lines = m ? m.line_items : (s.estimate ? s.estimate.line_items : []);
  fill("meter-lines", lines, (tr, l) => {
    cell(tr, l.description); cell(tr, l.quantity, "num"); cell(tr, l.unit);
    cell(tr, l.unit_price, "num"); cell(tr, l.amount, "num");
  }, "no lines");
  $("meter-summary").textContent = m
    ? "Charged " + money(m.total) + " (exact " + m.exact + "); held " + money(m.held) +
      ", released " + money(m.released) + "; ran " + (m.usage ? m.usage.duration_ms : "?") + " ms."
    : "Not settled yet: these are the estimate's lines for the whole maximum duration; the meter comes at destroy.";
  for (const tr of $("sandboxes").querySelectorAll("tbody tr")) {
    tr.classList.toggle("picked", tr.dataset.id === id);
  }
}

async function loadStatementPage() {
  const after = cursors[pageIndex];
  const q = "/v1/credits/entries?limit=" + STATEMENT_PAGE + (after ? "&after=" + encodeURIComponent(after) : "");
  const page = await api(q);
  cursors[pageIndex + 1] = page.next;
  fill("statement", page.entries, (tr, e) => {
    tr.dataset.kind = e.kind;
    cell(tr, when(e.at)); cell(tr, e.kind); cell(tr, e.posted_delta + " " + e.currency, "num");
    cell(tr, e.held_delta, "num"); cell(tr, e.sandbox_id); cell(tr, e.note);
  }, "no statement lines");
  $("stmt-page").textContent = "page " + (pageIndex + 1) + (page.next ? "" : " (last)");
  $("stmt-next").disabled = !page.next;
  $("stmt-first").disabled = pageIndex === 0;
}

/** Every statement line, read page by page (at most 20 000). */
async function allEntries() {
  const out = [];
  let after = null;
  for (let i = 0; i < 20; i++) {
    const page = await api("/v1/credits/entries?limit=1000" + (after ? "&after=" + encodeURIComponent(after) : ""));
    out.push(...page.entries);
    if (!page.next) break;
    after = page.next;
  }
  return out;
}

async function drawSpend() {
  const entries = await allEntries();
  const byDay = new Map();
  const byExt = new Map();
  for (const e of entries) {
    if (e.kind !== "charge" && e.kind !== "overdraft" && e.kind !== "debt") continue;
    const spent = -Number(e.posted_delta);
    if (!(spent > 0)) continue;
    const day = (e.at || "").slice(0, 10);
    byDay.set(day, (byDay.get(day) || 0) + spent);
    let ext = e.sandbox_id ? extensionOf.get(e.sandbox_id) : null;
    if (e.sandbox_id && ext === undefined) {
      try { ext = (await api("/v1/sandboxes/" + encodeURIComponent(e.sandbox_id))).extension_id; }
      catch (_) { ext = null; }
      extensionOf.set(e.sandbox_id, ext);
    }
    const key = ext || "(none)";
    byExt.set(key, (byExt.get(key) || 0) + spent);
  }
  barChart($("chart-day"), [...byDay.entries()].sort());
  barChart($("chart-ext"), [...byExt.entries()].sort((a, b) => b[1] - a[1]));
}

/** A horizontal bar chart of [label, value] pairs, as inline SVG. */
function barChart(host, pairs) {
  const row = 22, labelW = 110, width = 420, valueW = 90;
  const h = Math.max(1, pairs.length) * row + 4;
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", "0 0 " + width + " " + h);
  svg.setAttribute("role", "img");
  const max = Math.max(0, ...pairs.map((p) => p[1]));
  if (pairs.length === 0) {
    const t = document.createElementNS(SVG, "text");
    t.setAttribute("x", "4"); t.setAttribute("y", "16");
    t.textContent = "nothing charged yet";
    svg.appendChild(t);
  }
  pairs.forEach(([label, value], i) => {
    const y = i * row + 2;
    const t = document.createElementNS(SVG, "text");
    t.setAttribute("x", "0"); t.setAttribute("y", String(y + 14));
    t.textContent = label;
    const bar = document.createElementNS(SVG, "rect");
    const w = max > 0 ? Math.max(1, ((width - labelW - valueW) * value) / max) : 1;
    bar.setAttribute("class", "bar");
    bar.setAttribute("x", String(labelW)); bar.setAttribute("y", String(y + 3));
    bar.setAttribute("width", String(w)); bar.setAttribute("height", String(row - 8));
    bar.dataset.label = label;
    bar.dataset.value = String(value);
    const title = document.createElementNS(SVG, "title");
    title.textContent = label + ": " + value.toPrecision(6);
    bar.appendChild(title);
    const v = document.createElementNS(SVG, "text");
    v.setAttribute("x", String(labelW + w + 4)); v.setAttribute("y", String(y + 14));
    v.textContent = value.toPrecision(4);
    svg.append(t, bar, v);
  });
  host.replaceChildren(svg);
}

// ---- admin ----

async function refreshAdmin() {
  try {
    const [list, overview] = await Promise.all([api("/v1/extensions"), api("/v1/admin/overview")]);
    const inUse = new Map(overview.in_use.map((r) => [r.extension, r.sandboxes]));
    fill("extensions", list.extensions, (tr, x) => {
      tr.dataset.status = x.status;
      cell(tr, x.id); cell(tr, x.status); cell(tr, x.kind);
      cell(tr, x.health ? x.health.state : ""); cell(tr, x.health ? x.health.consecutive_failures : "", "num");
      cell(tr, x.startup_latency_ms === null || x.startup_latency_ms === undefined ? "" : x.startup_latency_ms + " ms", "num");
      cell(tr, x.status === "skipped" ? "" : inUse.get(x.id) || 0, "num");
      cell(tr, x.containment ? x.containment.traps + " of " + x.containment.calls + " calls" : "", "num");
      cell(tr, [x.file, x.sidecar].filter(Boolean).join(" + "));
      cell(tr, x.reason);
    }, "no extensions");
    $("pending").textContent = list.pending.length ? "Compiling: " + list.pending.join(", ") : "";
    fill("tenant-balances", overview.balances, (tr, b) => {
      cell(tr, b.tenant); cell(tr, b.currency); cell(tr, b.posted, "num"); cell(tr, b.held, "num"); cell(tr, b.available, "num");
    }, "no tenant has credits yet");
    showError(null);
  } catch (e) {
    showError(e);
    if (e.status === 401) signOut();
  }
}

// ---- wiring ----

document.addEventListener("DOMContentLoaded", () => {
  $("signin-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const token = $("token").value.trim();
    $("token").value = "";
    if (token) signIn(token);
  });
  $("signout").addEventListener("click", signOut);
  $("stmt-next").addEventListener("click", () => {
    if (cursors[pageIndex + 1]) { pageIndex += 1; loadStatementPage().catch(showError); }
  });
  $("stmt-first").addEventListener("click", () => { pageIndex = 0; loadStatementPage().catch(showError); });
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) signIn(saved); else signOut();
});
