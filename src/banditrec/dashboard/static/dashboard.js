// banditrec dashboard: polls GET /v1/dashboard/data and draws every panel as SVG.
// No library, nothing fetched from elsewhere. When the server has API keys, the reader key
// is kept in this tab's sessionStorage and sent as X-API-Key on every data call.
"use strict";

(function () {
  const KEY_STORE = "banditrec.apiKey";
  const DATA_URL = "/v1/dashboard/data";
  const params = new URLSearchParams(window.location.search);
  const POLL_MS = Math.max(250, Number(params.get("interval")) || 2000);
  const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2",
    "#ca8a04", "#db2777", "#4b5563", "#65a30d"];
  const SVG = "http://www.w3.org/2000/svg";
  const keysRequired = document.body.dataset.keysRequired === "true";
  let timer = null;

  // -- small helpers ----------------------------------------------------------------------

  function $(id) { return document.getElementById(id); }

  function fmt(v, digits) {
    if (v === null || v === undefined || Number.isNaN(v)) return "–";
    return Number(v).toFixed(digits === undefined ? 3 : digits);
  }

  function fmtInterval(e, digits) {
    if (!e) return "no data yet";
    return fmt(e.mean, digits) + " [" + fmt(e.low, digits) + ", " + fmt(e.high, digits) + "]";
  }

  function setStatus(text, isError) {
    const el = $("status");
    el.textContent = text;
    el.classList.toggle("error", Boolean(isError));
  }

  function tiles(id, items) {
    const box = $(id);
    box.replaceChildren();
    for (const [label, value] of items) {
      const tile = document.createElement("div");
      tile.className = "tile";
      const k = document.createElement("div");
      k.className = "k";
      k.textContent = label;
      const v = document.createElement("div");
      v.className = "v";
      v.textContent = value;
      tile.append(k, v);
      box.append(tile);
    }
  }

  // Charts are drawn at the pixel width of their box, so their text keeps its size.
  function width(id) { return Math.max(320, Math.round($(id).clientWidth || 640)); }

  function node(name, attrs, parent) {
    const el = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
    if (parent) parent.append(el);
    return el;
  }

  function text(parent, x, y, content, anchor) {
    const el = node("text", { x: x, y: y, "text-anchor": anchor || "start" }, parent);
    el.textContent = content;
    return el;
  }

  function setState(panelId, ready) {
    $(panelId).dataset.state = ready ? "ready" : "empty";
  }

  // -- charts -----------------------------------------------------------------------------

  // A time chart: series of [t, v] (null v: a gap), optional bands [t, lo, hi], vertical
  // markers {t, label}, over the window [t0, t1]. Returns the number of points drawn.
  function timeChart(id, spec) {
    const W = width(id), H = spec.height || 160, L = 44, R = 8, T = 8, B = 18;
    const svg = node("svg", { viewBox: "0 0 " + W + " " + H, width: W, height: H, role: "img" });
    let lo = spec.min !== undefined ? spec.min : Infinity;
    let hi = spec.max !== undefined ? spec.max : -Infinity;
    let drawn = 0;
    for (const s of spec.series) {
      for (const p of s.points) if (p[1] !== null) { lo = Math.min(lo, p[1]); hi = Math.max(hi, p[1]); }
      for (const b of s.band || []) { lo = Math.min(lo, b[1]); hi = Math.max(hi, b[2]); }
    }
    if (!Number.isFinite(lo) || !Number.isFinite(hi)) { lo = 0; hi = 1; }
    if (hi - lo < 1e-9) { hi = lo + 1; }
    const x = (t) => L + (W - L - R) * (t - spec.t0) / (spec.t1 - spec.t0);
    const y = (v) => T + (H - T - B) * (1 - (v - lo) / (hi - lo));
    node("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: "#d7dde3" }, svg);
    text(svg, L - 4, T + 8, fmt(hi, spec.digits), "end");
    text(svg, L - 4, H - B, fmt(lo, spec.digits), "end");
    text(svg, L, H - 4, new Date(spec.t0 * 1000).toLocaleTimeString());
    text(svg, W - R, H - 4, new Date(spec.t1 * 1000).toLocaleTimeString(), "end");
    if (lo < 0 && hi > 0) {
      node("line", { x1: L, y1: y(0), x2: W - R, y2: y(0), stroke: "#9aa4ae",
        "stroke-dasharray": "2 3" }, svg);
    }
    (spec.markers || []).filter((m) => m.t >= spec.t0).forEach(function (m, i) {
      node("line", { x1: x(m.t), y1: T, x2: x(m.t), y2: H - B, stroke: "#9333ea",
        "stroke-dasharray": "4 3" }, svg);
      const right = x(m.t) > W / 2;  // labels staggered, so neighbours do not overlap
      text(svg, x(m.t) + (right ? -3 : 3), H - B - 4 - 11 * (i % 4), m.label,
        right ? "end" : "start").setAttribute("fill", "#9333ea");
    });
    spec.series.forEach(function (s, i) {
      const color = s.color || COLORS[i % COLORS.length];
      const band = (s.band || []).filter((b) => b[1] !== null && b[2] !== null);
      if (band.length) {
        const up = band.map((b) => x(b[0]) + "," + y(b[2]));
        const down = band.slice().reverse().map((b) => x(b[0]) + "," + y(b[1]));
        node("polygon", { points: up.concat(down).join(" "), fill: color,
          "fill-opacity": 0.12, stroke: "none" }, svg);
      }
      let path = "";
      let pen = false;
      for (const p of s.points) {
        if (p[1] === null) { pen = false; continue; }
        path += (pen ? "L" : "M") + x(p[0]).toFixed(1) + "," + y(p[1]).toFixed(1);
        pen = true;
        drawn += 1;
        if (s.dots) node("circle", { cx: x(p[0]), cy: y(p[1]), r: 1.8, fill: color }, svg);
      }
      if (path) node("path", { d: path, fill: "none", stroke: color, "stroke-width": 1.6 }, svg);
      text(svg, W - R - 4, T + 10 + 11 * i, s.name, "end").setAttribute("fill", color);
    });
    $(id).replaceChildren(svg);
    return drawn;
  }

  // Shares of each key per bucket, stacked (each bucket sums to 1 where it has traffic).
  function stackedChart(id, t0, t1, rows, keys) {
    const W = width(id), H = 160, L = 44, R = 8, T = 8, B = 18;
    const svg = node("svg", { viewBox: "0 0 " + W + " " + H, width: W, height: H, role: "img" });
    const step = rows.length > 1 ? rows[1].t - rows[0].t : 5;
    const x = (t) => L + (W - L - R) * (t - t0) / (t1 - t0);
    const y = (v) => T + (H - T - B) * (1 - v);
    text(svg, L - 4, T + 8, "100%", "end");
    text(svg, L - 4, H - B, "0%", "end");
    text(svg, L, H - 4, new Date(t0 * 1000).toLocaleTimeString());
    text(svg, W - R, H - 4, new Date(t1 * 1000).toLocaleTimeString(), "end");
    let drawn = 0;
    for (const row of rows) {
      const total = keys.reduce((s, k) => s + (row.by_action[k] || 0), 0);
      if (total <= 0) continue;
      let base = 0;
      keys.forEach(function (k, i) {
        const share = (row.by_action[k] || 0) / total;
        if (share <= 0) return;
        node("rect", { x: x(row.t), y: y(base + share), width: Math.max(1, x(row.t + step) - x(row.t)),
          height: y(base) - y(base + share), fill: COLORS[i % COLORS.length] }, svg);
        base += share;
      });
      drawn += 1;
    }
    $(id).replaceChildren(svg);
    return drawn;
  }

  function barChart(id, labels, values) {
    const W = width(id), H = 120, B = 18, T = 8;
    const svg = node("svg", { viewBox: "0 0 " + W + " " + H, width: W, height: H, role: "img" });
    const top = Math.max(1, ...values);
    const w = W / labels.length;
    labels.forEach(function (label, i) {
      const h = (H - B - T) * values[i] / top;
      node("rect", { x: i * w + 2, y: H - B - h, width: w - 4, height: h, fill: COLORS[0] }, svg);
      text(svg, i * w + w / 2, H - 4, label, "middle");
      if (values[i] > 0) text(svg, i * w + w / 2, H - B - h - 2, String(values[i]), "middle");
    });
    $(id).replaceChildren(svg);
    return values.reduce((a, b) => a + b, 0);
  }

  // -- panels -----------------------------------------------------------------------------

  function series(rows, pick) { return rows.map((r) => [r.t, pick(r)]); }
  function bandOf(rows, pick) {
    return rows.filter((r) => pick(r)).map((r) => [r.t, pick(r).low, pick(r).high]);
  }

  // Vertical markers: where the version serving the decisions changed, and the learn
  // stream's switches and action changes (the lifecycle's switch records carry their exact
  // time; the others are placed when the dashboard read them).
  function markers(data) {
    const out = data.switches.map((s) => ({ t: s.t, label: s.to }));
    const timed = new Set();
    for (const s of (data.lifecycle && data.lifecycle.switches) || []) {
      out.push({ t: s.at, label: s.kind + " " + s.target });
      timed.add(s.seq);
    }
    for (const e of data.timeline) {
      if (!timed.has(e.seq)) out.push({ t: e.t, label: e.kind + " " + e.target });
    }
    return out;
  }

  // The time axis starts at the first bucket with data (at least a minute back), so a
  // server that started a moment ago is not a sliver at the right of a 10-minute window.
  function axisStart(data) {
    const first = data.buckets.find((r) => r.resolved > 0 || r.decisions > 0);
    const earliest = data.now - data.window_seconds;
    if (!first) return earliest;
    return Math.max(earliest, Math.min(first.t - data.bucket_seconds, data.now - 60));
  }

  function render(data) {
    const t1 = data.now, t0 = axisStart(data);
    const rows = data.buckets.filter((r) => r.t >= t0);
    const w = data.window;
    const marks = markers(data);
    $("model-line").textContent = "model " + data.model.version + " · " + data.model.policy +
      " · serving " + data.model.serving;

    // Reward rate against the baselines.
    tiles("reward-tiles", [
      ["served reward (window)", fmtInterval(w.reward)],
      ["uniform random (IPS)", fmtInterval(w.uniform)],
      ["app's rule (apprentice)", w.apprentice_baseline ? fmtInterval(w.apprentice_baseline)
        : "no apprentice decisions"],
      ["decisions with a reward", String(w.resolved)],
    ]);
    const rewardSeries = [
      { name: "served", points: series(rows, (r) => r.reward && r.reward.mean),
        band: bandOf(rows, (r) => r.reward), dots: true },
      { name: "uniform random (IPS)", points: series(rows, (r) => r.uniform && r.uniform.mean) },
    ];
    if (w.apprentice_baseline) {
      rewardSeries.push({ name: "app's rule (IPS)",
        points: series(rows, (r) => r.apprentice_baseline && r.apprentice_baseline.mean) });
    }
    setState("panel-reward", timeChart("chart-reward", { t0: t0, t1: t1, series: rewardSeries,
      markers: marks }) > 0);

    // Lift.
    tiles("lift-tiles", [
      ["served − uniform", fmtInterval(w.lift)],
      ["own − app's rule", w.apprentice_lift ? fmtInterval(w.apprentice_lift)
        : "no apprentice decisions"],
    ]);
    setState("panel-lift", timeChart("chart-lift", { t0: t0, t1: t1, markers: marks, series: [
      { name: "served − uniform", points: series(rows, (r) => r.lift && r.lift.mean),
        band: bandOf(rows, (r) => r.lift), dots: true },
    ] }) > 0);

    // Traffic share.
    const names = data.actions.map((a) => a.action_id);
    const legend = $("legend-traffic");
    legend.replaceChildren();
    names.forEach(function (name, i) {
      const item = document.createElement("span");
      const swatch = document.createElement("i");
      swatch.style.background = COLORS[i % COLORS.length];
      const total = w.by_action[name] || 0;
      item.append(swatch, document.createTextNode(name + " " + (w.decisions > 0
        ? (100 * total / w.decisions).toFixed(1) + "%" : "")));
      legend.append(item);
    });
    setState("panel-traffic", stackedChart("chart-traffic", t0, t1, rows, names) > 0);

    // Rewards arriving.
    tiles("rewards-tiles", [
      ["join rate", w.join_rate === null ? "–" : (100 * w.join_rate).toFixed(1) + "%"],
      ["default-reward share", w.default_share === null ? "–"
        : (100 * w.default_share).toFixed(1) + "%"],
      ["backlog (defaults due)", w.backlog === null ? "–" : String(w.backlog)],
    ]);
    const joined = timeChart("chart-rewards", { t0: t0, t1: t1, min: 0, markers: marks, series: [
      { name: "join rate", points: series(rows, (r) => r.join_rate) },
      { name: "default share", points: series(rows, (r) => r.default_share) },
    ] });
    setState("panel-rewards", joined > 0 && w.backlog !== null);

    // Exploration.
    const edges = data.probability_edges;
    const labels = edges.map((e, i) => "≤" + e);
    tiles("exploration-tiles", [
      ["entropy (nats, mean)", fmt(w.entropy)],
      ["ESS for uniform", w.ess ? fmt(w.ess.ess, 0) + " of " + w.ess.n + " (" +
        (100 * w.ess.share).toFixed(0) + "%)" : "–"],
    ]);
    const served = barChart("chart-probabilities", labels, w.probabilities);
    timeChart("chart-entropy", { t0: t0, t1: t1, min: 0, markers: marks, series: [
      { name: "entropy", points: series(rows, (r) => r.entropy) },
      { name: "ESS share", points: series(rows, (r) => r.ess && r.ess.share) },
    ] });
    setState("panel-exploration", served > 0);

    // Service.
    const last = rows.slice().reverse().find((r) => r.decisions_per_second !== null);
    tiles("service-tiles", [
      ["decisions/s (last)", last ? fmt(last.decisions_per_second, 1) : "–"],
      ["latency p50 / p90 / p99 (ms)", fmt(w.latency_ms.p50, 2) + " / " +
        fmt(w.latency_ms.p90, 2) + " / " + fmt(w.latency_ms.p99, 2)],
      ["errors 5xx / 4xx", w.errors + " / " + w.client_errors],
    ]);
    const rate = timeChart("chart-rate", { t0: t0, t1: t1, min: 0, markers: marks, digits: 1,
      series: [
        { name: "decisions/s", points: series(rows, (r) => r.decisions_per_second) },
        { name: "errors/s", points: series(rows, (r) => r.seconds > 0 ? r.errors / r.seconds : null) },
      ] });
    timeChart("chart-latency", { t0: t0, t1: t1, min: 0, markers: marks, digits: 2, series: [
      { name: "p50 ms", points: series(rows, (r) => r.latency_ms.p50) },
      { name: "p90 ms", points: series(rows, (r) => r.latency_ms.p90) },
      { name: "p99 ms", points: series(rows, (r) => r.latency_ms.p99) },
    ] });
    setState("panel-service", rate > 0);

    // Versions: one row per version seen, a dot where it served decisions.
    const versions = [];
    for (const r of rows) for (const v of r.versions) if (!versions.includes(v)) versions.push(v);
    const versionSeries = versions.map((v, i) => ({ name: v, dots: true,
      points: rows.map((r) => [r.t, r.versions.includes(v) ? i + 1 : null]) }));
    const strip = timeChart("chart-versions", { t0: t0, t1: t1, min: 0, max: versions.length + 1,
      digits: 0, height: 60 + 14 * versions.length, markers: marks, series: versionSeries });
    const list = $("timeline");
    list.replaceChildren();
    for (const e of data.timeline.slice().reverse()) {
      const li = document.createElement("li");
      li.textContent = new Date(e.t * 1000).toLocaleTimeString() + " · " + e.kind + " " +
        e.target + " (learn event " + e.seq + ")";
      list.append(li);
    }
    setState("panel-versions", strip > 0);

    // Actions.
    const body = $("actions-table").tBodies[0];
    body.replaceChildren();
    for (const a of data.actions) {
      const tr = document.createElement("tr");
      for (const [value, cls] of [[a.action_id, ""], [a.enabled ? "enabled" : "disabled",
        a.enabled ? "" : "off"], [String(a.n_updates), ""]]) {
        const td = document.createElement("td");
        td.textContent = value;
        if (cls) td.className = cls;
        tr.append(td);
      }
      body.append(tr);
    }
    setState("panel-actions", data.actions.length > 0);

    renderLifecycle(data.lifecycle);
  }

  function fmtEstimate(e) {
    if (!e) return "no estimate yet";
    return fmt(e.value) + " [" + fmt(e.ci_low) + ", " + fmt(e.ci_high) + "]";
  }

  function table(head, rows) {
    const t = document.createElement("table");
    const tr = t.createTHead().insertRow();
    for (const h of head) { const th = document.createElement("th"); th.textContent = h; tr.append(th); }
    const body = t.createTBody();
    for (const row of rows) {
      const r = body.insertRow();
      for (const cell of row) r.insertCell().textContent = cell;
    }
    return t;
  }

  // What the lifecycle service reports: serving mode, versions, the apprentice's lift over
  // the app's rule, the guardrail, and every shadow candidate with its estimate.
  function renderLifecycle(lifecycle) {
    if (!lifecycle) { setState("panel-lifecycle", false); return; }
    const box = $("lifecycle-body");
    box.replaceChildren();
    const tilesBox = document.createElement("div");
    tilesBox.className = "tiles";
    tilesBox.id = "lifecycle-tiles";
    box.append(tilesBox);
    const a = lifecycle.apprentice || {};
    const est = a.estimate || null;
    tiles("lifecycle-tiles", [
      ["serving", lifecycle.serving],
      ["live version", lifecycle.live_version || "base"],
      ["previous version", lifecycle.previous_version || "–"],
      ["apprentice lift (own − rule)", est ? fmtEstimate(est.lift) : "no estimate yet"],
      ["lower bound > 0 since", a.lower_bound_above_zero_since
        ? new Date(a.lower_bound_above_zero_since * 1000).toLocaleTimeString() : "–"],
      ["guardrail lift", lifecycle.guardrail ? fmtEstimate(lifecycle.guardrail.lift) : "–"],
    ]);
    const candidates = lifecycle.candidates || [];
    if (candidates.length) {
      box.append(table(["candidate", "policy", "running", "value", "lift", "passes gate"],
        candidates.map((c) => [c.name, c.policy || "model file", c.running ? "yes" : "no",
          c.estimate ? fmtEstimate(c.estimate.value) : "–",
          c.estimate ? fmtEstimate(c.estimate.lift) : "–", c.passes_gate ? "yes" : "no"])));
    } else {
      const p = document.createElement("p");
      p.className = "empty";
      p.textContent = "No shadow candidates (POST /v1/admin/candidates adds one).";
      box.append(p);
    }
    setState("panel-lifecycle", true);
  }

  // -- polling and the key ------------------------------------------------------------------

  function storedKey() { return window.sessionStorage.getItem(KEY_STORE) || ""; }

  async function poll() {
    timer = null;
    const key = storedKey();
    if (keysRequired && !key) {
      setStatus("This server requires a key: enter a reader key above.", true);
      return;
    }
    const headers = key ? { "X-API-Key": key } : {};
    let response;
    try {
      response = await fetch(DATA_URL, { headers: headers, cache: "no-store" });
    } catch (err) {
      setStatus("The server cannot be reached (" + err.message + "); retrying.", true);
      timer = window.setTimeout(poll, POLL_MS);
      return;
    }
    if (response.status === 401 || response.status === 403) {
      const body = await response.json().catch(() => ({}));
      window.sessionStorage.removeItem(KEY_STORE);
      setStatus("The key was refused (" + response.status + " " + (body.error || "") +
        "): enter a reader key above.", true);
      return;
    }
    if (!response.ok) {
      setStatus("The data call failed (" + response.status + "); retrying.", true);
      timer = window.setTimeout(poll, POLL_MS);
      return;
    }
    const data = await response.json();
    render(data);
    document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
    setStatus("updated " + new Date().toLocaleTimeString() + " · every " + POLL_MS / 1000 + " s");
    timer = window.setTimeout(poll, POLL_MS);
  }

  function restart() {
    if (timer !== null) window.clearTimeout(timer);
    poll();
  }

  const form = $("auth");
  form.hidden = !keysRequired;
  form.addEventListener("submit", function (event) {
    event.preventDefault();
    const value = $("api-key").value.trim();
    if (value) window.sessionStorage.setItem(KEY_STORE, value);
    $("api-key").value = "";
    restart();
  });
  $("forget-key").addEventListener("click", function () {
    window.sessionStorage.removeItem(KEY_STORE);
    restart();
  });
  poll();
})();
