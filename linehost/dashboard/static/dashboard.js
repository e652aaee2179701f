// linehost plant dashboard: renders the board from server-sent events; no framework, no reload.
// #/ is the plant view (one row per line, a shift chart, alarms); #/line/NAME is one line's tiles.
"use strict";

const STATE_LABEL = {
  offline: "offline", waiting_for_device: "waiting for device", provisioning: "provisioning",
  waiting_for_swap: "swap device", waiting_for_database: "waiting for database", stopped: "stopped",
  waiting_for_issuer: "waiting for issuer",
  pre_step: "pre-step", pre_step_failed: "pre-step failed", post_step: "post-step",
  work_order_complete: "work order complete", held: "held",
};
const ALARM_LABEL = {
  jig_failing: "jig failing", jig_offline: "jig offline", host_offline: "host offline",
  outbox_growing: "outbox growing", crl_next_update: "CRL nextUpdate near",
};
const WORST_SHOWN = 3;
const HISTORY_EVERY = 5000; // ms between two fetches of the shift chart's data
const board = { lines: {} }; // line -> {jigs: {key: state}, alarms: [...]}
let skew = 0; // server clock minus browser clock, seconds
let chart = null;

function known(name) {
  return (board.lines[name] ||= { jigs: {}, alarms: [] });
}

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

function lineSection(name) {
  const id = "line-" + CSS.escape(name);
  let section = document.querySelector(`section.line[data-line="${CSS.escape(name)}"]`);
  if (section) return section;
  document.querySelector("#lines .empty")?.remove();
  section = el("section", "line");
  section.dataset.line = name;
  section.id = id;
  const head = el("div", "linehead");
  head.append(el("h2", "", name), el("span", "badge offline host", "host offline"));
  for (const [key, label] of [["rate", "devices/hour"], ["fpy", "first-pass yield"],
                              ["attempts", "attempts (1 h)"]]) {
    const fig = el("span", "figure " + key);
    fig.append(el("b", "", "–"), document.createTextNode(" " + label));
    head.append(fig);
  }
  const crl = el("span", "figure crl");
  crl.hidden = true;
  head.append(crl, el("div", "failures"));
  section.append(head, el("div", "stations"));
  const all = [...document.querySelectorAll("section.line")];
  const after = all.find((s) => s.dataset.line > name);
  document.getElementById("lines").insertBefore(section, after || null);
  plantRow(name);
  route();
  return section;
}

function plantRow(name) {
  const body = document.querySelector("#plant-table tbody");
  let row = body.querySelector(`tr.row[data-line="${CSS.escape(name)}"]`);
  if (row) return row;
  body.querySelector("tr.empty")?.remove();
  row = el("tr", "row");
  row.dataset.line = name;
  const link = el("a", "", name);
  link.href = "#/line/" + encodeURIComponent(name);
  const cell = (cls) => el("td", cls);
  const nameCell = cell("name");
  nameCell.append(link);
  const host = cell("host");
  host.append(el("span", "hoststate offline", "offline"));
  const wo = cell("wo");
  const bar = el("div", "bar");
  bar.append(el("div", "fill"));
  wo.append(bar, el("div", "text", "no work order"));
  row.append(nameCell, host, cell("rate"), cell("fpy"), wo, cell("outbox"), cell("worst"));
  for (const c of [row.querySelector(".rate"), row.querySelector(".fpy"), row.querySelector(".outbox")]) {
    c.textContent = "–";
  }
  row.addEventListener("click", () => { location.hash = "#/line/" + encodeURIComponent(name); });
  const after = [...body.children].find((r) => r.dataset.line > name);
  body.insertBefore(row, after || null);
  return row;
}

function renderWorkOrder(name, wo) {
  const row = plantRow(name);
  const cell = row.querySelector(".wo");
  if (!wo) return;
  const quantity = wo.quantity || 0;
  const done = wo.done || 0;
  const share = quantity ? Math.min(1, done / quantity) : 0;
  cell.querySelector(".fill").style.width = (100 * share).toFixed(1) + "%";
  cell.dataset.done = done;
  cell.dataset.remaining = wo.remaining;
  cell.querySelector(".text").textContent =
    `${wo.work_order}: ${done.toLocaleString()} / ${quantity.toLocaleString()} · ` +
    `${(wo.remaining ?? 0).toLocaleString()} remaining`;
}

function renderOutbox(name, outbox) {
  const cell = plantRow(name).querySelector(".outbox");
  cell.textContent = outbox && Number.isInteger(outbox.depth) ? outbox.depth.toLocaleString() : "–";
}

function renderCrl(name, crl) {
  // the CRL the line's host keeps ([pki] crl_dir); hidden when it keeps none
  const fig = lineSection(name).querySelector(".figure.crl");
  fig.hidden = !crl;
  if (!crl) return;
  fig.dataset.crlNumber = crl.crl_number;
  fig.dataset.nextUpdate = crl.next_update;
  fig.replaceChildren(el("b", "", `CRL ${crl.crl_number}`),
                      document.createTextNode(" next update " + new Date(crl.next_update).toLocaleString()));
}

function renderWorst(name) {
  const jigs = Object.entries(known(name).jigs)
    .filter(([, s]) => (s.failed || 0) > 0)
    .sort(([ka, a], [kb, b]) => failShare(b) - failShare(a) || b.failed - a.failed || ka.localeCompare(kb))
    .slice(0, WORST_SHOWN);
  const cell = plantRow(name).querySelector(".worst");
  cell.replaceChildren(...jigs.map(([key, s]) =>
    el("span", "", `${key} ✘${s.failed}/${(s.ok || 0) + s.failed}`)));
}

function failShare(s) {
  return s.failed / Math.max(1, (s.ok || 0) + s.failed);
}

function renderAlarms(name, active) {
  known(name).alarms = active || [];
  plantRow(name).classList.toggle("alarmed", known(name).alarms.length > 0);
  drawAlarms();
}

function drawAlarms() {
  const box = document.getElementById("alarms");
  const current = currentLine();
  const items = [];
  for (const [line, view] of Object.entries(board.lines).sort()) {
    if (current !== null && line !== current) continue;
    for (const a of view.alarms) {
      const item = el("div", "alarm");
      Object.assign(item.dataset, { line, kind: a.kind, subject: a.subject });
      item.append(el("b", "", `${line} · ${ALARM_LABEL[a.kind] || a.kind}`),
                  document.createTextNode(`${a.subject === "host" ? "" : a.subject + " — "}${a.detail}`),
                  el("span", "when", "since " + new Date(a.since).toLocaleTimeString()));
      items.push(item);
    }
  }
  box.replaceChildren(...items);
  box.hidden = items.length === 0;
}

function currentLine() {
  const match = location.hash.match(/^#\/line\/(.+)$/);
  return match ? decodeURIComponent(match[1]) : null;
}

function route() {
  const line = currentLine();
  document.body.dataset.view = line === null ? "plant" : "line";
  document.getElementById("crumb").textContent = line === null ? "plant" : `line ${line}`;
  for (const section of document.querySelectorAll("section.line")) {
    section.classList.toggle("current", section.dataset.line === line);
  }
  drawAlarms();
  if (line === null && chart) chart.setSize(chartSize());
}

function chartSize() {
  const box = document.getElementById("chart");
  return { width: Math.max(400, box.clientWidth - 16), height: 300 };
}

function chartData(history) {
  // x: minute buckets of every line; per line devices/hour; the plant's yield in %.
  const names = Object.keys(history.lines).sort();
  const xs = [...new Set(names.flatMap((n) => history.lines[n].map((p) => p[0])))].sort((a, b) => a - b);
  const perHour = 3600 / history.bucket;
  const series = names.map((n) => {
    const at = new Map(history.lines[n].map((p) => [p[0], p[2] * perHour]));
    return xs.map((x) => at.get(x) ?? 0);
  });
  const yieldPct = xs.map((x) => {
    let n = 0, ok = 0;
    for (const name of names) {
      const p = history.lines[name].find((q) => q[0] === x);
      if (p) { n += p[1]; ok += p[2]; }
    }
    return n ? (100 * ok) / n : null;
  });
  return { names, data: [xs, ...series, yieldPct] };
}

const COLOURS = ["#60a5fa", "#f59e0b", "#a78bfa", "#34d399", "#f472b6", "#22d3ee"];

async function drawChart() {
  let history;
  try {
    const response = await fetch("/api/history");
    if (!response.ok) return;
    history = await response.json();
  } catch (err) {
    return;
  }
  const { names, data } = chartData(history);
  document.querySelector(".charttitle .sub").textContent =
    history.bucket === 60 ? "(per minute)" : `(per ${history.bucket} s)`;
  const box = document.getElementById("chart");
  box.dataset.points = String(data[0].length);
  box.dataset.lines = names.join(",");
  box.dataset.devices = String(names.reduce(
    (sum, n) => sum + history.lines[n].reduce((s, p) => s + p[2], 0), 0));
  window.plantChartData = data;
  const key = names.join(",");
  if (!chart || chart.lineKey !== key) {
    chart?.destroy();
    const axis = { stroke: "#8b98a5", grid: { stroke: "#26303a" }, ticks: { stroke: "#26303a" } };
    chart = new uPlot({
      ...chartSize(),
      scales: { x: { time: true }, rate: { auto: true }, pct: { range: [0, 100] } },
      axes: [
        { ...axis },
        { ...axis, scale: "rate", label: "devices/hour" },
        { ...axis, scale: "pct", side: 1, label: "yield %", grid: { show: false } },
      ],
      series: [
        {},
        ...names.map((n, i) => ({
          label: `${n} devices/hour`, scale: "rate", stroke: COLOURS[i % COLOURS.length], width: 2,
          points: { show: true, size: 6 },
        })),
        { label: "plant yield %", scale: "pct", stroke: "#22c55e", width: 2, dash: [6, 4],
          points: { show: true, size: 6 } },
      ],
    }, data, box);
    chart.lineKey = key;
  } else {
    chart.setData(data);
  }
}

function renderHost(name, status) {
  const section = lineSection(name);
  const state = plantRow(name).querySelector(".hoststate");
  const up = status && status.online === true;
  state.className = "hoststate " + (up ? "online" : "offline");
  state.textContent = up ? "online" : "offline";
  const badge = section.querySelector(".badge.host");
  const online = status && status.online === true;
  badge.className = "badge host " + (online ? "online" : "offline");
  badge.textContent = online ? `host online · ${status.version || ""}` : "host offline";
  section.classList.toggle("hostdown", !online);
}

function renderStats(stats) {
  const section = lineSection(stats.line);
  section.querySelector(".figure.rate b").textContent = stats.devices_per_hour.toLocaleString();
  section.querySelector(".figure.fpy b").textContent =
    stats.first_pass_yield === null ? "–" : (100 * stats.first_pass_yield).toFixed(1) + " %";
  section.querySelector(".figure.attempts b").textContent = stats.attempts.toLocaleString();
  const row = plantRow(stats.line);
  row.querySelector(".rate").textContent = stats.devices_per_hour.toLocaleString();
  row.querySelector(".fpy").textContent = section.querySelector(".figure.fpy b").textContent;
  const box = section.querySelector(".failures");
  box.replaceChildren(...Object.entries(stats.failures).map(
    ([outcome, n]) => el("span", "chip", `${outcome.replaceAll("_", " ")} ${n}`)));
}

function stationBox(section, station) {
  let box = section.querySelector(`.station[data-station="${CSS.escape(station)}"]`);
  if (box) return box;
  box = el("div", "station");
  box.dataset.station = station;
  box.append(el("h3", "", station), el("div", "tiles"));
  const holder = section.querySelector(".stations");
  const after = [...holder.children].find((s) => s.dataset.station > station);
  holder.insertBefore(box, after || null);
  return box;
}

function renderJig(line, key, state) {
  known(line).jigs[key] = state;
  renderWorst(line);
  const section = lineSection(line);
  const box = stationBox(section, state.station);
  let tile = box.querySelector(`.tile[data-key="${CSS.escape(key)}"]`);
  if (!tile) {
    tile = el("div", "tile");
    tile.dataset.key = key;
    tile.dataset.line = line;
    const top = el("div", "top");
    top.append(el("span", "name", state.jig), el("span", "since"));
    const counts = el("div", "counts");
    counts.append(el("span", "ok"), el("span", "failed"));
    tile.append(top, el("div", "state"), el("div", "uid"), counts, el("div", "last"));
    const tiles = box.querySelector(".tiles");
    const after = [...tiles.children].find((t) => t.dataset.key.localeCompare(key, undefined,
      { numeric: true }) > 0);
    tiles.insertBefore(tile, after || null);
  }
  tile.dataset.state = state.state;
  tile.dataset.since = state.since;
  const good = state.last_outcome === "provisioned";
  tile.classList.toggle("ok", good);
  tile.classList.toggle("failed", Boolean(state.last_outcome) && !good);
  tile.querySelector(".state").textContent = STATE_LABEL[state.state] || state.state;
  tile.querySelector(".uid").textContent = state.uid || "";
  tile.querySelector(".ok").textContent = `✔ ${state.ok}`;
  tile.querySelector(".failed").textContent = `✘ ${state.failed}`;
  const last = state.last_outcome
    ? `${state.last_outcome.replaceAll("_", " ")}${state.last_detail ? " — " + state.last_detail : ""}`
    : "";
  const lastNode = tile.querySelector(".last");
  lastNode.textContent = last;
  lastNode.title = last;
  tickTile(tile);
}

function removeJig(line, key) {
  delete known(line).jigs[key];
  renderWorst(line);
  document.querySelector(`section.line[data-line="${CSS.escape(line)}"] .tile[data-key="${CSS.escape(key)}"]`)?.remove();
}

function tickTile(tile) {
  const since = Date.parse(tile.dataset.since);
  if (Number.isNaN(since)) return;
  let s = Math.max(0, Math.floor(Date.now() / 1000 + skew - since / 1000));
  const h = Math.floor(s / 3600); s -= h * 3600;
  const m = Math.floor(s / 60); s -= m * 60;
  tile.querySelector(".since").textContent =
    (h ? `${h}:${String(m).padStart(2, "0")}` : `${m}`) + `:${String(s).padStart(2, "0")}`;
}

function apply(name, data) {
  if (name === "jig") renderJig(data.line, data.key, data.state);
  else if (name === "jig_removed") removeJig(data.line, data.key);
  else if (name === "host") renderHost(data.line, data.status);
  else if (name === "stats") renderStats(data);
  else if (name === "workorder") renderWorkOrder(data.line, data.work_order);
  else if (name === "outbox") renderOutbox(data.line, data.outbox);
  else if (name === "crl") renderCrl(data.line, data.crl);
  else if (name === "alarms") renderAlarms(data.line, data.active);
}

function connect() {
  const conn = document.getElementById("conn");
  const source = new EventSource("/events");
  source.addEventListener("snapshot", (event) => {
    const snap = JSON.parse(event.data);
    skew = snap.now - Date.now() / 1000;
    for (const [name, line] of Object.entries(snap.lines)) {
      renderHost(name, line.host);
      for (const [key, state] of Object.entries(line.jigs)) renderJig(name, key, state);
      renderStats(line.stats);
      renderWorkOrder(name, line.work_order);
      renderOutbox(name, line.outbox);
      renderCrl(name, line.crl);
      renderAlarms(name, line.alarms);
    }
    drawChart();
    conn.className = "conn " + (snap.mqtt ? "up" : "down");
    conn.textContent = snap.mqtt ? "live" : "broker unreachable";
  });
  source.addEventListener("batch", (event) => {
    for (const [name, data] of JSON.parse(event.data)) apply(name, data);
    conn.className = "conn up";
    conn.textContent = "live";
  });
  source.onerror = () => {
    conn.className = "conn down";
    conn.textContent = "reconnecting…";
  };
}

setInterval(() => document.querySelectorAll(".tile").forEach(tickTile), 1000);
setInterval(drawChart, HISTORY_EVERY);
window.addEventListener("hashchange", route);
window.addEventListener("resize", () => chart?.setSize(chartSize()));
route();
connect();
