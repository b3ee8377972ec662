"use strict";
// The API reference: reads /openapi.json (the document the binary serves) and renders every
// operation with its parameters, body fields and answers, a search over all of it, and a
// "Try it" form per operation. Everything is built with DOM calls and textContent, so no
// text from the document or from an answer is ever parsed as HTML.

const STORE = "tollgate.docs.credential";
const METHODS = ["get", "post", "put", "patch", "delete"];
let doc = null;

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else e.setAttribute(k, v);
  }
  return add(e, ...children);
}

// Appends the children that are there (`append` would write null as the text "null").
function add(parent, ...children) {
  for (const c of children) if (c !== null && c !== undefined) parent.append(c);
  return parent;
}

// Text with `code` spans, as the document writes them.
function prose(text, tag) {
  const p = el(tag || "p", { class: "prose" });
  String(text || "").split("`").forEach((part, i) => {
    p.append(i % 2 ? el("code", { text: part }) : document.createTextNode(part));
  });
  return p;
}

function resolve(obj) {
  let seen = 0;
  while (obj && obj.$ref && seen++ < 20) {
    obj = obj.$ref.replace(/^#\//, "").split("/").reduce((o, k) => (o ? o[k] : undefined), doc);
  }
  return obj || {};
}

function refName(obj) {
  return obj && obj.$ref ? obj.$ref.split("/").pop() : "";
}

// One schema as a short type line: `string, 1..200 chars`, `integer ≥ 1`, `array of Limit`.
function typeLine(raw) {
  const s = resolve(raw);
  if (s.oneOf || s.anyOf) {
    return (s.oneOf || s.anyOf).map((x) => refName(x) || typeLine(x)).join(" | ");
  }
  let t = s.type || (s.properties ? "object" : "any");
  if (t === "array") t = "array of " + (refName(s.items) || typeLine(s.items));
  const notes = [];
  if (s.format) notes.push(s.format);
  if (s.enum) notes.push("one of " + s.enum.map((v) => JSON.stringify(v)).join(", "));
  if (s.minLength !== undefined || s.maxLength !== undefined) {
    notes.push((s.minLength || 0) + ".." + (s.maxLength === undefined ? "" : s.maxLength) + " chars");
  }
  if (s.minimum !== undefined) notes.push("≥ " + s.minimum);
  // JSON numbers past 2^53 lose digits in JavaScript; int64's own bound goes unsaid.
  if (s.maximum !== undefined && s.maximum <= Number.MAX_SAFE_INTEGER) notes.push("≤ " + s.maximum);
  if (s.minItems !== undefined || s.maxItems !== undefined) {
    notes.push((s.minItems || 0) + ".." + (s.maxItems === undefined ? "" : s.maxItems) + " items");
  }
  if (s.pattern) notes.push("pattern " + s.pattern);
  if (s.nullable) notes.push("nullable");
  return notes.length ? t + " (" + notes.join("; ") + ")" : t;
}

// An object schema's fields as table rows, nested objects indented (two levels deep).
function fieldRows(raw, depth, rows, words) {
  const s = resolve(raw);
  const req = new Set(s.required || []);
  for (const [name, f] of Object.entries(s.properties || {})) {
    const fs = resolve(f);
    words.push(name, fs.description || "");
    rows.push(el("tr", {},
      el("td", { class: "name depth" + depth }, el("code", { text: name })),
      el("td", { text: typeLine(f) }),
      el("td", { text: req.has(name) ? "required" : "" }),
      el("td", {}, prose(fs.description, "span"))));
    const inner = fs.type === "array" ? resolve(fs.items) : fs;
    if (depth < 2 && inner.properties) fieldRows(inner, depth + 1, rows, words);
  }
  if (s.additionalProperties === false) words.push("no other fields");
  return rows;
}

function table(head, rows) {
  if (!rows.length) return null;
  return el("table", {},
    el("thead", {}, el("tr", {}, ...head.map((h) => el("th", { text: h })))),
    el("tbody", {}, ...rows));
}

// A JSON body to start from: the required fields with an example value each.
function skeleton(raw, depth) {
  const s = resolve(raw);
  if (s.example !== undefined) return s.example;
  if (s.enum) return s.enum[0];
  switch (s.type) {
    case "integer": case "number": return s.minimum !== undefined ? s.minimum : 1;
    case "boolean": return false;
    case "array": return depth > 2 ? [] : [skeleton(s.items, depth + 1)];
    case "string": return s.format === "email" ? "someone@example.com" : "text";
  }
  const out = {};
  for (const name of s.required || []) out[name] = skeleton((s.properties || {})[name], depth + 1);
  return out;
}

function credentialHeaders() {
  const cred = sessionStorage.getItem(STORE) || "";
  if (!cred) return {};
  return /^gw_[A-Za-z0-9]+_[A-Za-z0-9]+$/.test(cred) ? { "x-api-key": cred } : { "x-admin-secret": cred };
}

async function send(method, path, form, answer) {
  let url = path;
  const query = new URLSearchParams();
  for (const input of form.querySelectorAll("[data-param]")) {
    const v = input.value.trim();
    if (input.dataset.in === "path") url = url.replace("{" + input.dataset.param + "}", encodeURIComponent(v));
    else if (v) query.append(input.dataset.param, v);
  }
  if (query.toString()) url += "?" + query;
  const init = { method: method.toUpperCase(), headers: credentialHeaders(), cache: "no-store" };
  const body = form.querySelector("textarea");
  if (body && body.value.trim()) {
    init.headers["content-type"] = "application/json";
    init.body = body.value;
  }
  answer.textContent = init.method + " " + url + " …";
  try {
    const r = await fetch(url, init);
    const text = await r.text();
    let shown = text;
    try { shown = JSON.stringify(JSON.parse(text), null, 2); } catch (_) { /* not JSON */ }
    const heads = [];
    r.headers.forEach((v, k) => heads.push(k + ": " + v));
    answer.textContent = "HTTP " + r.status + " " + r.statusText + "\n" + heads.join("\n") + "\n\n" + shown;
    answer.dataset.status = String(r.status);
  } catch (e) {
    answer.textContent = "No answer: " + e;
    answer.dataset.status = "0";
  }
}

function tryIt(method, path, op, params) {
  const form = el("form", { class: "try-form", autocomplete: "off" });
  for (const p of params) {
    form.append(el("label", {},
      el("span", { text: p.name + (p.required ? " *" : "") + " (" + p.in + ")" }),
      el("input", { "data-param": p.name, "data-in": p.in, placeholder: typeLine(p.schema), spellcheck: "false" })));
  }
  const body = op.requestBody && resolve(op.requestBody);
  const json = body && body.content && body.content["application/json"];
  if (json) {
    const area = el("textarea", { rows: "6", spellcheck: "false", "aria-label": "request body" });
    area.value = JSON.stringify(skeleton(json.schema, 0), null, 2);
    form.append(el("label", { class: "wide" }, el("span", { text: "body (JSON)" }), area));
  }
  const answer = el("pre", { class: "answer", "aria-live": "polite" });
  form.append(el("button", { type: "submit", class: "send", text: "Send " + method.toUpperCase() }));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    send(method, path, form, answer);
  });
  return el("details", { class: "try" }, el("summary", { text: "Try it" }), form, answer);
}

function operation(method, path, op) {
  const id = "op-" + (method + path).toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/-+$/, "");
  const words = [method, path, op.summary || "", op.description || "", op.operationId || ""];
  const params = (op.parameters || []).map(resolve);
  const paramRows = params.map((p) => {
    words.push(p.name, p.description || "");
    return el("tr", {},
      el("td", { class: "name" }, el("code", { text: p.name })),
      el("td", { text: p.in }),
      el("td", { text: typeLine(p.schema) + (p.required ? ", required" : "") }),
      el("td", {}, prose(p.description, "span")));
  });
  const section = el("section", { class: "op", id, "data-method": method, "data-path": path });
  add(section, 
    el("h3", {}, el("span", { class: "method " + method, text: method.toUpperCase() }), el("code", { class: "path", text: path })),
    op.summary ? el("p", { class: "summary", text: op.summary }) : null,
    op.description ? prose(op.description) : null);
  const security = (op.security || doc.security || []).flatMap((s) => Object.keys(s));
  add(section, el("p", { class: "auth", text: security.length ? "Credentials: " + security.join(" or ") : "No credentials needed" }));
  const pt = table(["parameter", "in", "type", ""], paramRows);
  if (pt) add(section, el("h4", { text: "Parameters" }), pt);
  const body = op.requestBody && resolve(op.requestBody);
  const json = body && body.content && body.content["application/json"];
  if (json) {
    const rows = fieldRows(json.schema, 0, [], words);
    add(section, el("h4", { text: "Body " + (refName(json.schema) || "") }), body.description ? prose(body.description) : null,
      table(["field", "type", "", ""], rows) || el("p", { text: typeLine(json.schema) }));
  }
  const answers = Object.entries(op.responses || {}).map(([status, raw]) => {
    const r = resolve(raw);
    const content = r.content || {};
    const kind = Object.keys(content)[0] || "";
    const schema = kind && content[kind].schema;
    words.push(status, r.description || "");
    return el("tr", {},
      el("td", { class: "status s" + status[0], text: status }),
      el("td", {}, prose(r.description, "span")),
      el("td", { text: schema ? refName(schema) || typeLine(schema) : kind }));
  });
  add(section, el("h4", { text: "Answers" }), table(["status", "", "body"], answers));
  add(section, tryIt(method, path, op, params));
  section.dataset.search = words.join(" ").toLowerCase();
  return section;
}

function render() {
  document.getElementById("title").textContent = doc.info.title + " " + doc.info.version;
  document.title = doc.info.title;
  document.getElementById("description").replaceWith(prose(doc.info.description));
  const byTag = new Map((doc.tags || []).map((t) => [t.name, []]));
  for (const [path, item] of Object.entries(doc.paths)) {
    for (const method of METHODS) {
      if (!item[method]) continue;
      const tag = (item[method].tags || ["other"])[0];
      if (!byTag.has(tag)) byTag.set(tag, []);
      byTag.get(tag).push(operation(method, path, item[method]));
    }
  }
  const ops = document.getElementById("ops");
  const toc = document.getElementById("toc");
  for (const [tag, sections] of byTag) {
    if (!sections.length) continue;
    const list = el("ul", {});
    for (const s of sections) {
      const { method, path } = s.dataset;
      list.append(el("li", { "data-for": s.id },
        el("a", { href: "#" + s.id }, el("span", { class: "method " + method, text: method.toUpperCase() }), " " + path)));
    }
    toc.append(el("div", { class: "tag", "data-tag": tag }, el("h2", { text: tag }), list));
    ops.append(el("div", { class: "tag", "data-tag": tag }, el("h2", { text: tag }), ...sections));
  }
  filter();
}

// Every word of the search must appear somewhere in an operation's text.
function filter() {
  const terms = document.getElementById("search").value.toLowerCase().split(/\s+/).filter(Boolean);
  let shown = 0;
  let total = 0;
  for (const s of document.querySelectorAll(".op")) {
    const hit = terms.every((t) => s.dataset.search.includes(t));
    s.hidden = !hit;
    document.querySelector('#toc li[data-for="' + s.id + '"]').hidden = !hit;
    total += 1;
    shown += hit ? 1 : 0;
  }
  for (const g of document.querySelectorAll(".tag")) {
    g.hidden = !g.querySelector("li:not([hidden]), .op:not([hidden])");
  }
  document.getElementById("count").textContent = shown === total ? total + " operations" : shown + " of " + total + " operations";
}

async function start() {
  const cred = document.getElementById("credential");
  cred.value = sessionStorage.getItem(STORE) || "";
  cred.addEventListener("input", () => sessionStorage.setItem(STORE, cred.value.trim()));
  document.getElementById("search").addEventListener("input", filter);
  try {
    const r = await fetch("/openapi.json", { cache: "no-store" });
    if (!r.ok) throw new Error("HTTP " + r.status);
    doc = await r.json();
    render();
    document.body.dataset.ready = "1";
  } catch (e) {
    const err = document.getElementById("load-error");
    err.textContent = "Cannot read /openapi.json: " + e.message;
    err.hidden = false;
  }
}

start();
