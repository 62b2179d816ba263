// The status page: polls api/status every 2 s and draws each bridge with DOM nodes
// (textContent only, never HTML from the server). No dependencies.
"use strict";

(() => {
  const POLL_MS = 2000;
  const FETCH_TIMEOUT_MS = 5000;
  const SVG_NS = "http://www.w3.org/2000/svg";
  const CHART_W = 600;
  const CHART_H = 120;
  const clientsOpen = new Map(); // bridge name -> is its clients list unfolded

  const byId = (id) => document.getElementById(id);

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  }

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
    return node;
  }

  const integer = (n) => (typeof n === "number" ? String(Math.round(n)) : "–");

  function millis(value) {
    if (typeof value !== "number") return "–";
    if (value >= 100) return value.toFixed(0);
    return value >= 10 ? value.toFixed(1) : value.toFixed(2);
  }

  function duration(seconds) {
    if (typeof seconds !== "number") return "–";
    if (seconds < 10) return `${seconds.toFixed(1)} s`;
    if (seconds < 60) return `${Math.floor(seconds)} s`;
    const minutes = Math.floor(seconds / 60);
    if (minutes < 60) return `${minutes} min ${Math.floor(seconds % 60)} s`;
    const hours = Math.floor(minutes / 60);
    if (hours < 48) return `${hours} h ${minutes % 60} min`;
    return `${Math.floor(hours / 24)} d ${hours % 24} h`;
  }

  const ago = (seconds) => (typeof seconds === "number" ? `${duration(seconds)} ago` : "never");

  // The smallest 1, 2 or 5 times a power of ten at or above `value` (at least `floor`).
  function niceMax(value, floor) {
    const target = Math.max(value, floor);
    const power = 10 ** Math.floor(Math.log10(target));
    for (const step of [1, 2, 5, 10]) if (step * power >= target) return step * power;
    return 10 * power;
  }

  function fact(label, value, attrs) {
    return el("div", attrs, el("dt", {}, label), el("dd", {}, value));
  }

  function tile(label, value, field, note) {
    return el(
      "div",
      { class: "tile" },
      el("span", { class: "tile-label" }, label),
      el("span", { class: "tile-value", "data-field": field }, value),
      note ? el("span", { class: "tile-note" }, note) : null,
    );
  }

  // latency_ms is the newest history point's; a window without requests has none.
  function latencyTile(latency, history) {
    const newest = history.reduce((a, p) => (a && a.age_seconds <= p.age_seconds ? a : p), null);
    const idle = newest !== null && !newest.requests_per_second;
    const part = (label, value, field) =>
      el(
        "span",
        { class: "latency-part" },
        el("span", { class: "tile-note" }, label),
        el("span", { class: "tile-value", "data-field": field }, idle ? "–" : millis(value)),
      );
    return el(
      "div",
      { class: "tile tile-latency" },
      el("span", { class: "tile-label" }, "Latency, ms (last 5 s)"),
      el("span", { class: "latency-parts" }, part("mean", latency.mean, "latency_mean"), part("p50", latency.p50, "latency_p50"), part("p99", latency.p99, "latency_p99")),
    );
  }

  function gatewayNote(reasons) {
    const hit = Object.entries(reasons).filter(([, count]) => count > 0);
    if (!hit.length) return "none";
    const note = el("span", {});
    hit.forEach(([reason, count], index) => {
      if (index) note.append(" · ");
      note.append(el("span", { "data-reason": reason }, `${reason} ${count}`));
    });
    return note;
  }

  function chart(history) {
    const figure = el("figure", { class: "chart" });
    const points = [...history].sort((a, b) => b.age_seconds - a.age_seconds); // oldest first
    if (!points.length) {
      figure.append(el("p", { class: "chart-empty" }, "The chart starts after the first samples (one every 5 s)."));
      return figure;
    }
    if (points.length === 1) points.push({ ...points[0], age_seconds: 0 });
    const oldest = points[0].age_seconds;
    const span = Math.max(oldest - points[points.length - 1].age_seconds, 1e-9);
    const rateMax = niceMax(Math.max(...points.map((p) => p.requests_per_second || 0)), 1);
    const p99Max = niceMax(Math.max(...points.map((p) => p.p99_ms || 0)), 1);
    const x = (p) => ((oldest - p.age_seconds) / span) * CHART_W;
    const y = (value, max) => CHART_H - (Math.min(value || 0, max) / max) * (CHART_H - 4);
    const line = (value, max) =>
      points.map((p, i) => `${i ? "L" : "M"}${x(p).toFixed(1)},${y(value(p), max).toFixed(1)}`).join(" ");
    const rateLine = line((p) => p.requests_per_second, rateMax);

    const plot = svg("svg", {
      viewBox: `0 0 ${CHART_W} ${CHART_H}`,
      preserveAspectRatio: "none",
      role: "img",
      "aria-label": "request rate and p99 latency",
    });
    for (const fraction of [0.25, 0.5, 0.75]) {
      const at = (CHART_H * fraction).toFixed(1);
      plot.append(svg("path", { class: "grid", d: `M0,${at} H${CHART_W}` }));
    }
    plot.append(svg("path", { class: "rate-area", d: `${rateLine} L${CHART_W},${CHART_H} L0,${CHART_H} Z` }));
    plot.append(svg("path", { class: "rate-line", d: rateLine }));
    plot.append(svg("path", { class: "p99-line", d: line((p) => p.p99_ms, p99Max) }));

    figure.append(
      el(
        "div",
        { class: "chart-plot" },
        el("span", { class: "axis axis-left" }, `${rateMax} req/s`),
        el("span", { class: "axis axis-right" }, `${p99Max} ms`),
        plot,
      ),
      el(
        "figcaption",
        { class: "chart-caption" },
        el("span", { class: "key key-rate" }, "requests/s"),
        el("span", { class: "key key-p99" }, "p99 latency"),
        el("span", { class: "chart-span" }, `last ${duration(oldest)} → now`),
      ),
    );
    return figure;
  }

  function clientsTable(name, clients) {
    const details = el("details", { class: "clients", open: clientsOpen.get(name) ?? true });
    details.addEventListener("toggle", () => clientsOpen.set(name, details.open));
    details.append(el("summary", {}, `Clients (${clients.length} address${clients.length === 1 ? "" : "es"})`));
    if (!clients.length) {
      details.append(el("p", { class: "muted" }, "No client has connected yet."));
      return details;
    }
    const head = el("tr", {}, ...["Address", "Conn.", "Requests", "Errors", "Last seen"].map((h) => el("th", { scope: "col" }, h)));
    const rows = clients.map((c) =>
      el(
        "tr",
        { "data-client": c.address },
        el("td", { class: "address" }, c.address),
        el("td", { class: "num", "data-client-field": "connections" }, integer(c.connections)),
        el("td", { class: "num", "data-client-field": "requests" }, integer(c.requests)),
        el("td", { class: c.errors ? "num bad-text" : "num", "data-client-field": "errors" }, integer(c.errors)),
        el("td", { class: "num" }, ago(c.last_seen_seconds_ago)),
      ),
    );
    details.append(el("div", { class: "table-wrap" }, el("table", {}, el("thead", {}, head), el("tbody", {}, ...rows))));
    return details;
  }

  function routesList(targets) {
    // A bridge with Modbus routes: each target, the units it serves, and its state.
    const items = targets.map((t) =>
      el(
        "li",
        { "data-target": t.target },
        el("span", { class: `badge badge-${t.state}` }, t.state),
        " ",
        el("span", { class: "units" }, t.units === "others" ? "other units" : `units ${t.units}`),
        " → ",
        el("span", { class: "address" }, t.target),
        t.last_error ? el("span", { class: "bad-text" }, ` (${t.last_error})`) : "",
      ),
    );
    return el("ul", { class: "routes" }, ...items);
  }

  function pollsTable(targets) {
    // Modbus targets with a register image: what it holds and each polled range.
    const imaged = targets.filter((t) => t.image_values !== undefined);
    if (!imaged.length) return null;
    const held = imaged.reduce((sum, t) => sum + t.image_values, 0);
    const polls = imaged.flatMap((t) => (t.polls || []).map((p) => ({ ...p, target: t.target })));
    const details = el("details", { class: "polls", open: true });
    details.append(el("summary", {}, `Register image (${integer(held)} values held, ${polls.length} polled range${polls.length === 1 ? "" : "s"})`));
    if (!polls.length) {
      details.append(el("p", { class: "muted" }, "No polls: the image holds what clients read."));
      return details;
    }
    const head = el("tr", {}, ...["Range", "Every", "Oldest value", "Late", "Last error"].map((h) => el("th", { scope: "col" }, h)));
    const rows = polls.map((p) =>
      el(
        "tr",
        { "data-poll": `${p.unit}:${p.table}:${p.address}:${p.count}` },
        el("td", { class: "address" }, `unit ${p.unit} ${p.table} ${p.address}-${p.address + p.count - 1}` + (p.merged ? ` (${p.merged} merged)` : "")),
        el("td", { class: "num" }, duration(p.every)),
        el("td", { class: "num", "data-poll-field": "oldest_age" }, p.oldest_age === null ? "not read" : `${p.oldest_age.toFixed(1)} s`),
        el("td", { class: "num" }, integer(p.late)),
        el("td", { class: p.last_error ? "bad-text" : "muted", "data-poll-field": "last_error" }, p.last_error || "none"),
      ),
    );
    details.append(el("div", { class: "table-wrap" }, el("table", {}, el("thead", {}, head), el("tbody", {}, ...rows))));
    return details;
  }

  function pointsTable(targets) {
    // The bridge's named values (Modbus points), as read from the register image.
    const points = targets.flatMap((t) => Object.entries(t.points || {}));
    if (!points.length) return null;
    const details = el("details", { class: "points", open: true });
    details.append(el("summary", {}, `Values (${points.length} point${points.length === 1 ? "" : "s"})`));
    const head = el("tr", {}, ...["Point", "Value", "Age", "Quality"].map((h) => el("th", { scope: "col" }, h)));
    const shown = (p) => (p.value === null ? "unknown" : `${p.value}${p["unit-of-measurement"] ? ` ${p["unit-of-measurement"]}` : ""}`);
    const rows = points.map(([name, p]) =>
      el(
        "tr",
        { "data-point": name },
        el("td", { class: "address" }, name),
        el("td", { class: "num", "data-point-field": "value" }, shown(p)),
        el("td", { class: "num", "data-point-field": "age" }, p.age === null ? "never" : `${p.age.toFixed(1)} s`),
        el("td", { class: p.quality === "fresh" ? "muted" : "bad-text", "data-point-field": "quality" }, p.quality),
      ),
    );
    details.append(el("div", { class: "table-wrap" }, el("table", {}, el("thead", {}, head), el("tbody", {}, ...rows))));
    return details;
  }

  function bridgeCard(b) {
    const gatewayTotal = Object.values(b.gateway_answers).reduce((sum, n) => sum + n, 0);
    const facts = el(
      "dl",
      { class: "facts facts-bridge" },
      fact("Listen", b.listen.join(", ") || "not listening"),
      fact("Target", b.target),
      fact("Target connections", `${b.target_connections} of ${b.max_connections}`),
      fact("Last answer", ago(b.last_answer_age_seconds)),
    );
    if (b.last_error) facts.append(fact("Last error", b.last_error, { class: "fact-error" }));
    const routed = (b.targets || []).length > 1 ? routesList(b.targets) : null;
    return el(
      "section",
      { class: `card state-${b.state}`, "data-bridge": b.name },
      el(
        "header",
        { class: "card-head" },
        el("h2", {}, b.name),
        el("span", { class: "tag" }, b.protocol),
        el("span", { class: `badge badge-${b.state}`, "data-field": "state" }, b.state),
        el("span", { class: b.healthy ? "health ok" : "health bad", "data-field": "healthy" }, b.healthy ? "healthy" : "unhealthy"),
      ),
      facts,
      ...(routed ? [routed] : []),
      el(
        "div",
        { class: "tiles" },
        tile("Clients", integer(b.clients_connected), "clients_connected", `${b.clients_accepted} accepted`),
        tile("Requests", integer(b.requests), "requests"),
        tile("Answers", integer(b.answers), "answers", `${b.local_answers} local`),
        tile("Gateway answers", integer(gatewayTotal), "gateway_answers", gatewayNote(b.gateway_answers)),
        latencyTile(b.latency_ms || {}, b.history || []),
      ),
      chart(b.history || []),
      ...[pointsTable(b.targets || []), pollsTable(b.targets || [])].filter(Boolean),
      clientsTable(b.name, b.clients || []),
    );
  }

  function render(doc) {
    byId("version").textContent = `v${doc.version}`;
    byId("uptime").textContent = duration(doc.uptime_seconds);
    byId("ready").textContent = doc.ready ? "yes" : "starting";
    byId("updated").textContent = new Date().toLocaleTimeString();
    const cards = doc.bridges.map(bridgeCard);
    byId("bridges").replaceChildren(...(cards.length ? cards : [el("p", { class: "empty" }, "No bridges.")]));
  }

  function reachable(ok, error) {
    document.body.dataset.state = ok ? "ok" : "unreachable";
    byId("banner").hidden = ok;
    if (!ok) {
      const reason = error && error.name === "AbortError" ? "no answer within 5 s" : String(error && error.message);
      byId("banner-detail").textContent = `(${reason})`;
    }
  }

  async function poll() {
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), FETCH_TIMEOUT_MS);
    let doc = null;
    try {
      const answer = await fetch("api/status", { cache: "no-store", signal: abort.signal });
      if (!answer.ok) throw new Error(`HTTP ${answer.status}`);
      doc = await answer.json();
      reachable(true);
    } catch (error) {
      reachable(false, error);
    } finally {
      clearTimeout(timer);
      setTimeout(poll, POLL_MS);
    }
    if (doc) render(doc);
  }

  poll();
})();
