// tollgate dashboard: reads /analytics/* with the credential the operator typed (kept in
// sessionStorage for this tab only) and draws everything itself, in SVG. Data reaches the
// page through textContent and SVG attributes only, never as markup.
"use strict";

const STORE = "tollgate.credential";
const WINDOW_STORE = "tollgate.window";
const SUBJECT_STORE = "tollgate.subject";
const USAGE_STORE = "tollgate.usage";
const REFRESH_MS = 5000;
const SVG = "http://www.w3.org/2000/svg";
const DASH = "–";

const $ = (id) => document.getElementById(id);
let timer = null;
let generation = 0;
// The picker's options as last drawn, and a label per "key:<id>" / "user:<id>".
let subjectsShown = "";
let subjectInfo = new Map();
// The object URL of the last CSV download, revoked when the next one is made.
let csvUrl = null;

function credential() {
  return sessionStorage.getItem(STORE);
}

// An API key looks like gw_<id>_<secret>; anything else is taken as the admin secret.
function authHeaders(cred) {
  return /^gw_[A-Za-z0-9]+_[A-Za-z0-9]+$/.test(cred)
    ? { "x-api-key": cred }
    : { "x-admin-secret": cred };
}

class HttpError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// The credential travels in a header only, never in the URL, where logs and history keep it.
async function request(path, params) {
  const q = new URLSearchParams(params).toString();
  const res = await fetch(path + (q ? "?" + q : ""), {
    headers: authHeaders(credential()),
    cache: "no-store",
    credentials: "omit",
  });
  if (!res.ok) {
    let code = "http_" + res.status;
    let message = res.statusText;
    try {
      const body = await res.json();
      code = body.error.code;
      message = body.error.message;
    } catch (_) {
      // Not our JSON error: keep the status.
    }
    throw new HttpError(res.status, code, message);
  }
  return res;
}

async function get(path, params) {
  return (await request(path, params)).json();
}

function isAdmin() {
  return "x-admin-secret" in authHeaders(credential());
}

// ---- formatting -------------------------------------------------------------------------

function isNum(v) {
  return typeof v === "number" && Number.isFinite(v);
}

function count(v) {
  return isNum(v) ? Math.round(v).toLocaleString("en-US") : DASH;
}

function ms(v) {
  if (!isNum(v)) return DASH;
  return v >= 100 ? Math.round(v).toLocaleString("en-US") : String(Math.round(v * 100) / 100);
}

function bytes(v) {
  if (!isNum(v)) return DASH;
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return (i === 0 ? String(v) : v.toFixed(1)) + " " + units[i];
}

function setText(id, text) {
  const el = $(id);
  if (el) el.textContent = text;
}

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function svgEl(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

// ---- charts -----------------------------------------------------------------------------

const PAD = { left: 52, right: 12, top: 10, bottom: 24 };

// The top of the y axis: four equal steps of 1, 2, 2.5 or 5 times a power of ten (whole
// numbers only for counts), so grid labels read cleanly.
function niceMax(v, whole) {
  if (!(v > 0)) return 4;
  const raw = v / 4;
  const p = Math.pow(10, Math.floor(Math.log10(raw)));
  let step = 10 * p;
  for (const m of [1, 2, 2.5, 5]) {
    if (raw <= m * p) {
      step = m * p;
      break;
    }
  }
  if (whole) step = Math.max(1, Math.ceil(step));
  return step * 4;
}

// Draws in CSS pixels: the viewBox follows the element's width, so text keeps its size.
function fit(svg, height) {
  const w = Math.max(320, Math.round(svg.getBoundingClientRect().width || 800));
  svg.setAttribute("viewBox", "0 0 " + w + " " + height);
}

function timeLabel(iso, bucket) {
  const d = new Date(iso);
  if (isNaN(d)) return "";
  const hh = String(d.getHours()).padStart(2, "0");
  const mm = String(d.getMinutes()).padStart(2, "0");
  if (bucket === "day") return (d.getMonth() + 1) + "/" + d.getDate();
  return hh + ":" + mm;
}

// Axes, grid lines and x labels shared by both time charts; returns the plotting frame.
function frame(svg, points, max, unit, bucket) {
  svg.replaceChildren();
  const vb = svg.viewBox.baseVal;
  const w = vb.width - PAD.left - PAD.right;
  const h = vb.height - PAD.top - PAD.bottom;
  const y = (v) => PAD.top + h - (v / max) * h;
  for (let i = 0; i <= 4; i++) {
    const v = (max * i) / 4;
    svg.append(svgEl("line", { class: "grid-line", x1: PAD.left, x2: PAD.left + w, y1: y(v), y2: y(v) }));
    const label = String(Math.round(v * 100) / 100) + (i === 4 && unit ? " " + unit : "");
    svg.append(svgEl("text", { x: PAD.left - 6, y: y(v) + 4, "text-anchor": "end" }, label));
  }
  const n = points.length;
  const step = n > 0 ? w / n : w;
  const every = Math.max(1, Math.ceil(n / 8));
  points.forEach((p, i) => {
    if (i % every !== 0) return;
    const x = PAD.left + step * i + step / 2;
    svg.append(svgEl("text", { x, y: PAD.top + h + 16, "text-anchor": "middle" }, timeLabel(p.start || p.hour, bucket)));
  });
  return { w, h, y, step };
}

function emptyChart(svg, message) {
  fit(svg, svg === $("chart-status") ? 52 : 220);
  svg.replaceChildren();
  const vb = svg.viewBox.baseVal;
  svg.append(svgEl("text", { class: "empty", x: vb.width / 2, y: vb.height / 2, "text-anchor": "middle" }, message));
}

function requestsChart(points, bucket) {
  const svg = $("chart-requests");
  if (!points.length) return emptyChart(svg, "no data in this window");
  fit(svg, 220);
  const max = niceMax(Math.max(...points.map((p) => p.count || 0)), true);
  const f = frame(svg, points, max, "", bucket);
  const bar = Math.max(1, f.step * 0.72);
  points.forEach((p, i) => {
    const x = PAD.left + f.step * i + (f.step - bar) / 2;
    const c = p.count || 0;
    const e = p.errorCount || 0;
    const title = timeLabel(p.start || p.hour, bucket) + ": " + c + " requests, " + e + " errors";
    const g = svgEl("g");
    g.append(svgEl("title", {}, title));
    g.append(svgEl("rect", { x, y: f.y(c), width: bar, height: f.y(0) - f.y(c), fill: "#2f6fdf", rx: 1.5 }));
    if (e > 0) {
      g.append(svgEl("rect", { x, y: f.y(e), width: bar, height: f.y(0) - f.y(e), fill: "#d9485f", rx: 1.5 }));
    }
    svg.append(g);
  });
}

function latencyChart(points, bucket) {
  const svg = $("chart-latency");
  const has = points.some((p) => isNum(p.p50Ms) || isNum(p.p95Ms) || isNum(p.p99Ms));
  if (!points.length || !has) {
    return emptyChart(svg, points.length ? "this server reports no latency percentiles per bucket" : "no data in this window");
  }
  fit(svg, 220);
  const max = niceMax(Math.max(...points.map((p) => Math.max(p.p50Ms || 0, p.p95Ms || 0, p.p99Ms || 0))), false);
  const f = frame(svg, points, max, "ms", bucket);
  const series = [["p99Ms", "#d9485f"], ["p95Ms", "#9152d9"], ["p50Ms", "#2f6fdf"]];
  // A bucket without requests has no latency: the line breaks there instead of dropping
  // to zero.
  for (const [field, color] of series) {
    let d = "";
    let pen = "M";
    const dots = [];
    points.forEach((p, i) => {
      if (!(p.count > 0) || !isNum(p[field])) {
        pen = "M";
        return;
      }
      const x = PAD.left + f.step * i + f.step / 2;
      const y = f.y(p[field]);
      d += pen + x.toFixed(1) + " " + y.toFixed(1) + " ";
      pen = "L";
      dots.push([x, y]);
    });
    if (d) svg.append(svgEl("path", { d, fill: "none", stroke: color, "stroke-width": 2, "stroke-linejoin": "round" }));
    if (dots.length <= 90) {
      dots.forEach(([x, y]) => svg.append(svgEl("circle", { cx: x, cy: y, r: 3, fill: color })));
    }
  }
}

// 2xx/3xx, 4xx (without 429), 429, 5xx from the overview; unknown parts leave a note.
function statusChart(o) {
  const svg = $("chart-status");
  const legend = $("status-legend");
  legend.replaceChildren();
  const known = isNum(o.clientErrors) && isNum(o.serverErrors);
  const rl = isNum(o.rateLimited) ? o.rateLimited : 0;
  const parts = known
    ? [
        ["2xx / 3xx", o.totalRequests - o.errorCount, "#2e9d62"],
        ["4xx", o.clientErrors - rl, "#e69a28"],
        ["429", rl, "#b5651d"],
        ["5xx", o.serverErrors, "#d9485f"],
      ]
    : [
        ["below 400", o.totalRequests - o.errorCount, "#2e9d62"],
        ["400 and up", o.errorCount, "#d9485f"],
      ];
  svg.replaceChildren();
  const total = parts.reduce((s, p) => s + Math.max(0, p[1]), 0);
  if (!total) {
    emptyChart(svg, "no requests in this window");
  } else {
    fit(svg, 52);
    const width = svg.viewBox.baseVal.width;
    let x = 0;
    for (const [name, n, color] of parts) {
      if (n <= 0) continue;
      const w = (n / total) * width;
      const g = svgEl("g");
      g.append(svgEl("title", {}, name + ": " + n));
      g.append(svgEl("rect", { x, y: 8, width: w, height: 36, fill: color }));
      svg.append(g);
      x += w;
    }
  }
  for (const [name, n, color] of parts) {
    const sw = el("i", { class: "sw" });
    sw.style.background = color;
    const label = el("span");
    label.append(sw, document.createTextNode(name));
    const pct = total ? " (" + ((Math.max(0, n) * 100) / total).toFixed(1) + " %)" : "";
    const li = el("li");
    li.append(label, el("span", {}, count(n) + pct));
    legend.append(li);
  }
  if (!known) legend.append(el("li", {}, "4xx / 5xx split: " + DASH));
}

// ---- tables -----------------------------------------------------------------------------

function fillTable(id, rows, columns, emptyText) {
  const body = $(id);
  body.replaceChildren();
  if (!rows.length) {
    const tr = el("tr");
    tr.append(el("td", { class: "none", colspan: columns.length }, emptyText));
    body.append(tr);
    return;
  }
  for (const row of rows) {
    const tr = el("tr");
    for (const [fn, cls] of columns) {
      const v = fn(row);
      const td = el("td", cls ? { class: cls } : {});
      if (v instanceof Node) td.append(v);
      else td.textContent = v;
      if (typeof v === "string" && v.length > 30) td.title = v;
      tr.append(td);
    }
    body.append(tr);
  }
}

// A top route's prefix and, for the admin, its targets: host:port (×weight) marked by
// state (healthy, unhealthy, circuit open), as this replica forwards to them.
function routeCell(r) {
  if (!Array.isArray(r.targets) || !r.targets.length) return r.path ?? DASH;
  const cell = el("div", {}, r.path ?? DASH);
  const list = el("div", { class: "targets" });
  for (const t of r.targets) {
    const host = t.url.replace(/^[a-z]+:\/\//, "").split("/")[0];
    const label = host + (t.weight > 1 ? " ×" + t.weight : "");
    const state = String(t.state);
    list.append(el("span", { class: "target " + state.replace(" ", "-"), title: t.url + " · " + state }, label));
  }
  cell.append(list);
  return cell;
}

function unavailable(id, columns, why) {
  fillTable(id, [], new Array(columns).fill([() => ""]), why);
}

function statusPill(s) {
  return el("span", { class: "pill s" + Math.floor(s / 100) }, String(s));
}

function clock(iso) {
  const d = new Date(iso);
  return isNaN(d) ? DASH : d.toLocaleTimeString("en-GB");
}

// ---- plan, quota and usage ----------------------------------------------------------------

// The selected key or user ({kind, id}), or null. Only the admin picks one; a key holder
// sees its own key through /me.
function selected() {
  const v = isAdmin() ? sessionStorage.getItem(SUBJECT_STORE) : null;
  const m = /^(key|user):([0-9]+)$/.exec(v || "");
  return m ? { kind: m[1], id: Number(m[2]) } : null;
}

function setSelected(value) {
  if (value) sessionStorage.setItem(SUBJECT_STORE, value);
  else sessionStorage.removeItem(SUBJECT_STORE);
}

// The picker lists the first page of keys and of users (the admin API's page cap, 100).
async function loadSubjects() {
  const [keys, users, plans] = await Promise.all([
    get("/admin/api-keys", { limit: 100 }),
    get("/admin/users", { limit: 100 }),
    get("/admin/plans"),
  ]);
  return { keys, users, plans };
}

function showSubjects(lists) {
  const plan = new Map(lists.plans.map((p) => [p.id, p.name]));
  const info = new Map();
  for (const k of lists.keys) {
    const p = plan.get(k.effective && k.effective.planId);
    const label = "#" + k.id + " " + (k.name || k.keyPrefix) + (p ? " · " + p : "") + (k.isActive ? "" : " · inactive");
    info.set("key:" + k.id, { label, name: k.name || k.keyPrefix });
  }
  for (const u of lists.users) {
    const p = plan.get(u.planId);
    info.set("user:" + u.id, { label: "#" + u.id + " " + u.email + (p ? " · " + p : ""), name: u.email, plan: p });
  }
  subjectInfo = info;
  const sel = $("subject");
  const shown = JSON.stringify([...info]);
  // Rebuilding the options under an open picker would close it; the next refresh catches up.
  if (shown === subjectsShown || document.activeElement === sel) return;
  subjectsShown = shown;
  const groups = [["Keys", "key:"], ["Users", "user:"]].map(([name, prefix]) => {
    const g = el("optgroup", { label: name });
    for (const [value, i] of info) {
      if (value.startsWith(prefix)) g.append(el("option", { value }, i.label));
    }
    return g;
  });
  sel.replaceChildren(el("option", { value: "" }, "choose a key or user"), ...groups);
  const want = sessionStorage.getItem(SUBJECT_STORE) || "";
  sel.value = info.has(want) ? want : "";
}

function limitsCall() {
  if (!isAdmin()) return get("/me");
  const s = selected();
  if (!s) return Promise.resolve(null);
  return get(s.kind === "key" ? "/admin/api-keys/" + s.id + "/limits" : "/admin/users/" + s.id + "/limits");
}

// 1 s, 1 min, 1 h, 1 day, 30 days; a quota's month shows as "month".
function span(secs, quota) {
  if (!isNum(secs)) return DASH;
  if (quota && secs >= 28 * 86400) return "month";
  for (const [unit, n] of [["day", 86400], ["h", 3600], ["min", 60]]) {
    if (secs >= n && secs % n === 0) {
      const k = secs / n;
      return k + " " + unit + (unit === "day" && k !== 1 ? "s" : "");
    }
  }
  return secs + " s";
}

// The time alone within a day, else the date too.
function resetTime(iso) {
  const d = new Date(iso);
  if (isNaN(d)) return DASH;
  if (d - Date.now() < 86400000) return d.toLocaleTimeString("en-GB");
  return d.toLocaleString("en-GB", { day: "numeric", month: "short", hour: "2-digit", minute: "2-digit" });
}

function limitName(r) {
  const cell = el("span", {}, r.name);
  // `user.` names are the user's own limits, counted across all of its keys.
  if (r.name.startsWith("user.")) cell.append(el("span", { class: "tag", title: "counted across all the user's keys" }, "owner-wide"));
  return cell;
}

function useMeter(r) {
  const max = Math.max(1, r.limit);
  return el("meter", { min: 0, max, value: Math.min(r.used, max), low: 0.75 * max, high: 0.9 * max, optimum: 0 });
}

function usedOfLimit(r) {
  const pct = r.limit > 0 ? (r.used * 100) / r.limit : 100;
  return count(r.used) + " / " + count(r.limit) + " (" + (Math.round(pct * 10) / 10) + " %)";
}

function showLimits(v) {
  const plan = $("plan-name");
  if (!v) {
    setText("plan-subject", "No key or user chosen.");
    plan.textContent = "";
    unavailable("plan-limits", 5, "choose a key or user to see where its limits stand");
    return;
  }
  if (v.keyId != null) {
    const i = subjectInfo.get("key:" + v.keyId);
    setText("plan-subject", (isAdmin() ? "Key #" : "Your key #") + v.keyId + (i ? " " + i.name : "") + " of user #" + v.userId + " ·");
    plan.textContent = v.plan ? "plan " + v.plan.name : "no plan";
  } else {
    const i = subjectInfo.get("user:" + v.userId);
    setText("plan-subject", "User #" + v.userId + (i ? " " + i.name : "") + ": its owner-wide limits ·");
    plan.textContent = i && i.plan ? "its keys' plan " + i.plan : "no plan";
  }
  const rows = [
    ...(v.limits || []).map((l) => ({ ...l, per: span(l.windowSecs, false) })),
    ...(v.quotas || []).map((q) => ({ ...q, per: span(q.periodSecs, true) })),
  ];
  fillTable("plan-limits", rows, [
    [limitName],
    [(r) => r.per],
    [useMeter],
    [usedOfLimit, "n"],
    [(r) => resetTime(r.resetsAt), "n"],
  ], "no limit or quota applies");
}

// `from` as the month `months - 1` before this one (UTC, as the server counts).
function monthsBack(months) {
  const now = new Date();
  const d = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() - (months - 1), 1));
  return d.getUTCFullYear() + "-" + String(d.getUTCMonth() + 1).padStart(2, "0");
}

function usageParams() {
  const p = { groupBy: $("usage-group").value, bucket: "month", from: monthsBack(Number($("usage-months").value)) };
  const s = selected();
  if (s) p[s.kind === "key" ? "keyId" : "userId"] = s.id;
  return p;
}

const USAGE_ROWS = 200;
const GROUPS = { key: ["Key", "keyId"], user: ["User", "userId"], plan: ["Plan", "planId"] };

function showUsage(u, params) {
  const [title, idField] = GROUPS[u.groupBy] || GROUPS.user;
  setText("usage-who", title);
  const chosen = params.keyId ? "key:" + params.keyId : params.userId ? "user:" + params.userId : "";
  const i = subjectInfo.get(chosen);
  const scope = chosen ? chosen.replace(":", " #") + (i ? " " + i.name : "") : isAdmin() ? "every user" : "your user";
  setText("usage-scope", u.from + " to " + u.to + " · " + scope);
  // Newest month first; within a month, the server's order.
  const rows = [...u.rows].sort((a, b) => (a.bucket < b.bucket ? 1 : a.bucket > b.bucket ? -1 : 0));
  fillTable("usage", rows.slice(0, USAGE_ROWS), [
    [(r) => r.bucket],
    [(r) => (r[idField] == null ? "(no plan)" : "#" + r[idField] + (r.name ? " " + r.name : ""))],
    [(r) => count(r.admitted), "n"],
    [(r) => count(r.refused), "n"],
  ], "no usage in these months");
  setText("usage-admitted", count(rows.reduce((s, r) => s + r.admitted, 0)));
  setText("usage-refused", count(rows.reduce((s, r) => s + r.refused, 0)));
  setText("usage-note", rows.length > USAGE_ROWS ? "the newest " + USAGE_ROWS + " of " + rows.length + " rows; the CSV has all" : "");
}

// The CSV is fetched with the credential header when asked for, then handed to the browser
// as a blob: URL on the link itself. Following a link is a download, not a fetch, so the
// page's CSP (connect-src 'self') needs no blob: source for it.
async function downloadCsv(ev) {
  const a = ev.currentTarget;
  if (a.dataset.ready) return; // the click below: let the browser save the blob
  ev.preventDefault();
  try {
    const res = await request("/analytics/usage", { ...usageParams(), format: "csv" });
    const m = /filename="([^"]+)"/.exec(res.headers.get("content-disposition") || "");
    const blob = await res.blob();
    forgetCsv();
    csvUrl = URL.createObjectURL(blob);
    a.href = csvUrl;
    a.download = m ? m[1] : "usage.csv";
    a.dataset.ready = "1";
    a.click();
    // Each later click fetches the figures again.
    delete a.dataset.ready;
  } catch (e) {
    setText("usage-note", "CSV download failed: " + e.message);
  }
}

function forgetCsv() {
  if (csvUrl) URL.revokeObjectURL(csvUrl);
  csvUrl = null;
  const a = $("usage-csv");
  a.href = "#";
  a.download = "usage.csv";
}

// ---- refresh ----------------------------------------------------------------------------

function bucketFor(w) {
  const secs = { m: 60, h: 3600, d: 86400 }[w.slice(-1)] * parseInt(w, 10);
  if (secs <= 6 * 3600) return "minute";
  if (secs <= 7 * 86400) return "hour";
  return "day";
}

function showOverview(o) {
  setText("totalRequests", count(o.totalRequests));
  setText("errorCount", count(o.errorCount));
  setText("errorRate", typeof o.errorRate === "string" ? o.errorRate : DASH);
  setText("avgLatencyMs", ms(o.avgLatencyMs));
  setText("p50Ms", ms(o.p50Ms));
  setText("p95Ms", ms(o.p95Ms));
  setText("p99Ms", ms(o.p99Ms));
  setText("clientErrors", count(o.clientErrors));
  setText("serverErrors", count(o.serverErrors));
  setText("rateLimited", count(o.rateLimited));
  setText("bytesIn", bytes(o.bytesIn));
  setText("bytesOut", bytes(o.bytesOut));
  statusChart(o);
}

async function refresh() {
  const mine = ++generation;
  const w = $("window").value;
  const bucket = bucketFor(w);
  const usageQuery = usageParams();
  const calls = await Promise.allSettled([
    get("/analytics/overview", { window: w }),
    get("/analytics/timeseries", { window: w, bucket }),
    get("/analytics/top-routes", { window: w, limit: 8 }),
    get("/analytics/top-keys", { window: w, limit: 8 }),
    get("/analytics/recent", { window: w, limit: 15 }),
    isAdmin() ? loadSubjects() : Promise.resolve(null),
    limitsCall(),
    get("/analytics/usage", usageQuery),
  ]);
  if (mine !== generation) return; // a newer refresh (window change) has started
  const denied = calls.find((c) => c.status === "rejected" && c.reason.status === 401);
  if (denied) {
    // Analytics takes an API key whenever the admin secret is not right, so the server's
    // message for a wrong secret talks about keys; say what was tried instead.
    const tried = "x-admin-secret" in authHeaders(credential()) ? "not the admin secret" : denied.reason.message;
    signOut("Refused: " + tried + ".");
    return;
  }
  const problems = [];
  const [overview, series, routes, keys, recent, subjects, limits, usage] = calls;
  if (overview.status === "fulfilled") showOverview(overview.value);
  else problems.push("overview: " + overview.reason.message);

  if (series.status === "fulfilled") {
    const points = Array.isArray(series.value) ? series.value : [];
    requestsChart(points, bucket);
    latencyChart(points, bucket);
  } else {
    problems.push("timeseries: " + series.reason.message);
  }

  if (routes.status === "fulfilled") {
    fillTable("top-routes", routes.value, [
      [routeCell],
      [(r) => count(r.count), "n"],
      [(r) => count(r.errorCount), "n"],
      [(r) => ms(r.avgLatencyMs), "n"],
      [(r) => ms(r.p95Ms), "n"],
    ], "no requests in this window");
  } else {
    unavailable("top-routes", 5, "unavailable: " + routes.reason.message);
  }

  if (keys.status === "fulfilled") {
    fillTable("top-keys", keys.value, [
      [(k) => k.keyName ?? (k.keyId == null ? "(no key)" : "#" + k.keyId)],
      [(k) => (k.userId == null ? DASH : String(k.userId)), "n"],
      [(k) => count(k.count), "n"],
      [(k) => count(k.errorCount), "n"],
      [(k) => ms(k.avgLatencyMs), "n"],
    ], "no requests in this window");
  } else {
    const why = keys.reason.status === 404 ? "not available on this server" : "unavailable: " + keys.reason.message;
    unavailable("top-keys", 5, why);
  }

  if (recent.status === "fulfilled") {
    fillTable("recent", recent.value, [
      [(r) => clock(r.createdAt)],
      [(r) => r.method],
      [(r) => {
        const c = el("code", {}, r.path + (r.query ? "?" + r.query : ""));
        return c;
      }],
      [(r) => statusPill(r.status), "n"],
      [(r) => ms(r.latencyMs), "n"],
      [(r) => (r.apiKeyId == null ? DASH : "#" + r.apiKeyId), "n"],
      [(r) => r.clientIp ?? DASH],
    ], "no requests in this window");
  } else {
    problems.push("recent: " + recent.reason.message);
  }

  if (subjects.status === "fulfilled") {
    if (subjects.value) showSubjects(subjects.value);
  } else {
    problems.push("keys and users: " + subjects.reason.message);
  }

  if (limits.status === "fulfilled") {
    showLimits(limits.value);
  } else if (limits.reason.status === 404 && selected()) {
    // Deleted since it was chosen.
    setSelected("");
    $("subject").value = "";
    showLimits(null);
  } else {
    setText("plan-subject", DASH);
    $("plan-name").textContent = "";
    unavailable("plan-limits", 5, "unavailable: " + limits.reason.message);
  }

  if (usage.status === "fulfilled") {
    showUsage(usage.value, usageQuery);
  } else {
    unavailable("usage", 4, "unavailable: " + usage.reason.message);
  }

  const banner = $("banner");
  banner.hidden = problems.length === 0;
  banner.textContent = problems.length ? "Some figures could not be loaded — " + problems.join("; ") : "";
  setText("updated", "updated " + new Date().toLocaleTimeString("en-GB"));
  document.body.dataset.loaded = String(mine);
}

function schedule() {
  clearTimeout(timer);
  timer = setTimeout(async () => {
    if (!document.hidden && credential()) {
      try {
        await refresh();
      } catch (e) {
        setText("updated", "refresh failed: " + e.message);
      }
    }
    if (credential()) schedule();
  }, REFRESH_MS);
}

async function start() {
  $("login").hidden = true;
  $("app").hidden = false;
  $("controls").hidden = false;
  const cred = credential();
  setText("who", "x-admin-secret" in authHeaders(cred) ? "admin" : "API key " + cred.split("_")[1]);
  $("subject").hidden = !isAdmin();
  try {
    await refresh();
  } catch (e) {
    setText("updated", "refresh failed: " + e.message);
  }
  schedule();
}

// Nothing seen under one credential stays on the page for the next.
function clearAll() {
  delete document.body.dataset.loaded;
  for (const id of ["totalRequests", "errorCount", "errorRate", "avgLatencyMs", "p50Ms", "p95Ms",
    "p99Ms", "clientErrors", "serverErrors", "rateLimited", "bytesIn", "bytesOut"]) {
    setText(id, DASH);
  }
  for (const id of ["top-routes", "top-keys", "recent", "status-legend", "chart-requests",
    "chart-latency", "chart-status", "plan-limits", "usage"]) {
    $(id).replaceChildren();
  }
  for (const id of ["plan-subject", "usage-admitted", "usage-refused"]) setText(id, DASH);
  for (const id of ["plan-name", "usage-scope", "usage-note", "updated"]) setText(id, "");
  $("subject").replaceChildren(el("option", { value: "" }, "choose a key or user"));
  subjectsShown = "";
  subjectInfo = new Map();
  forgetCsv();
}

function signOut(message) {
  clearTimeout(timer);
  generation++;
  clearAll();
  sessionStorage.removeItem(STORE);
  sessionStorage.removeItem(SUBJECT_STORE);
  $("app").hidden = true;
  $("controls").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  $("credential").value = "";
  $("credential").focus();
}

document.addEventListener("DOMContentLoaded", () => {
  const saved = sessionStorage.getItem(WINDOW_STORE);
  if (saved && [...$("window").options].some((o) => o.value === saved)) $("window").value = saved;
  $("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const value = $("credential").value.trim();
    if (!value) return;
    sessionStorage.setItem(STORE, value);
    $("login-error").textContent = "";
    start();
  });
  $("sign-out").addEventListener("click", () => signOut(""));
  const reload = () => {
    refresh().catch((e) => setText("updated", "refresh failed: " + e.message));
    schedule();
  };
  $("window").addEventListener("change", () => {
    sessionStorage.setItem(WINDOW_STORE, $("window").value);
    reload();
  });
  const usage = (sessionStorage.getItem(USAGE_STORE) || "").split(":");
  if ([...$("usage-group").options].some((o) => o.value === usage[0])) $("usage-group").value = usage[0];
  if ([...$("usage-months").options].some((o) => o.value === usage[1])) $("usage-months").value = usage[1];
  for (const id of ["usage-group", "usage-months"]) {
    $(id).addEventListener("change", () => {
      sessionStorage.setItem(USAGE_STORE, $("usage-group").value + ":" + $("usage-months").value);
      reload();
    });
  }
  $("subject").addEventListener("change", () => {
    setSelected($("subject").value);
    reload();
  });
  $("usage-csv").addEventListener("click", downloadCsv);
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && credential()) schedule();
  });
  if (credential()) start();
  else $("credential").focus();
});
