// streamhook console: plain JavaScript over the admin API (docs/admin-api.md).
// Every value from the journal goes into the page as text (textContent), never as markup.
'use strict';

const PAGE = 50;
const MAX_ROWS = 500;
const AUTO_SCANS = 10;

let session = { csrf: '', sinks: [] };
let live = null;          // the EventSource of the events view
let statesTimer = null;   // refreshes sink states of visible rows
let viewToken = 0;        // a newer view cancels what an older one still does

// ---------- small helpers ----------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const SVG = 'http://www.w3.org/2000/svg';
function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  for (const c of children.flat()) {
    if (c === undefined || c === null) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

// ---------- time: one zone everywhere (local with its offset, or UTC), said on screen ----------

let zone = 'local';
try { if (localStorage.getItem('streamhook-tz') === 'utc') zone = 'utc'; } catch (_) { /* private mode */ }

function offsetText(date) {
  const m = -date.getTimezoneOffset();
  const sign = m >= 0 ? '+' : '-';
  const a = Math.abs(m);
  return `UTC${sign}${String(Math.floor(a / 60)).padStart(2, '0')}:${String(a % 60).padStart(2, '0')}`;
}

function zoneText() {
  return zone === 'utc' ? 'UTC' : `local (${offsetText(new Date())})`;
}

const pad = (n, w = 2) => String(n).padStart(w, '0');

function fmtTime(ms) {
  const d = new Date(ms);
  if (zone === 'utc') {
    return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())}`;
  }
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

// "12 s ago", "5 min ago", "3 h ago", "2 d ago" (and "in ..." ahead).
function ago(ms) {
  const s = Math.round((ms - Date.now()) / 1000);
  const say = (n, unit) => (s >= 0 ? `in ${n} ${unit}` : `${n} ${unit} ago`);
  const a = Math.abs(s);
  if (a < 5) return 'just now';
  if (a < 60) return say(a, 's');
  if (a < 3600) return say(Math.round(a / 60), 'min');
  if (a < 86400 * 2) return say(Math.round(a / 3600), 'h');
  return say(Math.round(a / 86400), 'd');
}

// A time typed in the filter: a duration back from now (2h), RFC 3339 with a zone as it is,
// or a date and time without one, read in the zone shown ("2026-11-28 09:00").
function zonedInput(text) {
  const t = text.trim();
  const m = /^(\d{4})-(\d{2})-(\d{2})(?:[ T](\d{2}):(\d{2})(?::(\d{2}))?)?$/.exec(t);
  if (!m) return t;
  const [y, mo, d, hh, mm, ss] = m.slice(1).map((v) => (v === undefined ? 0 : Number(v)));
  const ms = zone === 'utc'
    ? Date.UTC(y, mo - 1, d, hh, mm, ss)
    : new Date(y, mo - 1, d, hh, mm, ss).getTime();
  return new Date(ms).toISOString();
}

function plural(n, word) {
  return `${n} ${word}${n === 1 ? '' : 's'}`;
}

class ApiError extends Error {}

async function api(path, options = {}) {
  const opts = { credentials: 'same-origin', headers: {}, ...options };
  if (opts.body !== undefined) {
    opts.headers['content-type'] = 'application/json';
    opts.headers['x-csrf-token'] = session.csrf;
    opts.body = JSON.stringify(opts.body);
  }
  const res = await fetch(path, opts);
  if (res.status === 401) { location.href = '/'; throw new ApiError('logged out'); }
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
  if (!res.ok) throw new ApiError((data && data.error) || `${res.status} ${res.statusText}`);
  return data;
}

const post = (path, body) => api(path, { method: 'POST', body });

function kindChips(kinds) {
  return kinds.map((k) => h('span', { class: 'chip' + (k === 'invalid' ? ' kind-invalid' : '') }, k));
}

function resourceLink(r) {
  if (r.id === undefined || r.id === null) return h('span', {}, r.type);
  return h('a', { href: `#/resource/${encodeURIComponent(r.type)}/${r.id}`, onclick: (e) => e.stopPropagation() }, `${r.type} ${r.id}`);
}

function stateText(st) {
  if (!st) return '?';
  if (st.state === 'pending' && st.attempts > 0) {
    return `pending: ${st.attempts} attempt${st.attempts === 1 ? '' : 's'}, next ${ago(st.next_at_ms)}`;
  }
  return st.state;
}

// Why it failed, from the state or the last attempt kept.
function lastError(st) {
  if (!st) return '';
  if (st.error) return st.error;
  if (st.last && st.last.error && st.state !== 'delivered') return st.last.error;
  return '';
}

function short(text, n) {
  return text.length > n ? `${text.slice(0, n - 1)}…` : text;
}

function sinkChips(states) {
  return Object.entries(states || {}).map(([name, st]) => {
    const why = lastError(st);
    return h('span', { class: `chip st-${(st.state || '').replace(' ', '-')}`, 'data-sink': name, title: why },
      `${name}: ${stateText(st)}`, why ? h('span', { class: 'why' }, ` (${short(why, 60)})`) : null);
  });
}

function setNav(which) {
  for (const id of ['nav-events', 'nav-sinks']) {
    document.getElementById(id).classList.toggle('active', id === `nav-${which}`);
  }
}

function stopLive() {
  if (live) { live.close(); live = null; }
  if (statesTimer) { clearInterval(statesTimer); statesTimer = null; }
  const el = document.getElementById('live-state');
  el.textContent = '○ not live';
  el.classList.remove('on');
}

function view() { return document.getElementById('view'); }

function show(...children) {
  const v = view();
  v.replaceChildren(...children);
}

function fail(e) {
  show(h('p', { class: 'error', role: 'alert' }, `Error: ${e.message}`));
}

// ---------- routing: the hash holds the view and its filter ----------

function route() {
  const token = ++viewToken;
  stopLive();
  const hash = location.hash || '#/events';
  const [path, query] = hash.slice(1).split('?');
  const params = new URLSearchParams(query || '');
  const parts = path.split('/').filter(Boolean);
  if (parts[0] === 'event' && parts[1]) return eventView(Number(parts[1]), token);
  if (parts[0] === 'resource' && parts[2]) return timelineView(decodeURIComponent(parts[1]), parts[2], token);
  if (parts[0] === 'sinks') return sinksView(token);
  return eventsView(params, token);
}

// ---------- events: newest first, filtered, live ----------

const FILTERS = [
  ['type', 'Type', 'stream, video…'],
  ['kind', 'Kind', 'stream.*'],
  ['resource', 'Resource id', '12345'],
  ['q', 'Text in body', 'anything'],
  ['since', 'Since', '2h or 2026-11-28 09:00'],
  ['until', 'Until', '10m or 2026-11-28 10:00'],
];
const STATES = ['delivered', 'pending', 'dead', 'requeued', 'not routed'];

function filterQuery(params) {
  const q = new URLSearchParams();
  for (const [name] of FILTERS) {
    const v = params.get(name);
    if (v) q.set(name, name === 'since' || name === 'until' ? zonedInput(v) : v);
  }
  if (params.get('sink') && params.get('state')) {
    q.set('sink', params.get('sink'));
    q.set('state', params.get('state'));
  }
  return q;
}

async function eventsView(params, token) {
  setNav('events');
  const select = (name, label, options, value) => h('label', {}, label,
    h('select', { name, id: `f-${name}` }, h('option', { value: '' }, 'any'),
      options.map((o) => h('option', { value: o, selected: o === value }, o))));
  const quick = (label, since) => h('button', { type: 'button', class: 'quick', 'data-since': since, onclick: () => {
    form.elements.since.value = since; form.elements.until.value = ''; form.requestSubmit();
  } }, label);
  const form = h('form', { class: 'filters', id: 'filters', role: 'search' },
    FILTERS.map(([name, label, ph]) => h('label', {}, label,
      h('input', { name, id: `f-${name}`, value: params.get(name) || '', placeholder: ph, autocomplete: 'off' }))),
    select('sink', 'Sink', session.sinks, params.get('sink')),
    select('state', 'State', STATES, params.get('state')),
    h('span', { class: 'quick-ranges' }, quick('15 min', '15m'), quick('1 h', '1h'), quick('24 h', '24h')),
    h('button', { type: 'submit', class: 'primary', id: 'apply' }, 'Filter'),
    h('button', { type: 'button', id: 'clear', onclick: () => { location.hash = '#/events'; } }, 'Clear'),
    h('span', { class: 'muted zone-note' }, `Times in ${zoneText()}`));
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const q = new URLSearchParams();
    for (const [name] of FILTERS) {
      const v = form.elements[name].value.trim();
      if (v) q.set(name, v);
    }
    const sk = form.elements.sink.value;
    const st = form.elements.state.value;
    if (sk && st) { q.set('sink', sk); q.set('state', st); }
    else if (sk || st) { status.textContent = 'Choose a sink and a state together.'; return; }
    const text = q.toString();
    const target = '#/events' + (text ? `?${text}` : '');
    if (location.hash === target) route(); else location.hash = target;
  });
  const tbody = h('tbody', { id: 'events' });
  const table = h('table', { id: 'events-table' },
    h('thead', {}, h('tr', {}, ['Time', 'Kinds', 'Resource', 'Name', 'Source', 'Sinks'].map((t) => h('th', {}, t)))),
    tbody);
  const status = h('div', { class: 'status-line', id: 'events-status', 'aria-live': 'polite' }, 'Searching…');
  const more = h('button', { type: 'button', id: 'older', hidden: true }, 'Older events');
  show(h('h1', {}, 'Events'), form, status, table, h('p', {}, more));

  const filter = filterQuery(params);
  const seen = new Set();
  let nextBefore = null;
  let scannedAll = 0;
  let extended = false;

  const addRow = (ev, atTop) => {
    if (seen.has(ev.seq)) return;
    seen.add(ev.seq);
    const tr = h('tr', { tabindex: 0, 'data-seq': ev.seq, class: atTop ? 'fresh' : '',
      onclick: () => { location.hash = `#/event/${ev.seq}`; },
      onkeydown: (e) => { if (e.key === 'Enter') location.hash = `#/event/${ev.seq}`; } },
    h('td', { 'data-label': 'Time', class: 'mono', title: ev.received_at },
      h('span', { class: 'abs' }, fmtTime(ev.received_at_ms)), h('span', { class: 'rel', 'data-ms': ev.received_at_ms }, ` ${ago(ev.received_at_ms)}`), ev.late ? h('span', { class: 'chip late', title: 'stored after a newer event of its resource' }, 'late') : null,
      ev.reconciled ? h('span', { class: 'chip reconciled', title: `recovered from Gcore's API, not sent as a webhook: ${ev.reconciled.reason}${ev.reconciled.happened_at ? `; happened at ${ev.reconciled.happened_at}` : ''}` }, 'reconciled') : null),
    h('td', { 'data-label': 'Kinds' }, kindChips(ev.kinds)),
    h('td', { 'data-label': 'Resource' }, resourceLink(ev.resource)),
    h('td', { 'data-label': 'Name' }, ev.name || ''),
    h('td', { 'data-label': 'Source', class: 'mono' }, ev.source_ip),
    h('td', { 'data-label': 'Sinks', class: 'sinks' }, sinkChips(ev.sinks)));
    if (atTop) tbody.prepend(tr); else tbody.append(tr);
    // Live rows push the oldest out; rows the operator asked for (older pages) stay: they
    // are never trimmed as they come (that made "Older events" seem to do nothing).
    while (atTop && !extended && tbody.children.length > MAX_ROWS) {
      seen.delete(Number(tbody.lastElementChild.dataset.seq));
      tbody.lastElementChild.remove();
    }
  };

  const describe = () => {
    const n = tbody.children.length;
    const where = nextBefore ? `searched ${scannedAll.toLocaleString()} events so far` : 'searched the whole journal';
    status.textContent = `${n} event${n === 1 ? '' : 's'} shown, newest first; ${where}.`;
    more.hidden = !nextBefore;
  };

  const load = async (before, wanted) => {
    let found = 0;
    for (let i = 0; i < AUTO_SCANS && found < wanted; i++) {
      const q = new URLSearchParams(filter);
      q.set('limit', String(wanted - found));
      if (before) q.set('before', String(before));
      const page = await api(`/admin/events/search?${q}`);
      if (token !== viewToken) return null;
      scannedAll += page.scanned;
      for (const ev of page.events) { addRow(ev, false); found++; }
      nextBefore = page.next_before;
      before = nextBefore;
      if (!before) break;
      status.textContent = `Searching… ${scannedAll.toLocaleString()} events read`;
    }
    return true;
  };

  more.addEventListener('click', async () => {
    extended = true;
    more.disabled = true;
    try { await load(nextBefore, PAGE); describe(); } catch (e) { status.textContent = `Error: ${e.message}`; }
    more.disabled = false;
  });

  let lastSeq = 0;
  try {
    const first = await api(`/admin/events/search?${new URLSearchParams([...filter, ['limit', '1']])}`);
    lastSeq = first.last_seq;
    if (token !== viewToken) return;
    if (!(await load(null, PAGE))) return;
    describe();
  } catch (e) { status.textContent = `Error: ${e.message}`; return; }

  // Live: new events that match the filter, as they are committed.
  const lq = new URLSearchParams(filter);
  lq.set('after', String(lastSeq));
  const liveState = document.getElementById('live-state');
  live = new EventSource(`/admin/events/live?${lq}`);
  live.addEventListener('open', () => { liveState.textContent = '● live'; liveState.classList.add('on'); });
  live.addEventListener('error', () => { liveState.textContent = '○ reconnecting'; liveState.classList.remove('on'); });
  live.addEventListener('problem', (m) => { liveState.textContent = `○ ${m.data}`; liveState.classList.remove('on'); });
  live.addEventListener('event', (m) => {
    liveState.textContent = '● live';
    liveState.classList.add('on');
    const ev = JSON.parse(m.data);
    addRow(ev, true);
    describe();
  });

  // Sink states change after the row arrives: refresh what is on screen.
  statesTimer = setInterval(async () => {
    if (document.hidden) return;
    for (const el of tbody.querySelectorAll('span.rel')) el.textContent = ` ${ago(Number(el.dataset.ms))}`;
    const seqs = [...tbody.querySelectorAll('tr')].slice(0, 200).map((tr) => tr.dataset.seq);
    if (!seqs.length) return;
    try {
      const states = await api(`/admin/events/states?seqs=${seqs.join(',')}`);
      for (const tr of tbody.querySelectorAll('tr')) {
        const st = states[tr.dataset.seq];
        if (st) tr.querySelector('td.sinks').replaceChildren(...sinkChips(st));
      }
    } catch (_) { /* the next tick tries again */ }
  }, 2000);
}

// ---------- one event ----------

function pretty(text) {
  try { return JSON.stringify(JSON.parse(text), null, 2); } catch (_) { return text; }
}

// "Copy as curl": the body as received, to a URL of the operator's choice.
function curlCommand(url, body) {
  const quote = (t) => `'${t.replace(/'/g, `'\\''`)}'`;
  return `curl -sS -X POST ${quote(url)} -H 'content-type: application/json' --data-binary ${quote(body)}`;
}

function curlBox(body) {
  const url = h('input', { id: 'curl-url', value: 'http://127.0.0.1:8080/webhook', 'aria-label': 'URL for the curl command', size: 34 });
  const btn = h('button', { type: 'button', id: 'copy-curl', onclick: async () => {
    const text = curlCommand(url.value.trim(), body);
    btn.dataset.command = text;
    try { await navigator.clipboard.writeText(text); btn.textContent = 'Copied'; } catch (_) { btn.textContent = 'Copy failed: see the title'; btn.title = text; }
    setTimeout(() => { btn.textContent = 'Copy as curl'; }, 1500);
  } }, 'Copy as curl');
  return h('span', { class: 'curl' }, url, btn);
}

function copyButton(id, text) {
  return h('button', { type: 'button', id, onclick: async (e) => {
    const btn = e.currentTarget;
    try { await navigator.clipboard.writeText(text); btn.textContent = 'Copied'; } catch (_) { btn.textContent = 'Select the text to copy'; }
    setTimeout(() => { btn.textContent = 'Copy'; }, 1500);
  } }, 'Copy');
}

async function eventView(seq, token) {
  setNav('events');
  let data;
  try { data = await api(`/admin/events/${seq}`); } catch (e) { return fail(e); }
  if (token !== viewToken) return;
  const r = data.row;
  const received = data.received;
  const message = h('div', { id: 'event-message', 'aria-live': 'polite' });
  const sinkRows = data.sinks.map((sk) => {
    const actions = [];
    if (sk.dead_letter) {
      actions.push(h('button', { type: 'button', class: 'primary', 'data-requeue': sk.name, onclick: async () => {
        try { await post('/admin/dead-letters/requeue', { sink: sk.name, seq }); message.textContent = `Requeued for ${sk.name}.`; setTimeout(route, 800); } catch (e) { message.textContent = `Error: ${e.message}`; }
      } }, `Requeue to ${sk.name}`));
    }
    actions.push(h('button', { type: 'button', 'data-resend': sk.name, onclick: async () => {
      try { await post(`/admin/events/${seq}/resend`, { sink: sk.name }); message.textContent = `Queued again for ${sk.name}.`; setTimeout(route, 800); } catch (e) { message.textContent = `Error: ${e.message}`; }
    } }, `Send again to ${sk.name}`));
    const attempts = sk.attempts.length
      ? h('ol', { class: 'attempts' }, sk.attempts.map((a) => h('li', { class: `outcome-${a.outcome}` },
        `${fmtTime(a.at_ms)} (${ago(a.at_ms)}): attempt ${a.attempt} ${a.outcome} in ${a.latency_ms} ms`, a.error ? h('span', { class: 'error' }, `: ${a.error}`) : null)))
      : h('span', { class: 'muted' }, 'no attempt yet');
    return h('tr', { 'data-sink': sk.name },
      h('td', { 'data-label': 'Sink' }, sk.name),
      h('td', { 'data-label': 'State', class: `st-${((sk.state && sk.state.state) || '').replace(' ', '-')}` }, stateText(sk.state)),
      h('td', { 'data-label': 'Attempts' }, attempts,
        sk.dead_letter ? h('div', { class: 'error' }, `dead after ${plural(sk.dead_letter.attempts, 'attempt')} at ${sk.dead_letter.failed_at}: ${sk.dead_letter.error}`) : null),
      h('td', { 'data-label': 'Actions' }, h('div', { class: 'row-actions' }, actions)));
  });
  const body = pretty(data.body);
  const envelope = JSON.stringify(data.envelope, null, 2);
  show(
    h('p', {}, h('a', { href: '#/events', id: 'back' }, '← Events')),
    h('h1', { id: 'event-title' }, `Event ${seq}: `, kindChips(r.kinds)),
    h('div', { class: 'grid' },
      h('section', { class: 'panel' }, h('h2', {}, 'What'),
        h('dl', { class: 'kv' },
          h('dt', {}, 'Received'), h('dd', {}, `${fmtTime(r.received_at_ms)} (${r.received_at})`),
          h('dt', {}, 'Resource'), h('dd', {}, resourceLink(r.resource), r.resource.id !== null && r.resource.id !== undefined ? h('span', {}, ' · ', h('a', { href: `#/resource/${encodeURIComponent(r.resource.type)}/${r.resource.id}`, id: 'timeline-link' }, 'timeline')) : null),
          h('dt', {}, 'Name'), h('dd', {}, r.name || '—'),
          h('dt', {}, 'Id'), h('dd', { class: 'mono' }, r.id),
          data.envelope && data.envelope.problems ? [h('dt', {}, 'Problems'), h('dd', { class: 'error' }, data.envelope.problems.map((p) => p.message).join('; '))] : null)),
      h('section', { class: 'panel', id: 'source-check' }, h('h2', {}, 'Source check'),
        received ? h('dl', { class: 'kv' },
          h('dt', {}, 'Client'), h('dd', { class: 'mono' }, received.client),
          h('dt', {}, 'TCP peer'), h('dd', { class: 'mono' }, received.peer, received.peer !== received.client ? ' (trusted proxy)' : ''),
          h('dt', {}, 'Admitted by'), h('dd', { class: 'mono' }, received.rule || 'no filter (local)'),
          h('dt', {}, 'Forwarded'), h('dd', { class: 'mono' }, received.headers.filter(([n]) => ['forwarded', 'x-forwarded-for', 'x-real-ip'].includes(n)).map(([n, v]) => `${n}: ${v}`).join('; ') || 'none'))
          : h('p', { class: 'muted' }, `Source ${r.source_ip}; how it arrived was not kept for this event.`))),
    h('section', { class: 'panel' }, h('h2', {}, 'Sinks'), message,
      h('table', { id: 'event-sinks' }, h('thead', {}, h('tr', {}, ['Sink', 'State', 'Attempts', ''].map((t) => h('th', {}, t)))), h('tbody', {}, sinkRows))),
    h('section', { class: 'panel' },
      h('details', { open: true, id: 'body' }, h('summary', {}, 'Body as received (pretty)'),
        h('div', { class: 'row-actions' }, copyButton('copy-body', data.body), curlBox(data.body)),
        h('pre', { class: 'json', id: 'body-json' }, body)),
      h('details', { id: 'envelope' }, h('summary', {}, 'Envelope (what sinks receive)'),
        h('div', { class: 'row-actions' }, copyButton('copy-envelope', envelope)),
        h('pre', { class: 'json' }, envelope)),
      h('details', { id: 'headers' }, h('summary', {}, 'Headers as received'),
        received ? h('table', {}, h('tbody', {}, received.headers.map(([n, v]) => h('tr', {}, h('td', { class: 'mono' }, n), h('td', { class: 'mono' }, v)))))
          : h('p', { class: 'muted' }, 'Not kept for this event.'))));
  view().focus();
}

// ---------- a resource's timeline ----------

const STREAM_LANES = [
  ['live', 'stream.started', 'stream.stopped'],
  ['transcoding', 'stream.transcoding_started', null],
  ['recording', 'stream.recording_started', 'stream.recording_stopped'],
  ['backup', 'stream.backup_started', 'stream.backup_stopped'],
];
const VIDEO_PHASES = ['uploaded', 'processing', 'viewable', 'ready', 'failed', 'deleted'];

// Spans per lane from the kinds, in order: [{lane, from, to, open}].
function spans(type, events, now) {
  const out = [];
  if (type === 'stream') {
    const open = {};
    for (const ev of events) {
      const t = ev.received_at_ms;
      for (const [lane, start, stop] of STREAM_LANES) {
        if (ev.kinds.includes(start) && open[lane] === undefined) open[lane] = t;
        const stopped = (stop && ev.kinds.includes(stop)) || ev.kinds.includes('stream.stopped');
        if (stopped && open[lane] !== undefined && !(ev.kinds.includes(start))) {
          out.push({ lane, from: open[lane], to: t, open: false });
          delete open[lane];
        }
      }
    }
    for (const [lane, from] of Object.entries(open)) out.push({ lane, from, to: now, open: true });
  } else if (type === 'video') {
    let current = null;
    for (const ev of events) {
      const phase = VIDEO_PHASES.find((p) => ev.kinds.includes(`video.${p}`));
      if (!phase) continue;
      if (current) out.push({ lane: current.phase, from: current.from, to: ev.received_at_ms, open: false });
      current = { phase, from: ev.received_at_ms };
    }
    if (current) out.push({ lane: current.phase, from: current.from, to: current.phase === 'deleted' ? current.from : now, open: current.phase !== 'deleted' });
  }
  return out;
}

function laneOf(type, ev) {
  if (type === 'stream') {
    for (const [lane, start, stop] of STREAM_LANES) {
      if (ev.kinds.includes(start) || (stop && ev.kinds.includes(stop))) return lane;
    }
    return 'events';
  }
  if (type === 'video') return VIDEO_PHASES.find((p) => ev.kinds.includes(`video.${p}`)) || 'events';
  return 'events';
}

function drawTimeline(type, events) {
  const now = Date.now();
  const lanes = type === 'stream' ? STREAM_LANES.map((l) => l[0]) : type === 'video' ? VIDEO_PHASES.slice() : [];
  lanes.push('events');
  const all = spans(type, events, now);
  const t0 = Math.min(...events.map((e) => e.received_at_ms));
  let t1 = Math.max(...events.map((e) => e.received_at_ms), ...all.map((sp) => sp.to));
  if (t1 - t0 < 1000) t1 = t0 + 1000;
  const W = 1000, left = 110, right = 20, top = 24, laneH = 30;
  const H = top + lanes.length * laneH + 26;
  const x = (t) => left + ((t - t0) / (t1 - t0)) * (W - left - right);
  const svg = s('svg', { class: 'timeline', id: 'timeline', viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': `${type} lifecycle` });
  lanes.forEach((lane, i) => {
    const y = top + i * laneH;
    svg.append(s('line', { class: 'grid', x1: left, x2: W - right, y1: y + laneH / 2, y2: y + laneH / 2 }));
    svg.append(s('text', { class: 'lane-label', x: 8, y: y + laneH / 2 + 4 }, lane));
  });
  for (const sp of all) {
    const i = lanes.indexOf(sp.lane);
    const y = top + i * laneH + 7;
    const cls = type === 'video' ? (sp.lane === 'failed' || sp.lane === 'deleted' ? `span-${sp.lane}` : 'span-video') : `span-${sp.lane}`;
    svg.append(s('rect', { class: `${cls} span`, 'data-lane': sp.lane, x: x(sp.from), y, width: Math.max(3, x(sp.to) - x(sp.from)), height: laneH - 14, rx: 3, opacity: sp.open ? 0.55 : 0.85 },
      s('title', {}, `${sp.lane}: ${fmtTime(sp.from)} → ${sp.open ? 'now (still on)' : fmtTime(sp.to)}`)));
  }
  for (const ev of events) {
    const i = lanes.indexOf(laneOf(type, ev));
    const y = top + i * laneH + laneH / 2;
    const a = s('a', { href: `#/event/${ev.seq}`, class: 'mark-link', 'data-seq': ev.seq },
      s('circle', { class: 'mark', cx: x(ev.received_at_ms), cy: y, r: 6 }),
      s('title', {}, `${ev.kinds.join(', ')} at ${fmtTime(ev.received_at_ms)} (event ${ev.seq})`));
    svg.append(a);
  }
  const ticks = 5;
  for (let k = 0; k <= ticks; k++) {
    const t = t0 + ((t1 - t0) * k) / ticks;
    // A short life reads better as offsets from its first event.
    const label = k === 0 || t1 - t0 >= 120000 ? new Date(t).toLocaleTimeString() : `+${((t - t0) / 1000).toFixed(t1 - t0 < 10000 ? 2 : 0)} s`;
    svg.append(s('text', { x: x(t), y: H - 8, 'text-anchor': k === 0 ? 'start' : k === ticks ? 'end' : 'middle' }, label));
  }
  return svg;
}

async function timelineView(type, id, token) {
  setNav('events');
  let data;
  try { data = await api(`/admin/resources/${encodeURIComponent(type)}/${encodeURIComponent(id)}`); } catch (e) { return fail(e); }
  if (token !== viewToken) return;
  const events = data.events;
  const children = [
    h('p', {}, h('a', { href: `#/events?resource=${encodeURIComponent(id)}` }, `← Events of ${type} ${id}`)),
    h('h1', { id: 'timeline-title' }, `${type} ${id}: timeline`),
  ];
  if (!data.complete) children.push(h('p', { class: 'notice' }, `Drawn from the newest ${data.scanned.toLocaleString()} events of the journal; older ones are not shown.`));
  if (!events.length) {
    children.push(h('p', { class: 'muted' }, 'No event of this resource in the journal.'));
    return show(...children);
  }
  children.push(h('section', { class: 'panel' }, drawTimeline(type, events),
    h('p', { class: 'muted' }, type === 'stream' ? 'Spans: live, transcoding, recording, backup (open spans reach now). Each mark is an event; click it.' : 'Each mark is an event; click it.')));
  children.push(h('table', { id: 'timeline-events' },
    h('thead', {}, h('tr', {}, ['Time', 'Kinds', 'Event'].map((t) => h('th', {}, t)))),
    h('tbody', {}, events.map((ev) => h('tr', { tabindex: 0, 'data-seq': ev.seq, onclick: () => { location.hash = `#/event/${ev.seq}`; }, onkeydown: (e) => { if (e.key === 'Enter') location.hash = `#/event/${ev.seq}`; } },
      h('td', { class: 'mono' }, fmtTime(ev.received_at_ms)), h('td', {}, kindChips(ev.kinds)), h('td', {}, h('a', { href: `#/event/${ev.seq}` }, `#${ev.seq}`)))))));
  show(...children);
}

// ---------- confirmation: bulk actions say what they touch first ----------

function confirmBox(where, text, onYes) {
  const box = h('div', { class: 'confirm', id: 'confirm-box', role: 'alertdialog', 'aria-label': 'Confirm' },
    h('p', { id: 'confirm-text' }, text),
    h('button', { type: 'button', class: 'primary', id: 'confirm-yes', onclick: async () => { box.remove(); await onYes(); } }, 'Confirm'),
    h('button', { type: 'button', id: 'confirm-no', onclick: () => box.remove() }, 'Cancel'));
  const old = document.getElementById('confirm-box');
  if (old) old.remove();
  where.append(box);
  box.querySelector('#confirm-yes').focus();
}

// ---------- sinks ----------

function spark(perMinute) {
  const max = Math.max(1, ...perMinute);
  const svg = s('svg', { class: 'spark', viewBox: '0 0 600 40', preserveAspectRatio: 'none', role: 'img', 'aria-label': 'deliveries per minute, last hour' });
  perMinute.forEach((n, i) => {
    const hgt = (n / max) * 38;
    svg.append(s('rect', { x: i * 10, y: 40 - hgt, width: 8, height: hgt }, s('title', {}, `${n} delivered, ${60 - i - 1} min ago`)));
  });
  return svg;
}

// Reconciliation with Gcore's API: its state, the last run, and a run now (a dry run first,
// then confirmed).
function reconcilePanel(rc, audit) {
  const panel = h('section', { class: 'panel', id: 'reconcile-panel' }, h('h2', {}, "Reconciliation with Gcore's API"));
  if (!rc) {
    panel.append(h('p', { class: 'muted' }, 'Off: give the server a Gcore API key ([gcore] api_key_file) to recover the transitions Gcore never sent. See docs/reconciliation.md.'));
    return panel;
  }
  const message = h('div', { class: 'notice', hidden: true, 'aria-live': 'polite', id: 'reconcile-message' });
  const say = (t) => { message.hidden = false; message.textContent = t; };
  const list = h('ul', { id: 'reconcile-emitted' });
  const draw = (rc) => {
    const last = rc.last_run;
    const kv = h('dl', { class: 'kv', id: 'reconcile-state' },
      h('dt', {}, 'State'), h('dd', { class: rc.state === 'paused' ? 'error' : '' }, rc.state === 'paused' ? `paused: ${rc.reason}` : rc.state),
      h('dt', {}, 'Last run'), h('dd', {}, last ? `${fmtTime(Date.parse(last.finished_at))} (${ago(Date.parse(last.finished_at))}), ${last.outcome}${last.dry_run ? ' (dry run)' : ''}` : 'none yet'),
      h('dt', {}, 'Requests made'), h('dd', {}, last ? String(last.requests) : '—'),
      h('dt', {}, 'Differences found'), h('dd', {}, last ? `${last.differences}; ${plural(last.emitted.length, 'event')} ${last.dry_run ? 'would be journaled' : 'journaled'}` : '—'),
      h('dt', {}, 'Errors'), h('dd', { class: last && last.errors.length ? 'error' : 'muted' }, last && last.errors.length ? last.errors.join('; ') : 'none'),
      h('dt', {}, 'Next run'), h('dd', {}, rc.next_run_at ? `${fmtTime(Date.parse(rc.next_run_at))} (every ${rc.interval_s} s)` : '—'));
    const old = panel.querySelector('#reconcile-state');
    if (old) old.replaceWith(kv); else panel.insertBefore(kv, message);
    list.replaceChildren(...(last ? last.emitted : []).map((e) => h('li', {},
      e.seq ? h('a', { href: `#/event/${e.seq}` }, `#${e.seq} `) : null, h('b', {}, e.resource), ' ', kindChips(e.kinds),
      e.happened_at ? ` at ${fmtTime(Date.parse(e.happened_at))}` : '', h('span', { class: 'muted' }, ` (${e.reason})`))));
  };
  const run = h('button', { type: 'button', class: 'primary', id: 'reconcile-run' }, 'Reconcile now');
  run.addEventListener('click', async () => {
    run.disabled = true;
    say('Reading Gcore\'s API (a dry run first)…');
    try {
      const plan = await post('/admin/reconcile', { dry_run: true });
      draw({ ...rc, last_run: plan });
      if (!plan.emitted.length) { say(`Nothing to journal: the journal agrees with Gcore's API (${plan.requests} requests).`); return; }
      confirmBox(panel, `Journal ${plural(plan.emitted.length, 'event')} Gcore never sent (listed below)? Sinks get them like any other event.`, async () => {
        try {
          const r = await post('/admin/reconcile', {});
          try { draw(await api('/admin/reconcile')); } catch (_) { draw({ ...rc, last_run: r }); }
          if (r.outcome === 'elsewhere') say('Another receiver sharing the journal is reconciling now: nothing done here.');
          else say(`Journaled ${plural(r.emitted.length, 'event')} (the API was read again: what it showed then). ${r.errors.length ? 'Errors: ' + r.errors.join('; ') : ''}`);
          await audit();
        } catch (e) { say(`Error: ${e.message}`); }
      });
    } catch (e) { say(`Error: ${e.message}`); } finally { run.disabled = false; }
  });
  panel.append(message, h('p', {}, run), list);
  draw(rc);
  return panel;
}

async function sinksView(token) {
  setNav('sinks');
  let status;
  try { status = await api('/admin/status'); } catch (e) { return fail(e); }
  if (token !== viewToken) return;
  const panels = [];
  for (const sk of status.sinks) {
    const act = sk.activity || {};
    const message = h('div', { class: 'notice', hidden: true, 'aria-live': 'polite' });
    const say = (t) => { message.hidden = false; message.textContent = t; };
    const deadBody = h('tbody', {});
    const deadFilter = h('input', { placeholder: 'filter: kind glob or text', 'aria-label': `Filter ${sk.name}'s dead letters` });
    const requeueAll = h('button', { type: 'button', class: 'primary', 'data-requeue-all': sk.name }, 'Requeue all matching');
    let letters = [];
    const matchesFilter = (d) => {
      const f = deadFilter.value.trim().toLowerCase();
      if (!f) return true;
      if (f.includes('*')) {
        const re = new RegExp('^' + f.split('*').map((p) => p.replace(/[.+?^${}()|[\]\\]/g, '\\$&')).join('.*') + '$');
        return (d.kinds || []).some((k) => re.test(k));
      }
      return JSON.stringify(d).toLowerCase().includes(f);
    };
    const renderDead = () => {
      const shown = letters.filter(matchesFilter);
      deadBody.replaceChildren(...shown.map((d) => h('tr', { 'data-seq': d.seq },
        h('td', { 'data-label': 'Event' }, h('a', { href: `#/event/${d.seq}` }, `#${d.seq}`)),
        h('td', { 'data-label': 'Kinds' }, kindChips(d.kinds || [])),
        h('td', { 'data-label': 'Error', class: 'error' }, `${d.error} (${plural(d.attempts, 'attempt')})`),
        h('td', {}, h('button', { type: 'button', 'data-requeue': d.seq, onclick: async () => {
          try { await post('/admin/dead-letters/requeue', { sink: sk.name, seq: d.seq }); say(`Requeued event ${d.seq}.`); await reloadDead(); } catch (e) { say(`Error: ${e.message}`); }
        } }, 'Requeue')))));
      requeueAll.textContent = 'Requeue all matching';
      requeueAll.disabled = shown.length === 0;
    };
    const reloadDead = async () => {
      letters = await api(`/admin/dead-letters?sink=${encodeURIComponent(sk.name)}&limit=1000`);
      renderDead();
    };
    deadFilter.addEventListener('input', renderDead);
    // Every dead letter that matches, however many (not only those listed): counted by
    // the server first, then confirmed.
    const matching = () => {
      const f = deadFilter.value.trim();
      const body = { sink: sk.name, all: true };
      if (f.includes('*')) body.kind = f; else if (f) body.q = f;
      return body;
    };
    requeueAll.addEventListener('click', async () => {
      try {
        const plan = await post('/admin/dead-letters/requeue', { ...matching(), dry_run: true });
        confirmBox(requeueAll.parentElement, `Requeue ${plural(plan.would_requeue, 'dead letter')} of ${sk.name}? They are delivered again.`, async () => {
          try { const r = await post('/admin/dead-letters/requeue', matching()); say(`Requeued ${r.requeued.length} events.`); await reloadDead(); await audit(); } catch (e) { say(`Error: ${e.message}`); }
        });
      } catch (e) { say(`Error: ${e.message}`); }
    });
    const since = h('input', { placeholder: '1h or 2026-11-28T09:00:00Z', 'aria-label': `Replay ${sk.name} since` });
    const replay = h('form', { class: 'filters' }, h('label', {}, 'Replay since', since), h('button', { type: 'submit' }, 'Replay'));
    replay.addEventListener('submit', async (e) => {
      e.preventDefault();
      const body = { sink: sk.name, since: zonedInput(since.value) };
      try {
        const plan = await post('/admin/replay', { ...body, dry_run: true });
        if (!plan.moved && plan.from_seq !== plan.asked_from_seq) { say(plan.message); return; }
        confirmBox(replay, `Replay ${sk.name} from event ${plan.from_seq}: ${plural(plan.events, 'journaled event')} from there (those routed to it) are delivered again. Go on?`, async () => {
          try { const r = await post('/admin/replay', body); say(r.message); await audit(); } catch (err) { say(`Error: ${err.message}`); }
        });
      } catch (err) { say(`Error: ${err.message}`); }
    });
    const last = act.last_error;
    panels.push(h('section', { class: 'panel', 'data-sink': sk.name },
      h('h2', {}, sk.name, sk.running ? '' : ' (not running)', act.paused ? ' (paused: the journal cannot be read)' : ''),
      h('dl', { class: 'kv' },
        h('dt', {}, 'Cursor'), h('dd', {}, `${sk.cursor} (next event to pass)`),
        h('dt', {}, 'Lag'), h('dd', { class: 'lag' }, `${sk.lag} event${sk.lag === 1 ? '' : 's'}`),
        h('dt', {}, 'Delivered'), h('dd', {}, act.delivered !== undefined ? `${act.delivered} since start, ${act.failed_attempts} failed attempts, ${act.retrying} waiting for a retry` : '—'),
        h('dt', {}, 'Last error'), h('dd', { class: last ? 'error' : 'muted' }, last ? `${fmtTime(last.at_ms)}: event ${last.seq}, attempt ${last.attempt}: ${last.error}` : 'none since start'),
        h('dt', {}, 'Dead letters'), h('dd', {}, String(sk.dead_letters))),
      act.per_minute ? h('div', {}, h('div', { class: 'muted' }, `Deliveries per minute, last hour: ${act.per_minute.reduce((a, b) => a + b, 0).toLocaleString()} in all`), spark(act.per_minute)) : null,
      message, replay,
      h('details', { open: sk.dead_letters > 0 }, h('summary', {}, `Dead letters (${sk.dead_letters})`),
        h('div', { class: 'filters' }, deadFilter, requeueAll),
        h('table', { class: 'dead' }, h('thead', {}, h('tr', {}, ['Event', 'Kinds', 'Error', ''].map((t) => h('th', {}, t)))), deadBody))));
    reloadDead().catch((e) => say(`Error: ${e.message}`));
  }
  const auditBody = h('tbody', { id: 'audit' });
  const audit = async () => {
    try {
      const log = await api('/admin/audit?limit=20');
      auditBody.replaceChildren(...log.actions.map((a) => h('tr', {},
        h('td', { class: 'mono', title: a.at }, fmtTime(a.at_ms), ` (${ago(a.at_ms)})`), h('td', {}, a.action), h('td', {}, a.detail), h('td', { class: 'muted' }, a.who))));
      if (!log.actions.length) auditBody.replaceChildren(h('tr', {}, h('td', { colspan: 4, class: 'muted' }, 'No operator action recorded yet.')));
    } catch (_) { /* shown at the next refresh */ }
  };
  show(h('h1', {}, 'Sinks'), h('p', { class: 'muted' }, `Journal: ${status.events} events, newest seq ${status.last_seq}. Times in ${zoneText()}.`), ...panels,
    reconcilePanel(status.reconcile, audit),
    h('section', { class: 'panel', id: 'audit-panel' }, h('h2', {}, 'Operator actions'),
      h('table', {}, h('thead', {}, h('tr', {}, ['When', 'Action', 'What', 'Who'].map((t) => h('th', {}, t)))), auditBody)));
  audit();
  // Polled while the page is seen; a hidden tab costs the server nothing.
  statesTimer = setInterval(async () => {
    if (document.hidden) return;
    try {
      const st = await api('/admin/status');
      for (const sk of st.sinks) {
        const el = document.querySelector(`section[data-sink="${CSS.escape(sk.name)}"] dd.lag`);
        if (el) el.textContent = `${sk.lag} event${sk.lag === 1 ? '' : 's'}`;
      }
    } catch (_) { /* next tick */ }
  }, 3000);
}

// ---------- keys, theme, start ----------

function moveSelection(step) {
  const rows = [...document.querySelectorAll('#view tbody tr[tabindex]')];
  if (!rows.length) return;
  const i = rows.indexOf(document.activeElement);
  const next = rows[Math.max(0, Math.min(rows.length - 1, i < 0 ? 0 : i + step))];
  next.focus();
}

let pendingG = false;
document.addEventListener('keydown', (e) => {
  const typing = ['INPUT', 'TEXTAREA', 'SELECT'].includes(document.activeElement.tagName);
  if (e.key === 'Escape') {
    if (typing) document.activeElement.blur();
    else if (!location.hash.startsWith('#/events')) history.back();
    return;
  }
  if (typing || e.ctrlKey || e.metaKey || e.altKey) return;
  if (pendingG) {
    pendingG = false;
    if (e.key === 's') location.hash = '#/sinks';
    if (e.key === 'e') location.hash = '#/events';
    return;
  }
  if (e.key === 'g') { pendingG = true; return; }
  if (e.key === '/') { const q = document.getElementById('f-q'); if (q) { e.preventDefault(); q.focus(); } }
  if (e.key === 'j') moveSelection(1);
  if (e.key === 'k') moveSelection(-1);
  if (e.key === 't') toggleTheme();
});

function toggleTheme() {
  const root = document.documentElement;
  const dark = root.dataset.theme ? root.dataset.theme === 'dark' : matchMedia('(prefers-color-scheme: dark)').matches;
  root.dataset.theme = dark ? 'light' : 'dark';
  try { localStorage.setItem('streamhook-theme', root.dataset.theme); } catch (_) { /* private mode */ }
}

function showZone() {
  const b = document.getElementById('zone');
  if (b) b.textContent = `Times: ${zoneText()}`;
}

async function start() {
  try { const t = localStorage.getItem('streamhook-theme'); if (t) document.documentElement.dataset.theme = t; } catch (_) { /* private mode */ }
  document.getElementById('theme').addEventListener('click', toggleTheme);
  showZone();
  document.getElementById('zone').addEventListener('click', () => {
    zone = zone === 'utc' ? 'local' : 'utc';
    try { localStorage.setItem('streamhook-tz', zone); } catch (_) { /* private mode */ }
    showZone();
    route();
  });
  document.getElementById('logout').addEventListener('click', async () => {
    await fetch('/logout', { method: 'POST', credentials: 'same-origin', headers: { 'x-csrf-token': session.csrf } });
    location.href = '/';
  });
  try { session = await api('/admin/session'); } catch (e) { return fail(e); }
  window.addEventListener('hashchange', route);
  route();
}

start();
