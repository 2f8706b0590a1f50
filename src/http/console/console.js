// The admin console's script. It calls keygate's JSON API with the session cookie, exactly
// as any client would, and builds what it shows with DOM calls and textContent only (the
// page's policy forbids HTML from strings). Secrets are held in the page only while the
// dialog that shows them is open: never in storage, a URL or a variable that outlives it.
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);
  const PAGE_SIZE = 50;
  const dateTime = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short' });
  const dateOnly = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium' });

  // ---- Talking to the API -------------------------------------------------------------

  /** A refused or failed call: the HTTP status (0: no answer), the problem's detail, and
   *  Retry-After in seconds when given. */
  class Problem extends Error {
    constructor(status, detail, retryAfter) {
      super(detail || `HTTP ${status}`);
      this.status = status;
      this.detail = detail;
      this.retryAfter = retryAfter;
    }
  }

  async function call(method, path, body) {
    const init = { method, credentials: 'same-origin', cache: 'no-store', headers: { accept: 'application/json' } };
    if (body !== undefined) {
      init.headers['content-type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch {
      throw new Problem(0, '');
    }
    if (response.ok) return response;
    let detail = '';
    try {
      const problem = await response.json();
      if (problem && typeof problem.detail === 'string') detail = problem.detail;
    } catch {
      // Not a problem document (a proxy's error page): the status says enough.
    }
    const retry = Number.parseInt(response.headers.get('retry-after') ?? '', 10);
    throw new Problem(response.status, detail, Number.isFinite(retry) ? retry : null);
  }

  /** An admin call: a 401 means the session is over, which takes the page to sign-in. */
  async function admin(method, path, body) {
    try {
      return await call(method, path, body);
    } catch (error) {
      if (error instanceof Problem && error.status === 401) showSignIn('Your session has ended. Sign in again.');
      throw error;
    }
  }

  function duration(seconds) {
    const s = Math.max(1, seconds ?? 1);
    if (s < 90) return s === 1 ? '1 second' : `${s} seconds`;
    const m = Math.ceil(s / 60);
    return m === 1 ? '1 minute' : `${m} minutes`;
  }

  /** What went wrong, in words, for `action` ("Could not delete the key"). */
  function words(action, error) {
    if (!(error instanceof Problem)) return `${action}: ${error.message}`;
    const detail = error.detail ? sentence(error.detail) : '';
    switch (error.status) {
      case 0: return `${action}: keygate could not be reached. Check the connection and try again.`;
      case 401: return 'Your session has ended. Sign in again.';
      case 403: return `${action}: keygate refused the request as coming from another site. Reload the console and try again.`;
      case 404: return `${action}: there is no such key in this account (deleted meanwhile?).`;
      case 429: return `${action}: too many requests. Try again in ${duration(error.retryAfter)}.`;
      case 503: return `${action}: keygate is busy or cannot reach its store. Try again in a moment.`;
      default: return `${action}: ${detail || `keygate answered with status ${error.status}.`}`;
    }
  }

  function sentence(text) {
    const t = text.trim();
    return t.charAt(0).toUpperCase() + t.slice(1) + (/[.!?]$/.test(t) ? '' : '.');
  }

  function say(element, text) {
    element.textContent = text ?? '';
    element.hidden = !text;
  }

  // ---- Small DOM helpers ----------------------------------------------------------------

  function el(tag, props = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props)) {
      if (value === undefined || value === null) continue;
      if (key === 'className') node.className = value;
      else if (key === 'text') node.textContent = value;
      else if (key.startsWith('data-') || key.startsWith('aria-') || key === 'datetime' || key === 'title') node.setAttribute(key, value);
      else node[key] = value;
    }
    node.append(...children.filter((c) => c !== null && c !== undefined));
    return node;
  }

  /** `iso` as a <time>, its date (and time of day, unless `format` is `dateOnly`) in the
   *  browser's locale and zone; the exact instant in its title. */
  function time(iso, empty, format = dateTime) {
    if (!iso) return el('span', { className: 'muted', text: empty });
    const at = new Date(iso);
    if (Number.isNaN(at.getTime())) return el('span', { text: iso });
    return el('time', { datetime: iso, title: dateTime.format(at), text: format.format(at) });
  }

  function cell(label, ...content) {
    return el('td', { 'data-label': label }, ...content);
  }

  function scopesOf(text) {
    return text.split(/[\s,]+/).filter(Boolean);
  }

  /** A datetime-local value (local time) as RFC 3339 UTC in whole seconds; '' as null. */
  function toRfc3339(local) {
    if (!local) return null;
    const at = new Date(local);
    if (Number.isNaN(at.getTime())) return undefined;
    return at.toISOString().replace(/\.\d{3}Z$/, 'Z');
  }

  function toLocalInput(iso) {
    if (!iso) return '';
    const at = new Date(iso);
    if (Number.isNaN(at.getTime())) return '';
    const pad = (n) => String(n).padStart(2, '0');
    return `${at.getFullYear()}-${pad(at.getMonth() + 1)}-${pad(at.getDate())}T${pad(at.getHours())}:${pad(at.getMinutes())}`;
  }

  // ---- Signed in or not -----------------------------------------------------------------

  const view = document.body.dataset.view;

  function showSignIn(notice) {
    usageRound++;
    for (const dialog of document.querySelectorAll('dialog[open]')) dialog.close();
    keys.clear();
    for (const id of ['keys-body', 'audit-body']) $(id)?.replaceChildren();
    for (const id of ['keys', 'audit', 'app-nav', 'sign-out']) if ($(id)) $(id).hidden = true;
    $('sign-in').hidden = false;
    say($('notice'), notice);
    $('sign-in-password').value = '';
    $('sign-in-email').focus();
  }

  function showApp() {
    $('sign-in').hidden = true;
    $('app-nav').hidden = false;
    $('sign-out').hidden = false;
    const section = $(view);
    section.hidden = false;
    if (view === 'keys') loadKeys();
    else loadAudit();
  }

  const signInForm = $('sign-in-form');
  const signInButton = signInForm.querySelector('button[type=submit]');
  let lockedUntil = 0;

  signInForm.addEventListener('submit', async (event) => {
    event.preventDefault();
    const error = $('sign-in-error');
    const email = $('sign-in-email').value.trim();
    const password = $('sign-in-password');
    if (!email || !password.value) {
      say(error, 'Enter your email and password.');
      return;
    }
    say(error, '');
    signInButton.disabled = true;
    try {
      await call('POST', '/auth/login', { email, password: password.value });
      password.value = '';
      say($('notice'), '');
      showApp();
      $('main').focus();
    } catch (e) {
      if (e instanceof Problem && e.status === 401) {
        say(error, 'Wrong email or password.');
      } else if (e instanceof Problem && e.status === 429) {
        say(error, `Too many failed sign-ins. Try again in ${duration(e.retryAfter)}.`);
        lockedUntil = Date.now() + Math.max(1, e.retryAfter ?? 1) * 1000;
        setTimeout(() => {
          if (Date.now() >= lockedUntil) say(error, 'You can try to sign in again now.');
        }, Math.max(1, e.retryAfter ?? 1) * 1000);
      } else if (e instanceof Problem && e.status === 503) {
        say(error, 'keygate is busy. Try again in a moment.');
      } else {
        say(error, words('Could not sign in', e));
      }
      password.select();
    } finally {
      signInButton.disabled = false;
    }
  });

  $('sign-out').addEventListener('click', async () => {
    try {
      await call('POST', '/auth/logout');
    } catch (e) {
      if (!(e instanceof Problem && e.status === 401)) {
        say($('notice'), words('Could not sign out', e));
        return;
      }
    }
    showSignIn('You have signed out.');
  });

  // ---- Keys -----------------------------------------------------------------------------

  /** The listed keys by ref, for the dialogs; never holds a password. */
  const keys = new Map();
  const label = (key) => key.name || key.api_key;

  function pageParams() {
    const here = new URLSearchParams(location.search);
    const limit = Number.parseInt(here.get('limit') ?? '', 10);
    return {
      name: (here.get('name') ?? '').trim(),
      after: here.get('after') ?? '',
      limit: Number.isFinite(limit) && limit > 0 ? limit : PAGE_SIZE,
    };
  }

  function consoleUrl(params) {
    const q = new URLSearchParams();
    if (params.name) q.set('name', params.name);
    if (params.limit !== PAGE_SIZE) q.set('limit', String(params.limit));
    if (params.after) q.set('after', params.after);
    const s = q.toString();
    return s ? `/console?${s}` : '/console';
  }

  async function loadKeys() {
    const params = pageParams();
    const q = new URLSearchParams({ limit: String(params.limit) });
    if (params.name) q.set('name', params.name);
    if (params.after) q.set('after', params.after);
    const table = $('keys-table');
    table.setAttribute('aria-busy', 'true');
    try {
      const response = await admin('GET', `/auth/keys/list?${q}`);
      const list = await response.json();
      say($('keys-error'), '');
      renderKeys(list, params);
      const next = nextAfter(response.headers.get('link'));
      const nextLink = $('keys-next');
      nextLink.hidden = !next;
      if (next) nextLink.href = consoleUrl({ ...params, after: next });
      const first = $('keys-first');
      first.hidden = !params.after;
      first.href = consoleUrl({ ...params, after: '' });
    } catch (e) {
      if (!(e instanceof Problem && e.status === 401)) say($('keys-error'), words('Could not list the keys', e));
    } finally {
      table.removeAttribute('aria-busy');
    }
  }

  /** The `after` of a `Link: <…>; rel="next"` header. */
  function nextAfter(link) {
    const match = link && /<([^>]*)>\s*;\s*rel="?next"?/.exec(link);
    if (!match) return '';
    return new URL(match[1], location.origin).searchParams.get('after') ?? '';
  }

  function renderKeys(list, params) {
    keys.clear();
    const rows = list.map((key) => {
      keys.set(key.api_key_ref, key);
      return keyRow(key);
    });
    // Rebuilding the rows must not drop the keyboard's place.
    const active = document.activeElement;
    const kept = $('keys-body').contains(active) ? [active.dataset.ref, active.dataset.act] : null;
    $('keys-body').replaceChildren(...rows);
    if (kept) focusKey(...kept);
    const empty = $('keys-empty');
    empty.hidden = rows.length > 0;
    if (params.name) empty.textContent = `No key is named “${params.name}”.`;
    else if (params.after) empty.textContent = 'No more keys.';
    else empty.textContent = 'No keys yet. Generate one to let an API client sign in.';
    loadUsage(list);
  }

  // Usage: the list does not carry it, each key's own answer does. Read for the keys shown,
  // a few at a time; a newer listing makes older answers moot.
  let usageRound = 0;
  async function loadUsage(list) {
    const round = ++usageRound;
    const queue = [...list];
    const worker = async () => {
      while (queue.length && round === usageRound) {
        const key = queue.shift();
        let content;
        try {
          const response = await call('GET', `/auth/keys/${encodeURIComponent(key.api_key_ref)}`);
          content = usage(await response.json());
        } catch {
          content = el('span', { className: 'muted', text: '—' });
        }
        const target = round === usageRound && document.querySelector(`tr[data-ref="${CSS.escape(key.api_key_ref)}"] td[data-label="Usage"]`);
        if (target) target.replaceChildren(content);
      }
    };
    await Promise.all([worker(), worker(), worker(), worker()]);
  }

  const UNITS = [[86400, 'day'], [3600, 'hour'], [60, 'minute'], [1, 'second']];
  function per(seconds) {
    const [size, unit] = UNITS.find(([n]) => seconds % n === 0);
    const count = seconds / size;
    return count === 1 ? `per ${unit}` : `per ${count} ${unit}s`;
  }

  /** A key's limits (used of each), credits and owner, in a few words. */
  function usage(key) {
    const lines = (key.limits ?? []).map((l) => `${l.name}: ${l.used} of ${l.limit} ${per(l.window_seconds)}`);
    if (key.credits) {
      const refill = key.credits.refill ? `, refilled ${key.credits.refill.interval}` : '';
      lines.push(`${key.credits.remaining} credits left${refill}`);
    }
    if (key.owner) lines.push(`Shares ${key.owner}'s limits`);
    if (!lines.length) return el('span', { className: 'muted', text: 'No limits' });
    return el('ul', { className: 'usage' }, ...lines.map((text) => el('li', { text })));
  }

  function keyRow(key) {
    const enabled = key.enabled !== false;
    const expired = key.expires_at && new Date(key.expires_at).getTime() <= Date.now();
    const scopes = Array.isArray(key.scopes) && key.scopes.length
      ? el('ul', { className: 'tags' }, ...key.scopes.map((s) => el('li', {}, el('code', { text: s }))))
      : el('span', { className: 'muted', text: 'None' });
    const status = expired
      ? el('span', { className: 'badge off', text: 'Expired' })
      : el('span', { className: enabled ? 'badge on' : 'badge off', text: enabled ? 'Enabled' : 'Disabled' });
    const name = label(key);
    const action = (verb, act, className) =>
      el('button', { type: 'button', className, 'data-act': act, 'data-ref': key.api_key_ref, 'aria-label': `${verb} ${name}`, text: verb });
    return el('tr', { 'data-ref': key.api_key_ref },
      cell('Name', key.name ? el('span', { className: 'name', text: key.name }) : el('span', { className: 'muted', text: 'Unnamed' })),
      cell('Key', el('code', { text: key.api_key })),
      cell('Scopes', scopes),
      cell('Created', time(key.created_at, '—', dateOnly)),
      cell('Last used', time(key.last_used_at, 'Never')),
      cell('Expires', time(key.expires_at, 'Never', dateOnly)),
      cell('Status', status),
      cell('Usage', el('span', { className: 'muted', text: '…' })),
      cell('Actions', el('div', { className: 'row-actions' },
        action('Edit', 'edit'),
        action('Roll', 'roll'),
        action(enabled ? 'Disable' : 'Enable', enabled ? 'disable' : 'enable'),
        action('Delete', 'delete', 'danger'))));
  }

  $('keys-body')?.addEventListener('click', (event) => {
    const button = event.target.closest('button[data-act]');
    const key = button && keys.get(button.dataset.ref);
    if (!key) return;
    switch (button.dataset.act) {
      case 'edit': return openEdit(key);
      case 'roll': return openRoll(key);
      case 'disable': return setEnabled(key, false, button);
      case 'enable': return setEnabled(key, true, button);
      case 'delete': return openDelete(key);
    }
  });

  /** Gives the focus back to a row's button once the table has been rebuilt, or to
   *  Generate key when the row is gone. */
  function focusKey(ref, act) {
    const button = ref && document.querySelector(`tr[data-ref="${CSS.escape(ref)}"] button[data-act="${act}"]`);
    (button ?? $('generate-open'))?.focus();
  }

  async function setEnabled(key, enabled, button) {
    button.disabled = true;
    try {
      await admin('PATCH', `/auth/keys/${encodeURIComponent(key.api_key_ref)}`, { enabled });
      say($('keys-error'), '');
      await loadKeys();
      focusKey(key.api_key_ref, enabled ? 'disable' : 'enable');
    } catch (e) {
      button.disabled = false;
      if (!(e instanceof Problem && e.status === 401)) {
        say($('keys-error'), words(enabled ? `Could not enable ${label(key)}` : `Could not disable ${label(key)}`, e));
      }
    }
  }

  // ---- Dialogs --------------------------------------------------------------------------

  for (const button of document.querySelectorAll('dialog [data-close]')) {
    button.addEventListener('click', () => button.closest('dialog').close());
  }

  /** Runs a dialog form's submission: the button is off while it runs, errors are shown in
   *  the dialog, and a 401 (handled by `admin`) closes it. */
  function onSubmit(form, errorId, action, run) {
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      const error = $(errorId);
      const submit = form.querySelector('button[type=submit]');
      say(error, '');
      submit.disabled = true;
      try {
        await run();
      } catch (e) {
        if (!(e instanceof Problem && e.status === 401)) say(error, words(action(), e));
      } finally {
        submit.disabled = false;
      }
    });
  }

  function openDialog(dialog) {
    for (const e of dialog.querySelectorAll('.error')) say(e, '');
    dialog.showModal();
  }

  // Generate.
  const generateDialog = $('generate-dialog');
  const generateForm = $('generate-form');
  $('generate-open')?.addEventListener('click', () => {
    generateForm.reset();
    openDialog(generateDialog);
  });
  onSubmit(generateForm, 'generate-error', () => 'Could not generate the key', async () => {
    const body = {};
    const name = $('generate-name').value.trim();
    if (name) body.name = name;
    const scopes = scopesOf($('generate-scopes').value);
    if (scopes.length) body.scopes = scopes;
    const expiry = $('generate-expiry').value;
    if (expiry) body.expires_in = Number(expiry);
    const response = await admin('POST', '/auth/keys/generate', body);
    const created = await response.json();
    generateDialog.close();
    const note = created.expires_at ? `It expires ${dateTime.format(new Date(created.expires_at))}.` : null;
    showSecret('Key generated', created.name || created.api_key, created.api_key, created.password, note);
    loadKeys();
  });

  // The secret: shown once, and gone from the page when its dialog closes, however it closes.
  const secretDialog = $('secret-dialog');
  let secretReturn = null;
  function showSecret(title, forWhom, apiKey, password, note, returnTo = null) {
    secretReturn = returnTo;
    $('secret-title').textContent = title;
    $('secret-for').textContent = `For ${forWhom}.`;
    $('secret-key').textContent = apiKey;
    $('secret-password').textContent = password;
    say($('secret-note'), note);
    $('copy-status').textContent = '';
    secretDialog.showModal();
  }
  secretDialog.addEventListener('close', () => {
    for (const id of ['secret-key', 'secret-password', 'secret-for', 'copy-status']) $(id).textContent = '';
    say($('secret-note'), '');
    focusKey(secretReturn, 'roll');
    secretReturn = null;
  });
  $('secret-copy').addEventListener('click', async () => {
    const status = $('copy-status');
    try {
      await navigator.clipboard.writeText($('secret-password').textContent);
      status.textContent = 'Copied.';
    } catch {
      status.textContent = 'Copying is not allowed here: select the password and copy it.';
    }
  });

  // Roll.
  const rollDialog = $('roll-dialog');
  let rolling = null;
  function openRoll(key) {
    rolling = key;
    $('roll-form').reset();
    $('roll-title').textContent = `Roll ${label(key)}`;
    $('roll-text').textContent = `A new password is issued for ${key.api_key}. Clients can switch to it while the old one keeps working.`;
    openDialog(rollDialog);
  }
  onSubmit($('roll-form'), 'roll-error', () => `Could not roll ${label(rolling)}`, async () => {
    const grace = Number($('roll-grace').value);
    const ref = encodeURIComponent(rolling.api_key_ref);
    const response = await admin('POST', `/auth/keys/${ref}/roll`, { grace_seconds: grace });
    const rolled = await response.json();
    rollDialog.close();
    const note = rolled.old_password_expires_at
      ? `The old password keeps working until ${dateTime.format(new Date(rolled.old_password_expires_at))}.`
      : 'The old password no longer works.';
    showSecret('Key rolled', label(rolling), rolled.api_key, rolled.password, note, rolling.api_key_ref);
    loadKeys();
  });

  // Edit: only what changed is sent.
  const editDialog = $('edit-dialog');
  let editing = null;
  function openEdit(key) {
    editing = key;
    $('edit-title').textContent = `Edit ${label(key)}`;
    $('edit-text').textContent = `Key ${key.api_key}.`;
    $('edit-name').value = key.name ?? '';
    $('edit-scopes').value = (key.scopes ?? []).join(' ');
    $('edit-expires').value = toLocalInput(key.expires_at);
    openDialog(editDialog);
  }
  onSubmit($('edit-form'), 'edit-error', () => `Could not save ${label(editing)}`, async () => {
    const patch = {};
    const name = $('edit-name').value.trim();
    if (name !== (editing.name ?? '')) patch.name = name || null;
    const scopes = scopesOf($('edit-scopes').value);
    if (scopes.join(' ') !== (editing.scopes ?? []).join(' ')) patch.scopes = scopes;
    const local = $('edit-expires').value;
    if (local !== toLocalInput(editing.expires_at)) {
      const expires = toRfc3339(local);
      if (expires === undefined) {
        say($('edit-error'), 'Enter the expiry as a date and time, or leave it empty.');
        return;
      }
      patch.expires_at = expires;
    }
    if (Object.keys(patch).length) {
      await admin('PATCH', `/auth/keys/${encodeURIComponent(editing.api_key_ref)}`, patch);
    }
    editDialog.close();
    await loadKeys();
    focusKey(editing.api_key_ref, 'edit');
  });

  // Delete, confirmed by a dialog that names the key.
  const deleteDialog = $('delete-dialog');
  let deleting = null;
  function openDelete(key) {
    deleting = key;
    $('delete-title').textContent = `Delete ${label(key)}?`;
    $('delete-text').textContent = key.name
      ? `The key ${key.name} (${key.api_key}) will be deleted.`
      : `The key ${key.api_key} will be deleted.`;
    $('delete-confirm').textContent = `Delete ${label(key)}`;
    openDialog(deleteDialog);
  }
  onSubmit($('delete-form'), 'delete-error', () => `Could not delete ${label(deleting)}`, async () => {
    await admin('DELETE', `/auth/user/${encodeURIComponent(deleting.api_key_ref)}`);
    deleteDialog.close();
    $('generate-open')?.focus();
    loadKeys();
  });

  // ---- Audit log ------------------------------------------------------------------------

  const ACTIONS = {
    'admin.login': 'Signed in',
    'admin.login_failed': 'Sign-in failed',
    'admin.logout': 'Signed out',
    'admin.created': 'Admin created',
    'admin.deleted': 'Admin deleted',
    'admin.password_changed': 'Password changed',
    'admin.password_change_failed': 'Password change refused',
    'admin.sessions_revoked': 'Sessions ended',
    'key.generated': 'Key generated',
    'key.deleted': 'Key deleted',
    'key.rolled': 'Key rolled',
    'key.updated': 'Key edited',
    'key.disabled': 'Key disabled',
    'key.enabled': 'Key enabled',
    'key.expired': 'Key expired',
    'key.limits_changed': 'Key limits changed',
    'owner.limits_changed': 'Owner limits changed',
    'lockout': 'Locked out',
    'lockout.cleared': 'Lockout cleared',
    'signing_key.rotated': 'Signing key rotated',
  };

  async function loadAudit() {
    const here = new URLSearchParams(location.search);
    const before = here.get('before') ?? '';
    const q = new URLSearchParams({ limit: String(PAGE_SIZE) });
    if (before) q.set('before', before);
    const table = $('audit-table');
    table.setAttribute('aria-busy', 'true');
    try {
      const response = await admin('GET', `/auth/audit?${q}`);
      const page = await response.json();
      say($('audit-error'), '');
      const rows = page.events.map((e) => el('tr', { 'data-action': e.action },
        cell('When', time(new Date(e.at * 1000).toISOString().replace(/\.\d{3}Z$/, 'Z'), '—')),
        cell('Event', el('span', { text: ACTIONS[e.action] ?? e.action, title: e.action })),
        cell('By', el('span', { className: 'break', text: e.actor })),
        cell('Target', e.target ? el('code', { className: 'break', text: e.target }) : el('span', { className: 'muted', text: '—' })),
        cell('From', e.source ? el('span', { text: e.source }) : el('span', { className: 'muted', text: '—' }))));
      $('audit-body').replaceChildren(...rows);
      $('audit-empty').hidden = rows.length > 0;
      const older = $('audit-older');
      older.hidden = page.next_before === null || page.next_before === undefined;
      if (!older.hidden) older.href = `/console/audit?before=${encodeURIComponent(page.next_before)}`;
      $('audit-newest').hidden = !before;
    } catch (e) {
      if (!(e instanceof Problem && e.status === 401)) say($('audit-error'), words('Could not read the audit log', e));
    } finally {
      table.removeAttribute('aria-busy');
    }
  }

  // ---- Start ----------------------------------------------------------------------------

  signInButton.disabled = false;
  if (document.body.dataset.signedIn === 'true') showApp();
})();
