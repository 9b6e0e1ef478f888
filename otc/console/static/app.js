// otc operator console: one push stream (server-sent events) for the views, the JSON API for
// controls. Every number shown is the decimal text the engine sent; the chart alone parses it.
"use strict";

const $ = (sel) => document.querySelector(sel);
const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node[k] = v;
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c ?? ""));
  return node;
};
const dash = (v) => (v === null || v === undefined || v === "" ? "-" : v);

const state = {
  token: null,
  symbol: null,
  source: null,
  lastMessage: 0,      // when the last message came and (below) the stream was last opened,
  connectedAt: 0,      // on performance.now(): a step of the machine's clock cannot hide silence
  pushMs: 500,
  rows: [],            // blotter rows of the desk (configured clients, controls), oldest first
  maxRows: 2000,
  unknownRows: [],     // rows of client ids the config does not name, kept apart: a flood of
  maxUnknownRows: 200, // them must not push the desk's rows out
  selectedQuote: null,
  chart: null,
  chartKey: "",
  hello: null,
  layout: "",          // the symbols and clients the lists were built from
};

// -- token and operator -------------------------------------------------------------------

function readToken() {
  const hash = new URLSearchParams(location.hash.slice(1));
  const fromHash = hash.get("token");
  if (fromHash) {
    sessionStorage.setItem("otc-token", fromHash);
    history.replaceState(null, "", location.pathname + location.search);
  }
  return sessionStorage.getItem("otc-token");
}

function operator() {
  const name = $("#operator").value.trim();
  localStorage.setItem("otc-operator", name);
  return name;
}

async function api(path, options = {}) {
  const response = await fetch(path, {
    ...options,
    headers: { Authorization: `Bearer ${state.token}`, "Content-Type": "application/json" },
  });
  const body = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (response.status === 401) showLogin("the token was refused");
  return { status: response.status, body };
}

function showLogin(message) {
  if (state.source) state.source.close();
  state.source = null;
  document.body.classList.remove("authed");
  $("#main").hidden = true;
  $("#login").hidden = false;
  $("#login-error").textContent = message || "";
  $("#token").focus();
}

// -- controls -----------------------------------------------------------------------------

async function control(command) {
  let status, body;
  try {
    ({ status, body } = await api("/api/control", {
      method: "POST",
      body: JSON.stringify({ operator: operator(), ...command }),
    }));
  } catch (_) {  // engine gone or connection broken: the command may or may not have been applied
    $("#last-action").textContent = "failed: no answer from the engine (the command may not have been applied)";
    $("#last-action").className = "last-action error";
    return;
  }
  const text = body.detail || body.error || `HTTP ${status}`;
  $("#last-action").textContent = `${body.ok ? "ok" : "refused"}: ${text}`;
  $("#last-action").className = "last-action" + (body.ok ? "" : " error");
}

$("#halt-all").addEventListener("click", () => {
  if (confirm("Halt quoting in every symbol?")) control({ command: "halt" });
});
$("#resume-all").addEventListener("click", () => control({ command: "resume" }));

// -- push stream --------------------------------------------------------------------------

function setConnected(live) {
  document.body.classList.toggle("live", live);
  document.body.classList.toggle("disconnected", !live);
  $("#conn-status").textContent = live ? "live" : "disconnected";
}

function connect() {
  if (state.source) state.source.close();
  const params = new URLSearchParams({ access_token: state.token });
  if (state.symbol) params.set("symbol", state.symbol);
  const source = new EventSource(`/api/stream?${params}`);
  state.source = source;
  state.connectedAt = performance.now();
  source.addEventListener("hello", (e) => onHello(JSON.parse(e.data)));
  source.addEventListener("state", (e) => onState(JSON.parse(e.data)));
  source.addEventListener("activity", (e) => onActivity(JSON.parse(e.data)));
  source.onerror = async () => {
    setConnected(false);
    if (source.readyState === EventSource.CLOSED) {
      // Refused (401, 404) or gone: ask why, then retry.
      try {
        const { status, body } = await api("/api/overview");
        if (status === 401) return;
        // An engine restarted without the symbol shown refuses it (404): take its first.
        if (status === 200 && !body.symbols.includes(state.symbol)) state.symbol = null;
      } catch (_) { /* engine unreachable */ }
      setTimeout(() => { if (state.source === source) connect(); }, 1000);
    }
  };
}

setInterval(() => {  // a silent stream is a dead engine, whatever the socket says: reconnect
  const quiet = Math.max(3000, 4 * state.pushMs);
  if (state.lastMessage && performance.now() - state.lastMessage > quiet) {
    setConnected(false);
    if (state.source && performance.now() - state.connectedAt > quiet) connect();
  }
}, 500);

function touch() {
  state.lastMessage = performance.now();
  setConnected(true);
}

function onHello(hello) {
  touch();
  state.hello = hello;
  state.pushMs = hello.push_interval_ms;
  state.symbol = hello.symbol;
  const select = $("#symbol");
  const layout = JSON.stringify([hello.symbols, hello.clients]);
  if (state.layout !== layout) {  // first hello, or an engine restarted with another config
    state.layout = layout;
    select.replaceChildren(...hello.symbols.map((s) => el("option", { value: s }, s)));
    const fsym = $("#filter-symbol");
    fsym.replaceChildren(el("option", { value: "" }, "all"), ...hello.symbols.map((s) => el("option", { value: s }, s)));
    const fcl = $("#filter-client");
    fcl.replaceChildren(el("option", { value: "" }, "all"), ...hello.clients.map((c) => el("option", { value: c }, c)));
  }
  select.value = hello.symbol;
  state.rows = [];     // the backlog follows, if the engine has any
  state.unknownRows = [];
  renderBlotter();
}

$("#symbol").addEventListener("change", (e) => {
  state.symbol = e.target.value;
  connect();
});
$("#filter-client").addEventListener("change", renderBlotter);
$("#filter-symbol").addEventListener("change", renderBlotter);

// -- views --------------------------------------------------------------------------------

function onState(s) {
  touch();
  renderDepth(s.depth);
  renderLadder(s.ladder);
  renderOverview(s.overview);
}

const COLORS = ["#4493f8", "#d29922", "#a371f7", "#3fb9a3", "#f778ba", "#8ddb8c", "#ff9b5e", "#79c0ff"];

function renderDepth(d) {
  $("#depth-symbol").textContent = d.symbol;
  $("#best-bid").textContent = dash(d.best_bid);
  $("#best-ask").textContent = dash(d.best_ask);
  $("#mid").textContent = dash(d.mid);
  $("#depth-updated").textContent = new Date(d.ts_ms).toISOString().slice(11, 23);
  $("#depth-updated").dataset.tsMs = d.ts_ms;
  $("#excluded").textContent = d.excluded.length
    ? "excluded: " + d.excluded.map((x) => `${x.venue} ${x.reason} (${x.detail})`).join("; ")
    : "";
  // One x axis (every price of every series), two series (bids, asks) per venue.
  const xs = new Set();
  for (const s of d.series) for (const [p] of s.bids.concat(s.asks)) xs.add(Number(p));
  const x = [...xs].sort((a, b) => a - b);
  const index = new Map(x.map((v, i) => [v, i]));
  const data = [x];
  const series = [{ label: "price" }];
  d.series.forEach((s, i) => {
    const color = i === 0 ? "#e6edf3" : COLORS[(i - 1) % COLORS.length];
    for (const [side, levels, align] of [["bid", s.bids, -1], ["ask", s.asks, 1]]) {
      const ys = new Array(x.length).fill(null);
      for (const [p, q] of levels) ys[index.get(Number(p))] = Number(q);
      data.push(ys);
      series.push({
        label: `${s.venue} ${side}`,
        stroke: color,
        width: i === 0 ? 2.5 : 1,
        dash: side === "ask" && i > 0 ? [4, 3] : undefined,
        spanGaps: true,
        paths: uPlot.paths.stepped({ align }),
        show: i === 0 || s.included,
        value: (u, v) => (v === null || v === undefined ? "-" : v.toFixed(4)),
      });
    }
  });
  const key = d.symbol + "|" + d.series.map((s) => s.venue).join(",");
  const box = $("#depth-chart");
  const width = Math.max(320, box.clientWidth || 600);
  if (!state.chart || state.chartKey !== key) {
    if (state.chart) state.chart.destroy();
    state.chart = new uPlot({
      width, height: 300, series, legend: { live: false },
      scales: { x: { time: false } },
      axes: [
        { stroke: "#8a96a3", grid: { stroke: "#2a323c" }, values: (u, v) => v.map((t) => t.toFixed(2)) },
        { stroke: "#8a96a3", grid: { stroke: "#2a323c" }, label: "cumulative size" },
      ],
    }, data, box);
    state.chartKey = key;
  } else {
    if (Math.abs(state.chart.width - width) > 20) state.chart.setSize({ width, height: 300 });
    state.chart.setData(data);
  }
  box.dataset.points = x.length;
}

function renderLadder(ladder) {
  const body = $("#ladder tbody");
  if (!ladder) { body.replaceChildren(el("tr", {}, el("td", { colSpan: 3 }, "no ladder bands"))); return; }
  body.replaceChildren(...ladder.bands.map((b) => el("tr", {},
    el("td", {}, b.qty), el("td", { class: "bid" }, dash(b.bid)), el("td", { class: "ask" }, dash(b.ask)))));
}

function renderOverview(o) {
  const c = o.controls;
  const halted = c.halted_all ? "ALL HALTED" : c.halted_symbols.length ? `halted: ${c.halted_symbols.join(", ")}` : "";
  $("#halt-state").textContent = halted;
  $("#halt-all").hidden = c.halted_all;
  const b = o.broker;
  $("#broker-state").textContent = b && !b.connected ? `broker ${b.address} lost: reconnecting` : "";

  $("#venues tbody").replaceChildren(...o.venues.map((v) => el("tr", { "data-venue": v.venue },
    el("td", {}, v.venue + (v.source === "sim" ? " (sim)" : "")),
    el("td", { class: v.state === "live" ? "state-live" : "state-bad" }, v.state),
    el("td", {}, dash(v.age_ms)), el("td", {}, `${v.symbols_in_sync}/${v.symbols}`),
    el("td", {}, v.gaps), el("td", {}, v.checksum_failures), el("td", {}, v.resyncs), el("td", {}, v.reconnects),
    el("td", { title: v.books.map((b) => `${b.symbol}: ${b.included ? "ok" : b.reason + " " + b.detail} seq ${dash(b.sequence)}`).join("\n") },
      v.books.map((b) => (b.included ? b.symbol : `${b.symbol}: ${b.reason}`)).join(", ")))));

  $("#symbol-switches").replaceChildren(...o.symbols.map((s) => {
    const on = c.halted_all || c.halted_symbols.includes(s);
    return el("button", {
      type: "button", class: on ? "on" : "", "data-halt-symbol": s,
      title: on ? `resume ${s}` : `halt ${s}`,
      onclick: () => control(on ? { command: "resume", symbol: s } : { command: "halt", symbol: s }),
    }, `${s}: ${on ? "HALTED" : "quoting"}`);
  }));

  const tiers = $("#tier-spreads");
  if (!tiers.contains(document.activeElement)) {
    tiers.replaceChildren(...Object.entries(c.tier_spreads_bps).map(([tier, bps]) => {
      const input = el("input", { value: bps, "data-tier": tier });
      return el("span", {}, `${tier} `, input, el("button", {
        type: "button", "data-set-tier": tier,
        onclick: () => control({ command: "spread", tier, spread_bps: input.value.trim() }),
      }, "set"));
    }));
  }

  $("#clients tbody").replaceChildren(...o.clients.map((cl) => el("tr", { "data-client": cl.client },
    el("td", {}, cl.client), el("td", {}, cl.tier), el("td", {}, cl.spread_bps),
    el("td", {}, cl.daily_notional), el("td", {}, cl.max_daily_notional), el("td", {}, `${cl.daily_used_pct} %`),
    el("td", {}, cl.max_trade_notional),
    el("td", {}, el("button", {
      type: "button", class: cl.enabled ? "" : "on", "data-toggle-client": cl.client,
      onclick: () => control({ command: "client", client: cl.client, enabled: !cl.enabled }),
    }, cl.enabled ? "enabled" : "DISABLED")))));

  $("#inventory tbody").replaceChildren(...o.inventory.map((a) => el("tr", {},
    el("td", {}, a.asset), el("td", { class: sign(a.position) }, a.position), el("td", {}, dash(a.limit)),
    el("td", {}, a.used_pct === null ? "-" : `${a.used_pct} %`))));
  $("#pnl tbody").replaceChildren(...o.pnl.map((p) => el("tr", {},
    el("td", {}, p.symbol), el("td", {}, `${p.position} ${p.base}`), el("td", {}, `${p.cash} ${p.quote}`),
    el("td", {}, dash(p.mid)), el("td", { class: sign(p.pnl) }, p.pnl === null ? "-" : `${p.pnl} ${p.quote}`))));
  const u = o.unknown_clients;
  $("#unknown-clients").textContent = u.kept || u.dropped
    ? `unknown client ids: ${u.kept} events shown, ${u.dropped} dropped (all in the journal)`
    : "";
  $("#markouts tbody").replaceChildren(...o.markouts.map((m) => el("tr", {},
    el("td", {}, m.trade_id), el("td", {}, m.client), el("td", {}, m.symbol), el("td", {}, m.side),
    el("td", {}, m.qty), el("td", {}, m.price),
    ...["1s", "5s", "30s", "60s"].map((h) => el("td", { class: sign(m.markouts_bps[h]) }, dash(m.markouts_bps[h]))),
    el("td", { class: sign(m.now_bps) }, dash(m.now_bps)))));
}

function sign(text) {
  if (text === null || text === undefined) return "";
  return text.startsWith("-") ? "neg" : text === "0" ? "" : "pos";
}

// -- blotter and explanations --------------------------------------------------------------

function onActivity(rows) {
  touch();
  for (const r of rows) (r.unknown_client ? state.unknownRows : state.rows).push(r);
  if (state.rows.length > state.maxRows) state.rows.splice(0, state.rows.length - state.maxRows);
  const unknown = state.unknownRows;
  if (unknown.length > state.maxUnknownRows) unknown.splice(0, unknown.length - state.maxUnknownRows);
  renderBlotter();
}

function mergedRows() {  // the desk's rows and the unknown clients', by seq
  const a = state.rows, b = state.unknownRows, out = [];
  let i = 0, j = 0;
  while (i < a.length || j < b.length) {
    if (j >= b.length || (i < a.length && a[i].seq < b[j].seq)) out.push(a[i++]);
    else out.push(b[j++]);
  }
  return out;
}

function renderBlotter() {
  const client = $("#filter-client").value;
  const symbol = $("#filter-symbol").value;
  const rows = state.unknownRows.length ? mergedRows() : state.rows;
  const shown = rows.filter((r) => (!client || r.client === client) && (!symbol || r.symbol === symbol));
  const body = $("#blotter tbody");
  body.replaceChildren(...shown.slice(-300).reverse().map((r) => {
    const tr = el("tr", {
      class: `k-${r.kind}` + (r.kind === "quote" ? " quote" : "") + (r.quote_id && r.quote_id === state.selectedQuote ? " selected" : ""),
      "data-kind": r.kind, "data-seq": r.seq, "data-quote-id": r.quote_id, "data-rfq-id": r.rfq_id,
    },
      el("td", {}, new Date(r.ts_ms).toISOString().slice(11, 23)), el("td", {}, r.kind),
      el("td", {}, r.kind === "control" ? r.operator : r.client), el("td", {}, r.symbol), el("td", {}, r.side),
      el("td", {}, dash(r.qty ?? r.notional)), el("td", { class: "bid" }, dash(r.bid)), el("td", { class: "ask" }, dash(r.ask)),
      el("td", {}, dash(r.price)), el("td", { title: r.reason }, r.code ? `${r.code}: ${r.reason}` : r.kind === "control" && r.client ? `${r.client} ${r.detail}` : r.detail || r.reason),
      el("td", {}, r.trade_id || r.quote_id || r.rfq_id));
    if (r.kind === "quote") tr.addEventListener("click", () => explain(r.quote_id));
    return tr;
  }));
}

async function explain(quoteId) {
  state.selectedQuote = quoteId;
  renderBlotter();
  $("#explanation-id").textContent = quoteId;
  const { status, body } = await api(`/api/quotes/${encodeURIComponent(quoteId)}`);
  const box = $("#explanation");
  if (status !== 200) { box.replaceChildren(el("p", { class: "error" }, body.error)); return; }
  const blocks = Object.entries(body.explanation).map(([key, e]) => {
    const rows = [
      ["side (client)", `${e.side} (our ${key})`], ["qty", e.qty], ["mid", e.mid],
      ["hedge VWAP", dash(e.hedge_vwap)], ["hedge all-in", e.hedge_all_in],
      ["route", Object.entries(e.route).map(([v, f]) => `${v} ${f.qty} (${f.notional})`).join(", ")],
      ["spread bps", e.spread_bps], ["risk bps", `${e.risk_bps} (vol ${e.risk_volatility_bps} + size ${e.risk_size_bps})`],
      ["skew bps", e.skew_bps], ["price raw", e.price_raw], ["price", e.price],
      ["books", Object.entries(e.books).map(([v, b]) => `${v} seq ${dash(b.sequence)} age ${b.age_ms} ms`).join(", ")],
    ];
    if (e.model_qty && e.model_qty !== "0") rows.push(["model qty", e.model_qty]);
    if (e.excluded && e.excluded.length) rows.push(["excluded", e.excluded.map((x) => `${x.venue} ${x.reason}`).join(", ")]);
    return el("table", { "data-side": key }, el("tbody", {}, ...rows.map(([k, v]) => el("tr", {}, el("td", {}, k), el("td", {}, v)))));
  });
  box.replaceChildren(el("p", {}, `${body.client} (tier ${body.tier}), rfq ${body.rfq_id}`), ...blocks);
}

// -- start ---------------------------------------------------------------------------------

$("#login").addEventListener("submit", (e) => {
  e.preventDefault();
  const token = $("#token").value.trim();
  if (!token) return;
  sessionStorage.setItem("otc-token", token);
  start(token);
});

function start(token) {
  state.token = token;
  $("#login").hidden = true;
  $("#main").hidden = false;
  document.body.classList.add("authed");
  connect();
}

$("#operator").value = localStorage.getItem("otc-operator") || "console";
const saved = readToken();
if (saved) start(saved); else showLogin("");
