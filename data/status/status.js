// popgate status page: the session table and the audit trace, kept live by Server-Sent
// Events from /api/events. Plain DOM, no framework, no build step.
'use strict';

const sessions = new Map(); // id -> live session object from the API
const RECENT_MAX = 16;      // as many ended sessions as the server keeps
let selected = null;        // the session id whose trace is shown
let lastTraceSeq = 0;       // the last trace line shown for it
let clockSkew = 0;          // server now_ms - Date.now()

const $ = (sel) => document.querySelector(sel);

function text(cell, value) {
  cell.textContent = value === null || value === undefined ? '' : String(value);
  return cell;
}

function bytes(n) {
  if (n < 1024) return n + ' B';
  if (n < 1024 * 1024) return (n / 1024).toFixed(1) + ' KiB';
  return (n / 1024 / 1024).toFixed(1) + ' MiB';
}

function duration(ms) {
  const s = Math.max(0, Math.floor(ms / 1000));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
  return (h ? h + 'h ' : '') + (h || m ? m + 'm ' : '') + (s % 60) + 's';
}

function stateOf(s) {
  let state = s.state || '';
  if (s.idle) state += ' · IDLE';
  if (s.mailbox) state += ' · ' + s.mailbox;
  return state;
}

// A row of the live table, or (s.ended_ms set) of the recently ended one.
function renderRow(s) {
  const table = s.ended_ms ? '#recent' : '#sessions';
  let row = document.querySelector(table + ' tr[data-session="' + s.id + '"]');
  if (!row) {
    row = document.createElement('tr');
    row.dataset.session = String(s.id);
    for (let i = 0; i < 12; i++) row.appendChild(document.createElement('td'));
    row.addEventListener('click', () => select(s.id));
    if (s.ended_ms) $('#recent tbody').prepend(row);
    else $('#sessions tbody').appendChild(row);
  }
  const c = row.cells;
  text(c[0], s.id);
  text(c[1], s.frontend).className = 'fe fe-' + s.frontend;
  text(c[2], s.user);
  text(c[3], s.tag);
  text(c[4], s.client);
  text(c[5], s.tls ? 'yes' : 'no');
  text(c[6], stateOf(s)).className = 'state';
  text(c[7], s.frontend === 'pop3' ? s.retrieved : '').className = 'num';
  text(c[8], s.frontend === 'pop3' ? s.deleted : '').className = 'num';
  text(c[9], bytes(s.bytes_in)).className = 'num';
  text(c[10], bytes(s.bytes_out)).className = 'num';
  text(c[11], duration((s.ended_ms || Date.now() + clockSkew) - s.started_ms)).className =
      'num duration';
  row.classList.toggle('selected', s.id === selected);
}

function summary() {
  let pop3 = 0, imap = 0;
  for (const s of sessions.values()) (s.frontend === 'pop3') ? pop3++ : imap++;
  text($('#summary'), sessions.size + ' session' + (sessions.size === 1 ? '' : 's') +
       ' (POP3 ' + pop3 + ', IMAP ' + imap + ')');
  $('#empty').hidden = sessions.size > 0;
}

function upsert(s) {
  sessions.set(s.id, s);
  renderRow(s);
  summary();
}

function ended(s) {
  sessions.delete(s.id);
  const row = document.querySelector('#sessions tr[data-session="' + s.id + '"]');
  if (row) row.remove();
  renderRow(s);
  const recent = $('#recent tbody');
  while (recent.rows.length > RECENT_MAX) recent.lastElementChild.remove();
  $('#recent-panel').hidden = false;
  if (s.id === selected) text($('#trace-title'), '— session ' + s.id + ' (ended)');
  summary();
}

// A client line ("C: …") starts a row; the upstream lines ("U: …") it caused go beside it.
function addTraceLine(line) {
  const body = $('#trace tbody');
  const isClient = line.startsWith('C: ');
  let row = body.lastElementChild;
  if (isClient || !row) {
    row = document.createElement('tr');
    row.appendChild(document.createElement('td'));
    row.appendChild(document.createElement('td'));
    body.appendChild(row);
  }
  const span = document.createElement('span');
  span.className = 'line' + (isClient ? '' : ' up');
  span.textContent = isClient ? line.slice(3) : line.replace(/^U: /, '');
  row.cells[isClient ? 0 : 1].appendChild(span);
  // Follow the newest line inside the trace box, never by scrolling the whole page.
  const box = $('#trace-scroll');
  box.scrollTop = box.scrollHeight;
}

let events = null;   // the EventSource
let pending = null;  // trace events that arrive while the trace is being fetched

function showTraceEvent(t) {
  if (t.id !== selected) return;
  if (pending !== null) { pending.push(t); return; }
  if (t.seq > lastTraceSeq) { addTraceLine(t.line); lastTraceSeq = t.seq; }
}

// The lines so far from the API, then what the stream brought meanwhile (by seq, once).
async function loadTrace(id) {
  let lines = [];
  pending = [];
  try {
    const reply = await fetch('api/sessions/' + id + '/trace', { cache: 'no-store' });
    if (reply.ok) lines = (await reply.json()).lines;
  } catch (e) {
    // the connection badge says offline; the next snapshot retries
  }
  const buffered = pending;
  pending = null;
  if (selected !== id) return;
  for (const l of lines) {
    if (l.seq > lastTraceSeq) { addTraceLine(l.line); lastTraceSeq = l.seq; }
  }
  for (const t of buffered) showTraceEvent(t);
}

function select(id) {
  selected = id;
  lastTraceSeq = 0;
  for (const row of document.querySelectorAll('#sessions tbody tr, #recent tbody tr'))
    row.classList.toggle('selected', row.dataset.session === String(id));
  $('#trace tbody').replaceChildren();
  text($('#trace-title'), '— session ' + id);
  connect(); // a stream with this session's trace lines; its snapshot loads the trace
}

function connect() {
  if (events) events.close();
  events = new EventSource('api/events' + (selected !== null ? '?trace=' + selected : ''));
  events.onopen = () => { $('#connection').className = 'online'; text($('#connection'), 'live'); };
  events.onerror = () => { $('#connection').className = 'offline'; text($('#connection'), 'offline'); };
  events.addEventListener('sessions', (e) => {
    const snap = JSON.parse(e.data);
    clockSkew = snap.now_ms - Date.now();
    sessions.clear();
    $('#sessions tbody').replaceChildren();
    $('#recent tbody').replaceChildren();
    for (const s of snap.sessions) upsert(s);
    for (const s of snap.recent.slice().reverse()) renderRow(s);
    $('#recent-panel').hidden = snap.recent.length === 0;
    summary();
    if (selected !== null) {
      loadTrace(selected);
      return;
    }
    const wanted = new URLSearchParams(location.search).get('session');
    if (wanted) select(Number(wanted));
  });
  events.addEventListener('start', (e) => upsert(JSON.parse(e.data)));
  events.addEventListener('change', (e) => upsert(JSON.parse(e.data)));
  events.addEventListener('end', (e) => ended(JSON.parse(e.data)));
  events.addEventListener('trace', (e) => showTraceEvent(JSON.parse(e.data)));
}

setInterval(() => { for (const s of sessions.values()) renderRow(s); }, 1000);
connect();
