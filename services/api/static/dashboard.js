// kpdd dashboard: polls the API every few seconds and draws tables and uPlot charts.
// Every figure comes from the API (server-side aggregates and paged lists); nothing is computed
// from whole tables here, so the page stays fast with 100,000 jobs in the database.
"use strict";

const PAGE = 20;
const POLL_MS = 3000;
let jobsOffset = 0;
let jobsTotal = 0;
const charts = {};

function token() { return sessionStorage.getItem("kpdd-token") || ""; }

async function api(path) {
  const headers = token() ? { Authorization: "Bearer " + token() } : {};
  const response = await fetch(path, { headers });
  if (response.status === 401 || response.status === 403) {
    const body = await response.json().catch(() => ({}));
    throw Object.assign(new Error((body.error && body.error.message) || "not allowed"), { auth: true });
  }
  if (!response.ok) throw new Error(path + ": HTTP " + response.status);
  return response.json();
}

const fmt = {
  int: (n) => (n == null ? "-" : Number(n).toLocaleString("en-US")),
  pct: (x) => (x == null ? "-" : (100 * x).toFixed(1) + "%"),
  usd: (x) => (x == null ? "-" : "$" + Number(x).toFixed(x >= 1 ? 2 : 4)),
  ms: (x) => (x == null ? "-" : Math.round(x).toLocaleString("en-US")),
  num: (x, d = 3) => (x == null ? "-" : Number(x).toFixed(d)),
  when: (t) => (t ? new Date(t).toLocaleString() : "-"),
};

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else if (k === "style") node.style.cssText = v; else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return node;
}

function fill(tableId, rows) {
  const body = document.querySelector("#" + tableId + " tbody");
  body.replaceChildren(...rows);
  if (!rows.length) body.append(el("tr", {}, el("td", { colspan: "9", class: "muted" }, "nothing yet")));
}

function status(text) { return el("span", { class: "status " + text }, text); }

function progress(done, total) {
  const share = total ? done / total : 0;
  return el("span", {}, el("span", { class: "bar" }, el("span", { style: "width:" + (100 * share).toFixed(1) + "%" })),
    " " + fmt.int(done) + " / " + fmt.int(total));
}

function setText(id, text) { document.getElementById(id).textContent = text; }

async function refreshSummary() {
  const s = await api("/api/dashboard");
  setText("jobs-total", fmt.int(s.jobs.total));
  setText("jobs-states", Object.entries(s.jobs.by_status).map(([k, v]) => k + " " + fmt.int(v)).join(", "));
  const generated = s.teachers.reduce((a, t) => a + t.generated, 0);
  const valid = s.teachers.reduce((a, t) => a + t.valid, 0);
  const spent = s.teachers.reduce((a, t) => a + (t.cost_usd || 0), 0);
  setText("rationales-total", fmt.int(generated));
  setText("rationales-valid", fmt.int(valid) + " valid (" + fmt.pct(generated ? valid / generated : null) + ")");
  setText("spent-total", fmt.usd(spent));
  setText("spent-per-valid", valid ? fmt.usd(spent / valid) + " per accepted rationale" : "");
  fill("teachers-table", s.teachers.map((t) => el("tr", { "data-teacher": t.teacher, "data-mode": t.mode },
    el("td", {}, t.teacher), el("td", {}, t.mode), el("td", { class: "num" }, fmt.int(t.generated)),
    el("td", { class: "num" }, fmt.pct(t.yield)), el("td", { class: "num" }, fmt.usd(t.cost_per_valid_usd)),
    el("td", { class: "num" }, [t.latency_ms.p50, t.latency_ms.p95, t.latency_ms.p99].map(fmt.ms).join(" / ")),
    el("td", { class: "num" }, fmt.pct(t.rate_limited_share)))));
  const most = Math.max(1, ...s.failures.map((f) => f.count));
  fill("failures-table", s.failures.map((f) => el("tr", {}, el("td", {}, f.where), el("td", {}, f.kind),
    el("td", { class: "num" }, fmt.int(f.count)),
    el("td", { style: "width:40%" }, el("div", { class: "hbar", style: "width:" + (100 * f.count / most) + "%" })))));
  const points = s.throughput.points;
  const per = s.throughput.bucket_s / 60;
  setText("throughput-note", "rationales per minute, " + (per === 1 ? "1-minute" : per + "-minute") + " buckets");
  // Every bucket of the window, empty ones as 0, so the time axis spans the whole window.
  const counts = new Map(points.map((p) => [p[0], p[1]]));
  const step = s.throughput.bucket_s;
  const first = Math.floor(Date.parse(s.throughput.since) / 1000 / step) * step;
  const xs = [];
  for (let t = first; t <= Date.parse(s.generated_at) / 1000; t += step) xs.push(t);
  draw("throughput", "throughput-chart", [xs, xs.map((t) => (counts.get(t) || 0) / per)],
    [{ label: "rationales/min", stroke: "#2f6fde", fill: "rgba(47,111,222,.12)" }], true);
}

async function refreshJobs() {
  const page = await api("/api/jobs?limit=" + PAGE + "&offset=" + jobsOffset);
  jobsTotal = page.total;
  fill("jobs-table", page.items.map((j) => el("tr", { "data-job-id": j.job_id },
    el("td", {}, j.job_id), el("td", {}, status(j.status)), el("td", {}, j.corpus + (j.split ? "/" + j.split : "")),
    el("td", {}, j.teachers.join(", ")), el("td", {}, progress(j.problems.done, j.problems.total)),
    el("td", { class: "num" }, fmt.int(j.rationales.reduce((a, r) => a + r.valid, 0))),
    el("td", { class: "num" }, j.spent_usd), el("td", { class: "num" }, j.rate_rationales_per_s + "/s"))));
  const last = Math.min(jobsOffset + PAGE, jobsTotal);
  setText("jobs-page", jobsTotal ? (jobsOffset + 1) + "-" + last + " of " + fmt.int(jobsTotal) : "");
  document.getElementById("jobs-prev").disabled = jobsOffset === 0;
  document.getElementById("jobs-next").disabled = page.next_offset == null;
}

async function refreshSnapshots() {
  const page = await api("/api/snapshots?limit=10");
  setText("snapshots-total", fmt.int(page.total));
  fill("snapshots-table", page.items.map((s) => el("tr", { "data-snapshot": s.snapshot_id },
    el("td", { title: s.snapshot_id }, s.snapshot_id.slice(0, 12)), el("td", {}, s.layout), el("td", {}, s.format),
    el("td", { class: "num" }, fmt.int(s.rows)), el("td", {}, fmt.when(s.created_at)))));
}

async function refreshRuns() {
  const page = await api("/api/runs?limit=10");
  setText("runs-total", fmt.int(page.total));
  fill("runs-table", page.items.map((r) => el("tr", { "data-run-id": r.run_id },
    el("td", {}, r.run_id), el("td", {}, status(r.state)), el("td", { title: r.snapshot_id }, (r.snapshot_id || "").slice(0, 12)),
    el("td", { class: "num" }, fmt.int(r.step) + (r.total_steps ? " / " + fmt.int(r.total_steps) : "")),
    el("td", { class: "num" }, fmt.num(r.last_loss)), el("td", { class: "num" }, fmt.int(r.tokens_per_s_per_gpu)),
    el("td", { class: "accuracy" }, Object.entries(r.accuracy).map(([d, a]) => d + " " + fmt.pct(a)).join(", ") || "-"))));
  const holder = document.getElementById("run-charts");
  for (const run of page.items.slice(0, 4)) {
    const curve = await api("/api/runs/" + run.run_id + "/curve");
    if (!curve.points.length) continue;
    const id = "run-" + run.run_id;
    if (!document.getElementById(id)) {
      holder.append(el("div", {}, el("div", { class: "muted" }, "run " + run.run_id + " loss"), el("div", { id, class: "chart loss-chart" })));
    }
    const steps = curve.points.map((p) => p.step);
    const val = new Map(curve.validation.map((p) => [p.step, p.val_loss]));
    draw(id, id, [steps, curve.points.map((p) => p.loss), steps.map((s) => (val.has(s) ? val.get(s) : null))],
      [{ label: "train loss", stroke: "#2f6fde" }, { label: "validation loss", stroke: "#d9822b", points: { show: true, size: 6 } }], false);
  }
}

function draw(key, holderId, data, series, time) {
  const holder = document.getElementById(holderId);
  const width = Math.max(320, holder.clientWidth || 600);
  if (charts[key]) { charts[key].setData(data); return; }
  charts[key] = new uPlot({
    width, height: 220, scales: { x: { time } }, legend: { live: false },
    series: [{ label: time ? "time" : "step" }, ...series.map((s) => ({ width: 2, spanGaps: true, ...s }))],
    axes: [{}, { size: 60 }],
  }, data, holder);
}

async function refresh() {
  try {
    await Promise.all([refreshSummary(), refreshJobs(), refreshSnapshots(), refreshRuns()]);
    document.getElementById("login").hidden = true;
    document.getElementById("main").hidden = false;
    setText("updated", "updated " + new Date().toLocaleTimeString());
    document.body.dataset.loaded = "true";
  } catch (error) {
    if (error.auth) {
      document.getElementById("main").hidden = true;
      document.getElementById("login").hidden = false;
      setText("login-error", token() ? error.message : "");
      return;
    }
    setText("updated", "update failed: " + error.message);
  }
}

document.getElementById("login").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem("kpdd-token", document.getElementById("token").value);
  refresh();
});
document.getElementById("jobs-prev").addEventListener("click", () => { jobsOffset = Math.max(0, jobsOffset - PAGE); refreshJobs(); });
document.getElementById("jobs-next").addEventListener("click", () => { jobsOffset += PAGE; refreshJobs(); });
refresh();
setInterval(refresh, POLL_MS);
