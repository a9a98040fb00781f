// canopy web UI: task list, task creation, live flame graph. Plain JS against
// the admin API on the same origin; nothing is fetched from anywhere else.
"use strict";

const state = { tasks: [], selected: null, shownSnapshots: -1, lastFlameLoad: 0 };
const $ = (id) => document.getElementById(id);
const LIST_EVERY_MS = 2000, FLAME_EVERY_MS = 3000, HEALTH_EVERY_MS = 5000;

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(c == null ? "" : String(c)));
  return e;
}

function remaining(ms) {
  if (!ms || ms <= 0) return "–";
  const s = Math.round(ms / 1000);
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m " + String(s % 60).padStart(2, "0") + "s";
  return Math.floor(s / 3600) + "h " + String(Math.floor(s / 60) % 60).padStart(2, "0") + "m";
}

async function api(method, path, body) {
  const opts = { method, headers: {} };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const res = await fetch(path, opts);
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
  if (!res.ok) throw new Error((data && data.error) || ("HTTP " + res.status));
  return data;
}

function renderTasks() {
  const body = $("tasks").tBodies[0];
  body.replaceChildren();
  if (state.tasks.length === 0) {
    body.append(el("tr", { class: "empty" }, el("td", { colspan: "8" }, "No tasks yet: create one on the right.")));
    return;
  }
  for (const t of state.tasks) {
    const cancel = t.status === "ended" ? "" :
      el("button", { class: "secondary", title: "cancel this task",
                     onclick: (ev) => { ev.stopPropagation(); cancelTask(t.id); } }, "Cancel");
    const row = el("tr", { "data-id": t.id, onclick: () => select(t.id) },
      el("td", {}, t.id),
      el("td", {}, t.service || "–"),
      el("td", {}, t.endpoint || "–"),
      el("td", {}, el("span", { class: "status " + t.status }, t.status)),
      el("td", { class: "num agents" }, t.agents),
      el("td", { class: "num snapshots" }, t.snapshots),
      el("td", {}, t.status === "ended" ? "–" : t.continuous ? "continuous" : remaining(t.remaining_ms)),
      el("td", {}, cancel));
    if (t.id === state.selected) row.classList.add("selected");
    body.append(row);
  }
}

async function refreshTasks() {
  try {
    const data = await api("GET", "/api/v1/tasks");
    state.tasks = data.tasks || [];
    $("list-error").hidden = true;
    if (!state.selected && state.tasks.length) {
      // First visit: show the newest running task (or the newest one).
      const running = state.tasks.filter((t) => t.status === "running");
      const pick = (running.length ? running : state.tasks)[(running.length ? running : state.tasks).length - 1];
      select(pick.id);
      return;
    }
    renderTasks();
    maybeReloadFlame();
  } catch (e) {
    $("list-error").textContent = "Cannot list tasks: " + e.message;
    $("list-error").hidden = false;
  }
}

async function refreshHealth() {
  const badge = $("health");
  try {
    const res = await fetch("/readyz");
    const text = (await res.text()).trim();
    badge.textContent = res.ok ? "ready" : "not ready";
    badge.title = text;
    badge.className = "badge " + (res.ok ? "ok" : "bad");
  } catch (e) {
    badge.textContent = "unreachable";
    badge.className = "badge bad";
  }
}

function taskById(id) { return state.tasks.find((t) => t.id === id); }

function loadFlame(t) {
  const frame = $("flame");
  const width = Math.max(400, Math.floor(frame.clientWidth || $("flame-panel").clientWidth - 40) - 4);
  frame.hidden = false;
  $("flame-hint").hidden = true;
  frame.src = t.links.flamegraph + "?width=" + width + "&t=" + Date.now();
  state.shownSnapshots = t.snapshots;
  state.lastFlameLoad = Date.now();
}

function select(id) {
  state.selected = id;
  const t = taskById(id);
  renderTasks();
  $("flame-task").textContent = id;
  const links = $("flame-links");
  links.replaceChildren();
  if (!t) return;
  links.append(el("a", { href: t.links.flamegraph, target: "_blank" }, "SVG"),
               el("a", { href: t.links.folded, target: "_blank" }, "folded"),
               el("a", { href: t.links.pprof }, "pprof"));
  loadFlame(t);
}

// Redraws the selected task's flame graph when new snapshots came (not while
// the user looks at a zoomed picture of an ended task: that never changes).
function maybeReloadFlame() {
  const t = state.selected && taskById(state.selected);
  if (!t || !$("live").checked) return;
  if (t.snapshots === state.shownSnapshots) return;
  if (Date.now() - state.lastFlameLoad < FLAME_EVERY_MS) return;
  loadFlame(t);
}

async function cancelTask(id) {
  try {
    await api("DELETE", "/api/v1/tasks/" + encodeURIComponent(id));
  } catch (e) {
    alert("Cannot cancel " + id + ": " + e.message);
  }
  refreshTasks();
}

async function createTask(ev) {
  ev.preventDefault();
  const form = ev.target, out = $("create-result"), button = $("create-button");
  const body = {};
  const continuous = form.elements["continuous"].checked;
  // A continuous task has a window and no duration (the API refuses both together).
  const names = ["service", "endpoint", continuous ? "window" : "duration", "min_duration_threshold",
                 "dump_period", "id"];
  for (const name of names) {
    const v = form.elements[name].value.trim();
    if (v) body[name] = v;
  }
  if (continuous) body.continuous = true;
  const max = form.elements["max_sampling_count"].value.trim();
  if (max) body.max_sampling_count = parseInt(max, 10);
  button.disabled = true;
  try {
    const t = await api("POST", "/api/v1/tasks", body);
    out.className = "ok-text";
    out.textContent = "Created " + t.id + ". Agents of " + t.service + " pick it up at their next poll.";
    form.elements["id"].value = "";
    await refreshTasks();
    select(t.id);
  } catch (e) {
    out.className = "error";
    out.textContent = "Not created: " + e.message;
  } finally {
    button.disabled = false;
  }
}

// Continuous swaps Duration for Window: a disabled input is neither required nor submitted.
function toggleContinuous() {
  const form = $("create-form"), on = form.elements["continuous"].checked;
  for (const [name, shown] of [["duration", !on], ["window", on]]) {
    form.elements[name].disabled = !shown;
    form.elements[name].parentElement.hidden = !shown;
  }
}

$("create-form").addEventListener("submit", createTask);
$("create-form").elements["continuous"].addEventListener("change", toggleContinuous);
$("live").addEventListener("change", maybeReloadFlame);
refreshTasks();
refreshHealth();
setInterval(refreshTasks, LIST_EVERY_MS);
setInterval(refreshHealth, HEALTH_EVERY_MS);
