// linehost line dashboard: renders the board from server-sent events; no framework, no reload.
"use strict";

const STATE_LABEL = {
  offline: "offline", waiting_for_device: "waiting for device", provisioning: "provisioning",
  waiting_for_swap: "swap device", waiting_for_database: "waiting for database", stopped: "stopped",
  waiting_for_issuer: "waiting for issuer",
  pre_step: "pre-step", pre_step_failed: "pre-step failed", post_step: "post-step",
  work_order_complete: "work order complete",
};
const board = { lines: {} };
let skew = 0; // server clock minus browser clock, seconds

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
  head.append(el("div", "failures"));
  section.append(head, el("div", "stations"));
  const all = [...document.querySelectorAll("section.line")];
  const after = all.find((s) => s.dataset.line > name);
  document.getElementById("lines").insertBefore(section, after || null);
  return section;
}

function renderHost(name, status) {
  const section = lineSection(name);
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
    }
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
connect();
