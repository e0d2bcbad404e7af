// The gateway inspector's page. Plain JavaScript, no build step, nothing fetched from elsewhere.
//
// One Server-Sent Events feed (/inspect/api/feed) brings the list of requests and their changes;
// with ?watch=<id> it also brings that request's entries as they happen (see gateway/inspect/buffer.py
// for what an entry is). The page folds entries into a model (items, timings, tokens, errors) and
// renders it; nothing on the page is built from HTML strings, so what passed through the gateway is
// shown as text, never interpreted.
"use strict";

const state = {
  summaries: new Map(),   // request id -> summary
  selected: null,         // the open request's id
  detail: null,           // {summary, headers, request, remote} of the open request
  model: null,            // the open request's entries, folded (class Model)
  feed: null,
  dirtyList: false,
  dirtyDetail: false,
};

// --- small DOM helpers -------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "style") el.style.cssText = value;  // through the CSSOM: the page's CSP forbids style attributes
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

const $ = (id) => document.getElementById(id);

// replaceChildren, leaving out the null / false that conditional parts give
function fill(el, ...children) {
  el.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
}

function fmtMs(ms) {
  if (ms === null || ms === undefined) return "–";
  if (ms < 1000) return `${ms.toFixed(ms < 10 ? 1 : 0)} ms`;
  return `${(ms / 1000).toFixed(2)} s`;
}

function fmtTime(epochSeconds) {
  return new Date(epochSeconds * 1000).toLocaleTimeString([], {hour12: false});
}

// JSON without the nulls and empty values that vLLM's chunks and the Responses events repeat
function compact(value) {
  if (Array.isArray(value)) return value.map(compact);
  if (value && typeof value === "object") {
    const out = {};
    for (const [k, v] of Object.entries(value)) {
      if (v === null || v === undefined) continue;
      if (Array.isArray(v) && v.length === 0) continue;
      if (typeof v === "object" && !Array.isArray(v) && Object.keys(v).length === 0) continue;
      out[k] = compact(v);
    }
    return out;
  }
  return value;
}

// shade of a token by its probability: the less likely, the warmer
function shade(logprob) {
  const p = Math.exp(logprob);
  const alpha = Math.min(0.85, Math.max(0.04, 1 - p));
  return `rgba(249, 115, 22, ${alpha.toFixed(3)})`;
}

function tokenLabel(token) {
  return typeof token === "string" && token.startsWith("token_id:") ? token.slice(9) : token;
}

// --- the model of one request, fed its entries in order --------------------------------------

const DELTA_EVENTS = new Set([
  "response.output_text.delta", "response.reasoning_text.delta", "response.reasoning_summary_text.delta",
  "response.function_call_arguments.delta", "response.refusal.delta",
]);

// vLLM's stream as the gateway reads it: events end with a blank line and may span network reads.
// Returns the events one read completed: parsed chunks, null for [DONE], {unparsed} for the rest.
class SSESplitter {
  constructor() { this.buffer = ""; }

  feed(text) {
    this.buffer += text.replace(/\r\n?/g, "\n");
    const blocks = this.buffer.split("\n\n");
    this.buffer = blocks.pop();
    const events = [];
    for (const block of blocks) {
      const data = block.split("\n").filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(line.startsWith("data: ") ? 6 : 5)).join("\n");
      if (!data) continue;  // a comment or a field without data
      if (data === "[DONE]") { events.push(null); continue; }
      try { events.push(JSON.parse(data)); } catch (err) { events.push({unparsed: data}); }
    }
    return events;
  }
}

class Model {
  constructor(stream) {
    this.stream = stream;       // false: vLLM's answer is one JSON body
    this.splitter = new SSESplitter();
    this.plan = null;           // the Chat Completions body sent to vLLM
    this.attempts = [];         // {t, server, state, error}
    this.rows = [];             // one per upstream read: {t, chunks, events}; a first row for events before any read
    this.items = new Map();     // output_index -> {type, id, name, text, pieces, args, open}
    this.errors = [];
    this.tokens = [];           // {token, logprob, kind} from vLLM's logprobs
    this.outputTimes = [];      // t of each upstream read that carried model output
    this.firstOutput = null;
    this.response = null;
    this.usage = null;
    this.end = null;
    this.lastT = 0;
  }

  apply([t, kind, payload]) {
    this.lastT = t;
    if (kind === "plan") this.plan = payload;
    else if (kind === "attempt") this.applyAttempt(t, payload);
    else if (kind === "read") this.applyRead(t, payload);
    else if (kind === "sent") this.applySent(t, payload);
    else if (kind === "end") this.applyEnd(payload);
  }

  applyAttempt(t, attempt) {
    const open = this.attempts.find((a) => a.server === attempt.server && a.state === "started");
    if (open && attempt.state !== "started") Object.assign(open, attempt, {ended: t});
    else this.attempts.push({t, ...attempt});
    if (attempt.error) this.errors.push(`attempt at ${attempt.server}: ${attempt.error.message}`);
  }

  applyRead(t, text) {
    let chunks;
    if (this.stream === false) {
      try { chunks = [JSON.parse(text)]; } catch (err) { chunks = [{unparsed: text}]; }
    } else {
      chunks = this.splitter.feed(text);
    }
    this.rows.push({t, chunks, events: [], bytes: text.length});
    let output = false;
    for (const chunk of chunks) {
      if (!chunk) continue;  // [DONE]
      if (chunk.error && chunk.error.message) this.errors.push(`vLLM: ${chunk.error.message}`);
      if (chunk.usage) this.usage = chunk.usage;
      for (const choice of chunk.choices || []) {
        const delta = choice.delta || choice.message || {};
        const kind = delta.reasoning || delta.reasoning_content ? "reasoning"
          : delta.tool_calls && delta.tool_calls.length ? "tool" : "content";
        if (delta.content || delta.reasoning || delta.reasoning_content || (delta.tool_calls && delta.tool_calls.length)) output = true;
        const entries = choice.logprobs && choice.logprobs.content;
        if (entries) {
          entries.forEach((e, i) => this.tokens.push({
            token: e.token, logprob: e.logprob, kind,
            id: choice.token_ids && choice.token_ids.length === entries.length ? choice.token_ids[i] : e.id,
          }));
        }
      }
    }
    if (output) this.outputTimes.push(t);
  }

  row(t) {
    if (!this.rows.length) this.rows.push({t, chunks: null, events: []});
    return this.rows[this.rows.length - 1];
  }

  applySent(t, events) {
    const row = this.row(t);
    for (const event of events) {
      row.events.push(event);
      if (event && event.object === "response") {  // without streaming: the whole Response
        this.response = event;
        this.itemsFromResponse(event);
        if (this.firstOutput === null) this.firstOutput = t;
        continue;
      }
      if (event && (event.object === "chat.completion" || event.object === "chat.completion.chunk")) {
        if (event.object === "chat.completion") this.itemsFromCompletion(event);  // /v1/chat/completions
        if (this.firstOutput === null) this.firstOutput = t;
        continue;
      }
      if (!event || typeof event !== "object") continue;  // a chat stream's [DONE]
      if (!event.type && event.error) {  // a chat stream's error frame
        this.errors.push(`stream error ${event.error.code || event.error.type}: ${event.error.message}`);
        continue;
      }
      this.applyEvent(t, event);
    }
  }

  applyEvent(t, event) {
    const type = event.type;
    if (DELTA_EVENTS.has(type) && this.firstOutput === null) this.firstOutput = t;
    const item = this.items.get(event.output_index);
    switch (type) {
      case "response.output_item.added":
        this.items.set(event.output_index, {
          type: event.item.type, id: event.item.id, name: event.item.name, callId: event.item.call_id,
          text: "", pieces: [], args: "", open: true,
        });
        break;
      case "response.reasoning_text.delta":
      case "response.reasoning_summary_text.delta":
        if (item) item.text += event.delta;
        break;
      case "response.output_text.delta":
        if (item) item.pieces.push({text: event.delta, logprobs: event.logprobs || []});
        break;
      case "response.function_call_arguments.delta":
        if (item) item.args += event.delta;
        break;
      case "response.function_call_arguments.done":
        if (item) { item.args = event.arguments; item.name = event.name || item.name; }
        break;
      case "response.output_item.done":
        if (item) { item.open = false; item.done = event.item; }
        break;
      case "response.completed":
      case "response.incomplete":
      case "response.failed":
        this.response = event.response;
        if (event.response.error) this.errors.push(`${event.response.error.code}: ${event.response.error.message}`);
        break;
      case "error":
        this.errors.push(`stream error event ${event.code}: ${event.message}`);
        break;
      default:
        if (type === "response.created" || type === "response.in_progress") this.response = event.response;
    }
  }

  itemsFromResponse(response) {
    (response.output || []).forEach((out, index) => {
      const text = (out.summary || []).concat(out.content || [])
        .filter((p) => p.type !== "output_text").map((p) => p.text || "").join("");
      const pieces = (out.content || []).filter((p) => p.type === "output_text")
        .map((p) => ({text: p.text, logprobs: p.logprobs || []}));
      this.items.set(index, {type: out.type, id: out.id, name: out.name, callId: out.call_id, text, pieces,
                             args: out.arguments || "", open: false, done: out});
    });
  }

  // A chat.completion (/v1/chat/completions) shown as the output items a Response would have.
  itemsFromCompletion(completion) {
    const message = ((completion.choices || [])[0] || {}).message || {};
    const items = [];
    const reasoning = message.reasoning_content || message.reasoning;
    if (reasoning) items.push({type: "reasoning", text: reasoning, pieces: [], args: ""});
    if (message.content) items.push({type: "message", text: "", pieces: [{text: message.content, logprobs: []}], args: ""});
    for (const call of message.tool_calls || []) {
      const fn = call.function || {};
      items.push({type: "function_call", name: fn.name, callId: call.id, text: "", pieces: [], args: fn.arguments || ""});
    }
    this.items.clear();
    items.forEach((item, index) => this.items.set(index, {...item, id: `${completion.id || "chat"}#${index}`, open: false}));
  }

  applyEnd(end) {
    this.end = end;
    if (end.response && !this.response) {
      this.response = end.response;
      if (!this.items.size) this.itemsFromResponse(end.response);
    }
    if (end.completion && !this.items.size) this.itemsFromCompletion(end.completion);
    if (end.error) this.errors.push(`HTTP ${end.status} ${end.error.code || end.error.type}: ${end.error.message}`);
  }

  gaps() {
    const gaps = [];
    for (let i = 1; i < this.outputTimes.length; i++) gaps.push(this.outputTimes[i] - this.outputTimes[i - 1]);
    return gaps;
  }
}

// --- the feed ----------------------------------------------------------------------------------

function connect() {
  if (state.feed) state.feed.close();
  const url = "/inspect/api/feed" + (state.selected ? `?watch=${encodeURIComponent(state.selected)}` : "");
  const feed = new EventSource(url);
  state.feed = feed;
  const conn = $("conn");
  feed.onopen = () => { conn.textContent = "live"; conn.className = "conn on"; };
  feed.onerror = () => { conn.textContent = "reconnecting…"; conn.className = "conn off"; };
  feed.addEventListener("list", (e) => {
    state.summaries.clear();
    for (const s of JSON.parse(e.data)) state.summaries.set(s.id, s);
    listChanged();
  });
  feed.addEventListener("summary", (e) => {
    const s = JSON.parse(e.data);
    state.summaries.set(s.id, s);
    if (s.id === state.selected && state.detail) { state.detail.summary = s; detailChanged(); }
    listChanged();
  });
  feed.addEventListener("detail", (e) => {
    const record = JSON.parse(e.data);
    if (record.summary.id !== state.selected) return;
    state.detail = record;
    state.model = new Model(record.summary.upstream_stream);
    for (const entry of record.entries) state.model.apply(entry);
    buildDetail();
    detailChanged();
  });
  feed.addEventListener("entries", (e) => {
    if (!state.model) return;
    for (const entry of JSON.parse(e.data)) state.model.apply(entry);
    detailChanged();
  });
  feed.addEventListener("overflow", () => {  // this page fell behind: start again from a snapshot
    feed.close();
    setTimeout(connect, 300);
  });
}

function select(id) {
  if (id === state.selected) return;
  state.selected = id;
  state.detail = null;
  state.model = null;
  history.replaceState(null, "", `#${id}`);
  $("detail").replaceChildren(h("p", {class: "empty"}, `Opening ${id}…`));
  connect();
  listChanged();
}

function listChanged() {
  if (!state.dirtyList) { state.dirtyList = true; requestAnimationFrame(renderList); }
}

function detailChanged() {
  if (!state.dirtyDetail) { state.dirtyDetail = true; requestAnimationFrame(renderDetail); }
}

// --- the list ----------------------------------------------------------------------------------

function passesFilters(s) {
  const status = $("f-status").value, model = $("f-model").value, text = $("f-text").value.trim().toLowerCase();
  if (status && s.status !== status) return false;
  if (model && s.model !== model) return false;
  if ($("f-error").checked && !s.error && s.status !== "failed" && s.status !== "error") return false;
  if (text && ![s.id, s.session, s.response_id, s.model, s.replay_of].some((v) => v && v.toLowerCase().includes(text))) return false;
  return true;
}

function renderList() {
  state.dirtyList = false;
  const models = new Set([...state.summaries.values()].map((s) => s.model).filter(Boolean));
  const modelSelect = $("f-model");
  const known = new Set([...modelSelect.options].map((o) => o.value));
  for (const m of models) if (!known.has(m)) modelSelect.append(h("option", {value: m}, m));

  // a session's requests read as one timeline; the most recently active session first
  const groups = new Map();
  for (const s of state.summaries.values()) {
    if (!passesFilters(s)) continue;
    const key = s.session ? `s:${s.session}` : "none";
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key).push(s);
  }
  const now = Date.now() / 1000;
  const ordered = [...groups.entries()].map(([key, list]) => {
    list.sort((a, b) => a.started_at - b.started_at);
    return [key, list, Math.max(...list.map((s) => s.started_at))];
  }).sort((a, b) => b[2] - a[2]);

  const nav = $("list");
  const scroll = nav.scrollTop;
  fill(nav, ...ordered.map(([key, list]) => renderGroup(key, list, now)));
  if (!ordered.length) nav.append(h("p", {class: "empty", style: "padding: 10px"}, "No requests yet."));
  nav.scrollTop = scroll;
}

function renderGroup(key, list, now) {
  const first = list[0].started_at;
  const last = Math.max(...list.map((s) => s.started_at + (s.duration_ms === null ? now - s.started_at : s.duration_ms / 1000)));
  const window_ = Math.max(last - first, 0.001);
  const s0 = list[0];
  const head = key === "none"
    ? h("div", {class: "group-head"}, h("b", {}, "no session"), h("span", {class: "src"}, `${list.length}`))
    : h("div", {class: "group-head", title: `session from ${s0.session_source}`},
        "session", h("b", {}, s0.session), h("span", {class: "src"}, `${s0.session_source} · ${list.length}`));
  return h("div", {class: "group"}, head, ...list.map((s) => {
    const start = (s.started_at - first) / window_ * 100;
    const length = ((s.duration_ms === null ? now - s.started_at : s.duration_ms / 1000) / window_) * 100;
    return h("div", {class: "req" + (s.id === state.selected ? " selected" : ""), "data-id": s.id, onclick: () => select(s.id)},
      h("div", {class: "row1"},
        h("span", {class: `badge ${s.status}`}, s.status),
        s.replay_of ? h("span", {class: "badge replay", title: `replay of ${s.replay_of}`}, "replay") : null,
        s.route === "/v1/chat/completions" ? h("span", {class: "badge replay", title: s.route}, "chat") : null,
        h("span", {class: "rid", title: s.id}, s.id)),
      h("div", {class: "row2"},
        h("span", {}, fmtTime(s.started_at)),
        key === "none" ? null : h("span", {}, `+${(s.started_at - first).toFixed(1)} s`),
        h("span", {}, s.model || ""),
        h("span", {}, s.duration_ms === null ? "…" : fmtMs(s.duration_ms)),
        s.output_tokens !== null ? h("span", {}, `${s.output_tokens} tok`) : null,
        s.error ? h("span", {style: "color: var(--bad)"}, s.error) : null),
      key === "none" ? null : h("div", {class: "span-bar"},
        h("i", {style: `left: ${start.toFixed(2)}%; width: ${Math.max(length, 0.5).toFixed(2)}%`})));
  }));
}

// --- the open request ----------------------------------------------------------------------------

// The detail pane is built once per opened request (so that open <details>, scroll positions and
// the replay editor survive), then its parts are refreshed as entries arrive.
function buildDetail() {
  const id = state.detail.summary.id;
  const parts = {
    head: h("div", {class: "head"}),
    meta: h("div", {class: "meta"}),
    cards: h("div", {class: "cards"}),
    errors: h("div"),
    output: h("div", {class: "output"}),
    tokens: h("div"),
    tracking: h("div"),
    attempts: h("div", {class: "attempts"}),
    request: h("pre"),
    chat: h("pre"),
    headers: h("pre"),
    stream: h("tbody"),
    replay: h("div", {class: "replay"}),
  };
  parts.streamRows = 0;
  state.parts = parts;
  const exportLink = h("a", {class: "button", href: `/inspect/api/requests/${encodeURIComponent(id)}?download=1`,
                             download: `${id}.json`}, "Export JSON");
  const replayButton = h("button", {class: "primary", onclick: openReplay}, "Replay…");
  const api = state.detail.summary.route === "/v1/chat/completions" ? "Chat Completions" : "Responses";
  parts.head.append(h("h2", {}, id), h("span", {id: "status-badge"}),
                    h("div", {class: "actions"}, exportLink, replayButton));
  $("detail").replaceChildren(
    parts.head, parts.meta, parts.cards, parts.errors, parts.replay,
    h("h3", {}, "Output (as the client got it)"), parts.output,
    parts.tokens, parts.tracking,
    h("h3", {}, "Upstream attempts"), parts.attempts,
    h("h3", {}, "Requests"),
    h("details", {}, h("summary", {}, `${api} request (from the client)`), parts.request),
    h("details", {}, h("summary", {}, "Chat Completions body (sent to vLLM)"), parts.chat),
    h("details", {}, h("summary", {}, "Request headers (secrets masked)"), parts.headers),
    h("h3", {}, `Stream: vLLM's chunks and the ${api} events made of them`),
    h("div", {class: "stream-wrap"}, h("table", {class: "stream"},
      h("thead", {}, h("tr", {}, h("th", {class: "t"}, "t"), h("th", {}, "vLLM chunks (one row per network read)"),
                                h("th", {}, `${api} events sent to the client`))),
      parts.stream)));
}

function setText(el, text) {
  if (el.textContent !== text) el.textContent = text;
}

function renderDetail() {
  state.dirtyDetail = false;
  const {detail, model, parts} = state;
  if (!detail || !model || !parts) return;
  const s = detail.summary;
  fill(document.getElementById("status-badge"), h("span", {class: `badge ${s.status}`}, s.status));

  fill(parts.meta,
    h("span", {}, "model ", h("b", {}, s.model || "–")),
    h("span", {}, "stream ", h("b", {}, String(s.stream))),
    h("span", {}, "started ", h("b", {}, fmtTime(s.started_at))),
    s.session ? h("span", {}, "session ", h("b", {}, s.session), ` (${s.session_source})`) : null,
    s.response_id ? h("span", {}, "response ", h("b", {}, s.response_id)) : null,
    s.replay_of ? h("span", {}, "replay of ", h("a", {href: `#${s.replay_of}`, onclick: (e) => { e.preventDefault(); select(s.replay_of); }}, s.replay_of)) : null,
    detail.remote ? h("span", {}, "from ", h("b", {}, detail.remote)) : null,
    s.dropped_entries ? h("span", {style: "color: var(--bad)"}, `${s.dropped_entries} entries past the per-request bound not kept`) : null);

  renderCards(s, model);
  fill(parts.errors, ...(model.errors.length ? [h("div", {class: "error-box"}, model.errors.join("\n"))] : []));
  renderOutput(model, s.status === "live");
  renderTokens(model);
  renderTracking(model);
  fill(parts.attempts, ...model.attempts.map((a) => h("div", {class: a.error ? "bad" : ""},
    `${fmtMs(a.t)}  ${a.server}  ${a.state}${a.error ? ` — ${a.error.code}: ${a.error.message}` : ""}`)));
  if (!model.attempts.length) parts.attempts.append(h("span", {class: "empty"}, "none (refused before reaching vLLM)"));
  setText(parts.request, JSON.stringify(detail.request, null, 2));
  setText(parts.chat, model.plan ? JSON.stringify(model.plan, null, 2) : "(not sent)");
  setText(parts.headers, JSON.stringify(detail.headers, null, 2));
  renderStream(model);
}

function card(k, v, extra) {
  return h("div", {class: "card" + (extra ? " wide" : "")}, h("div", {class: "k"}, k), h("div", {class: "v"}, v), extra || null);
}

function renderCards(s, model) {
  const usage = model.response && model.response.usage;
  const gaps = model.gaps();
  const total = s.duration_ms !== null ? s.duration_ms : model.lastT;
  const sorted = [...gaps].sort((a, b) => a - b);
  const median = sorted.length ? sorted[Math.floor(sorted.length / 2)] : null;
  const cards = [
    card("time to first token", fmtMs(model.firstOutput)),
    card(s.status === "live" ? "elapsed" : "total", fmtMs(total)),
    card("input tokens", usage ? usage.input_tokens : (model.usage ? model.usage.prompt_tokens : "–")),
    card("output tokens", usage ? usage.output_tokens : (model.usage ? model.usage.completion_tokens : "–")),
  ];
  if (usage && usage.output_tokens_details && usage.output_tokens_details.reasoning_tokens) {
    cards.push(card("reasoning tokens", usage.output_tokens_details.reasoning_tokens));
  }
  if (usage && usage.input_tokens_details && usage.input_tokens_details.cached_tokens) {
    cards.push(card("cached input", usage.input_tokens_details.cached_tokens));
  }
  if (s.finish_reason) cards.push(card("finish reason", s.finish_reason));
  cards.push(card("gaps between tokens", gaps.length ? `median ${fmtMs(median)} · max ${fmtMs(sorted[sorted.length - 1])}` : "–",
                  gapChart(gaps)));
  fill(state.parts.cards, ...cards);
}

function gapChart(gaps) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "gaps");
  const shown = gaps.slice(-240);
  const width = 480, height = 46;
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("preserveAspectRatio", "none");
  const max = Math.max(...shown, 1);
  const barWidth = width / Math.max(shown.length, 1);
  shown.forEach((gap, i) => {
    const rect = document.createElementNS(ns, "rect");
    const barHeight = Math.max(1, (gap / max) * (height - 2));
    rect.setAttribute("x", (i * barWidth).toFixed(2));
    rect.setAttribute("y", (height - barHeight).toFixed(2));
    rect.setAttribute("width", Math.max(barWidth - 1, 0.6).toFixed(2));
    rect.setAttribute("height", barHeight.toFixed(2));
    const title = document.createElementNS(ns, "title");
    title.textContent = fmtMs(gap);
    rect.append(title);
    svg.append(rect);
  });
  return svg;
}

function textWithLogprobs(pieces) {
  const out = [];
  for (const piece of pieces) {
    const lps = piece.logprobs || [];
    const spelled = lps.length && lps.every((lp) => typeof lp.token === "string" && !lp.token.startsWith("token_id:"))
      && lps.map((lp) => lp.token).join("") === piece.text;
    if (spelled) {
      for (const lp of lps) {
        out.push(h("span", {class: "tok", style: `background: ${shade(lp.logprob)}`,
                            title: `${JSON.stringify(lp.token)}  p=${(Math.exp(lp.logprob) * 100).toFixed(1)}%`}, lp.token));
      }
    } else if (lps.length) {  // the piece's tokens are ids: shade the piece by their joint probability
      const joint = lps.reduce((sum, lp) => sum + lp.logprob, 0);
      out.push(h("span", {class: "tok", style: `background: ${shade(joint)}`,
                          title: lps.map((lp) => `${tokenLabel(lp.token)} p=${(Math.exp(lp.logprob) * 100).toFixed(1)}%`).join("\n")},
                 piece.text));
    } else {
      out.push(piece.text);
    }
  }
  return out;
}

function renderOutput(model, live) {
  const items = [...model.items.entries()].sort((a, b) => a[0] - b[0]).map(([, item]) => item);
  const views = items.map((item) => {
    const cursor = item.open && live ? h("span", {class: "cursor"}) : null;
    const label = (name) => h("div", {class: "label"}, name, h("span", {class: "iid"}, item.id || ""),
                              item.callId ? h("span", {class: "iid"}, `call_id ${item.callId}`) : null);
    if (item.type === "reasoning") {
      return h("div", {class: "item reasoning" + (item.open ? " open" : "")}, label("reasoning"), h("div", {class: "body"}, item.text, cursor));
    }
    if (item.type === "message") {
      return h("div", {class: "item message" + (item.open ? " open" : "")}, label("text"),
               h("div", {class: "body"}, ...textWithLogprobs(item.pieces), cursor));
    }
    if (item.type === "function_call") {
      return h("div", {class: "item function_call" + (item.open ? " open" : "")}, label("tool call"),
               h("div", {class: "fname"}, item.name || "?"), h("div", {class: "body"}, item.args, cursor));
    }
    return h("div", {class: "item"}, label(item.type), h("pre", {}, JSON.stringify(item.done || item, null, 2)));
  });
  if (!views.length) views.push(h("span", {class: "empty"}, live ? "waiting for output…" : "no output"));
  fill(state.parts.output, ...views);
}

function renderTokens(model) {
  const parts = state.parts;
  if (!model.tokens.length) {
    fill(parts.tokens);
    return;
  }
  const chips = model.tokens.slice(0, 4000).map((t) => h("span", {
    class: `tok ${t.kind}`, style: `background: ${shade(t.logprob)}`,
    title: `${t.kind}  ${JSON.stringify(t.token)}${t.id !== undefined && t.id !== null ? `  id ${t.id}` : ""}  p=${(Math.exp(t.logprob) * 100).toFixed(2)}%  logprob ${t.logprob.toFixed(4)}`,
  }, tokenLabel(t.token)));
  fill(parts.tokens,
    h("h3", {}, `Generated tokens (${model.tokens.length}) shaded by probability`),
    h("div", {class: "legend"}, "underline: purple reasoning · teal text · amber tool call; the warmer the less likely; hover for p"),
    h("div", {class: "tokens"}, ...chips));
}

function renderTracking(model) {
  const parts = state.parts;
  const output = (model.response && model.response.output) || [];
  const last = output[output.length - 1];
  if (!last || !last.generation_token_ids) {
    fill(parts.tracking);
    return;
  }
  const ids = last.generation_token_ids, lps = last.generation_log_probs || [];
  const prompt = last.prompt_token_ids || [];
  fill(parts.tracking,
    h("h3", {}, "Token tracking (on the last output item)"),
    h("div", {class: "legend"}, `prompt_token_ids: ${prompt.length} ids · generation_token_ids: ${ids.length} ids`),
    h("details", {}, h("summary", {}, `prompt_token_ids (${prompt.length})`), h("pre", {}, prompt.join(" "))),
    h("div", {class: "tokens"}, ...ids.slice(0, 4000).map((id, i) => h("span", {
      class: "tok", style: lps[i] !== undefined ? `background: ${shade(lps[i])}` : "",
      title: lps[i] !== undefined ? `id ${id}  logprob ${lps[i].toFixed(4)}` : `id ${id}`}, String(id)))));
}

function eventView(event) {
  if (!event || typeof event !== "object") return h("span", {class: "ev"}, JSON.stringify(event));
  if (event.object === "response") return h("span", {class: "ev done"}, h("b", {}, "Response"), ` ${event.id} ${event.status}`);
  if (!event.type) {  // /v1/chat/completions: a chat.completion, a chunk, or an error frame
    const rest = compact({...event});
    delete rest.object;
    const cls = event.error ? "bad" : event.object === "chat.completion" ? "done" : "delta";
    return h("span", {class: `ev ${cls}`}, h("b", {}, event.object || (event.error ? "error" : "event")), " ",
             JSON.stringify(rest));
  }
  const rest = compact({...event});
  delete rest.type;
  delete rest.sequence_number;
  if (rest.response) rest.response = {id: rest.response.id, status: rest.response.status};
  const cls = DELTA_EVENTS.has(event.type) ? "delta" : event.type.endsWith(".done") || event.type === "response.completed" ? "done"
    : event.type === "error" || event.type === "response.failed" ? "bad" : "";
  return h("span", {class: `ev ${cls}`}, h("b", {}, event.type.replace(/^response\./, "")), ` #${event.sequence_number} `,
           JSON.stringify(rest));
}

function chunkView(chunk) {
  if (chunk === null) return h("span", {class: "chunk"}, "[DONE]");
  if (chunk.unparsed !== undefined) return h("span", {class: "chunk bad"}, `not JSON: ${chunk.unparsed}`);
  const shown = compact(JSON.parse(JSON.stringify(chunk, (key, value) =>
    ["bytes", "top_logprobs"].includes(key) ? undefined : value)));  // all of it is in the tooltip
  for (const key of ["id", "model", "created", "object", "system_fingerprint"]) delete shown[key];
  return h("span", {class: "chunk", title: JSON.stringify(chunk)}, JSON.stringify(shown));
}

function renderStream(model) {
  const parts = state.parts;
  const rows = model.rows;
  // rows already drawn are final except the last one, which may still get events
  while (parts.stream.rows.length > rows.length) parts.stream.lastChild.remove();
  const from = Math.max(0, parts.stream.rows.length - 1);
  for (let i = from; i < rows.length; i++) {
    const row = rows[i];
    const tr = h("tr", {},
      h("td", {class: "t"}, fmtMs(row.t)),
      h("td", {}, ...(row.chunks === null ? [h("span", {class: "empty"}, "(before vLLM's first chunk)")]
        : row.chunks.length ? row.chunks.map(chunkView)
          : [h("span", {class: "empty"}, `(${row.bytes} bytes: the start of an event the next read completes)`)])),
      h("td", {}, ...row.events.map(eventView)));
    if (i < parts.stream.rows.length) parts.stream.rows[i].replaceWith(tr);
    else parts.stream.append(tr);
  }
}

// --- replay ------------------------------------------------------------------------------------

function openReplay() {
  const parts = state.parts;
  const original = state.detail;
  const textarea = h("textarea", {spellcheck: "false", "aria-label": "request to replay"});
  textarea.value = JSON.stringify(original.request, null, 2);
  const message = h("span", {class: "msg"}, "Edit the request, then send it: it goes through the gateway like a client's.");
  const send = h("button", {class: "primary", onclick: () => sendReplay(original.summary.id, textarea, message)}, "Send");
  const cancel = h("button", {onclick: () => fill(parts.replay)}, "Cancel");
  fill(parts.replay, h("h3", {}, `Replay ${original.summary.id}`), textarea, h("div", {class: "row"}, send, cancel, message));
  textarea.focus();
}

async function sendReplay(originalId, textarea, message) {
  let body;
  try {
    body = JSON.stringify(JSON.parse(textarea.value));
  } catch (err) {
    message.textContent = `Not JSON: ${err.message}`;
    message.className = "msg bad";
    return;
  }
  message.textContent = "sending…";
  message.className = "msg";
  const response = await fetch("/inspect/api/replay", {
    method: "POST", body, credentials: "same-origin",
    headers: {"Content-Type": "application/json", "X-Inspector": "replay", "X-Inspector-Replay-Of": originalId,
              "X-Inspector-Route": state.detail.summary.route || "/v1/responses"},
  });
  const newId = response.headers.get("X-Request-Id");
  if (response.status >= 400) {
    let text = `HTTP ${response.status}`;
    try { text += `: ${(await response.json()).error.message}`; } catch (err) { /* not JSON */ }
    message.textContent = text;
    message.className = "msg bad";
    if (newId) select(newId);
    return;
  }
  if (newId) select(newId);  // watch the replay live
  const reader = response.body.getReader();  // read to the end: leaving early would cancel it
  while (!(await reader.read()).done) { /* the feed shows it */ }
}

// --- start ---------------------------------------------------------------------------------------

for (const id of ["f-status", "f-model", "f-error", "f-text"]) $(id).addEventListener("input", listChanged);
$("filters").addEventListener("submit", (e) => e.preventDefault());
setInterval(() => { if ([...state.summaries.values()].some((s) => s.status === "live")) { listChanged(); detailChanged(); } }, 1000);
if (location.hash.length > 1) state.selected = decodeURIComponent(location.hash.slice(1));
connect();
