// homeport relay dashboard. Everything shown comes from /api/events
// (server-sent events) or, when that fails, from polling /api/status.
// Names, addresses and reasons come from agents and visitors: they are
// set as text (textContent), never parsed as HTML.
'use strict';

(function () {
  const byId = (id) => document.getElementById(id);
  const pollEvery = 3000; // ms, when the event stream fails
  const retryStream = 60000; // ms of polling before the stream is tried again

  let stream = null;
  let pollTimer = null;
  let last = null; // the payload shown
  const charts = new Map(); // tunnel key -> {card, canvas, stats}

  // --- formatting -------------------------------------------------------

  function bytes(n) {
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) {
      n /= 1024;
      i++;
    }
    return (i === 0 ? String(Math.round(n)) : n.toFixed(n < 10 ? 1 : 0)) + ' ' + units[i];
  }

  function rate(bps) {
    return bytes(bps) + '/s';
  }

  // span says how long ms milliseconds are, roughly: "3 s", "5 min", "2 h 10 min".
  function span(ms) {
    const s = Math.max(0, Math.round(ms / 1000));
    if (s < 60) return s + ' s';
    const m = Math.floor(s / 60);
    if (m < 60) return m + ' min';
    const h = Math.floor(m / 60);
    if (h < 48) return h + ' h ' + (m % 60) + ' min';
    return Math.floor(h / 24) + ' d ' + (h % 24) + ' h';
  }

  function ago(now, t) {
    return span(now - Date.parse(t)) + ' ago';
  }

  // --- DOM helpers ------------------------------------------------------

  // cell makes a table cell holding text; cls is optional.
  function cell(text, cls) {
    const td = document.createElement('td');
    td.textContent = text;
    if (cls) td.className = cls;
    return td;
  }

  function row(cells, cls) {
    const tr = document.createElement('tr');
    if (cls) tr.className = cls;
    tr.append(...cells);
    return tr;
  }

  // fill replaces a table's rows, or shows empty when there are none.
  function fill(table, rows, empty) {
    const body = table.tBodies[0];
    if (rows.length === 0) {
      const td = cell(empty, 'empty');
      td.colSpan = table.tHead.rows[0].cells.length;
      body.replaceChildren(row([td]));
      return;
    }
    body.replaceChildren(...rows);
  }

  // --- rendering --------------------------------------------------------

  function render(p) {
    last = p;
    const st = p.status;
    const now = Date.parse(st.now);
    byId('version').textContent = st.version || 'unknown';
    byId('uptime').textContent = span(now - Date.parse(st.started));
    byId('listen').textContent = (st.listen || []).map((l) => l.addr + ' ' + l.transport).join(', ') || 'none';
    byId('fingerprint').textContent = st.fingerprint;
    const cfg = st.config || {};
    byId('config').textContent = (cfg.file || 'no file') + (cfg.last_error ? ' (last reload failed: ' + cfg.last_error + ')' : '');
    byId('logout').hidden = !p.login;
    byId('window').textContent = span(p.traffic.window * 1000);

    const agents = st.agents || [];
    byId('agents-count').textContent = String(agents.length);
    fill(byId('agents'), agents.map((a) => row([
      cell(a.id + (a.retired ? ' (replaced)' : ''), 'agent-id'),
      cell(a.token),
      cell(a.addr, 'mono'),
      cell(a.transport),
      cell(a.software),
      cell(ago(now, a.since)),
      cell(a.rtt ? Math.round(a.rtt * 1000) + ' ms' : '–', 'num'),
      cell(String(a.streams), 'num'),
    ], a.retired ? 'dim' : '')), 'No agent connected.');

    const tunnels = st.tunnels || [];
    byId('tunnels-count').textContent = String(tunnels.length);
    fill(byId('tunnels'), tunnels.map((t) => {
      const tr = row([
        cell(t.protocol + '/' + (t.private ? 'private' : (t.host || t.port)), 'mono'),
        cell(t.name, 'tunnel-name'),
        cell(t.agent),
        cell(t.token),
        cell(String(t.visitors), 'num'),
        cell(String(t.accepted), 'num'),
        cell(bytes(t.bytes_in), 'num bytes-in'),
        cell(bytes(t.bytes_out), 'num bytes-out'),
        cell(String(t.refused), 'num'),
        cell(String(t.banned), 'num'),
      ]);
      tr.dataset.key = t.private ? t.protocol + '/private/' + t.token + '/' + t.name : t.protocol + '/' + (t.host || t.port);
      tr.dataset.bytesIn = String(t.bytes_in);
      tr.dataset.bytesOut = String(t.bytes_out);
      return tr;
    }), 'No tunnel open.');

    const bans = st.bans || [];
    fill(byId('bans'), bans.map((b) => row([
      cell(b.where),
      cell(b.addr, 'mono'),
      cell(span(Date.parse(b.until) - now)),
    ])), 'Nobody is banned.');

    const refusals = (st.refusals || []).slice().reverse();
    fill(byId('refusals'), refusals.map((r) => row([
      cell(ago(now, r.time)),
      cell(r.where),
      cell(r.addr, 'mono'),
      cell(r.reason + (r.banned ? ' (banned)' : '')),
    ], r.banned ? 'bad' : '')), 'No refusal.');

    const ddns = st.ddns || [];
    byId('ddns-section').hidden = ddns.length === 0;
    fill(byId('ddns'), ddns.map((n) => row([
      cell(n.name),
      cell(n.type),
      cell((n.want || []).join(', ') || '–', 'mono'),
      cell((n.current || []).join(', ') || '–', 'mono'),
      cell(n.error ? 'error: ' + n.error : (n.synced ? 'up to date' : 'pending')),
      cell(n.last_update ? ago(now, n.last_update) : 'never'),
    ], n.error ? 'bad' : '')), '');

    renderCharts(p.traffic, now);
  }

  function renderCharts(traffic, now) {
    const box = byId('charts');
    const seen = new Set();
    for (const t of traffic.tunnels) {
      seen.add(t.key);
      let c = charts.get(t.key);
      if (!c) {
        c = newChart(t.key);
        charts.set(t.key, c);
      }
      box.append(c.card); // keeps the order of traffic.tunnels
      updateChart(c, t, traffic, now);
    }
    for (const [key, c] of charts) {
      if (!seen.has(key)) {
        c.card.remove();
        charts.delete(key);
      }
    }
    byId('charts-empty').hidden = traffic.tunnels.length > 0;
  }

  function newChart(key) {
    const card = document.createElement('figure');
    card.className = 'chart';
    card.dataset.key = key;
    const title = document.createElement('figcaption');
    const canvas = document.createElement('canvas');
    canvas.height = 120;
    const stats = document.createElement('p');
    stats.className = 'stats';
    card.append(title, canvas, stats);
    return { card, title, canvas, stats };
  }

  // updateChart draws one tunnel's rates and exposes its figures as data
  // attributes of the card (points, last-in, peak-in, bytes-in, ...).
  function updateChart(c, t, traffic, now) {
    const pts = t.points;
    let peakIn = 0;
    let peakOut = 0;
    let sumIn = 0;
    let sumOut = 0;
    for (const p of pts) {
      peakIn = Math.max(peakIn, p.in);
      peakOut = Math.max(peakOut, p.out);
      sumIn += p.in * traffic.interval;
      sumOut += p.out * traffic.interval;
    }
    const newest = pts.length ? pts[pts.length - 1] : { in: 0, out: 0 };
    c.title.textContent = t.protocol + '/' + (t.private ? 'private' : (t.host || t.port)) + ' ' + t.name + ' (' + t.agent + ')' + (t.gone ? ', closed' : '');
    c.stats.textContent = 'now ' + rate(newest.in) + ' in, ' + rate(newest.out) + ' out; peak ' +
      rate(peakIn) + ' in, ' + rate(peakOut) + ' out; about ' + bytes(sumIn) + ' in, ' + bytes(sumOut) + ' out';
    const d = c.card.dataset;
    d.points = String(pts.length);
    d.lastIn = String(newest.in);
    d.lastOut = String(newest.out);
    d.peakIn = String(peakIn);
    d.peakOut = String(peakOut);
    d.bytesIn = String(Math.round(sumIn));
    d.bytesOut = String(Math.round(sumOut));
    c.card.classList.toggle('gone', !!t.gone);
    draw(c.canvas, pts, now, traffic.window * 1000, Math.max(peakIn, peakOut));
  }

  function draw(canvas, pts, now, windowMs, peak) {
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(200, canvas.clientWidth);
    const h = 120;
    if (canvas.width !== Math.round(w * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(h * dpr);
    }
    const g = canvas.getContext('2d');
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, h);
    const css = getComputedStyle(canvas);
    const color = (name, fallback) => css.getPropertyValue(name).trim() || fallback;
    const left = 72;
    const top = 8;
    const bottom = h - 18;
    const right = w - 6;
    const max = niceMax(peak);
    const x = (tms) => left + (right - left) * (1 - (now - tms) / windowMs);
    const y = (v) => bottom - (bottom - top) * (v / max);

    // Grid: three rates up the side, a line every 5 minutes across.
    g.font = '11px system-ui, sans-serif';
    g.fillStyle = color('--muted', '#666');
    g.strokeStyle = color('--grid', '#ddd');
    g.lineWidth = 1;
    g.textAlign = 'right';
    g.textBaseline = 'middle';
    for (const f of [0, 0.5, 1]) {
      const yy = Math.round(y(max * f)) + 0.5;
      g.beginPath();
      g.moveTo(left, yy);
      g.lineTo(right, yy);
      g.stroke();
      g.fillText(rate(max * f), left - 6, yy);
    }
    g.textBaseline = 'alphabetic';
    const step = 5 * 60 * 1000;
    for (let ago = windowMs; ago >= 0; ago -= step) {
      const xx = Math.round(x(now - ago)) + 0.5;
      g.beginPath();
      g.moveTo(xx, top);
      g.lineTo(xx, bottom);
      g.stroke();
      g.textAlign = ago === windowMs ? 'left' : ago === 0 ? 'right' : 'center';
      g.fillText(ago === 0 ? 'now' : '−' + span(ago), xx, h - 4);
    }

    // A line for each direction, the area under "in" shaded.
    const visible = pts.filter((p) => x(p.t) >= left);
    const line = (key, stroke, fill) => {
      if (visible.length === 0) return;
      g.beginPath();
      visible.forEach((p, i) => (i === 0 ? g.moveTo(x(p.t), y(p[key])) : g.lineTo(x(p.t), y(p[key]))));
      if (fill) {
        g.save();
        g.lineTo(x(visible[visible.length - 1].t), bottom);
        g.lineTo(x(visible[0].t), bottom);
        g.closePath();
        g.globalAlpha = 0.15;
        g.fillStyle = stroke;
        g.fill();
        g.restore();
        g.beginPath();
        visible.forEach((p, i) => (i === 0 ? g.moveTo(x(p.t), y(p[key])) : g.lineTo(x(p.t), y(p[key]))));
      }
      g.strokeStyle = stroke;
      g.lineWidth = 2;
      g.lineJoin = 'round';
      g.stroke();
    };
    line('in', color('--in', '#2b6cb0'), true);
    line('out', color('--out', '#dd6b20'), false);
  }

  // niceMax rounds a peak rate up to 1, 2 or 5 times a power of ten of the
  // unit it is shown in (B/s, KiB/s, MiB/s...), at least 1 KiB/s, so that
  // the axis labels read well.
  function niceMax(v) {
    v = Math.max(v, 1024);
    let unit = 1;
    while (v >= 1024 * unit) unit *= 1024;
    const u = v / unit;
    const p = Math.pow(10, Math.floor(Math.log10(u)));
    for (const m of [1, 2, 5, 10]) {
      if (u <= m * p) return m * p * unit;
    }
    return 10 * p * unit;
  }

  // --- updates ----------------------------------------------------------

  function mode(text, cls) {
    const m = byId('mode');
    m.textContent = text;
    m.className = 'mode ' + (cls || '');
  }

  function startStream() {
    stream = new EventSource('/api/events');
    stream.addEventListener('status', (e) => {
      const p = JSON.parse(e.data);
      render(p);
      mode('live, every ' + p.push + ' s', 'live');
    });
    stream.onerror = () => {
      // Closed by the server (logged out, relay stopping) or never
      // opened: poll instead, which also finds out about the login.
      stream.close();
      stream = null;
      startPolling();
    };
  }

  function startPolling() {
    if (pollTimer !== null) return;
    mode('polling', 'polling');
    poll();
    pollTimer = setInterval(poll, pollEvery);
    setTimeout(() => {
      clearInterval(pollTimer);
      pollTimer = null;
      startStream();
    }, retryStream);
  }

  function poll() {
    fetch('/api/status', { cache: 'no-store', credentials: 'same-origin' })
      .then((r) => {
        if (r.status === 401) {
          location.assign('/login');
          return null;
        }
        if (!r.ok) throw new Error('status ' + r.status);
        return r.json();
      })
      .then((p) => {
        if (p) {
          render(p);
          mode('polling every ' + pollEvery / 1000 + ' s', 'polling');
        }
      })
      .catch(() => mode('relay unreachable', 'bad'));
  }

  window.addEventListener('resize', () => {
    if (last) renderCharts(last.traffic, Date.parse(last.status.now));
  });

  if (window.EventSource) startStream();
  else startPolling();
})();
