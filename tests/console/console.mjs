// The admin console in real headless Chromium, driven with Playwright's client. Run by
// tests/it/console.rs, which starts keygate and passes:
//   node console.mjs <scenario>        lifecycle | errors
//   KEYGATE_URL        the server, e.g. http://127.0.0.1:41234
//   KEYGATE_EMAIL, KEYGATE_PASSWORD    the bootstrap admin
//   KEYGATE_LOCKOUT_THRESHOLD          the server's (errors scenario)
//   CHROMIUM           the browser binary (default /usr/bin/chromium)
//   SCREENSHOTS        a directory: write the README's screenshots there (lifecycle)
// Any console error, uncaught exception or Content-Security-Policy violation in the page
// fails the run, as does an axe-core violation of impact serious or critical.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const require = createRequire(import.meta.url);
const AXE_SOURCE = readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');

const BASE = process.env.KEYGATE_URL;
const EMAIL = process.env.KEYGATE_EMAIL;
const PASSWORD = process.env.KEYGATE_PASSWORD;
const SCREENSHOTS = process.env.SCREENSHOTS || '';
assert.ok(BASE && EMAIL && PASSWORD, 'KEYGATE_URL, KEYGATE_EMAIL and KEYGATE_PASSWORD are required');

const DESKTOP = { width: 1280, height: 800 };
const PHONE = { width: 360, height: 760 };

function step(text) {
  console.log(`- ${text}`);
}

// ---- The browser and what it reports --------------------------------------------------

/** A page whose console errors, uncaught exceptions and CSP violations are collected;
 *  `allowed` lists the failed requests a scenario provokes on purpose ([status, path]),
 *  which Chromium reports as console errors too. */
async function openBrowser(allowed = []) {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-background-networking'],
  });
  const context = await browser.newContext({
    viewport: DESKTOP,
    colorScheme: 'light',
    locale: 'en-GB',
    timezoneId: 'UTC',
  });
  await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: BASE });
  // Chromium logs violations as console errors itself; the event makes sure none is missed.
  await context.addInitScript(() => {
    document.addEventListener('securitypolicyviolation', (e) => {
      console.error(`CSP violation: ${e.violatedDirective} blocked ${e.blockedURI || 'inline'} in ${e.sourceFile}:${e.lineNumber}`);
    });
  });
  context.setDefaultTimeout(20_000);
  const page = await context.newPage();
  const problems = [];
  page.on('console', (message) => {
    if (message.type() !== 'error') return;
    const text = message.text();
    const url = message.location()?.url ?? '';
    const status = /status of (\d+)/.exec(text)?.[1];
    const path = url ? new URL(url, BASE).pathname : '';
    if (status && allowed.some(([s, p]) => s === Number(status) && path.startsWith(p))) return;
    problems.push(`console error: ${text} (${url})`);
  });
  page.on('pageerror', (error) => problems.push(`uncaught exception: ${error.message}`));
  page.on('crash', () => problems.push('the page crashed'));
  return { browser, context, page, problems };
}

function assertQuiet(problems) {
  assert.deepEqual(problems, [], `the browser reported:\n${problems.join('\n')}`);
}

/** axe-core on the page as it is now, in the light and the dark scheme. */
async function checkAccessibility(page, what) {
  for (const scheme of ['light', 'dark']) {
    await page.emulateMedia({ colorScheme: scheme });
    if (await page.evaluate(() => typeof window.axe === 'undefined')) await page.evaluate(AXE_SOURCE);
    const result = await page.evaluate(() => window.axe.run(document, { resultTypes: ['violations'] }));
    const serious = result.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
    const report = serious.map((v) => `${v.impact} ${v.id}: ${v.help}\n  ${v.nodes.map((n) => n.target.join(' ')).join('\n  ')}`);
    assert.deepEqual(report, [], `axe on ${what} (${scheme}):\n${report.join('\n')}`);
  }
  await page.emulateMedia({ colorScheme: 'light' });
  step(`axe: no serious or critical violation on ${what}, light and dark`);
}

/** The element with keyboard focus shows it. */
async function assertVisibleFocus(page) {
  const focus = await page.evaluate(() => {
    const e = document.activeElement;
    const s = getComputedStyle(e);
    return { id: e.id || e.textContent.trim(), style: s.outlineStyle, width: s.outlineWidth, visible: e.matches(':focus-visible') };
  });
  assert.ok(focus.visible && focus.style !== 'none' && focus.width !== '0px', `no visible focus on ${JSON.stringify(focus)}`);
}

/** Presses Tab until `selector` has the focus. */
async function tabTo(page, selector, limit = 30) {
  for (let i = 0; i < limit; i++) {
    await page.keyboard.press('Tab');
    if (await page.evaluate((s) => document.activeElement?.matches(s), selector)) {
      await assertVisibleFocus(page);
      return;
    }
  }
  assert.fail(`Tab never reached ${selector}`);
}

/** Neither the page nor a table in it needs scrolling sideways to be read. */
async function assertNoHorizontalScroll(page, what) {
  const wide = await page.evaluate(() =>
    [document.documentElement, ...document.querySelectorAll('.table-wrap')]
      .filter((e) => e.scrollWidth > e.clientWidth)
      .map((e) => `${e.className || e.tagName}: ${e.scrollWidth} px in ${e.clientWidth}`));
  assert.deepEqual(wide, [], `${what} scrolls sideways at ${page.viewportSize().width} px`);
}

// ---- keygate from the outside ---------------------------------------------------------

async function apiLogin(apiKey, password) {
  const response = await fetch(`${BASE}/auth/login`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ api_key: apiKey, password }),
  });
  return { status: response.status, body: await response.json() };
}

function claims(token) {
  return JSON.parse(Buffer.from(token.split('.')[1], 'base64url').toString('utf8'));
}

async function sessionCookie(context) {
  const cookie = (await context.cookies(BASE)).find((c) => c.name.endsWith('keygate_session'));
  assert.ok(cookie, 'the browser holds a session cookie');
  return `${cookie.name}=${cookie.value}`;
}

/** Calls the API from the page, as its script does (same origin, the browser's cookie). */
function fromPage(page, method, path, body) {
  return page.evaluate(async ([method, path, body]) => {
    const init = { method, headers: { 'content-type': 'application/json' } };
    if (body !== undefined) init.body = JSON.stringify(body);
    const response = await fetch(path, init);
    return { status: response.status, body: response.status === 204 ? null : await response.json() };
  }, [method, path, body]);
}

// ---- The console ----------------------------------------------------------------------

async function signIn(page, email, password) {
  await page.fill('#sign-in-email', email);
  await page.fill('#sign-in-password', password);
  await page.click('#sign-in-form button[type=submit]');
}

function keyRow(page, apiKey) {
  return page.locator('#keys-body tr', { has: page.locator('code', { hasText: apiKey }) });
}

/** Reads the password the secret dialog shows, and closes it; checks it is gone after. */
async function takeSecret(page, context, title) {
  const dialog = page.locator('#secret-dialog');
  await dialog.waitFor({ state: 'visible' });
  assert.equal(await page.textContent('#secret-title'), title);
  const apiKey = await page.textContent('#secret-key');
  const password = await page.textContent('#secret-password');
  assert.match(password, /^kgp_[A-Za-z0-9]+$/);
  const warning = await page.textContent('#secret-warning');
  assert.match(warning, /only time keygate shows this password/);
  assert.match(warning, /cannot show it again/);
  return { apiKey, password, dialog };
}

async function assertSecretGone(page, password) {
  // The dialog's close event, which clears it, follows its closing as a task of its own.
  await page
    .waitForFunction((p) => !document.documentElement.outerHTML.includes(p), password, { timeout: 5_000 })
    .catch(() => assert.fail('the password is still in the page after its dialog closed'));
  const stored = await page.evaluate(() => JSON.stringify({ local: { ...localStorage }, session: { ...sessionStorage } }));
  assert.ok(!stored.includes(password), 'the password was written to web storage');
  assert.ok(!page.url().includes(password), 'the password is in the URL');
  assert.equal(await page.evaluate(() => localStorage.length + sessionStorage.length), 0, 'web storage is used');
}

async function auditActions(page) {
  await page.locator('#audit-body tr').first().waitFor();
  return page.locator('#audit-body tr').evaluateAll((rows) => rows.map((r) => r.dataset.action));
}

async function lifecycle({ context, page }) {
  const shot = async (name, options = {}) => {
    if (SCREENSHOTS) await page.screenshot({ path: join(SCREENSHOTS, name), ...options });
  };

  step('sign in');
  await page.goto(`${BASE}/`);
  assert.equal(new URL(page.url()).pathname, '/console', '/ redirects to the console');
  await page.locator('#sign-in').waitFor();
  await checkAccessibility(page, 'the sign-in page');
  await signIn(page, EMAIL, PASSWORD);
  await page.locator('#keys').waitFor();
  await page.locator('#keys-empty').waitFor();

  step('generate a key with a name and a scope, with the keyboard alone');
  await tabTo(page, '#generate-open');
  await page.keyboard.press('Enter');
  await page.locator('#generate-dialog').waitFor();
  assert.equal(await page.evaluate(() => document.activeElement.id), 'generate-name', 'the dialog takes the focus');
  await checkAccessibility(page, 'the generate dialog');
  await page.keyboard.type('ci-deploy');
  await tabTo(page, '#generate-scopes');
  await page.keyboard.type('orders:read');
  await tabTo(page, '#generate-expiry');
  for (let i = 0; i < 3; i++) await page.keyboard.press('ArrowDown');
  assert.equal(await page.inputValue('#generate-expiry'), '2592000');
  await tabTo(page, '#generate-form button[type=submit]');
  await page.keyboard.press('Enter');
  const first = await takeSecret(page, context, 'Key generated');
  await assertVisibleFocus(page);
  await page.keyboard.press('Enter');
  assert.equal(await page.textContent('#copy-status'), 'Copied.');
  assert.equal(await page.evaluate(() => navigator.clipboard.readText()), first.password, 'Copy copies the password');
  await page.keyboard.press('Escape');
  await first.dialog.waitFor({ state: 'hidden' });
  await assertSecretGone(page, first.password);

  step('the key is in the table');
  const row = keyRow(page, first.apiKey);
  await row.waitFor();
  assert.equal(await row.locator('td[data-label=Name]').textContent(), 'ci-deploy');
  assert.equal(await row.locator('td[data-label=Scopes]').textContent(), 'orders:read');
  assert.equal(await row.locator('td[data-label=Status]').textContent(), 'Enabled');
  assert.notEqual(await row.locator('td[data-label=Expires]').textContent(), 'Never');
  await checkAccessibility(page, 'the keys table');

  step('its password logs in, and the token carries the scope');
  const login = await apiLogin(first.apiKey, first.password);
  assert.equal(login.status, 200, JSON.stringify(login.body));
  assert.deepEqual(claims(login.body).scope.split(' '), ['orders:read']);

  step('roll it: both passwords work during the grace period');
  await row.locator('button[data-act=roll]').click();
  await page.locator('#roll-dialog').waitFor();
  assert.equal(await page.inputValue('#roll-grace'), '86400');
  await page.click('#roll-form button[type=submit]');
  const rolled = await takeSecret(page, context, 'Key rolled');
  assert.equal(rolled.apiKey, first.apiKey);
  assert.notEqual(rolled.password, first.password);
  assert.match(await page.textContent('#secret-note'), /old password keeps working until/);
  await page.click('#secret-dialog button[data-close]');
  await rolled.dialog.waitFor({ state: 'hidden' });
  await assertSecretGone(page, rolled.password);
  assert.equal((await apiLogin(first.apiKey, first.password)).status, 200, 'the old password, in its grace period');
  assert.equal((await apiLogin(first.apiKey, rolled.password)).status, 200, 'the new password');

  step('edit its name, scopes and expiry');
  await row.locator('button[data-act=edit]').click();
  await page.locator('#edit-dialog').waitFor();
  assert.equal(await page.inputValue('#edit-name'), 'ci-deploy');
  await page.fill('#edit-name', 'ci-deploy-eu');
  await page.fill('#edit-scopes', 'orders:read orders:write');
  await page.fill('#edit-expires', '2030-01-31T12:00');
  await page.click('#edit-form button[type=submit]');
  await page.locator('#edit-dialog').waitFor({ state: 'hidden' });
  await row.locator('td[data-label=Name]', { hasText: 'ci-deploy-eu' }).waitFor();
  assert.deepEqual(await row.locator('td[data-label=Scopes] li').allTextContents(), ['orders:read', 'orders:write']);
  // The browser runs in UTC here: the local time typed is the expiry stored.
  assert.equal(await row.locator('td[data-label=Expires] time').getAttribute('datetime'), '2030-01-31T12:00:00Z');
  const edited = await apiLogin(first.apiKey, rolled.password);
  assert.deepEqual(claims(edited.body).scope.split(' ').sort(), ['orders:read', 'orders:write']);

  step('disable it: its login fails; enable it again');
  await row.getByRole('button', { name: 'Disable ci-deploy-eu' }).click();
  await row.locator('td[data-label=Status]', { hasText: 'Disabled' }).waitFor();
  assert.equal((await apiLogin(first.apiKey, rolled.password)).status, 401, 'a disabled key logs in');
  await row.getByRole('button', { name: 'Enable ci-deploy-eu' }).click();
  await row.locator('td[data-label=Status]', { hasText: 'Enabled' }).waitFor();
  assert.equal((await apiLogin(first.apiKey, rolled.password)).status, 200, 'an enabled key again');
  await row.getByRole('button', { name: 'Disable ci-deploy-eu' }).click();
  await row.locator('td[data-label=Status]', { hasText: 'Disabled' }).waitFor();

  step('delete it, confirmed in a dialog that names it');
  await row.getByRole('button', { name: 'Delete ci-deploy-eu' }).click();
  await page.locator('#delete-dialog').waitFor();
  const confirm = await page.textContent('#delete-text');
  assert.ok(confirm.includes('ci-deploy-eu') && confirm.includes(first.apiKey), confirm);
  await page.locator('#delete-dialog').getByRole('button', { name: 'Delete ci-deploy-eu' }).click();
  await page.locator('#delete-dialog').waitFor({ state: 'hidden' });
  await row.waitFor({ state: 'detached' });
  await page.locator('#keys-empty').waitFor();
  assert.equal((await apiLogin(first.apiKey, rolled.password)).status, 401, 'a deleted key logs in');

  step('the audit log shows it all, newest first');
  await page.getByRole('link', { name: 'Audit log' }).click();
  await page.locator('#audit').waitFor();
  const actions = await auditActions(page);
  assert.equal(actions[0], 'key.deleted', `newest first: ${actions}`);
  for (const action of ['key.deleted', 'key.disabled', 'key.enabled', 'key.updated', 'key.rolled', 'key.generated', 'admin.login']) {
    assert.ok(actions.includes(action), `${action} is not in the audit view: ${actions}`);
  }
  assert.ok(actions.indexOf('key.rolled') < actions.indexOf('key.generated'), `newest first: ${actions}`);
  await checkAccessibility(page, 'the audit log');

  step('search by name and page through the keys');
  const names = [
    ['billing-service', ['invoices:read', 'invoices:write'], 7_776_000],
    ['ci-deploy', ['deploy'], undefined],
    ['reporting', ['reports:read'], 31_536_000],
  ];
  const billing = {
    limits: [{ name: 'burst', limit: 100, window_seconds: 60 }],
    credits: { remaining: 10_000, refill: { amount: 10_000, interval: 'monthly', day: 1 } },
  };
  for (const [name, scopes, expires_in] of names) {
    const limits = name === 'billing-service' ? billing : {};
    const made = await fromPage(page, 'POST', '/auth/keys/generate', { name, scopes, expires_in, ...limits });
    assert.equal(made.status, 200, JSON.stringify(made.body));
  }
  await page.getByRole('link', { name: 'Keys' }).click();
  await page.locator('#keys-body tr').nth(2).waitFor();
  await page.fill('#search-name', 'billing-service');
  await page.keyboard.press('Enter');
  await page.waitForURL(/\?name=billing-service$/);
  await page.locator('#keys-body tr').first().waitFor();
  assert.deepEqual(await page.locator('#keys-body td[data-label=Name]').allTextContents(), ['billing-service']);
  assert.equal(await page.inputValue('#search-name'), 'billing-service');
  step('usage: each limit with what is used of it, and the credits left');
  await page.locator('#keys-body td[data-label=Usage] li').first().waitFor();
  assert.deepEqual(await page.locator('#keys-body td[data-label=Usage] li').allTextContents(), [
    'burst: 0 of 100 per minute',
    '10000 credits left, refilled monthly',
  ]);
  await page.goto(`${BASE}/console?name=nobody`);
  await page.locator('#keys-empty', { hasText: 'nobody' }).waitFor();
  await page.goto(`${BASE}/console?limit=2`);
  await page.locator('#keys-next').waitFor();
  assert.equal(await page.locator('#keys-body tr').count(), 2);
  const firstPage = await page.locator('#keys-body td[data-label=Name]').allTextContents();
  await page.click('#keys-next');
  await page.locator('#keys-first').waitFor();
  const secondPage = await page.locator('#keys-body td[data-label=Name]').allTextContents();
  assert.equal(secondPage.length, 1);
  assert.deepEqual([...firstPage, ...secondPage].sort(), ['billing-service', 'ci-deploy', 'reporting']);
  assert.ok(await page.locator('#keys-next').isHidden(), 'a next page after the last');

  step('readable at 360 px and on a desktop');
  await page.goto(`${BASE}/console`);
  await page.locator('#keys-body tr').nth(2).waitFor();
  await assertNoHorizontalScroll(page, 'the keys page');
  await shot('console-desktop.png');
  await page.setViewportSize(PHONE);
  await assertNoHorizontalScroll(page, 'the keys page');
  await checkAccessibility(page, 'the keys table at 360 px');
  await shot('console-360.png', { fullPage: true });
  await page.setViewportSize(DESKTOP);
  await page.click('#generate-open');
  await page.fill('#generate-name', 'search-indexer');
  await page.fill('#generate-scopes', 'catalog:read');
  await page.selectOption('#generate-expiry', '7776000');
  await page.click('#generate-form button[type=submit]');
  const shown = await takeSecret(page, context, 'Key generated');
  await page.locator('#secret-copy').blur();
  await shot('console-generate.png');
  await page.click('#secret-dialog button[data-close]');
  await assertSecretGone(page, shown.password);

  step('sign out: the session is dead on the server');
  await page.waitForFunction(() => [...document.querySelectorAll('td[data-label=Usage]')].every((td) => td.textContent !== '…'));
  const cookie = await sessionCookie(context);
  await page.click('#sign-out');
  await page.locator('#sign-in').waitFor();
  assert.equal(await page.textContent('#notice'), 'You have signed out.');
  const after = await fetch(`${BASE}/auth/keys/list`, { headers: { cookie } });
  assert.equal(after.status, 401, 'the signed-out session still works on the server');
  assert.equal(await page.locator('#keys-body tr').count(), 0, 'the keys stay on the page after sign-out');

}

async function errors({ context, page }) {
  const threshold = Number(process.env.KEYGATE_LOCKOUT_THRESHOLD || 5);
  const error = page.locator('#sign-in-error');

  step('a wrong password is said in words');
  await page.goto(`${BASE}/console`);
  await signIn(page, EMAIL, 'not the password at all');
  await error.filter({ hasText: 'Wrong email or password.' }).waitFor();

  step('a lockout is said with its wait');
  let locked = '';
  for (let i = 0; i <= threshold && !locked; i++) {
    await signIn(page, 'nobody@example.com', 'not the password at all');
    await page.locator('#sign-in-form button[type=submit]:enabled').waitFor();
    const text = await error.textContent();
    if (text.startsWith('Too many')) locked = text;
    else assert.equal(text, 'Wrong email or password.');
  }
  assert.match(locked, /^Too many failed sign-ins\. Try again in \d+ (second|seconds|minute|minutes)\.$/);

  step('a 4xx from the API is said in words');
  await signIn(page, EMAIL, PASSWORD);
  await page.locator('#keys').waitFor();
  await page.click('#generate-open');
  await page.fill('#generate-scopes', 'bad\\scope');
  await page.click('#generate-form button[type=submit]');
  const refused = page.locator('#generate-error');
  await refused.waitFor();
  const text = await refused.textContent();
  assert.match(text, /^Could not generate the key: \S/);
  assert.ok(!text.includes('{') && !text.includes('"status"'), `raw JSON shown: ${text}`);
  await page.keyboard.press('Escape');
  await page.goto(`${BASE}/console?after=00000000-0000-4000-8000-000000000000`);
  await page.locator('#keys-error').waitFor();
  assert.match(await page.textContent('#keys-error'), /^Could not list the keys: \S.*\.$/);

  step('a name that looks like HTML stays text');
  const markup = '<img src=x onerror="console.error(1)">';
  const made = await fromPage(page, 'POST', '/auth/keys/generate', { name: markup });
  assert.equal(made.status, 200, JSON.stringify(made.body));
  await page.goto(`${BASE}/console`);
  const named = keyRow(page, made.body.api_key);
  assert.equal(await named.locator('td[data-label=Name]').textContent(), markup);
  assert.equal(await page.locator('#keys-body img').count(), 0);

  step('an ended session is said in words, in the page and on reload');
  const cookie = await sessionCookie(context);
  const ended = await fetch(`${BASE}/auth/logout`, { method: 'POST', headers: { cookie } });
  assert.equal(ended.status, 204);
  await page.goto(`${BASE}/console`);
  await page.locator('#sign-in').waitFor();
  assert.equal(await page.textContent('#notice'), 'Your session has ended. Sign in again.');
  await signIn(page, EMAIL, PASSWORD);
  await page.locator('#keys').waitFor();
  const second = await sessionCookie(context);
  assert.equal((await fetch(`${BASE}/auth/logout`, { method: 'POST', headers: { cookie: second } })).status, 204);
  await page.click('#generate-open');
  await page.click('#generate-form button[type=submit]');
  await page.locator('#sign-in').waitFor();
  assert.equal(await page.textContent('#notice'), 'Your session has ended. Sign in again.');
  assert.ok(await page.locator('#generate-dialog').isHidden(), 'the dialog stays open over the sign-in form');

}

/** Each scenario, with the failed requests it provokes on purpose. */
const scenarios = {
  lifecycle: [lifecycle, []],
  errors: [errors, [
    [401, '/auth/login'],
    [429, '/auth/login'],
    [422, '/auth/keys/generate'],
    // The session is ended behind the page's back: whatever it asks next is refused.
    [401, '/auth/keys/'],
    [400, '/auth/keys/list'],
  ]],
};
const name = process.argv[2];
assert.ok(scenarios[name], `usage: node console.mjs ${Object.keys(scenarios).join('|')}`);
const [scenario, allowed] = scenarios[name];
const browser = await openBrowser(allowed);
try {
  await scenario(browser);
  assertQuiet(browser.problems);
  console.log(`console ${name}: passed`);
} catch (error) {
  console.error(error);
  const shown = await browser.page
    .locator('.error:visible, .notice:visible')
    .allTextContents()
    .catch(() => []);
  if (shown.length) console.error(`the page shows: ${shown.join(' | ')}`);
  if (browser.problems.length) console.error(`the browser reported:\n${browser.problems.join('\n')}`);
  process.exitCode = 1;
} finally {
  await browser.browser.close();
}
