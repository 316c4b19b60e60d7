// The moorage status page: polls /v1/status every 2 s and redraws.
// A token given as #token=... in the page address is sent as a bearer
// header; it never leaves the browser otherwise (fragments are not sent).
"use strict";

const token = new URLSearchParams(location.hash.slice(1)).get("token");

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "–" : String(text);
  if (className) td.className = className;
  row.appendChild(td);
}

function fill(id, items, draw, emptyText) {
  const body = document.getElementById(id);
  body.replaceChildren();
  if (items.length === 0) {
    const row = document.createElement("tr");
    cell(row, emptyText, "muted");
    // Span the whole table, whatever its number of columns.
    row.firstChild.colSpan = body.closest("table").tHead.rows[0].cells.length;
    body.appendChild(row);
    return;
  }
  for (const item of items) {
    const row = document.createElement("tr");
    draw(row, item);
    body.appendChild(row);
  }
}

function when(seconds) {
  return seconds ? new Date(seconds * 1000).toLocaleTimeString() : "–";
}

function render(s) {
  const rt = s.runtime;
  const engine = rt.engine_ok === null ? "no dispatcher in this process"
    : rt.engine_ok ? "engine up" : "ENGINE UNREACHABLE";
  const state = document.getElementById("state");
  state.textContent = `runtime: ${rt.name || "–"} · ${engine}` +
    (s.last_recovery ? ` · last recovery ${when(s.last_recovery.at)}` : "");
  state.className = rt.engine_ok === false ? "bad" : "muted";

  const counts = document.getElementById("counts");
  counts.replaceChildren();
  for (const [name, n] of Object.entries(s.counts)) {
    const span = document.createElement("span");
    span.textContent = `${name}: ${n}`;
    span.dataset.status = name;
    counts.appendChild(span);
  }

  fill("groups", s.groups, (row, g) => {
    cell(row, g.group_id);
    cell(row, g.active_job);
    cell(row, g.container_id ? g.container_id.slice(0, 12) : null);
    cell(row, g.agent);
    cell(row, g.waiting, "num");
  }, "no group has work");

  const bars = document.getElementById("bars");
  bars.replaceChildren();
  const perMinute = s.replies.per_minute.slice().reverse();
  const most = Math.max(1, ...perMinute);
  for (const n of perMinute) {
    const bar = document.createElement("div");
    bar.style.height = `${(100 * n) / most}%`;
    bar.title = `${n} replies`;
    bars.appendChild(bar);
  }
  document.getElementById("replies").textContent =
    `${s.replies.per_minute[0]} in the current minute · ${s.replies.undelivered} undelivered`;

  fill("failures", s.recent_failures, (row, j) => {
    cell(row, j.id);
    cell(row, j.group_id);
    cell(row, when(j.finished_at));
    cell(row, j.last_error, "bad");
  }, "no failures");

  document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
}

async function refresh() {
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  try {
    const response = await fetch("/v1/status", { headers, cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    render(await response.json());
  } catch (err) {
    const state = document.getElementById("state");
    state.textContent = `cannot load status: ${err.message}`;
    state.className = "bad";
  }
}

refresh();
setInterval(refresh, 2000);
