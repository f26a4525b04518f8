// The ldka console page: no framework, no build step. It polls the node's JSON API,
// shows one remembered camera frame, turns mouse input into a prompt, and shows the
// server's proposed mask for that same frame before anything is stored.
'use strict';

const TOKEN = new URLSearchParams(location.search).get('token') || '';
const $ = (id) => document.getElementById(id);
const state = {
  live: true, frame: null, box: null, fg: [], bg: [], proposal: null, maskImg: null,
  drag: null, busy: false,
};

function withToken(url) {
  if (!TOKEN) return url;
  return url + (url.includes('?') ? '&' : '?') + 'token=' + encodeURIComponent(TOKEN);
}

async function api(path, body) {
  const options = { headers: {} };
  if (TOKEN) options.headers['X-Console-Token'] = TOKEN;
  if (body !== undefined) {
    options.method = 'POST';
    options.headers['Content-Type'] = 'application/json';
    options.body = JSON.stringify(body);
  }
  const reply = await fetch(path, options);
  let data = {};
  try { data = await reply.json(); } catch (e) { data = { error: reply.statusText }; }
  if (!reply.ok) throw new Error(data.error || ('HTTP ' + reply.status));
  return data;
}

function say(text, kind) {
  const el = $('message');
  el.textContent = text;
  el.className = kind || '';
}

function layers() {
  const out = ['image'];
  if ($('show-overlay').checked) out.push('overlay');
  if ($('show-margin').checked) out.push('margin');
  return out.join(',');
}

function showFrame(frame) {
  state.frame = frame;
  const canvas = $('draw');
  if (canvas.width !== frame.width || canvas.height !== frame.height) {
    canvas.width = frame.width;
    canvas.height = frame.height;
  }
  $('frame').src = withToken('/api/frame/' + frame.stamp + '.jpg?layers=' + layers());
  $('frame').dataset.stamp = frame.stamp;
}

function setLive(live) {
  state.live = live;
  $('live').classList.toggle('active', live);
  $('live').textContent = live ? 'live' : 'frozen (click for live)';
}

async function pollFrame() {
  if (!state.live || state.busy) return;
  try {
    const snap = await api('/api/snapshot');
    // The operator may have frozen a frame (a prompt, a suggestion) while this answer was
    // on its way: then the frame on screen must stay the one the prompt is made on.
    if (!state.live || state.busy) return;
    $('status').textContent = 'frame ' + snap.frame_id + ' · ' + snap.width + 'x' + snap.height
      + ' · serving ' + (snap.model_version || 'no model');
    showFrame(snap);
    showLegend(snap.legend);
  } catch (e) {
    $('status').textContent = e.message;
  }
}

function showLegend(items) {
  const ul = $('legend');
  ul.replaceChildren(...(items || []).map((c) => {
    const li = document.createElement('li');
    const sw = document.createElement('span');
    sw.className = 'swatch';
    sw.style.background = 'rgb(' + c.color.join(',') + ')';
    li.append(sw, c.id + ' ' + c.name);
    return li;
  }));
}

// -- drawing the prompt -----------------------------------------------------------
function canvasPoint(event) {
  const canvas = $('draw');
  const rect = canvas.getBoundingClientRect();
  return [Math.round((event.clientX - rect.left) * canvas.width / rect.width),
          Math.round((event.clientY - rect.top) * canvas.height / rect.height)];
}

function redraw(extraBox) {
  const canvas = $('draw');
  const ctx = canvas.getContext('2d');
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (state.maskImg) ctx.drawImage(state.maskImg, 0, 0, canvas.width, canvas.height);
  ctx.lineWidth = 2;
  const box = extraBox || state.box;
  if (box) {
    ctx.strokeStyle = '#ffeb3b';
    ctx.strokeRect(box[0], box[1], box[2], box[3]);
  }
  for (const [points, color] of [[state.fg, '#00e676'], [state.bg, '#ff1744']]) {
    for (const [x, y] of points) {
      ctx.fillStyle = color;
      ctx.beginPath();
      ctx.arc(x, y, 4, 0, 2 * Math.PI);
      ctx.fill();
    }
  }
}

function clearPrompt() {
  state.box = null; state.fg = []; state.bg = []; state.proposal = null; state.maskImg = null;
  $('accept').disabled = true;
  $('reject').disabled = true;
  $('proposal-info').textContent = '';
  redraw();
}

async function propose() {
  if (!state.frame) return;
  const body = { stamp: state.frame.stamp };
  if (state.box) body.box = state.box; else { body.fg_points = state.fg; body.bg_points = state.bg; }
  state.busy = true;
  try {
    const p = await api('/api/propose', body);
    state.proposal = p;
    const img = new Image();
    img.onload = () => { state.maskImg = img; redraw(); };
    img.src = withToken(p.png);
    $('proposal-info').textContent = p.pixels + ' px (' + (100 * p.fraction).toFixed(1) + '%)'
      + (p.note ? ' · ' + p.note : '');
    $('accept').disabled = false;
    $('reject').disabled = false;
    say('proposed mask: accept it with a class name, or reject it', '');
  } catch (e) {
    say('proposal refused: ' + e.message, 'error');
  } finally {
    state.busy = false;
  }
}

function onDown(event) {
  if (!state.frame) return;
  event.preventDefault();
  state.drag = { start: canvasPoint(event), button: event.button, shift: event.shiftKey };
}

function onMove(event) {
  if (!state.drag) return;
  const [x0, y0] = state.drag.start;
  const [x1, y1] = canvasPoint(event);
  redraw([Math.min(x0, x1), Math.min(y0, y1), Math.abs(x1 - x0), Math.abs(y1 - y0)]);
}

function onUp(event) {
  if (!state.drag) return;
  const drag = state.drag;
  state.drag = null;
  const [x0, y0] = drag.start;
  const [x1, y1] = canvasPoint(event);
  setLive(false);
  if (Math.abs(x1 - x0) >= 4 && Math.abs(y1 - y0) >= 4) {
    state.fg = []; state.bg = [];
    state.box = [Math.min(x0, x1), Math.min(y0, y1), Math.abs(x1 - x0), Math.abs(y1 - y0)];
  } else {
    state.box = null;
    (drag.button === 2 || drag.shift ? state.bg : state.fg).push([x1, y1]);
    if (!state.fg.length) { redraw(); say('click on the object first (background points refine it)'); return; }
  }
  state.maskImg = null;
  redraw();
  propose();
}

async function accept() {
  const name = $('class-name').value.trim();
  if (!state.proposal) return;
  try {
    const r = await api('/api/accept', { proposal_id: state.proposal.proposal_id, class_name: name });
    say(r.message, 'ok');
    clearPrompt();
    setLive(true);
    refreshLists();
  } catch (e) {
    say('not stored: ' + e.message, 'error');
  }
}

// -- learning, classes, versions, suggestions ---------------------------------------
async function learn() {
  const iterations = parseInt($('iterations').value || '0', 10);
  try {
    const job = await api('/api/learn', { classes: [], iterations: iterations });
    showJob(job);
    say('learning started', 'ok');
  } catch (e) {
    say('learning not started: ' + e.message, 'error');
  }
}

async function cancel() {
  try { showJob(await api('/api/cancel', {})); } catch (e) { say(e.message, 'error'); }
}

function fmt(v, digits) { return v === null || v === undefined ? '–' : Number(v).toFixed(digits); }

function showJob(job) {
  const running = job.state === 'running' || job.state === 'sending';
  $('job-state').textContent = job.state;
  $('job-phase').textContent = job.phase ? job.phase + ' ' + Math.round(100 * job.phase_progress) + '%' : '';
  $('job-eta').textContent = running && job.eta_seconds !== null && job.eta_seconds >= 0
    ? 'ETA ' + Math.round(job.eta_seconds) + ' s' : '';
  $('job-progress').value = job.progress || 0;
  $('job-losses').textContent = Object.entries(job.losses || {})
    .map(([k, v]) => k + ' ' + fmt(v, 3)).join(' · ');
  const r = job.result;
  $('job-result').textContent = r ? (r.success ? 'new version ' + r.version_id + ' · mIoU new '
    + fmt(r.miou_new, 3) + ', old ' + fmt(r.miou_old, 3) : r.message) : '';
  $('cancel').disabled = !running;
  $('learn').disabled = running;
}

async function pollJob() {
  try {
    const job = await api('/api/job');
    const was = $('job-state').textContent;
    showJob(job);
    if (was !== job.state && !['running', 'sending'].includes(job.state)) refreshLists();
  } catch (e) { /* the status line shows connection trouble */ }
}

function showClasses(data, labels) {
  $('class-list').replaceChildren(...[...data.learned.map((c) => c.name),
    ...data.pending.map((c) => c.name)].filter((n) => n !== 'background').map((n) => {
    const o = document.createElement('option'); o.value = n; return o;
  }));
  const box = $('classes');
  box.replaceChildren();
  for (const c of data.pending) {
    const row = document.createElement('div');
    row.className = 'class-row';
    const del = document.createElement('button');
    del.textContent = 'delete';
    del.title = 'remove this pending class and its labelled frames';
    del.onclick = () => removeClass(c.name);
    const thumbs = document.createElement('div');
    thumbs.className = 'thumbs';
    for (const l of labels.filter((x) => x.class_name === c.name)) {
      const img = document.createElement('img');
      img.src = withToken(l.thumb);
      img.title = 'frame ' + l.frame_id + ': click to delete this labelled frame';
      img.dataset.frame = l.frame_id;
      img.onclick = () => removeFrame(l.frame_id);
      thumbs.append(img);
    }
    row.append(c.name + ': ' + c.frames + ' pending frame(s) ', del, thumbs);
    box.append(row);
  }
  if (!data.pending.length) box.textContent = 'no pending labelled frames';
  $('active-version').textContent = data.active_version || 'none';
}

async function removeFrame(frameId) {
  if (!confirm('Delete labelled frame ' + frameId + '?')) return;
  try { say((await api('/api/remove_frame', { frame_id: frameId })).message, 'ok'); refreshLists(); }
  catch (e) { say(e.message, 'error'); }
}

async function removeClass(name) {
  try { say((await api('/api/remove_class', { name: name })).message, 'ok'); refreshLists(); }
  catch (e) { say(e.message, 'error'); }
}

function showVersions(data) {
  const body = $('versions').querySelector('tbody');
  body.replaceChildren(...data.versions.slice().reverse().map((v) => {
    const tr = document.createElement('tr');
    tr.dataset.version = v.id;
    if (v.id === data.active_version) tr.className = 'active-row';
    const m = v.metrics || {};
    const figures = ['miou_new', 'miou_old', 'miou'].filter((k) => typeof m[k] === 'number')
      .map((k) => k + ' ' + m[k].toFixed(3)).join(', ');
    const cells = [v.id + (v.id === data.active_version ? ' (active)' : ''), v.step,
      v.classes.join(', '), figures];
    for (const c of cells) { const td = document.createElement('td'); td.textContent = c; tr.append(td); }
    const td = document.createElement('td');
    if (v.id !== data.active_version) {
      const b = document.createElement('button');
      b.textContent = 'activate'; b.className = 'rollback'; b.dataset.version = v.id;
      b.onclick = () => rollback(v.id);
      td.append(b);
    }
    tr.append(td);
    return tr;
  }));
  $('active-version').textContent = data.active_version || 'none';
}

async function rollback(id) {
  try { say((await api('/api/rollback', { version_id: id })).message, 'ok'); refreshLists(); }
  catch (e) { say('rollback refused: ' + e.message, 'error'); }
}

function showSuggestions(data) {
  $('suggestions').replaceChildren(...data.suggestions.map((s) => {
    const li = document.createElement('li');
    const when = new Date(Number(BigInt(s.stamp) / 1000000n)).toLocaleTimeString();
    li.textContent = when + ' ' + s.frame_id + ' · ' + (100 * s.unsure_fraction).toFixed(1)
      + '% unsure · box '
      + s.box.join(',') + (s.available ? '' : ' (frame no longer held)');
    if (s.available) li.onclick = () => loadSuggestion(s); else li.className = 'gone';
    return li;
  }));
}

function loadSuggestion(s) {
  setLive(false);
  clearPrompt();
  const frame = Object.assign({}, state.frame || {}, { stamp: s.stamp, frame_id: s.frame_id });
  showFrame(frame);
  state.box = s.box;
  redraw();
  propose();
}

// Lists are rebuilt only when their data changed: a button replaced under the pointer
// between press and release would swallow the operator's click.
const shown = {};
function changed(key, data) {
  const text = JSON.stringify(data);
  if (shown[key] === text) return false;
  shown[key] = text;
  return true;
}

async function refreshLists() {
  try {
    const [classes, labels, versions, suggestions] = await Promise.all([
      api('/api/classes'), api('/api/labels'), api('/api/versions'), api('/api/suggestions')]);
    if (changed('classes', [classes, labels])) showClasses(classes, labels.labels);
    if (changed('versions', versions)) showVersions(versions);
    if (changed('suggestions', suggestions)) showSuggestions(suggestions);
  } catch (e) {
    say('learner: ' + e.message, 'error');
  }
}

function init() {
  const canvas = $('draw');
  canvas.addEventListener('mousedown', onDown);
  canvas.addEventListener('mousemove', onMove);
  canvas.addEventListener('mouseup', onUp);
  canvas.addEventListener('contextmenu', (e) => e.preventDefault());
  $('accept').onclick = accept;
  $('reject').onclick = () => { clearPrompt(); setLive(true); say('proposal rejected'); };
  $('live').onclick = () => { clearPrompt(); setLive(true); };
  $('learn').onclick = learn;
  $('cancel').onclick = cancel;
  for (const id of ['show-overlay', 'show-margin']) {
    $(id).onchange = () => { if (state.frame) showFrame(state.frame); };
  }
  setLive(true);
  pollFrame();
  refreshLists();
  setInterval(pollFrame, 500);
  setInterval(pollJob, 500);
  setInterval(refreshLists, 3000);
}

init();
