// Browser test of the dashboard: starts a real `sandboxer-host run` (temp state, the
// saas-stub extension and the test profiles, as host/tests/support/http_host.rs does),
// drives headless Debian Chromium with playwright-core, and saves a screenshot of each
// page under target/screenshots/. Run by tests/browser/run.sh (`make test`).
import { spawn } from "node:child_process";
import { mkdtempSync, mkdirSync, copyFileSync, readdirSync, writeFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import assert from "node:assert/strict";
import { chromium } from "playwright-core";

const repo = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const TENANT = "tenant-a-token-0123456789";
const ADMIN = "admin-token-0123456789abc";
const shots = join(repo, "target/screenshots");
mkdirSync(shots, { recursive: true });

function setup() {
  const root = mkdtempSync(join(tmpdir(), "sandboxer-browser-"));
  for (const d of ["extensions", "profiles", "state"]) mkdirSync(join(root, d));
  copyFileSync(join(repo, "extensions/saas-stub.wasm"), join(root, "extensions/saas-stub.wasm"));
  copyFileSync(join(repo, "tests/fixtures/extensions/local-pool.toml"), join(root, "extensions/local-pool.toml"));
  for (const dir of ["profiles", "tests/fixtures/profiles"]) {
    for (const f of readdirSync(join(repo, dir)).filter((f) => f.endsWith(".toml"))) {
      copyFileSync(join(repo, dir, f), join(root, "profiles", f));
    }
  }
  writeFileSync(join(root, "sandboxer.toml"),
    `[tenants.a]\ntoken = "${TENANT}"\n[tenants.b]\ntoken = "tenant-b-token-0123456789"\n[admin]\ntoken = "${ADMIN}"\n` +
    `[reaper]\ninterval_ms = 100\n[reload]\ndebounce_ms = 100\n`);
  return root;
}

function startHost(root) {
  const bin = process.env.SANDBOXER_HOST || join(repo, "target/debug/sandboxer-host");
  const child = spawn(bin, [
    "--extensions-dir", join(root, "extensions"), "--profiles-dir", join(root, "profiles"),
    "--state-dir", join(root, "state"), "run", "--listen", "127.0.0.1:0",
    "--config", join(root, "sandboxer.toml"),
  ], { env: { ...process.env, RUST_LOG: "info", SANDBOXER_LISTEN: "" }, stdio: ["ignore", "ignore", "pipe"] });
  let log = "";
  return new Promise((ok, fail) => {
    const t = setTimeout(() => fail(new Error("host did not start:\n" + log)), 60000);
    child.stderr.on("data", (d) => {
      log += d;
      const m = log.match(/sandboxer-host: listening on (\S+)\r?\n/);
      if (m) { clearTimeout(t); ok({ child, base: m[1].startsWith("http") ? m[1] : "http://" + m[1] }); }
    });
    child.on("exit", (code) => fail(new Error("host exited " + code + ":\n" + log)));
  });
}

async function call(base, method, path, token, body) {
  const r = await fetch(base + path, {
    method, headers: { Authorization: "Bearer " + token, "Content-Type": "application/json" },
    body: body ? JSON.stringify(body) : undefined,
  });
  const j = await r.json();
  assert.ok(r.ok, method + " " + path + ": " + r.status + " " + JSON.stringify(j));
  return j;
}

const root = setup();
const { child, base } = await startHost(root);
const profileDir = mkdtempSync(join(tmpdir(), "sandboxer-chromium-"));
let context;
try {
  await call(base, "POST", "/v1/tenants/a/credits", ADMIN, { amount: "25.00", note: "trial" });

  // The page's headers: types and the CSP.
  const page0 = await fetch(base + "/");
  assert.match(page0.headers.get("content-type"), /^text\/html/);
  assert.match(page0.headers.get("content-security-policy"), /script-src 'self'/);

  context = await chromium.launchPersistentContext(profileDir, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    viewport: { width: 1280, height: 900 },
  });
  const page = context.pages()[0] || (await context.newPage());
  const cspErrors = [];
  page.on("console", (m) => { if (m.type() === "error" && /Content Security Policy/.test(m.text())) cspErrors.push(m.text()); });

  // A wrong token shows an error in words.
  await page.goto(base + "/");
  await page.fill("#token", "not-a-token-0123456789");
  await page.click("#signin-form button");
  await page.waitForSelector("#error:not([hidden])");
  const words = await page.textContent("#error");
  assert.match(words, /Sign-in failed/);
  await page.screenshot({ path: join(shots, "signin-error.png"), fullPage: true });

  // The tenant signs in; a sandbox created through the API appears.
  await page.fill("#token", TENANT);
  await page.click("#signin-form button");
  await page.waitForSelector("body[data-view=tenant]");
  await page.waitForSelector("#balances tbody td.num");
  const sb = await call(base, "POST", "/v1/sandboxes", TENANT, { profile: "saas-stub", max_duration_secs: 600 });
  const row = `#sandboxes tr[data-id="${sb.id}"]`;
  await page.waitForSelector(row + "[data-state=running]", { timeout: 10000 });
  await page.click(row);
  await page.waitForSelector("#meter:not([hidden]) #meter-lines tbody td");
  await page.screenshot({ path: join(shots, "tenant-running.png"), fullPage: true });

  // Destroyed: the state changes, the charge is on the statement and in the chart.
  await call(base, "DELETE", "/v1/sandboxes/" + sb.id, TENANT);
  await page.waitForSelector(row + "[data-state=destroyed]", { timeout: 10000 });
  await page.waitForSelector("#statement tr[data-kind=charge]", { timeout: 10000 });
  await page.waitForSelector('#chart-ext rect.bar[data-label="saas-stub"]', { timeout: 10000 });
  await page.waitForSelector("#chart-day rect.bar", { timeout: 10000 });
  const summary = await page.textContent("#meter-summary");
  assert.match(summary, /Charged/);
  await page.screenshot({ path: join(shots, "tenant-destroyed.png"), fullPage: true });

  // The admin: extensions and tenants' balances.
  await page.click("#signout");
  await page.fill("#token", ADMIN);
  await page.click("#signin-form button");
  await page.waitForSelector("body[data-view=admin]");
  await page.waitForSelector("#extensions tbody tr[data-status=loaded]");
  await page.waitForSelector("#tenant-balances tbody td.num");
  const tenants = await page.$$eval("#tenant-balances tbody tr td:first-child", (tds) => tds.map((td) => td.textContent));
  assert.ok(tenants.includes("a"), "tenant a is listed: " + tenants);
  await page.screenshot({ path: join(shots, "admin.png"), fullPage: true });

  assert.deepEqual(cspErrors, [], "the page broke its own CSP");
  console.log("browser tests: 1 passed (sign-in error, tenant, sandbox lifecycle, statement, chart, admin); screenshots in " + shots);
} finally {
  if (context) await context.close();
  child.kill("SIGTERM");
  rmSync(profileDir, { recursive: true, force: true });
  rmSync(root, { recursive: true, force: true });
}
