// Shoal dashboard: the page's model and its drawing. No framework, no build step.
//
// The server streams a `snapshot` (every record) then `delta` batches
// ({kind: {set: [records], del: [keys]}}). Batches only update the model and mark what
// changed; drawing happens once per animation frame, touching only the marked parts, so
// a burst of thousands of task changes costs one layout. Buttons post actions that the
// server runs as swctl commands; the command and its output (or its error, word for word
// what swctl prints) are shown above the page.
"use strict";

const KINDS = ["nodes", "services", "tasks", "networks", "events"];
const STATES = ["new", "pending", "assigned", "accepted", "preparing", "starting",
                "running", "complete", "failed", "shutdown", "rejected", "orphaned", "unknown"];
const EVENTS_SHOWN = 50;
// Boxes drawn per node column; the rest are counted ("+ 58 more"). With columns drawn
// only while in view, the page holds a few thousand boxes whatever the cluster's size.
const BOXES_SHOWN = 40;
const CUSTOM_ROWS_SHOWN = 500;

const model = Object.fromEntries(KINDS.map((k) => [k, new Map()]));
// A record the server could not build (a malformed object in etcd) comes as {k, name,
// bad}: it is drawn from these blanks, with the reason shown, instead of breaking a frame.
const BLANK = {
  nodes: { role: "", availability: "", state: "unknown", address: "", dataplane: "",
           labels: {}, message: "" },
  services: { mode: "", replicas: 0, image: "", ports: "", networks: [], vips: {},
              rollout: "", rolloutMessage: "", paused: false, problem: "" },
  tasks: { service: "", slot: 0, label: "", node: "", state: "unknown", desired: "",
           active: false, running: false, ended: true, error: "", since: 0, uid: "" },
  networks: { driver: "", subnet: "", vni: "", problem: "" },
  events: { type: "", reason: "", message: "", object: "", count: 1, last: "" },
};
// Per service (ns/name): [tasks wanted running, of those running] — swctl's REPLICAS.
const counts = new Map();
// Per node name ("" = unassigned): keys of the tasks it holds (wanted running, not ended).
const placed = new Map();
// Per service (ns/name): keys of its tasks, for its task list.
const byService = new Map();
// Node columns in (or near) the viewport: only these hold boxes.
const visible = new Set();
// Kinds from CRDs ("x:<plural>"): their headers (meta) and records, as `swctl get -A`.
const custom = { meta: {}, records: new Map() };

const dirty = { cols: new Set(), nodes: new Set(), services: new Set(),
                nodeList: false, serviceList: false, networks: false, events: false,
                detail: false, custom: false };
let frameAsked = false;
let selectedService = null;  // ns/name
let selectedTask = null;
let logStream = null;

const params = new URLSearchParams(location.search);
window.__shoalPageId = Math.random().toString(36).slice(2);  // tests: no reload happened

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k.startsWith("data-")) el.setAttribute(k, v);
    else el[k] = v;
  }
  for (const c of children) if (c !== null && c !== undefined) el.append(c);
  return el;
}

function serviceKey(t) { return `${t.ns}/${t.service}`; }
function placement(t) { return t.active && !t.ended ? t.node : null; }

// --- model ---

function addShare(t, sign) {
  if (!t.active || !t.service) return;
  const key = serviceKey(t);
  const c = counts.get(key) || [0, 0];
  c[0] += sign; c[1] += sign * (t.running ? 1 : 0);
  counts.set(key, c);
  dirty.services.add(key);
}

function place(t, sign) {
  const node = placement(t);
  if (node === null) return;
  let set = placed.get(node);
  if (!set) { set = new Set(); placed.set(node, set); }
  if (sign > 0) set.add(t.k); else set.delete(t.k);
  if (node === "") dirty.nodeList = true;
  dirty.cols.add(node);
}

function index(t, sign) {
  const key = serviceKey(t);
  let set = byService.get(key);
  if (!set) { set = new Set(); byService.set(key, set); }
  if (sign > 0) set.add(t.k); else set.delete(t.k);
  if (key === selectedService) dirty.detail = true;
}

function upsert(kind, rec) {
  if (rec.bad) {
    const slash = rec.k.lastIndexOf("/");
    rec = { ...BLANK[kind], ns: slash < 0 ? "" : rec.k.slice(0, slash), ...rec };
  }
  const old = model[kind].get(rec.k);
  if (kind === "tasks") {
    if (old) { addShare(old, -1); place(old, -1); index(old, -1); }
    addShare(rec, 1); place(rec, 1); index(rec, 1);
  }
  model[kind].set(rec.k, rec);
  mark(kind, rec.k, !old);
}

function remove(kind, key) {
  const old = model[kind].get(key);
  if (!old) return;
  model[kind].delete(key);
  if (kind === "tasks") {
    addShare(old, -1); place(old, -1); index(old, -1);
  }
  mark(kind, key, true);
}

function mark(kind, key, membership) {
  if (kind === "nodes") { dirty.nodes.add(key); if (membership) dirty.nodeList = true; }
  else if (kind === "services") {
    dirty.services.add(key);
    if (membership) dirty.serviceList = true;
    if (key === selectedService) dirty.detail = true;
  }
  else if (kind === "networks") dirty.networks = true;
  else if (kind === "events") dirty.events = true;
}

function loadSnapshot(snap) {
  for (const kind of KINDS) model[kind].clear();
  counts.clear(); placed.clear(); byService.clear(); visible.clear();
  document.getElementById("nodes").replaceChildren();
  for (const col of nodeEls.values()) columnObserver.unobserve(col);
  nodeEls.clear(); serviceRows.clear();
  document.querySelector("#services tbody").replaceChildren();
  for (const kind of KINDS) for (const rec of snap[kind] || []) upsert(kind, rec);
  custom.meta = snap.custom || {};
  custom.records = new Map();
  for (const kind of Object.keys(custom.meta)) {
    custom.records.set(kind, new Map((snap[kind] || []).map((r) => [r.k, r])));
  }
  dirty.nodeList = dirty.serviceList = dirty.networks = dirty.events = dirty.detail = true;
  dirty.custom = true;
  askFrame();
}

function setCustomKinds(meta) {
  custom.meta = meta;
  for (const kind of [...custom.records.keys()]) if (!(kind in meta)) custom.records.delete(kind);
  for (const kind of Object.keys(meta)) if (!custom.records.has(kind)) custom.records.set(kind, new Map());
  dirty.custom = true;
  askFrame();
}

function applyDelta(batch) {
  for (const kind of KINDS) {
    const part = batch[kind];
    if (!part) continue;
    for (const key of part.del) remove(kind, key);
    for (const rec of part.set) upsert(kind, rec);
  }
  for (const [kind, part] of Object.entries(batch)) {
    const records = custom.records.get(kind);
    if (!kind.startsWith("x:") || !records) continue;
    for (const key of part.del) records.delete(key);
    for (const rec of part.set) records.set(rec.k, rec);
    dirty.custom = true;
  }
  askFrame();
}

function askFrame() {
  if (!frameAsked) { frameAsked = true; requestAnimationFrame(draw); }
}

// --- drawing ---

const nodeEls = new Map();   // node name -> column element
const serviceRows = new Map();

// Columns entering the viewport (or 400 px from it) get their boxes; leaving, lose them.
const columnObserver = new IntersectionObserver((entries) => {
  for (const e of entries) {
    const name = e.target.dataset.node;
    if (e.isIntersecting) visible.add(name); else visible.delete(name);
    dirty.cols.add(name);
  }
  askFrame();
}, { root: null, rootMargin: "400px" });

function draw() {
  frameAsked = false;
  if (dirty.nodeList) drawNodeList();
  for (const name of dirty.nodes) drawNodeHead(name);
  for (const name of dirty.cols) drawColumn(name);
  if (dirty.serviceList) drawServiceList();
  for (const key of dirty.services) drawServiceRow(key);
  if (dirty.detail) drawDetail();
  if (dirty.networks) drawNetworks();
  if (dirty.events) drawEvents();
  if (dirty.custom) drawCustom();
  dirty.cols.clear(); dirty.nodes.clear(); dirty.services.clear();
  dirty.nodeList = dirty.serviceList = dirty.networks = dirty.events = dirty.detail = false;
  dirty.custom = false;
  drawSummary();
}

function nodeColumn(name) {
  let col = nodeEls.get(name);
  if (!col) {
    col = h("div", { class: "node", "data-node": name },
            h("div", { class: "node-head" }), h("div", { class: "tasks" }),
            h("div", { class: "more" }));
    col._boxes = new Map();  // task key -> box
    nodeEls.set(name, col);
    drawNodeHead(name, col);
    columnObserver.observe(col);
  }
  return col;
}

function drawNodeList() {
  const names = [...model.nodes.keys()].sort();
  if ((placed.get("") || new Set()).size) names.push("");
  const container = document.getElementById("nodes");
  const wanted = new Set(names);
  for (const [name, col] of nodeEls) {
    if (!wanted.has(name)) { col.remove(); nodeEls.delete(name); }
  }
  names.forEach((name, i) => {
    const col = nodeColumn(name);
    if (container.children[i] !== col) container.insertBefore(col, container.children[i] || null);
    dirty.cols.add(name);  // tasks placed on a node the page did not know yet land now
  });
}

function drawNodeHead(name, col = nodeEls.get(name)) {
  if (!col) return;
  const head = col.querySelector(".node-head");
  const n = model.nodes.get(name);
  if (name === "") {
    col.dataset.state = "unknown";
    head.replaceChildren(h("div", { class: "node-name" }, "unassigned"),
                         h("div", { class: "node-facts" }, "tasks waiting for a node"));
    return;
  }
  if (!n) return;
  col.dataset.state = n.state;
  col.dataset.availability = n.availability;
  const labels = Object.entries(n.labels || {}).map(([k, v]) =>
    h("span", { class: "label" }, v ? `${k}=${v}` : k));
  const btn = (verb, text) => h("button", {
    "data-action": verb, disabled: n.availability === (verb === "activate" ? "active" : verb),
    onclick: () => act({ action: "node", verb, name }) }, text);
  head.replaceChildren(...[
    h("div", { class: "node-name" }, name),
    h("div", {},
      h("span", { class: `badge ${n.state}` }, n.state),
      h("span", { class: `badge ${n.role}` }, n.role),
      h("span", { class: `badge ${n.availability}`, "data-field": "availability" },
        n.availability)),
    h("div", { class: "node-facts" }, n.bad ? `unreadable: ${n.bad}` :
      [n.address, n.dataplane].filter(Boolean).join(" · ") || "no address reported"),
    labels.length ? h("div", { class: "labels" }, ...labels) : null,
    h("div", { class: "node-actions" },
      btn("activate", "Active"), btn("pause", "Pause"), btn("drain", "Drain")),
  ].filter(Boolean));
}

function byLabel(a, b) {
  const x = model.tasks.get(a), y = model.tasks.get(b);
  return (x.service === y.service ? 0 : (x.service < y.service ? -1 : 1))
    || ((typeof x.slot === "number" && typeof y.slot === "number") ? x.slot - y.slot : 0)
    || (a < b ? -1 : a > b ? 1 : 0);
}

function drawColumn(name) {
  const col = nodeEls.get(name);
  if (!col) return;
  const list = col.querySelector(".tasks");
  const boxes = col._boxes;
  const keys = visible.has(name) ? [...(placed.get(name) || [])] : [];
  const shown = keys.length > BOXES_SHOWN ? keys.sort(byLabel).slice(0, BOXES_SHOWN)
                                          : keys.sort(byLabel);
  const wanted = new Set(shown);
  for (const [key, box] of boxes) if (!wanted.has(key)) { box.remove(); boxes.delete(key); }
  shown.forEach((key, i) => {
    const t = model.tasks.get(key);
    let box = boxes.get(key);
    if (!box) {
      box = h("div", { class: "task", "data-task": key,
                       onclick: () => selectService(serviceKey(model.tasks.get(key)), key) });
      boxes.set(key, box);
    }
    if (box._rec !== t) {
      box._rec = t;
      box.dataset.state = t.state;
      box.dataset.service = t.service;
      box.title = `${t.name}\n${t.state}${t.error ? "\n" + t.error : ""}`;
      box.replaceChildren(h("span", { class: "state" }, t.state), t.label);
    }
    box.classList.toggle("selected", key === selectedTask);
    if (list.children[i] !== box) list.insertBefore(box, list.children[i] || null);
  });
  const total = (placed.get(name) || new Set()).size;
  col.querySelector(".more").textContent =
    total > shown.length && visible.has(name) ? `+ ${total - shown.length} more` : "";
  col.dataset.tasks = String(total);
}

function replicasText(s) {
  const [wanted, running] = counts.get(s.k) || [0, 0];
  return `${running}/${s.mode === "global" ? wanted : s.replicas}`;
}

function drawServiceList() {
  const keys = [...model.services.keys()].sort();
  const body = document.querySelector("#services tbody");
  for (const [key, row] of serviceRows) {
    if (!model.services.has(key)) { row.remove(); serviceRows.delete(key); }
  }
  keys.forEach((key, i) => {
    let row = serviceRows.get(key);
    if (!row) { row = serviceRow(key); serviceRows.set(key, row); }
    if (body.children[i] !== row) body.insertBefore(row, body.children[i] || null);
  });
}

function serviceRow(key) {
  const s = model.services.get(key);
  const input = h("input", { type: "number", class: "scale", min: "0", value: s.replicas,
                             onclick: (e) => e.stopPropagation() });
  const scale = h("button", { "data-action": "scale", onclick: (e) => {
    e.stopPropagation();
    const cur = model.services.get(key);
    act({ action: "scale", namespace: cur.ns, name: cur.name, replicas: input.value });
  } }, "Scale");
  const rollout = (verb, text) => h("button", { "data-action": verb, onclick: (e) => {
    e.stopPropagation();
    const cur = model.services.get(key);
    act({ action: "rollout", verb, namespace: cur.ns, name: cur.name });
  } }, text);
  const cells = ["name", "ns", "mode", "replicas", "image", "ports", "networks", "rollout"]
    .map((f) => h("td", { class: f }));
  const row = h("tr", { "data-service": key, onclick: () => selectService(key) }, ...cells,
                h("td", { class: "actions" }, input, scale, " ", rollout("pause", "Pause"),
                  rollout("resume", "Resume"), rollout("undo", "Undo")));
  row._input = input;
  return row;
}

function drawServiceRow(key) {
  const row = serviceRows.get(key);
  const s = model.services.get(key);
  if (!row || !s) return;
  const cell = (f) => row.querySelector(`td.${f}`);
  cell("name").textContent = s.name;
  cell("ns").textContent = s.ns;
  cell("mode").textContent = s.mode;
  const replicas = replicasText(s);
  cell("replicas").textContent = replicas;
  const [running, desired] = replicas.split("/");
  cell("replicas").dataset.converged = String(running === desired);
  cell("image").textContent = s.bad ? `unreadable: ${s.bad}` : s.image;
  cell("image").classList.toggle("error", Boolean(s.bad || s.problem));
  if (s.problem) cell("image").title = s.problem;
  cell("ports").textContent = s.ports;
  // Each network with the service's VIP on it (the ingress network's too, if it has one).
  const nets = [...new Set([...s.networks, ...Object.keys(s.vips || {})])];
  cell("networks").textContent =
    nets.map((n) => (s.vips && s.vips[n] ? `${n} (${s.vips[n]})` : n)).join(", ");
  const rev = s.revision ? `rev ${s.revision}` : "";
  const state = s.paused ? "paused" : s.rollout;
  const progress = s.rollout && s.rollout !== "completed" ? s.rolloutMessage : "";
  cell("rollout").textContent = [state, rev, progress].filter(Boolean).join(" · ") || "—";
  cell("rollout").title = s.rolloutMessage || s.problem || "";
  if (document.activeElement !== row._input && row._input.dataset.replicas !== String(s.replicas)) {
    row._input.value = s.replicas;
    row._input.dataset.replicas = String(s.replicas);
  }
  row.classList.toggle("selected", key === selectedService);
}

function selectService(key, taskKey = null) {
  const before = selectedService;
  selectedService = key;
  const oldTask = selectedTask;
  selectedTask = taskKey;
  for (const k of [oldTask, taskKey]) {
    const t = k && model.tasks.get(k);
    if (t) dirty.cols.add(t.node);
  }
  if (before) dirty.services.add(before);
  dirty.services.add(key);
  dirty.detail = true;
  askFrame();
}

function sinceText(stamp) {
  if (!stamp) return "";
  const s = Math.max(0, Date.now() / 1000 - stamp);
  if (s < 1) return "less than a second ago";
  if (s < 60) return `${Math.floor(s)} seconds ago`;
  if (s < 3600) return `${Math.floor(s / 60)} minutes ago`;
  return `${Math.floor(s / 3600)} hours ago`;
}

function drawDetail() {
  const section = document.getElementById("detail-section");
  const s = selectedService && model.services.get(selectedService);
  if (!s) { section.hidden = true; return; }
  section.hidden = false;
  document.getElementById("detail-title").textContent =
    `Tasks of ${s.name} (${s.ns}) — ${replicasText(s)} running`;
  // Slots with their history, newest first: the rows of `swctl service ps`.
  const slots = new Map();
  for (const k of byService.get(selectedService) || []) {
    const t = model.tasks.get(k);
    const list = slots.get(t.slot) || [];
    list.push(t);
    slots.set(t.slot, list);
  }
  const rows = [];
  const order = [...slots.keys()].sort((a, b) =>
    (typeof a === "number" && typeof b === "number") ? a - b : String(a).localeCompare(String(b)));
  for (const slot of order) {
    const list = slots.get(slot).sort((a, b) => b.since - a.since);
    const current = list.find((t) => t.active) || list[0];
    const ordered = [current, ...list.filter((t) => t !== current)];
    ordered.forEach((t, i) => {
      const del = i === 0 ? h("button", { "data-action": "delete-task", title: "delete: it is replaced",
        onclick: () => act({ action: "delete-task", namespace: t.ns, name: t.name }) }, "Delete") : null;
      const logsBtn = h("button", { "data-action": "logs", onclick: () => openLogs(t) }, "Logs");
      rows.push(h("tr", { class: i ? "history" : "current", "data-task": t.k, "data-uid": t.uid },
        h("td", {}, i ? `\\_ ${t.label}` : t.label),
        h("td", {}, t.node || "—"),
        h("td", {}, t.desired),
        h("td", {}, `${t.state} ${sinceText(t.since)}`),
        h("td", { class: "error" }, t.error),
        h("td", {}, del, " ", logsBtn)));
    });
  }
  document.querySelector("#detail tbody").replaceChildren(...rows);
}

function drawNetworks() {
  const rows = [...model.networks.values()].sort((a, b) => a.k.localeCompare(b.k))
    .map((n) => h("tr", { "data-network": n.k }, h("td", {}, n.name), h("td", {}, n.ns || "—"),
      h("td", {}, n.driver), h("td", {}, n.subnet || n.problem || "pending"), h("td", {}, n.vni)));
  document.querySelector("#networks tbody").replaceChildren(...rows);
}

function drawEvents() {
  const rows = [...model.events.values()].sort((a, b) => b.last.localeCompare(a.last))
    .slice(0, EVENTS_SHOWN)
    .map((e) => h("tr", { class: e.type },
      h("td", {}, e.last.replace("T", " ").replace(/\..*|Z$/, "")), h("td", {}, e.type),
      h("td", {}, e.reason), h("td", {}, e.object),
      h("td", {}, e.count > 1 ? `${e.message} (×${e.count})` : e.message)));
  document.querySelector("#events tbody").replaceChildren(...rows);
}

function drawCustom() {
  const kinds = Object.keys(custom.meta).sort();
  document.getElementById("custom-section").hidden = kinds.length === 0;
  const tables = kinds.map((kind) => {
    const meta = custom.meta[kind];
    const records = [...(custom.records.get(kind) || new Map()).values()]
      .sort((a, b) => a.k.localeCompare(b.k));
    const rows = records.slice(0, CUSTOM_ROWS_SHOWN).map((r) =>
      h("tr", { "data-key": r.k }, ...(r.cells || [r.bad || ""]).map((c) => h("td", {}, c))));
    const more = records.length > CUSTOM_ROWS_SHOWN
      ? h("div", { class: "more" }, `+ ${records.length - CUSTOM_ROWS_SHOWN} more`) : null;
    return h("div", { class: "custom-kind", "data-kind": meta.plural },
      h("h3", {}, `${meta.kind} (${meta.plural}.${meta.group}) — ${records.length}`),
      h("table", {}, h("thead", {}, h("tr", {}, ...meta.headers.map((x) => h("th", {}, x)))),
        h("tbody", {}, ...rows)), more);
  });
  document.getElementById("custom").replaceChildren(...tables);
}

function drawSummary() {
  let running = 0;
  for (const [, c] of counts) running += c[1];
  document.getElementById("summary").textContent =
    `${model.nodes.size} nodes · ${model.services.size} services · ${running} tasks running`;
}

function drawLegend() {
  const shown = ["pending", "assigned", "starting", "running", "failed", "shutdown"];
  document.getElementById("legend").replaceChildren(
    ...shown.map((s) => h("span", { class: "task", "data-state": s }, s)));
}

// --- actions ---

async function act(body) {
  const box = document.getElementById("action-result");
  box.hidden = false;
  box.dataset.ok = "pending";
  box.replaceChildren(h("div", { class: "command" }, "running…"));
  let result;
  try {
    const reply = await fetch("api/actions" + location.search, {
      method: "POST", body: JSON.stringify(body),
      headers: { "Content-Type": "application/json", "X-Shoal-Dashboard": "1" } });
    result = await reply.json();
  } catch (err) {
    result = { ok: false, command: "", output: [], errors: [`error: ${err}`] };
  }
  box.dataset.ok = String(result.ok);
  box.replaceChildren(
    h("div", { class: "command" }, result.command ? `$ ${result.command}` : ""),
    ...(result.output || []).map((l) => h("div", { class: "output" }, l)),
    ...(result.errors || []).map((l) => h("div", { class: "error" }, l)));
}

// --- logs ---

function openLogs(t) {
  if (logStream) logStream.close();
  const panel = document.getElementById("logs-panel");
  const pre = document.getElementById("logs");
  panel.hidden = false;
  document.getElementById("logs-title").textContent = `Logs of ${t.name}`;
  pre.replaceChildren();
  const q = new URLSearchParams(params);
  q.set("namespace", t.ns); q.set("task", t.name);
  logStream = new EventSource("api/logs?" + q.toString());
  logStream.addEventListener("line", (e) => {
    const line = JSON.parse(e.data);
    pre.append(h("span", { class: line.stream }, line.text + "\n"));
    pre.scrollTop = pre.scrollHeight;
  });
  logStream.addEventListener("failed", (e) => {
    pre.append(h("span", { class: "stderr" }, JSON.parse(e.data).error + "\n"));
    logStream.close();
  });
}

// --- the stream ---

function connect() {
  const conn = document.getElementById("conn");
  const source = new EventSource("events" + location.search);
  source.addEventListener("snapshot", (e) => {
    loadSnapshot(JSON.parse(e.data));
    conn.dataset.state = "live"; conn.textContent = "live";
  });
  source.addEventListener("delta", (e) => applyDelta(JSON.parse(e.data)));
  source.addEventListener("custom", (e) => setCustomKinds(JSON.parse(e.data)));
  source.onerror = () => { conn.dataset.state = "reconnecting"; conn.textContent = "reconnecting…"; };
}

drawLegend();
connect();
