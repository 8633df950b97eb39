// Spindle's dashboard: a small app over the public API, with no framework
// and nothing fetched from elsewhere. Every request carries the user's key
// or token in the Authorization header (never a cookie), so the API's roles
// decide what each user may do and a page elsewhere cannot act in their
// name. Every piece of data reaches the page as text (textContent), never
// as markup.

const CREDENTIAL = 'spindle.credential';
const TERMINAL_RUN = new Set(['succeeded', 'failed', 'cancelled', 'timed_out']);
const ROLE_RANK = { viewer: 0, operator: 1, approver: 2, admin: 3 };
// How much of a step's output is drawn; the rest is a download.
const SHOWN_OUTPUT_CHARS = 64 * 1024;
// Past this many values a JSON document is shown as text, not as a tree.
const TREE_NODES = 1500;
const STEP_LABELS = {
  pending: 'queued',
  assessing: 'assessing risk',
  waiting_approval: 'waiting approval',
  dispatched: 'dispatched',
  running: 'running',
  retry_wait: 'retry wait',
  fanned_out: 'fanned out',
  succeeded: 'succeeded',
  failed: 'failed',
  skipped: 'skipped',
  cancelled: 'cancelled',
};
const DARK_STATES = new Set(['running', 'succeeded', 'failed', 'cancelled']);

// ---------------------------------------------------------------- helpers

/** An element with attributes (`class`, `text`, `onclick`, ...) and children. */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

/** The same, in the SVG namespace. */
function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS('http://www.w3.org/2000/svg', tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

function setAttrs(el, attrs) {
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'text') el.textContent = String(v);
    else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/** Replaces `el`'s children, skipping absent ones (the DOM's own
 * `replaceChildren` would show `null` as text). */
function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

function pad(n) { return String(n).padStart(2, '0'); }

/** `2026-11-23 14:05:09`, local time. */
function fmtTime(ms) {
  if (!ms) return '—';
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

function fmtDuration(ms) {
  if (ms === null || ms === undefined || ms < 0) return '—';
  if (ms < 1000) return `${ms} ms`;
  const sec = Math.round(ms / 1000);
  if (sec < 60) return `${(ms / 1000).toFixed(ms < 10000 ? 1 : 0)} s`;
  const min = Math.floor(sec / 60);
  if (min < 60) return `${min} min ${sec % 60} s`;
  const hr = Math.floor(min / 60);
  return hr < 48 ? `${hr} h ${min % 60} min` : `${Math.floor(hr / 24)} d ${hr % 24} h`;
}

/** `3 min ago`, `in 2 h`. */
function fmtRelative(ms) {
  if (!ms) return '—';
  const d = ms - Date.now();
  const text = fmtDuration(Math.abs(d)).replace(/ \d+ (s|min|h)$/, '');
  return d >= 0 ? `in ${text}` : `${text} ago`;
}

function timeEl(ms) {
  return h('time', { datetime: ms ? new Date(ms).toISOString() : undefined, title: fmtTime(ms), text: fmtRelative(ms) });
}

function badge(status, label) {
  return h('span', { class: `badge st-${status}`, text: label ?? STEP_LABELS[status] ?? String(status).replace(/_/g, ' ') });
}

function announce(text) {
  const el = document.getElementById('status');
  el.textContent = '';
  setTimeout(() => { el.textContent = text; }, 50);
}

function runDuration(run) {
  const start = run.started_at_ms ?? run.created_at_ms;
  if (!start) return null;
  return (run.finished_at_ms ?? Date.now()) - start;
}

/** A term and its value, for a `dl.facts`. */
function fact(term, value) {
  return h('div', {}, h('dt', { text: term }), h('dd', {}, value));
}

/** A table with column headings, in a box that scrolls sideways on a phone. */
function table(cols, rows, cls) {
  return h('div', { class: 'table-wrap' }, h('table', { class: cls },
    h('thead', {}, h('tr', {}, cols.map((t) => h('th', { scope: 'col', text: t })))), h('tbody', {}, rows)));
}

function rank(role) { return ROLE_RANK[role] ?? -1; }

// ---------------------------------------------------------------- the API

class ApiError extends Error {
  constructor(status, problem) {
    super(problem?.detail || problem?.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

const session = {
  get credential() { return sessionStorage.getItem(CREDENTIAL); },
  set credential(v) {
    if (v) sessionStorage.setItem(CREDENTIAL, v);
    else sessionStorage.removeItem(CREDENTIAL);
  },
  me: null,
};

/** What `revalidate` answers while the resource has not changed. */
const NOT_MODIFIED = Symbol('not modified');

async function request(path, { method = 'GET', body, etag } = {}) {
  const headers = { Accept: 'application/json' };
  const sent = session.credential;
  if (sent) headers.Authorization = `Bearer ${sent}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (etag) headers['If-None-Match'] = etag;
  const resp = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: 'omit',
    cache: 'no-store',
  });
  if (resp.ok || resp.status === 304) return resp;
  let data = null;
  try { data = await resp.json(); } catch { data = null; }
  // Only the credential this request carried is dead: a sign-in since
  // then is not undone by a late answer.
  if (resp.status === 401 && session.me && session.credential === sent) {
    // The key was revoked or the token expired: ask again.
    signOut(`Signed out: ${data?.detail || 'the credential is no longer accepted'}`);
  }
  throw new ApiError(resp.status, data);
}

/** The JSON answer to a request, or an ApiError. */
async function api(path, opts = {}) {
  const resp = await request(path, opts);
  return resp.json();
}

/** `{data, etag}`, or NOT_MODIFIED while `etag` is still current. */
async function revalidate(path, etag) {
  const resp = await request(path, { etag });
  if (resp.status === 304) return NOT_MODIFIED;
  return { data: await resp.json(), etag: resp.headers.get('etag') };
}

function problemNote(err) {
  const p = err.problem;
  const text = p ? `${p.title || 'Error'}: ${p.detail || ''}` : String(err.message || err);
  const note = h('p', { class: 'notice error', role: 'alert', text });
  if (p?.errors?.length) {
    note.append(h('ul', {}, p.errors.map((e) => h('li', { text: `${e.pointer || e.field || ''} ${e.detail || e.message || ''}` }))));
  }
  return note;
}

// ---------------------------------------------------------------- routing

const main = () => document.getElementById('main');
// Which navigation is current: a page, its timers and its late answers
// belong to the navigation that started them, and give way to a newer one.
let view = 0;
let routed = '';

function go(path, { replace = false } = {}) {
  if (replace) history.replaceState(null, '', path);
  else history.pushState(null, '', path);
  route();
}

document.addEventListener('click', (e) => {
  const a = e.target.closest?.('a[href^="/ui/"]');
  if (!a || e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || a.target) return;
  e.preventDefault();
  go(a.getAttribute('href'));
});
window.addEventListener('popstate', () => {
  // A jump within the page (the skip link) is not a new view.
  if (location.pathname + location.search !== routed) route();
});

/** Runs `fn` every `ms` while navigation `token` is shown and the tab is visible. */
function every(token, ms, fn) {
  const tick = async () => {
    if (token !== view) return;
    if (!document.hidden) {
      try { await fn(); } catch (err) { if (err.status === 401) return; console.warn(err); }
    }
    if (token === view) setTimeout(tick, ms);
  };
  setTimeout(tick, ms);
}

/**
 * For loaders whose answers may arrive out of order: each call starts a
 * load and gives a check that stays true until the next one starts.
 */
function latest() {
  let seq = 0;
  return () => {
    const mine = ++seq;
    return () => mine === seq;
  };
}

async function route() {
  const token = ++view;
  routed = location.pathname + location.search;
  const root = main();
  if (session.credential && !session.me) {
    try {
      session.me = await api('/api/whoami');
    } catch (err) {
      if (token !== view) return;
      if (err.status === 401 || err.status === 403) {
        session.credential = null;
      } else {
        // Spindle is down or busy: keep the credential and say so.
        fill(root, h('h1', { text: 'Spindle does not answer' }), problemNote(err),
          h('button', { type: 'button', text: 'Try again', onclick: () => route() }));
        return;
      }
    }
    if (token !== view) return;
  }
  if (!session.me) { showLogin(); return; }
  showChrome();
  const path = location.pathname.replace(/\/+$/, '') || '/ui';
  let parts;
  try { parts = path.split('/').slice(2).map(decodeURIComponent); } catch { parts = ['?']; }
  const section = parts[0] || 'runs';
  for (const a of document.querySelectorAll('#nav a')) {
    if (a.dataset.section === section) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  fill(root, h('p', { class: 'loading', text: 'Loading…' }));
  let page;
  try {
    if (section === 'runs' && parts[1]) page = await runPage(token, parts[1]);
    else if (section === 'runs') page = await runsPage(token);
    else if (section === 'approvals') page = await approvalsPage(token);
    else if (section === 'overview') page = await overviewPage(token);
    else if (section === 'registry') page = await registryPage(parts[1] || 'workflows', parts[2]);
    else page = h('div', {}, h('h1', { text: 'Not found' }), h('p', {}, 'Nothing is shown at this address. ', h('a', { href: '/ui/runs', text: 'See the runs' }), '.'));
  } catch (err) {
    if (err.status === 401 || token !== view) return;
    page = h('div', {}, h('h1', { text: 'Could not load this page' }), problemNote(err));
  }
  // A newer navigation (or a sign-out) wins over this one's late answer.
  if (token !== view) return;
  fill(root, page);
  const heading = root.querySelector('h1');
  document.title = heading ? `${heading.textContent} · Spindle` : 'Spindle';
  root.focus({ preventScroll: true });
}

// ---------------------------------------------------------------- sign-in

function showChrome() {
  document.getElementById('nav').hidden = false;
  document.getElementById('who').hidden = false;
  const me = session.me;
  fill(document.getElementById('who-name'), 
    h('span', { text: me.name || me.actor }), ' ', h('span', { class: 'role', text: me.role }));
}

function signOut(message) {
  session.credential = null;
  session.me = null;
  view += 1;
  showLogin(message);
}

function showLogin(message) {
  document.getElementById('nav').hidden = true;
  document.getElementById('who').hidden = true;
  document.title = 'Sign in · Spindle';
  const input = h('input', { type: 'password', id: 'credential', name: 'credential', autocomplete: 'off', required: true, spellcheck: 'false' });
  const note = h('div', { 'aria-live': 'polite' });
  if (message) note.append(h('p', { class: 'notice', text: message }));
  const form = h('form', { class: 'card', onsubmit: async (e) => {
    e.preventDefault();
    fill(note);
    session.credential = input.value.trim();
    try {
      session.me = await api('/api/whoami');
    } catch (err) {
      session.credential = null;
      session.me = null;
      note.append(problemNote(err));
      input.focus();
      return;
    }
    input.value = '';
    if (!location.pathname.startsWith('/ui/') || location.pathname === '/ui/') go('/ui/runs', { replace: true });
    else route();
  } },
  h('div', { class: 'field' }, h('label', { for: 'credential', text: 'API key or token' }), input),
  h('p', { class: 'muted', text: 'Kept in this tab only (session storage) and sent to this Spindle only, in a header. Signing out or closing the tab forgets it.' }),
  h('button', { type: 'submit', class: 'primary', text: 'Sign in' }));
  fill(main(), h('div', { class: 'login' }, h('h1', { text: 'Sign in to Spindle' }), note, form));
  input.focus();
}

document.getElementById('logout').addEventListener('click', () => signOut('Signed out.'));

// ---------------------------------------------------------------- JSON

function jsonView(value) {
  let text;
  try { text = JSON.stringify(value, null, 2); } catch { text = String(value); }
  if (text === undefined) return h('p', { class: 'muted', text: 'none' });
  let nodes = 0;
  const count = (v) => {
    nodes += 1;
    if (nodes > TREE_NODES) return;
    if (v && typeof v === 'object') for (const x of Object.values(v)) count(x);
  };
  count(value);
  if (nodes > TREE_NODES) return h('pre', { class: 'json', text });
  // A small document is shown whole; a larger one two levels deep.
  return h('div', { class: 'json' }, jsonNode(value, 0, nodes <= 200 ? Infinity : 2));
}

function jsonNode(v, depth, openDepth) {
  if (v === null) return h('span', { class: 'z', text: 'null' });
  if (typeof v === 'string') return h('span', { class: 's', text: JSON.stringify(v) });
  if (typeof v === 'number') return h('span', { class: 'n', text: String(v) });
  if (typeof v === 'boolean') return h('span', { class: 'b', text: String(v) });
  const isArray = Array.isArray(v);
  const entries = isArray ? v.map((x, i) => [i, x]) : Object.entries(v);
  const [open, close] = isArray ? ['[', ']'] : ['{', '}'];
  if (entries.length === 0) return h('span', { text: open + close });
  const details = h('details', { open: depth < openDepth },
    h('summary', { text: `${open} ${entries.length} ${isArray ? (entries.length === 1 ? 'item' : 'items') : (entries.length === 1 ? 'key' : 'keys')} ${close}` }));
  for (const [k, x] of entries) {
    details.append(h('div', { class: 'entry' }, isArray ? null : h('span', { class: 'k', text: `${JSON.stringify(k)}: ` }), jsonNode(x, depth + 1, openDepth)));
  }
  return details;
}

/** A button that saves a step's stored output as a file. */
function downloadButton(runId, stepId) {
  const note = h('span', { 'aria-live': 'polite' });
  const button = h('button', { type: 'button', class: 'download', text: 'Download output (JSON)', onclick: async () => {
    button.disabled = true;
    fill(note);
    try {
      const resp = await request(`/api/runs/${encodeURIComponent(runId)}/steps/${encodeURIComponent(stepId)}/output`);
      const blob = await resp.blob();
      const href = URL.createObjectURL(blob);
      const a = h('a', { href, download: `${runId}-${stepId}-output.json` });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(href), 10000);
    } catch (err) {
      note.append(problemNote(err));
    } finally {
      button.disabled = false;
    }
  } });
  return h('span', {}, button, note);
}

/** A step's output: drawn while small, else its beginning and a download. */
function outputView(runId, step) {
  let text;
  try { text = JSON.stringify(step.output, null, 2); } catch { text = ''; }
  const download = downloadButton(runId, step.id);
  if (text.length > SHOWN_OUTPUT_CHARS) {
    return h('div', {},
      h('p', { class: 'notice', text: `Large output (${(step.output_bytes ?? text.length).toLocaleString()} bytes): the first ${SHOWN_OUTPUT_CHARS / 1024} KiB are shown.` }),
      h('pre', { class: 'json truncated', text: `${text.slice(0, SHOWN_OUTPUT_CHARS)}\n…` }),
      h('p', {}, download));
  }
  return h('div', {}, jsonView(step.output), h('p', {}, download));
}

// ---------------------------------------------------------------- the DAG

/**
 * Draws steps as boxes with edges from `needs`; compensation and
 * on-failure steps in lanes of their own below. `steps`: {id, needs,
 * role, compensate, status, label, title}.
 */
function dag(steps, { selected, onSelect, label } = {}) {
  const W = 176, H = 54, GX = 28, GY = 46, PAD = 16, LANE = 40;
  const byId = new Map(steps.map((st) => [st.id, st]));
  const depth = new Map();
  const depthOf = (id, seen = new Set()) => {
    if (depth.has(id)) return depth.get(id);
    if (seen.has(id)) return 0;
    seen.add(id);
    const st = byId.get(id);
    const needs = (st?.needs || []).filter((n) => byId.has(n) && !byId.get(n).role);
    const d = needs.length ? 1 + Math.max(...needs.map((n) => depthOf(n, seen))) : 0;
    depth.set(id, d);
    return d;
  };
  const normal = steps.filter((st) => !st.role);
  const rows = [];
  for (const st of normal) {
    const d = depthOf(st.id);
    (rows[d] ||= []).push(st);
  }
  const lanes = [
    ['Compensation', steps.filter((st) => st.role === 'compensation')],
    ['On failure', steps.filter((st) => st.role === 'on_failure')],
  ].filter(([, list]) => list.length);
  const widest = Math.max(1, ...rows.map((r) => r?.length || 0), ...lanes.map(([, l]) => l.length));
  const width = PAD * 2 + widest * W + (widest - 1) * GX;
  const pos = new Map();
  let y = PAD;
  const place = (list) => {
    const rowWidth = list.length * W + (list.length - 1) * GX;
    let x = (width - rowWidth) / 2;
    for (const st of list) { pos.set(st.id, { x, y }); x += W + GX; }
    y += H + GY;
  };
  for (const r of rows) if (r) place(r);
  const laneMarks = [];
  for (const [name, list] of lanes) {
    y += LANE - GY / 2;
    laneMarks.push({ name, y: y - LANE + 8 });
    place(list);
  }
  const height = y - GY + PAD;

  const svgEl = s('svg', { class: 'dag', width, height, viewBox: `0 0 ${width} ${height}`, role: 'group', 'aria-label': label || 'Steps and their dependencies' });
  svgEl.append(s('defs', {}, s('marker', { id: 'arrow', viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse' },
    s('path', { d: 'M0,0 L10,5 L0,10 z', class: 'arrow' }))));
  for (const m of laneMarks) {
    svgEl.append(s('line', { class: 'lane-line', x1: PAD, x2: width - PAD, y1: m.y, y2: m.y }));
    svgEl.append(s('text', { class: 'lane-label', x: PAD, y: m.y + 16, text: m.name }));
  }
  const edge = (from, to, cls) => {
    const a = pos.get(from), b = pos.get(to);
    if (!a || !b) return;
    const x1 = a.x + W / 2, y1 = a.y + H, x2 = b.x + W / 2, y2 = b.y;
    const my = (y1 + y2) / 2;
    svgEl.append(s('path', { class: `edge ${cls || ''}`, d: `M${x1},${y1} C${x1},${my} ${x2},${my} ${x2},${y2 - 2}`, 'marker-end': 'url(#arrow)' }));
  };
  for (const st of steps) for (const n of st.needs || []) edge(n, st.id);
  for (const st of steps) if (st.compensate) edge(st.id, st.compensate, 'compensates');

  for (const st of steps) {
    const p = pos.get(st.id);
    if (!p) continue;
    const status = st.status || 'none';
    const g = s('g', {
      class: `node st-${status}${DARK_STATES.has(status) ? ' on-dark' : ''}${selected === st.id ? ' selected' : ''}`,
      transform: `translate(${p.x},${p.y})`,
      'data-step': st.id,
      'data-status': status,
      tabindex: onSelect ? 0 : undefined,
      role: onSelect ? 'button' : 'img',
      'aria-label': `${st.id}: ${st.title || st.label || status}`,
    });
    g.append(s('title', { text: `${st.id}: ${st.title || st.label || status}` }));
    g.append(s('rect', { class: `st-${status}`, width: W, height: H, rx: 8 }));
    const clip = (t, n) => (t.length > n ? `${t.slice(0, n - 1)}…` : t);
    g.append(s('text', { class: 'id', x: 12, y: 22, text: clip(st.id, 22) }));
    g.append(s('text', { x: 12, y: 41, text: clip(st.label || STEP_LABELS[status] || '', 25) }));
    if (onSelect) {
      g.addEventListener('click', () => onSelect(st.id));
      g.addEventListener('keydown', (e) => {
        if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); onSelect(st.id); }
      });
    }
    svgEl.append(g);
  }
  return h('div', { class: 'dag-wrap' }, svgEl);
}

function legend() {
  return h('ul', { class: 'legend', 'aria-label': 'Step states' },
    Object.keys(STEP_LABELS).map((k) => h('li', {}, badge(k))));
}

/** The workflow's own steps (from the registry) in the DAG's terms. */
function workflowSteps(wf) {
  const compensations = new Set((wf.steps || []).map((st) => st.compensate).filter(Boolean));
  const onFailure = new Set(wf.on_failure || []);
  return (wf.steps || []).map((st) => ({
    id: st.id,
    needs: st.needs || [],
    compensate: st.compensate,
    role: onFailure.has(st.id) ? 'on_failure' : compensations.has(st.id) ? 'compensation' : undefined,
    label: st.for_each ? `${st.agent} · for each` : st.agent,
    title: [st.agent, st.when ? `when ${st.when}` : '', st.for_each ? `for each ${st.for_each}` : ''].filter(Boolean).join('; '),
  }));
}

// ---------------------------------------------------------------- runs

/** Older runs the list holds at most; past this, a narrower filter serves. */
const MAX_RUN_ROWS = 500;
/** Runs per page: the first page is polled, older ones loaded on demand. */
const RUNS_PAGE = 25;

async function runsPage(token) {
  const params = new URLSearchParams(location.search);
  const filter = { workflow: params.get('workflow') || '', status: params.get('status') || '', range: params.get('range') || '' };
  const ranges = { '': 'Any time', '1h': 'Last hour', '24h': 'Last 24 hours', '7d': 'Last 7 days', '30d': 'Last 30 days' };
  const rangeMs = { '1h': 3600e3, '24h': 86400e3, '7d': 7 * 86400e3, '30d': 30 * 86400e3 };
  const workflows = await api('/api/workflows').catch(() => ({ workflows: [] }));

  const select = (id, key, label, options) => h('div', { class: 'field' },
    h('label', { for: id, text: label }),
    h('select', { id, onchange: (e) => apply(key, e.currentTarget.value) },
      options.map(([v, t]) => h('option', { value: v, selected: v === filter[key], text: t }))));
  const filters = h('form', { class: 'filters', 'aria-label': 'Filter runs', onsubmit: (e) => e.preventDefault() },
    select('f-workflow', 'workflow', 'Workflow', [['', 'All workflows'], ...(workflows.workflows || []).map((w) => [w.name, w.name])]),
    select('f-status', 'status', 'Status', [['', 'Any status'], ...['queued', 'running', 'waiting_approval', 'compensating', 'succeeded', 'failed', 'cancelled', 'timed_out'].map((x) => [x, x.replace(/_/g, ' ')])]),
    select('f-range', 'range', 'Started', Object.entries(ranges)));
  const query = (cursor) => {
    const q = new URLSearchParams({ limit: String(RUNS_PAGE) });
    if (filter.workflow) q.set('workflow', filter.workflow);
    if (filter.status) q.set('status', filter.status);
    if (rangeMs[filter.range]) q.set('since', String(Date.now() - rangeMs[filter.range]));
    if (cursor) q.set('cursor', cursor);
    return `/api/runs?${q}`;
  };

  // The newest page, as the last poll saw it, and older pages the user
  // asked for; drawn only when something changed, so focus stays put.
  let newest = [];
  let older = [];
  let next = null;
  let drawn = '';
  // Bumped by a filter change: an older page asked for before it is dropped.
  let generation = 0;
  const tbody = h('tbody');
  const empty = h('p', { class: 'muted', text: 'No runs match.' });
  const note = h('div', { 'aria-live': 'polite' });
  const draw = () => {
    const seen = new Set(newest.map((r) => r.id));
    older = older.filter((r) => !seen.has(r.id));
    const list = [...newest, ...older];
    const key = JSON.stringify(list.map((r) => [r.id, r.status, r.started_at_ms, r.finished_at_ms]));
    if (key === drawn) {
      // Only the running runs' durations and the relative times move.
      for (const r of list) {
        const row = tbody.querySelector(`tr[data-run="${CSS.escape(r.id)}"]`);
        if (!row) continue;
        if (!r.finished_at_ms) row.querySelector('td.duration').textContent = fmtDuration(runDuration(r));
        row.querySelector('time').textContent = fmtRelative(r.started_at_ms ?? r.created_at_ms);
      }
      return;
    }
    drawn = key;
    const focused = document.activeElement?.closest?.('tr')?.dataset.run;
    fill(tbody, ...list.map((r) => h('tr', { 'data-run': r.id, 'data-status': r.status },
      h('td', {}, h('a', { href: `/ui/runs/${encodeURIComponent(r.id)}`, class: 'mono', text: r.id })),
      h('td', { text: r.workflow }),
      h('td', {}, badge(r.status)),
      h('td', {}, timeEl(r.started_at_ms ?? r.created_at_ms)),
      h('td', { class: 'num duration', text: fmtDuration(runDuration(r)) }),
      h('td', { class: 'hide-narrow', text: r.trigger_kind ?? '—' }),
      h('td', { class: 'hide-narrow', text: r.actor ?? '—' }))));
    if (focused) tbody.querySelector(`tr[data-run="${CSS.escape(focused)}"] a`)?.focus();
    empty.hidden = list.length > 0;
  };
  const current = latest();
  const reload = async () => {
    const fresh = current();
    const page = await api(query());
    if (!fresh() || token !== view) return;
    const previous = newest;
    newest = page.runs;
    if (older.length) {
      // Rows the new first page pushed down (they were after its new last
      // row) join the older ones, so nothing between the two vanishes;
      // rows above it that are gone no longer match the filter.
      const ids = new Set(newest.map((r) => r.id));
      const lastId = newest.length ? newest[newest.length - 1].id : null;
      const cut = previous.findIndex((r) => r.id === lastId);
      const slid = previous.slice(cut + 1).filter((r) => !ids.has(r.id));
      const slidIds = new Set(slid.map((r) => r.id));
      older = [...slid, ...older.filter((r) => !slidIds.has(r.id))];
    } else {
      next = page.next_cursor;
    }
    more.hidden = !next || older.length >= MAX_RUN_ROWS;
    draw();
  };
  const more = h('button', { type: 'button', text: 'Older runs', onclick: async () => {
    more.disabled = true;
    fill(note);
    const asked = generation;
    try {
      const page = await api(query(next));
      if (asked !== generation || token !== view) return;
      older = [...older, ...page.runs];
      next = page.next_cursor;
      // Past this many rows, narrowing the filter serves better than scrolling.
      more.hidden = !next || older.length >= MAX_RUN_ROWS;
      if (next && older.length >= MAX_RUN_ROWS) note.append(h('p', { class: 'muted', text: `Showing ${MAX_RUN_ROWS} older runs; narrow the filter to see others.` }));
      draw();
    } catch (err) {
      note.append(problemNote(err));
    } finally {
      more.disabled = false;
    }
  } });
  // A filter changes the address (so it can be shared) and the list, not
  // the page: focus stays on the control.
  const apply = async (key, value) => {
    filter[key] = value;
    const q = new URLSearchParams();
    for (const k of ['workflow', 'status', 'range']) if (filter[k]) q.set(k, filter[k]);
    history.replaceState(null, '', `/ui/runs${q.toString() ? `?${q}` : ''}`);
    routed = location.pathname + location.search;
    generation += 1;
    older = [];
    next = null;
    fill(note);
    try { await reload(); } catch (err) { note.append(problemNote(err)); }
  };
  await reload();
  // Live: the newest page again; a status filter asks the store for more.
  every(token, filter.status ? 5000 : 3000, reload);
  return h('div', {},
    h('h1', { text: 'Runs' }),
    filters,
    note,
    h('div', { class: 'table-wrap' }, h('table', { class: 'runs' },
      h('caption', { class: 'sr-only', text: 'Runs, newest first; updated while you watch' }),
      h('thead', {}, h('tr', {}, ['Run', 'Workflow', 'Status', 'Started', 'Duration'].map((t) => h('th', { scope: 'col', text: t })),
        h('th', { scope: 'col', class: 'hide-narrow', text: 'Trigger' }), h('th', { scope: 'col', class: 'hide-narrow', text: 'Actor' }))),
      tbody)),
    empty,
    h('p', {}, more));
}

function runSteps(run) {
  return run.steps.map((st) => {
    let label = STEP_LABELS[st.status] || st.status;
    if (st.items) {
      const done = st.items.filter((i) => i.status === 'succeeded').length;
      label = `${label} · ${done}/${st.items.length} items`;
    } else if (st.attempts?.length > 1) {
      label = `${label} · try ${st.attempts.length}`;
    }
    const reason = typeof st.skip_reason === 'string' ? st.skip_reason : st.skip_reason ? JSON.stringify(st.skip_reason) : '';
    return {
      id: st.id,
      needs: st.needs || [],
      role: st.role,
      compensate: st.compensate,
      status: st.status,
      label,
      title: [STEP_LABELS[st.status] || st.status, st.agent, reason ? `skipped: ${reason}` : '', st.error?.message ? `error: ${st.error.message}` : ''].filter(Boolean).join('; '),
    };
  });
}

/** Run events the run document keeps (the newest; the audit log has all). */
const RUN_EVENTS_KEPT = 256;

async function runPage(token, id) {
  const url = `/api/runs/${encodeURIComponent(id)}`;
  const first = await revalidate(url);
  let run = first.data;
  let etag = first.etag;
  let selected = new URLSearchParams(location.search).get('step') || null;
  const head = h('div');
  const graph = h('div');
  const panel = h('section', { class: 'card step-panel', 'aria-live': 'polite', id: 'step-panel' });
  const trail = h('section', { class: 'card' });
  let shownStep = '';

  const select = (stepId) => {
    selected = stepId;
    history.replaceState(null, '', `/ui/runs/${encodeURIComponent(run.id)}?step=${encodeURIComponent(stepId)}`);
    routed = location.pathname + location.search;
    drawGraph(true);
    drawPanel(true);
    panel.scrollIntoView({ block: 'nearest' });
  };
  let headKey = '';
  let graphKey = '';
  const drawHead = () => {
    // Heartbeats move the run's revision every few seconds; redrawing the
    // head for them would drop focus and a half-confirmed cancel.
    const key = JSON.stringify([run.status, run.started_at_ms, run.finished_at_ms, run.error]);
    if (key === headKey) {
      const d = head.querySelector('#run-duration');
      if (d) d.textContent = fmtDuration(runDuration(run));
      return;
    }
    headKey = key;
    const canCancel = rank(session.me.role) >= rank('operator') && !TERMINAL_RUN.has(run.status);
    const cancelNote = h('span');
    let armed = false;
    const cancel = canCancel && h('button', { type: 'button', class: 'danger', id: 'cancel-run', text: 'Cancel run', onclick: async () => {
      if (!armed) { armed = true; cancel.textContent = 'Confirm: cancel this run'; return; }
      cancel.disabled = true;
      try {
        await api(`/api/runs/${encodeURIComponent(run.id)}/cancel`, { method: 'POST', body: {} });
      } catch (err) { fill(cancelNote, problemNote(err)); cancel.disabled = false; return; }
      announce('Run cancelled');
      // The next poll shows it too, should this look fail.
      refresh().catch(() => {});
    } });
    fill(head, 
      h('div', { class: 'row' }, h('h1', { text: `Run ${run.id}` }), h('span', { class: 'spacer' }), cancel || null),
      h('div', { class: 'card' }, h('dl', { class: 'facts' },
        fact('Status', h('span', { id: 'run-status' }, badge(run.status))),
        fact('Workflow', h('a', { href: `/ui/registry/workflows/${encodeURIComponent(run.workflow)}`, text: `${run.workflow} v${run.workflow_version}` })),
        fact('Trigger', `${run.trigger?.kind ?? run.trigger_kind ?? '—'}${run.trigger?.actor ? ` by ${run.trigger.actor}` : ''}`),
        fact('Started', fmtTime(run.started_at_ms ?? run.created_at_ms)),
        fact('Duration', h('span', { id: 'run-duration', text: fmtDuration(runDuration(run)) })),
        run.rerun_of ? fact('Re-run of', h('a', { href: `/ui/runs/${encodeURIComponent(run.rerun_of)}`, text: run.rerun_of })) : null)),
      run.error ? h('p', { class: 'notice error', text: run.error }) : null,
      cancelNote);
  };
  const drawGraph = (force) => {
    const steps = runSteps(run);
    const key = JSON.stringify(steps);
    if (!force && key === graphKey) return;
    graphKey = key;
    const focused = document.activeElement?.closest?.('g.node')?.dataset.step;
    fill(graph, 
      h('h2', { text: 'Steps' }),
      dag(steps, { selected, onSelect: select, label: `Steps of run ${run.id}` }),
      legend(),
      h('p', { class: 'muted', text: 'Select a step for its attempts, input and output.' }));
    if (focused) graph.querySelector(`g.node[data-step="${CSS.escape(focused)}"]`)?.focus();
  };
  const drawPanel = (force) => {
    const st = run.steps.find((x) => x.id === selected);
    // The lease moves with every heartbeat: not a reason to collapse what
    // the user opened.
    const key = st ? JSON.stringify({ ...st, lease_expires_at_ms: undefined }) : '';
    if (!force && key === shownStep) return;
    shownStep = key;
    if (!st) { panel.hidden = true; return; }
    panel.hidden = false;
    const dl = h('dl');
    const row = (k, v) => { if (v !== undefined && v !== null && v !== '') dl.append(h('dt', { text: k }), h('dd', {}, v)); };
    row('Status', badge(st.status));
    row('Agent', `${st.agent} v${st.agent_version}${st.fallback ? ` (fallbacks: ${st.fallback.join(', ')})` : ''}`);
    row('Needs', (st.needs || []).join(', ') || null);
    row('Attempts', `${st.attempts.length} of at most ${st.max_attempts ?? '?'}`);
    row('Timeout', st.timeout_secs ? `${st.timeout_secs} s` : null);
    row('Condition', st.when);
    row('Compensated by', st.compensate);
    row('Skipped because', typeof st.skip_reason === 'string' ? st.skip_reason : st.skip_reason ? JSON.stringify(st.skip_reason) : null);
    row('Re-uses', st.reused_from);
    row('Finished', st.done_at_ms ? fmtTime(st.done_at_ms) : null);
    row('Error', st.error ? h('span', { class: 'error', text: `${st.error.kind}: ${st.error.message}` }) : null);
    const attempts = st.attempts.length ? h('div', { class: 'table-wrap' }, h('table', { class: 'attempts' },
      h('thead', {}, h('tr', {}, ['#', 'Worker', 'Dispatched', 'Started', 'Finished', 'Took', 'Exit', 'Error'].map((t) => h('th', { scope: 'col', text: t })))),
      h('tbody', {}, st.attempts.map((a) => h('tr', {},
        h('td', { text: a.number }),
        h('td', { class: 'mono', text: a.worker ?? '—' }),
        h('td', { class: 'time', text: fmtTime(a.dispatched_at_ms) }),
        h('td', { class: 'time', text: fmtTime(a.started_at_ms) }),
        h('td', { class: 'time', text: fmtTime(a.finished_at_ms) }),
        h('td', { class: 'num', text: a.finished_at_ms ? fmtDuration(a.finished_at_ms - (a.started_at_ms ?? a.dispatched_at_ms)) : '—' }),
        h('td', { class: 'num', text: a.exit_code ?? '—' }),
        h('td', {}, a.error ? `${a.error.kind}: ${a.error.message}` : '', a.logs_tail ? h('details', { open: Boolean(a.error) }, h('summary', { text: 'stderr' }), h('pre', { text: a.logs_tail })) : null)))))) : h('p', { class: 'muted', text: 'Not dispatched yet.' });
    const items = st.items ? [h('h3', { text: `Items (${st.items.length})` }), h('div', { class: 'table-wrap' }, h('table', {},
      h('thead', {}, h('tr', {}, ['Item', 'Status', 'Attempts', 'Output bytes', 'Error'].map((t) => h('th', { scope: 'col', text: t })))),
      h('tbody', {}, st.items.map((i) => h('tr', {}, h('td', { class: 'mono', text: i.id }), h('td', {}, badge(i.status)), h('td', { class: 'num', text: i.attempts?.length ?? 0 }),
        h('td', { class: 'num', text: i.output_bytes ?? '—' }), h('td', { text: i.error ? `${i.error.kind}: ${i.error.message}` : (i.skip_reason ?? '') }))))))] : [];
    fill(panel, 
      h('h2', { text: `Step ${st.id}` }),
      dl,
      h('h3', { text: 'Attempts' }), attempts,
      items,
      h('h3', { text: 'Input' }), st.input === undefined || st.input === null ? h('p', { class: 'muted', text: 'Not rendered yet.' }) : jsonView(st.input),
      h('h3', { text: 'Output' }),
      st.output !== undefined && st.output !== null ? outputView(run.id, st)
        : st.status === 'succeeded' ? h('div', {}, h('p', { class: 'muted', text: st.output_note || 'The output is not shown here.' }), h('p', {}, downloadButton(run.id, st.id)))
          : h('p', { class: 'muted', text: 'No output yet.' }));
  };
  // The run's own trail (its newest events, kept in the run); older
  // entries from the audit log on request.
  let trailShown = '';
  // Entries the user fetched from the audit log, kept across redraws.
  let earlier = [];
  let cursor = null;
  let exhausted = false;
  const drawTrail = () => {
    const events = run.events || [];
    const key = JSON.stringify([events.length, events.slice(-3)]);
    if (key === trailShown) return;
    trailShown = key;
    const rows = (list) => list.map((e) => h('tr', {}, h('td', { class: 'time', text: fmtTime(e.at_ms) }), h('td', { class: 'mono', text: e.kind ?? e.type }),
      h('td', { text: e.step ?? '' }), h('td', { text: e.actor ?? '' }), h('td', { text: e.detail ?? e.summary ?? '' })));
    const tbody = h('tbody', {}, rows(earlier), rows(events));
    const note = h('div', { 'aria-live': 'polite' });
    if (exhausted) note.append(h('p', { class: 'muted', text: 'That is the whole trail the audit log keeps.' }));
    // The same moment and event seen in the run and in the log.
    const same = (e) => `${e.at_ms}|${e.kind ?? e.type}|${e.step ?? ''}`;
    const more = events.length >= RUN_EVENTS_KEPT && !exhausted && h('button', { type: 'button', text: 'Earlier entries from the audit log', onclick: async () => {
      more.disabled = true;
      fill(note);
      try {
        const q = new URLSearchParams({ run: run.id, limit: '200', until: String(events[0].at_ms) });
        if (cursor) q.set('cursor', cursor);
        const page = await api(`/api/audit?${q}`);
        const shown = new Set([...earlier, ...events].map(same));
        const found = [...page.entries].reverse().filter((e) => !shown.has(same(e)));
        earlier = [...found, ...earlier];
        tbody.prepend(...rows(found));
        cursor = page.next_cursor;
        if (!cursor) { exhausted = true; more.hidden = true; note.append(h('p', { class: 'muted', text: 'That is the whole trail the audit log keeps.' })); }
      } catch (err) {
        note.append(problemNote(err));
      } finally {
        more.disabled = false;
      }
    } });
    fill(trail, h('h2', { text: 'Audit trail' }),
      more ? [h('p', { class: 'muted', text: `The newest ${RUN_EVENTS_KEPT} events; the audit log keeps the rest.` }), more, note] : null,
      h('div', { class: 'table-wrap' }, h('table', { class: 'trail' },
        h('thead', {}, h('tr', {}, ['Time', 'Event', 'Step', 'Actor', 'What'].map((x) => h('th', { scope: 'col', text: x })))),
        tbody)));
  };
  const fresh = latest();
  const refresh = async () => {
    const mine = fresh();
    const answer = await revalidate(url, etag);
    if (answer === NOT_MODIFIED || !mine() || token !== view) return;
    // An answer that crossed a newer one on the way is older news.
    if (answer.data.revision < run.revision) return;
    const finished = !TERMINAL_RUN.has(run.status) && TERMINAL_RUN.has(answer.data.status);
    run = answer.data;
    etag = answer.etag;
    drawHead();
    drawGraph();
    drawPanel(false);
    drawTrail();
    if (finished) announce(`Run ${run.status}`);
  };
  drawHead();
  drawGraph();
  drawPanel(true);
  drawTrail();
  // While it moves: one store read per poll until it does (304).
  every(token, 2000, async () => { if (!TERMINAL_RUN.has(run.status)) await refresh(); });
  return h('div', {}, head, graph, panel, trail);
}

// ---------------------------------------------------------------- approvals

/** A diff with its lines marked; anything else as text. */
function preview(text) {
  if (!/^(diff --git|--- |\+\+\+ |@@ )/m.test(text)) return h('pre', { class: 'json', text });
  return h('div', { class: 'diff', role: 'region', 'aria-label': 'Diff' }, text.split('\n').map((line) => {
    let cls = '';
    if (line.startsWith('diff --git') || line.startsWith('+++ ') || line.startsWith('--- ')) cls = 'file';
    else if (line.startsWith('@@')) cls = 'hunk';
    else if (line.startsWith('+')) cls = 'add';
    else if (line.startsWith('-')) cls = 'del';
    return h('div', { class: cls, text: line || ' ' });
  }));
}

/** Most bytes of a decision's comment (the API's limit). */
const MAX_COMMENT_BYTES = 1000;

function approvalCard(a, onDecided) {
  const ownRun = !a.allow_self_approval && a.requested_by === session.me.actor;
  const mayDecide = (a.approver_roles || []).includes(session.me.role) && !ownRun;
  const left = h('span', { class: 'time-left', 'data-expires': a.expires_at_ms });
  const note = h('div', { 'aria-live': 'polite' });
  const comment = h('textarea', { id: `comment-${a.id}`, maxlength: 1000, placeholder: 'Why (kept in the audit trail)' });
  const decide = async (decision, button) => {
    fill(note);
    const text = comment.value.trim();
    if (new TextEncoder().encode(text).length > MAX_COMMENT_BYTES) {
      note.append(h('p', { class: 'notice error', role: 'alert', text: `The comment is longer than ${MAX_COMMENT_BYTES} bytes.` }));
      return;
    }
    for (const b of card.querySelectorAll('.decide button')) b.disabled = true;
    try {
      const body = { decision, input_sha256: a.input_sha256 };
      if (text) body.comment = text;
      const answer = await api(`/approvals/${encodeURIComponent(a.id)}/decision`, { method: 'POST', body });
      note.append(h('p', { class: 'notice', text: answer.message || answer.result }));
      announce(`${decision === 'approve' ? 'Approved' : 'Rejected'}: ${a.step} of ${a.run_id}`);
      onDecided();
    } catch (err) {
      note.append(problemNote(err));
      for (const b of card.querySelectorAll('.decide button')) b.disabled = false;
      button.focus();
    }
  };
  const card = h('article', { class: 'card approval', 'data-approval': a.id, 'data-step': a.step, 'aria-labelledby': `h-${a.id}` },
    h('div', { class: 'row' },
      h('h3', { id: `h-${a.id}` }, `${a.step} (${a.agent}) in `, h('a', { href: `/ui/runs/${encodeURIComponent(a.run_id)}`, class: 'mono', text: a.run_id })),
      h('span', { class: `badge lvl-${a.level}`, text: `${a.level} risk · ${a.score}` }),
      h('span', { class: 'spacer' }),
      left),
    h('p', { class: 'muted', text: `${a.workflow} · asked ${fmtTime(a.created_at_ms)} · started by ${a.requested_by ?? 'unknown'} · ${a.approvals}/${a.approvers_needed} approvals · on expiry: ${a.on_expiry}` }),
    a.matched?.length ? h('div', {}, h('strong', { text: 'Why it needs approval' }), h('ul', { class: 'rules' }, a.matched.map((m) => h('li', {},
      h('span', { class: `badge lvl-${m.level}`, text: m.level }), ' ', h('code', { text: m.rule }), ` — ${m.reason}`,
      m.excerpt ? [' ', h('code', { class: 'muted', text: `“${m.excerpt}” at ${m.at || '/'}` })] : null)))) : h('p', { class: 'muted', text: `No rule matched; asked because: ${a.asked}` }),
    h('strong', { text: 'Preview' }),
    preview(a.preview || ''),
    mayDecide ? h('div', { class: 'decide' },
      h('label', { for: `comment-${a.id}`, text: 'Comment' }), comment,
      h('div', { class: 'row' },
        h('button', { type: 'button', class: 'approve', text: 'Approve', onclick: (e) => decide('approve', e.currentTarget) }),
        h('button', { type: 'button', class: 'reject', text: 'Reject', onclick: (e) => decide('reject', e.currentTarget) }))) :
      h('p', { class: 'muted', text: ownRun ? 'You started this run: someone else decides it.'
        : `Your role (${session.me.role}) cannot decide this approval; ${(a.approver_roles || []).join(' or ')} can.` }),
    note);
  return card;
}

function tickTimeLeft(root) {
  for (const el of root.querySelectorAll('.time-left')) {
    const at = Number(el.dataset.expires);
    if (!at) { el.textContent = 'no expiry'; continue; }
    const ms = at - Date.now();
    el.textContent = ms > 0 ? `expires in ${fmtDuration(ms).replace(/ \d+ s$/, '')}` : 'expired';
    el.className = `time-left ${ms < 3600e3 ? 'error' : 'muted'}`;
  }
}

async function approvalsPage(token) {
  const pendingList = h('div', { id: 'pending' });
  const beyond = h('p', { class: 'notice', hidden: true, text: 'More approvals may be waiting than are listed here (the listing looks at the newest ones): GET /approvals?status=pending with its next_cursor finds them.' });
  const decidedBody = h('tbody');
  const cards = new Map();
  const freshPending = latest();
  const freshDecided = latest();
  // What waits: polled. Each card is kept while its approval is unchanged,
  // so a comment being typed survives the polls.
  const loadPending = async () => {
    const mine = freshPending();
    const pending = await api('/approvals?status=pending&limit=100');
    if (!mine() || token !== view) return;
    beyond.hidden = !pending.next_cursor;
    const ids = new Set(pending.approvals.map((a) => a.id));
    for (const [id, card] of cards) if (!ids.has(id)) { card.remove(); cards.delete(id); }
    for (const a of pending.approvals) {
      const known = cards.get(a.id);
      const key = `${a.approvals}/${a.status}`;
      if (known && known.dataset.key === key) continue;
      const card = approvalCard(a, decided);
      card.dataset.key = key;
      if (known) known.replaceWith(card); else pendingList.append(card);
      cards.set(a.id, card);
    }
    // The most urgent first: the soonest to expire. Moved only when the
    // order changed, since moving a card would take the focus from it.
    const order = [...pending.approvals].sort((x, y) => (x.expires_at_ms ?? Infinity) - (y.expires_at_ms ?? Infinity) || (x.id < y.id ? -1 : 1))
      .map((a) => cards.get(a.id));
    const shown = [...pendingList.querySelectorAll('article.approval')];
    if (order.some((c, i) => shown[i] !== c)) pendingList.append(...order);
    const none = pendingList.querySelector('.none');
    if (!cards.size && !none) pendingList.append(h('p', { class: 'muted none', text: 'Nothing waits for a decision.' }));
    if (cards.size && none) none.remove();
    tickTimeLeft(pendingList);
  };
  // What was decided: the newest approvals of any status but pending, on
  // load, after a decision and every minute (one listing, not one per
  // status; a few pages at most when many newer ones still wait).
  const loadDecided = async () => {
    const mine = freshDecided();
    let found = [];
    let cursor = null;
    for (let pages = 0; pages < 3 && found.length < 30; pages += 1) {
      const list = await api(`/approvals?limit=100${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`);
      found = [...found, ...list.approvals.filter((a) => a.status !== 'pending')];
      cursor = list.next_cursor;
      if (!cursor) break;
    }
    if (!mine() || token !== view) return;
    const decided = found.sort((x, y) => (y.decided_at_ms ?? 0) - (x.decided_at_ms ?? 0)).slice(0, 30);
    fill(decidedBody, ...decided.map((a) => h('tr', { 'data-approval': a.id },
      h('td', {}, `${a.step} in `, h('a', { href: `/ui/runs/${encodeURIComponent(a.run_id)}`, class: 'mono', text: a.run_id })),
      h('td', {}, h('span', { class: `badge lvl-${a.level}`, text: a.level })),
      h('td', {}, badge(a.status)),
      h('td', { text: (a.decisions || []).map((d) => `${d.by}: ${d.decision}${d.comment ? ` (“${d.comment}”)` : ''}${d.via_link ? ' via link' : ''}`).join('; ') || '—' }),
      h('td', { class: 'time', text: fmtTime(a.decided_at_ms) }))));
  };
  function decided() {
    setTimeout(() => { loadPending().catch(() => {}); loadDecided().catch(() => {}); }, 300);
  }
  await Promise.all([loadPending(), loadDecided()]);
  // A pending listing looks through the newest approvals (and their runs):
  // every ten seconds is live enough for a human decision.
  every(token, 10000, loadPending);
  every(token, 60000, loadDecided);
  every(token, 1000, async () => tickTimeLeft(pendingList));
  return h('div', {},
    h('h1', { text: 'Approvals' }),
    h('h2', { text: 'Waiting for a decision' }),
    beyond,
    pendingList,
    h('h2', { text: 'Decided' }),
    h('div', { class: 'table-wrap' }, h('table', { class: 'decided' },
      h('thead', {}, h('tr', {}, ['Step', 'Risk', 'Outcome', 'Decided by', 'When'].map((x) => h('th', { scope: 'col', text: x })))),
      decidedBody)));
}

// ---------------------------------------------------------------- overview

function activityChart(days) {
  const W = 720, H = 240, L = 40, R = 44, T = 14, B = 34;
  const maxRuns = Math.max(1, ...days.map((d) => d.runs));
  const n = days.length;
  const slot = (W - L - R) / Math.max(1, n);
  const bw = Math.max(3, slot * 0.6);
  const y = (v) => T + (H - T - B) * (1 - v / maxRuns);
  const yr = (r) => T + (H - T - B) * (1 - r);
  const svgEl = s('svg', { class: 'chart', viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-labelledby': 'chart-title' },
    s('title', { id: 'chart-title', text: `Runs per day and error rate over the last ${n} days` }));
  svgEl.append(s('line', { class: 'axis', x1: L, x2: W - R, y1: H - B, y2: H - B }));
  svgEl.append(s('text', { x: L - 6, y: T + 4, 'text-anchor': 'end', text: String(maxRuns) }));
  svgEl.append(s('text', { x: L - 6, y: H - B, 'text-anchor': 'end', text: '0' }));
  svgEl.append(s('text', { x: W - R + 6, y: T + 4, text: '100%' }));
  svgEl.append(s('text', { x: W - R + 6, y: H - B, text: '0%' }));
  const points = [];
  days.forEach((d, i) => {
    const cx = L + slot * i + slot / 2;
    const rate = d.events ? d.errors / d.events : 0;
    svgEl.append(s('rect', { class: 'bar', x: cx - bw / 2, y: y(d.runs), width: bw, height: Math.max(0, H - B - y(d.runs)), 'data-day': d.day, 'data-runs': d.runs },
      s('title', { text: `${d.day}: ${d.runs} runs; ${d.errors} errors in ${d.events} events (${(rate * 100).toFixed(1)}%)` })));
    points.push(`${cx},${yr(rate)}`);
    if (n <= 10 || i % Math.ceil(n / 8) === 0 || i === n - 1) {
      svgEl.append(s('text', { x: cx, y: H - B + 16, 'text-anchor': 'middle', text: d.day.slice(5) }));
    }
  });
  if (points.length) {
    svgEl.append(s('polyline', { class: 'rate', points: points.join(' ') }));
    for (const p of points) { const [cx, cy] = p.split(','); svgEl.append(s('circle', { class: 'dot', cx, cy, r: 2.5 })); }
  }
  // The same figures as a table, for screen readers.
  const figures = h('table', { class: 'sr-only' }, h('caption', { text: 'Activity per day' }),
    h('thead', {}, h('tr', {}, ['Day', 'Runs', 'Events', 'Errors'].map((t) => h('th', { scope: 'col', text: t })))),
    h('tbody', {}, days.map((d) => h('tr', {}, h('td', { text: d.day }), h('td', { text: d.runs }), h('td', { text: d.events }), h('td', { text: d.errors })))));
  return h('div', {}, svgEl, h('p', { class: 'muted', text: 'Bars: runs started per day. Line: errors per event (right axis).' }), figures);
}

async function overviewPage(token) {
  let span = 7;
  const chart = h('div', { id: 'activity' });
  const chartNote = h('div', { 'aria-live': 'polite' });
  const fresh = latest();
  const drawChart = async () => {
    const mine = fresh();
    const act = await api(`/api/metrics/activity?days=${span}`);
    // A poll's answer must not undo a later click on the other span.
    if (!mine() || token !== view) return;
    const days = act.days || [];
    const runs = days.reduce((n, d) => n + d.runs, 0);
    const events = days.reduce((n, d) => n + d.events, 0);
    const errors = days.reduce((n, d) => n + d.errors, 0);
    fill(chart,
      h('p', { text: `${runs} runs, ${events} events, ${errors} errors (${events ? ((errors / events) * 100).toFixed(1) : '0.0'}% error rate) in the last ${span} days.` }),
      activityChart(days));
  };
  // Built once, so the pressed button keeps its focus.
  const tabs = h('div', { class: 'tabs', role: 'group', 'aria-label': 'Days shown' }, [7, 30].map((d) => h('button', {
    type: 'button', 'aria-pressed': String(d === span), text: `${d} days`, onclick: async (e) => {
      span = d;
      for (const b of tabs.querySelectorAll('button')) b.setAttribute('aria-pressed', String(b === e.currentTarget));
      fill(chartNote);
      try { await drawChart(); } catch (err) { chartNote.append(problemNote(err)); }
    },
  })));
  const summary = h('div');
  const workers = h('div');
  const hooks = h('div');
  const schedules = h('div');
  const drawRest = async () => {
    const [sum, health, wh, sch] = await Promise.all([
      api('/api/metrics/summary').catch((e) => ({ error: e })),
      api('/health').catch((e) => (e.status === 503 && e.problem?.checks ? e.problem : { error: e })),
      api('/api/metrics/webhooks').catch((e) => ({ error: e })),
      api('/api/schedules').catch((e) => ({ error: e })),
    ]);
    fill(summary, h('h2', { text: 'Today' }), sum.error ? problemNote(sum.error) : [
      h('p', { text: `${sum.runs} runs, ${sum.events} events, ${sum.errors} errors (${(sum.error_rate * 100).toFixed(1)}%).` }),
      h('h3', { text: 'Most frequent events' }),
      sum.top_events.length ? table(['Event', 'Count'], sum.top_events.map((e) => h('tr', {}, h('td', { class: 'mono', text: e.type }), h('td', { class: 'num', text: e.count }))), 'top-events')
        : h('p', { class: 'muted', text: 'No events today.' })]);
    fill(workers, h('h2', { text: 'Workers' }), health.error ? problemNote(health.error) : [
      h('p', {}, 'Store: ', badge(health.checks.store.status), health.checks.store.latency_ms !== undefined ? ` ${health.checks.store.latency_ms} ms` : '', ` · Spindle ${health.version ?? ''}`),
      table(['Worker', 'Status', 'Latency', 'Circuit', 'Opened', 'Recent failures'], health.checks.workers.map((w) => h('tr', {},
        h('td', { class: 'mono', text: w.url }), h('td', {}, badge(w.status), w.error ? h('div', { class: 'muted', text: w.error }) : null), h('td', { class: 'num', text: `${w.latency_ms} ms` }),
        h('td', {}, badge(w.breaker.state, w.breaker.state.replace('_', '-'))), h('td', { class: 'num', text: w.breaker.opened_total }), h('td', { class: 'num', text: w.breaker.recent_failures }))), 'workers')]);
    fill(hooks, h('h2', { text: 'Webhook sources' }), wh.error ? problemNote(wh.error) :
      wh.sources.length ? table(['Source', 'Last delivery', 'Last outcome', 'Accepted', 'Rejected'], wh.sources.map((x) => h('tr', {},
        h('td', { text: x.source }), h('td', {}, timeEl(x.last_delivery_at_ms)), h('td', { text: x.last_outcome ?? '—' }), h('td', { class: 'num', text: x.accepted }),
        h('td', { class: 'num' }, h('span', { class: x.rejected ? 'error' : '', text: x.rejected })))), 'webhooks') : h('p', { class: 'muted', text: 'No deliveries yet.' }));
    fill(schedules, h('h2', { text: 'Schedules' }), sch.error ? problemNote(sch.error) :
      sch.schedules.length ? table(['Schedule', 'Workflow', 'Cron', 'Next fire', 'Last run'], sch.schedules.map((x) => h('tr', {},
        h('td', { text: x.name }), h('td', { text: x.workflow }), h('td', { class: 'mono', text: `${x.cron} ${x.timezone ?? ''}` }),
        h('td', {}, x.paused ? badge('cancelled', 'paused') : [timeEl(x.next_fire_at_ms), ' ', h('span', { class: 'muted', text: fmtTime(x.next_fire_at_ms) })]),
        h('td', {}, x.last_run_id ? h('a', { href: `/ui/runs/${encodeURIComponent(x.last_run_id)}`, class: 'mono', text: x.last_run_id }) : '—'))), 'schedules') : h('p', { class: 'muted', text: 'No schedules.' }));
  };
  await Promise.all([drawChart(), drawRest()]);
  // Each look costs the store a walk of today's audit trail and the
  // workers a probe: once a minute is plenty for an overview.
  every(token, 60000, async () => { await Promise.all([drawChart(), drawRest()]); });
  return h('div', {},
    h('h1', { text: 'Overview' }),
    h('section', { class: 'card' }, h('div', { class: 'row' }, h('h2', { text: 'Activity' }), h('span', { class: 'spacer' }), tabs), chartNote, chart),
    h('div', { class: 'grid' }, h('section', { class: 'card' }, summary), h('section', { class: 'card' }, workers)),
    h('div', { class: 'grid' }, h('section', { class: 'card' }, hooks), h('section', { class: 'card' }, schedules)));
}

// ---------------------------------------------------------------- registry

async function registryPage(kind, name) {
  const tabs = h('nav', { class: 'tabs', 'aria-label': 'Registry' }, ['workflows', 'agents', 'schedules', 'subscriptions'].map((k) =>
    h('a', { href: `/ui/registry/${k}`, class: 'button', 'aria-current': k === kind ? 'page' : undefined, text: k[0].toUpperCase() + k.slice(1) })));
  const note = h('p', { class: 'muted', text: 'Read-only here; change the registry through the API (admin).' });
  let body;
  if (kind === 'workflows' && name) {
    const wf = await api(`/api/workflows/${encodeURIComponent(name)}`);
    body = [
      h('h1', { text: `Workflow ${wf.name}` }),
      h('p', { text: `Version ${wf.version}${wf.deadline_secs ? ` · deadline ${fmtDuration(wf.deadline_secs * 1000)}` : ''}` }),
      wf.description ? h('p', { text: wf.description }) : null,
      dag(workflowSteps(wf), { label: `Steps of workflow ${wf.name}` }),
      h('h2', { text: 'Steps' }),
      table(['Step', 'Agent', 'Needs', 'Condition', 'For each', 'Compensated by'], wf.steps.map((st) => h('tr', {},
        h('td', { class: 'mono', text: st.id }), h('td', {}, h('a', { href: '/ui/registry/agents', text: st.agent })), h('td', { text: (st.needs || []).join(', ') }),
        h('td', { class: 'mono', text: st.when ?? '' }), h('td', { class: 'mono', text: st.for_each ?? '' }), h('td', { text: st.compensate ?? '' })))),
      h('p', {}, h('a', { href: `/ui/runs?workflow=${encodeURIComponent(wf.name)}`, text: 'Its runs' })),
      h('details', {}, h('summary', { text: 'Definition (JSON)' }), jsonView(wf)),
    ];
  } else if (kind === 'workflows') {
    const list = await api('/api/workflows');
    body = [h('h1', { text: 'Workflows' }), table(['Workflow', 'Version', 'Steps', 'Description'], list.workflows.map((w) => h('tr', {},
      h('td', {}, h('a', { href: `/ui/registry/workflows/${encodeURIComponent(w.name)}`, text: w.name })), h('td', { class: 'num', text: w.version }),
      h('td', { class: 'num', text: w.steps?.length ?? '' }), h('td', { text: w.description ?? '' }))))];
  } else if (kind === 'agents') {
    const list = await api('/api/agents');
    body = [h('h1', { text: 'Agents' }), table(['Agent', 'Version', 'Runs', 'Risk', 'Limits', 'Description'], list.agents.map((a) => h('tr', {},
      h('td', { text: a.name }), h('td', { class: 'num', text: a.version }),
      h('td', { class: 'mono', text: a.image || (a.command || []).join(' ') }), h('td', {}, a.risk_level ? h('span', { class: `badge lvl-${a.risk_level === 'auto' ? 'low' : 'high'}`, text: a.risk_level }) : '—'),
      h('td', { text: `${a.timeout_secs ?? '?'} s, ${a.memory_mb ?? '?'} MB${a.network ? ', network' : ''}` }), h('td', { text: a.description ?? '' }))))];
  } else if (kind === 'schedules') {
    const list = await api('/api/schedules');
    body = [h('h1', { text: 'Schedules' }), table(['Schedule', 'Workflow', 'Cron', 'Next fire', 'Fired', 'Missed', 'Failed'], list.schedules.map((x) => h('tr', {},
      h('td', { text: x.name }), h('td', { text: x.workflow }), h('td', { class: 'mono', text: `${x.cron} ${x.timezone ?? ''}` }),
      h('td', {}, x.paused ? badge('cancelled', 'paused') : timeEl(x.next_fire_at_ms)), h('td', { class: 'num', text: x.fired ?? 0 }),
      h('td', { class: 'num', text: x.missed ?? 0 }), h('td', { class: 'num', text: x.failed ?? 0 }))))];
  } else if (kind === 'subscriptions') {
    const list = await api('/api/subscriptions');
    body = [h('h1', { text: 'Subscriptions' }), table(['Subscription', 'Source', 'Events', 'Workflow', 'Enabled'], list.subscriptions.map((x) => h('tr', {},
      h('td', { text: x.name }), h('td', { text: x.source }), h('td', { text: (x.events || []).join(', ') }), h('td', { text: x.workflow }),
      h('td', { text: x.enabled === false ? 'no' : 'yes' }))))];
  } else {
    body = [h('h1', { text: 'Not found' }), h('p', { text: `The registry has no ${kind}.` })];
  }
  return h('div', {}, tabs, body, note);
}

route();
