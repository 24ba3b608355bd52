// The trace-worker page: plain JavaScript over the gateway's /api (no build step).
"use strict";

const $ = (sel) => document.querySelector(sel);
const state = { config: { perfetto_origin: "https://ui.perfetto.dev", auth: false }, token: localStorage.getItem("tw-token") || "",
  offset: 0, limit: 20, process: null, job: null, status: null, buffer: null, follow: null };

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else if (k.startsWith("on")) node.addEventListener(k.slice(2), v); else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c == null ? "" : String(c)));
  return node;
}

function showError(message) {
  const bar = $("#error");
  bar.textContent = message || "";
  bar.hidden = !message;
}

function headers(extra = {}) {
  const h = { ...extra };
  if (state.token) h.Authorization = `Bearer ${state.token}`;
  return h;
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: headers(options.headers) });
  if (response.status === 401) {
    $("#token-bar").hidden = false;
    throw new Error("this gateway needs a token");
  }
  const body = response.headers.get("content-type")?.includes("json") ? await response.json() : null;
  if (!response.ok) {
    const err = body && body.error ? `${body.error.code}: ${body.error.message}` : `HTTP ${response.status}`;
    throw new Error(err);
  }
  return body;
}

const fmtTime = (iso) => (iso ? iso.replace("T", " ").replace(/(\.\d{3})\d*Z$/, "$1Z") : "");
const fmtClock = (iso) => (iso ? iso.replace(/^.*T/, "").replace(/(\.\d{3})\d*Z$/, "$1") : "");
const fmtDay = (iso) => (iso ? iso.replace(/^\d{4}-/, "").replace("T", " ").replace(/(:\d\d)\.\d+Z$/, "$1") : "");
const fmtInt = (n) => (n == null ? "" : Number(n).toLocaleString("en-US"));
function fmtSize(n) {
  if (n == null) return "";
  const units = ["B", "KiB", "MiB", "GiB"];
  let v = n, i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return `${v.toFixed(i ? 1 : 0)} ${units[i]} (${fmtInt(n)} bytes)`;
}

// ---- processes
async function loadProcesses() {
  const search = $("#search").value.trim();
  const q = new URLSearchParams({ limit: state.limit, offset: state.offset });
  if (search) q.set("search", search);
  try {
    const page = await api(`/api/processes?${q}`);
    const body = $("#process-table tbody");
    body.replaceChildren(...page.items.map((p) => {
      const row = el("tr", { "data-process-id": p.process_id, onclick: () => selectProcess(p.process_id) },
        el("td", { title: p.exe }, p.exe), el("td", { class: "mono" }, p.process_id), el("td", {}, p.computer),
        el("td", {}, p.username), el("td", { title: p.start_time }, fmtDay(p.start_time)), el("td", { title: p.last_time }, fmtDay(p.last_time)));
      if (p.process_id === state.process) row.classList.add("selected");
      return row;
    }));
    if (!page.items.length) body.append(el("tr", { class: "empty" }, el("td", { colspan: 6, class: "muted" }, search ? `no process matches “${search}”` : "no processes")));
    $("#prev").disabled = state.offset === 0;
    $("#next").disabled = !page.has_more;
    $("#page-info").textContent = page.items.length ? `${state.offset + 1}–${state.offset + page.items.length}` : "";
    showError("");
  } catch (e) { showError(e.message); }
}

async function selectProcess(pid) {
  state.process = pid;
  for (const row of document.querySelectorAll("#process-table tbody tr")) row.classList.toggle("selected", row.dataset.processId === pid);
  $("#details").hidden = false;
  $("#details-title").textContent = pid;
  $("#stats").replaceChildren(el("dt", {}, "loading"), el("dd", {}, "…"));
  try {
    const s = await api(`/api/processes/${pid}`);
    $("#details-title").textContent = s.process.exe;
    const rows = [["process", s.process.process_id], ["computer", s.process.computer], ["user", s.process.username],
      ["from", fmtTime(s.begin)], ["to", fmtTime(s.end)], ["duration", s.duration_s == null ? "" : `${s.duration_s.toFixed(1)} s`],
      ["threads", fmtInt(s.threads)], ["thread spans", fmtInt(s.thread_spans)], ["async spans", fmtInt(s.async_spans)],
      ["log entries", fmtInt(s.log_entries)]];
    $("#stats").replaceChildren(...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", { "data-stat": k }, v)]));
    $("#begin").placeholder = s.begin || "process start";
    $("#end").placeholder = s.end || "process end";
  } catch (e) { $("#stats").replaceChildren(); showError(e.message); }
  loadLogs();
}

async function loadLogs() {
  if (!state.process) return;
  const q = new URLSearchParams({ limit: 50 });
  if ($("#log-level").value) q.set("level", $("#log-level").value);
  if ($("#log-search").value.trim()) q.set("search", $("#log-search").value.trim());
  try {
    const logs = await api(`/api/processes/${state.process}/logs?${q}`);
    $("#logs tbody").replaceChildren(...logs.items.map((l) => el("tr", {},
      el("td", { title: l.time }, fmtClock(l.time)), el("td", { class: `lvl-${l.level}` }, l.level_name), el("td", { title: l.target }, l.target),
      el("td", { title: l.msg }, l.msg))));
    if (!logs.items.length) $("#logs tbody").append(el("tr", {}, el("td", { class: "muted" }, "no log lines")));
  } catch (e) { showError(e.message); }
}

// ---- jobs
async function generate(event) {
  event.preventDefault();
  if (!state.process) return;
  const request = { process_id: state.process, span_types: $("#span-types").value, labels: { requested_by: "web" } };
  if ($("#begin").value.trim()) request.begin = $("#begin").value.trim();
  if ($("#end").value.trim()) request.end = $("#end").value.trim();
  // Sent only when ticked: false is the default, and a request without them keeps its job id.
  if ($("#with-logs").checked) request.logs = true;
  if ($("#with-metrics").checked) request.metrics = true;
  $("#generate").disabled = true;
  try {
    const accepted = await api("/api/traces", { method: "POST", body: JSON.stringify(request), headers: { "Content-Type": "application/json" } });
    followJob(accepted.job_id);
    showError("");
  } catch (e) { showError(e.message); } finally { $("#generate").disabled = false; }
}

function setStatus(status) {
  state.status = status;
  const s = $("#job-state");
  s.textContent = status.state;
  s.className = `state ${status.state}`;
  $("#cancel").hidden = ["succeeded", "failed", "cancelled", "dead"].includes(status.state);
  if (status.state === "succeeded") {
    $("#progress-bar").value = 100;
    $("#progress-text").textContent = `done in ${status.duration_s == null ? "?" : status.duration_s.toFixed(1)} s`;
    $("#result").hidden = false;
    $("#result-size").textContent = fmtSize(status.size);
    $("#result-spans").textContent = fmtInt(status.spans);
    $("#result-sha").textContent = status.sha256 || "";
  } else if (["failed", "cancelled", "dead"].includes(status.state)) {
    $("#progress-text").textContent = [status.error_code, status.message || status.detail].filter(Boolean).join(": ") || status.state;
  }
}

function setProgress(p) {
  $("#progress-bar").value = p.percent;
  const threads = p.threads_total ? ` · threads ${p.threads_done}/${p.threads_total}` : "";
  $("#progress-text").textContent = `${p.percent.toFixed(1)}% · ${p.phase} · ${fmtInt(p.spans)} spans · ${fmtSize(p.bytes).split(" (")[0]}${threads}`;
}

async function followJob(jobId) {
  if (state.follow) state.follow.abort();
  const follow = new AbortController();
  state.follow = follow;
  state.job = jobId;
  state.buffer = null;
  $("#job").hidden = false;
  $("#details").hidden = false;
  $("#job-id").textContent = jobId;
  $("#result").hidden = true;
  $("#sha-check").textContent = "";
  $("#progress-bar").value = 0;
  $("#progress-text").textContent = "waiting for a worker";
  setStatus({ state: "submitted" });
  let terminal = false;
  try {
    const response = await fetch(`/api/traces/${jobId}/events`, { headers: headers(), signal: follow.signal });
    if (!response.ok) throw new Error((await response.json()).error.message);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffered = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffered += value;
      let cut;
      while ((cut = buffered.indexOf("\n\n")) >= 0) {
        const frame = buffered.slice(0, cut);
        buffered = buffered.slice(cut + 2);
        let kind = "message", data = "";
        for (const line of frame.split("\n")) {
          if (line.startsWith("event:")) kind = line.slice(6).trim();
          else if (line.startsWith("data:")) data += line.slice(5).trim();
        }
        if (!data) continue;
        const payload = JSON.parse(data);
        if (kind === "progress") setProgress(payload);
        else if (kind === "status") { setStatus(payload); terminal = ["succeeded", "failed", "cancelled", "dead"].includes(payload.state); }
        else if (kind === "error") showError(`${payload.code}: ${payload.message}`);
      }
    }
  } catch (e) {
    if (e.name !== "AbortError") showError(e.message);
  }
  if (!terminal && !follow.signal.aborted) {
    try { setStatus(await api(`/api/traces/${jobId}`)); } catch (e) { showError(e.message); }
  }
  loadJobs();
}

async function traceBuffer() {
  if (state.buffer) return state.buffer;
  const response = await fetch(`/api/traces/${state.job}/trace`, { headers: headers() });
  if (!response.ok) throw new Error((await response.json()).error.message);
  const buffer = await response.arrayBuffer();
  const etag = (response.headers.get("ETag") || "").replaceAll('"', "");
  if (crypto.subtle) {
    const digest = await crypto.subtle.digest("SHA-256", buffer);
    const hex = [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
    if (hex !== etag || (state.status && state.status.sha256 && hex !== state.status.sha256)) throw new Error(`sha256 mismatch: got ${hex}`);
    $("#sha-check").textContent = "✓ verified";
  }
  state.buffer = buffer;
  return buffer;
}

async function download() {
  try {
    const buffer = await traceBuffer();
    const url = URL.createObjectURL(new Blob([buffer], { type: "application/octet-stream" }));
    const a = el("a", { href: url, download: `${state.job}.pftrace` });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  } catch (e) { showError(e.message); }
}

// Perfetto UI's documented way to open a buffer: PING until it answers PONG, then post the trace.
async function openInPerfetto() {
  const origin = state.config.perfetto_origin;
  let buffer;
  try { buffer = await traceBuffer(); } catch (e) { showError(e.message); return; }
  const win = window.open(`${origin}/#!/`);
  if (!win) { showError("the browser blocked the Perfetto UI window; allow pop-ups for this page"); return; }
  const started = Date.now();
  const ping = setInterval(() => {
    if (Date.now() - started > 20000) { clearInterval(ping); window.removeEventListener("message", onMessage); showError(`no answer from ${origin}`); return; }
    win.postMessage("PING", origin);
  }, 50);
  function onMessage(evt) {
    if (evt.origin !== origin || evt.data !== "PONG") return;
    clearInterval(ping);
    window.removeEventListener("message", onMessage);
    win.postMessage({ perfetto: { buffer, title: `${$("#details-title").textContent} (${state.job})`, url: location.href } }, origin);
  }
  window.addEventListener("message", onMessage);
}

async function cancelJob() {
  try { await api(`/api/traces/${state.job}`, { method: "DELETE" }); } catch (e) { showError(e.message); }
}

async function loadJobs() {
  try {
    const jobs = await api("/api/traces?limit=15");
    $("#jobs tbody").replaceChildren(...jobs.items.map((j) => el("tr", { "data-job-id": j.job_id },
      el("td", { class: "mono" }, j.job_id), el("td", { class: `state ${j.state}` }, j.state), el("td", {}, fmtTime(j.time)),
      el("td", {}, j.size == null ? "" : fmtSize(j.size).split(" (")[0]),
      el("td", {}, el("button", { type: "button", class: "link", onclick: () => followJob(j.job_id) }, "show")))));
    if (!jobs.items.length) $("#jobs tbody").append(el("tr", {}, el("td", { colspan: 5, class: "muted" }, "no jobs yet")));
  } catch (e) { showError(e.message); }
}

// ---- start
let searchTimer = null;
async function start() {
  try { state.config = await (await fetch("/ui-config.json")).json(); } catch (_) { /* defaults */ }
  if (state.config.auth && !state.token) $("#token-bar").hidden = false;
  $("#token-save").addEventListener("click", () => {
    state.token = $("#token").value.trim();
    localStorage.setItem("tw-token", state.token);
    $("#token-bar").hidden = true;
    loadProcesses(); loadJobs();
  });
  $("#search").addEventListener("input", () => { clearTimeout(searchTimer); searchTimer = setTimeout(() => { state.offset = 0; loadProcesses(); }, 250); });
  $("#prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - state.limit); loadProcesses(); });
  $("#next").addEventListener("click", () => { state.offset += state.limit; loadProcesses(); });
  $("#generate-form").addEventListener("submit", generate);
  $("#download").addEventListener("click", download);
  $("#open-perfetto").addEventListener("click", openInPerfetto);
  $("#cancel").addEventListener("click", cancelJob);
  $("#jobs-refresh").addEventListener("click", loadJobs);
  $("#log-level").addEventListener("change", loadLogs);
  $("#log-search").addEventListener("input", () => { clearTimeout(searchTimer); searchTimer = setTimeout(loadLogs, 250); });
  await Promise.all([loadProcesses(), loadJobs()]);
}
document.addEventListener("DOMContentLoaded", start);
