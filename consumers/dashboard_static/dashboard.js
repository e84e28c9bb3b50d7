// The carebus dashboard. Everything shown is set as text, never parsed as HTML: dead-letter reasons
// carry file names and other sender-supplied text. Signed in by an HttpOnly session cookie (from a
// one-time #code=… or a token typed below), so no script can read a credential.
"use strict";
const hash = new URLSearchParams(location.hash.slice(1));

async function signIn(body) {
  const resp = await fetch("/dashboard/session", { method: "POST", headers: { "Content-Type": "application/json" },
                                                   body: JSON.stringify(body) });
  if (!resp.ok) throw new Error("sign-in refused (" + resp.status + ")");
}

// A cell is a value, or {warn: value} for one shown in red.
function rows(id, head, data) {
  const table = document.getElementById(id);
  const lines = [head.map(h => cell("th", h))].concat(data.map(r => r.map((c, i) => cell("td", c, i ? "n" : ""))));
  table.replaceChildren(...lines.map(cells => { const tr = document.createElement("tr"); tr.append(...cells); return tr; }));
}
function cell(tag, value, cls) {
  const el = document.createElement(tag);
  if (cls) el.className = cls;
  if (value !== null && typeof value === "object" && "warn" in value) {
    const span = document.createElement("span");
    span.className = "warn";
    span.textContent = String(value.warn);
    el.append(span);
  } else {
    el.textContent = value === undefined || value === null ? "" : String(value);
  }
  return el;
}
function showError(e) { document.getElementById("error").textContent = String(e); }

async function get(path) {
  const resp = await fetch(path, { credentials: "same-origin" });
  if (resp.status === 401) { document.getElementById("signin").style.display = "block"; }
  if (!resp.ok) throw new Error(path.split("?")[0] + " answered " + resp.status);
  return resp.json();
}

async function refresh() {
  try {
    const m = await get("/monitor");
    document.getElementById("signin").style.display = "none";
    document.getElementById("persons").textContent = m.linkage.persons_with_records ?? 0;
    rows("linkage", ["what", "count"], Object.entries(m.linkage).map(([k, v]) => [k, v]));
    rows("topics", ["topic", "messages", "/s"], Object.entries(m.topics).map(([k, v]) => [k.replace("carebus.", ""), v.messages, v.per_second]));
    const byGroup = {};
    for (const l of m.lag) byGroup[l.group] = (byGroup[l.group] || 0) + l.lag;
    rows("lag", ["group", "lag"], Object.entries(byGroup).map(([k, v]) => [k, v]));
    rows("dead", ["topic", "count", "reasons"], Object.entries(m.dead_letters).map(([k, v]) =>
      [k.replace("carebus.", ""), v.count, Object.entries(v.reasons).map(([r, n]) => `${r}: ${n}`).join(", ")]));
    rows("delivery", ["subscription", "delivered", "repeats held back", "failed attempts", "parked", "last delivered", "status"], Object.entries(m.delivery).map(([k, v]) =>
      [k.slice(0, 8), v.delivered || 0, v.repeats || 0, v.failed_attempts || 0, v.parked || 0,
       v.last_delivered_at ? new Date(+v.last_delivered_at).toLocaleTimeString() : "–",
       v.status === "degraded" ? { warn: "degraded" } : (v.status || "active")]));
    rows("workers", ["worker", "state", "waiting for", "since", "events"], Object.entries(m.link_workers || {}).map(([k, v]) =>
      [k, v.state === "waiting" ? { warn: "waiting" } : v.state, v.waiting_for || "–",
       v.since ? new Date(v.since).toLocaleTimeString() : "–", v.events]));
    document.getElementById("updated").textContent = new Date(m.at).toLocaleTimeString();
    document.getElementById("error").textContent = "";
  } catch (e) { showError(e); }
}

const charts = {};
function chart(id, series, data) {
  const el = document.getElementById(id);
  const opts = { width: Math.max(320, el.clientWidth || 400), height: 200, series: [{}].concat(series),
                 axes: [{}, { size: 60 }], scales: { x: { time: true } } };
  if (charts[id]) { charts[id].setData(data); return; }
  charts[id] = new uPlot(opts, data, el);
}
async function loadHistory() {
  try {
    const h = await get("/monitor/history");
    chart("chart-throughput", [{ label: "source events/s", stroke: "#005eb8" }, { label: "record changes/s", stroke: "#007f3b" }],
          [h.at, h.source_events_per_s, h.changes_per_s]);
    chart("chart-lag", [{ label: "linker", stroke: "#8a1538" }, { label: "delivery", stroke: "#ed8b00" }],
          [h.at, h.linker_lag, h.delivery_lag]);
    chart("chart-latency", [{ label: "change → subscriber, ms", stroke: "#330072", spanGaps: true }],
          [h.at, h.delivery_latency_ms]);
    chart("chart-dead", [{ label: "dead letters/min", stroke: "#b3261e" }], [h.at, h.dead_letters_per_min]);
    document.body.dataset.samples = h.at.length;
  } catch (e) { showError(e); }
}
async function deadLetters() {
  try {
    const which = document.getElementById("dead-which").value;
    const list = await get("/monitor/dead-letters?which=" + encodeURIComponent(which));
    rows("dead-list", ["failed at", "stage", "code", "reason", "from"], list.map(d =>
      [new Date(d.failed_at).toLocaleString(), d.stage, d.error_code, d.reason,
       d.original_topic ? `${d.original_topic.replace("carebus.", "")}:${d.original_partition}:${d.original_offset}` : "–"]));
  } catch (e) { showError(e); }
}

function start() {
  refresh(); setInterval(refresh, 2000);
  loadHistory(); setInterval(loadHistory, 10000);
  deadLetters(); setInterval(deadLetters, 30000);
}

// #dead=connectors|streams|delivery opens the list on that topic (a link from an alert, say).
if (["connectors", "streams", "delivery"].includes(hash.get("dead"))) document.getElementById("dead-which").value = hash.get("dead");
document.getElementById("dead-which").addEventListener("change", deadLetters);
document.getElementById("signin").addEventListener("submit", async ev => {
  ev.preventDefault();
  const input = document.getElementById("token");
  try { await signIn({ token: input.value }); input.value = ""; start(); } catch (e) { showError(e); }
});
const code = hash.get("code");
if (code) {
  // The code is good once: take it out of the address (and history) before anything else.
  hash.delete("code");
  window.history.replaceState(null, "", location.pathname + (hash.toString() ? "#" + hash.toString() : ""));
  signIn({ code }).then(start, e => { showError(e); start(); });
} else {
  start();
}
