/* ia-continu dashboard: reads the API's JSON and renders it in the browser with uPlot
 * (vendored, no CDN). No framework, no build step. Every route it reads may be missing
 * (an older or smaller API): the page then shows an empty chart with a note. */
(function () {
  "use strict";

  const KEY_STORAGE = "ia-continu:api-key";
  const HISTORY_LIMIT = 200;
  const RUN_ROWS = 20;
  const MODELS_SHOWN = 50; // versions listed (GET /models pages; total says how many exist)
  const HIST_BINS = 30;
  const C = {
    blue: "#0072B2",
    red: "#D55E00",
    green: "#00865F",
    purple: "#8E4B9E",
    amber: "#A86400",
    grey: "#5F6B7A",
    sky: "#3A8FD0",
    ink: "#1B2430",
  };
  const VERSION_COLORS = [C.green, C.purple, C.amber, C.grey, C.sky, C.ink];
  const DEFAULT_CONFIG = {
    version: "",
    refresh_seconds: 10,
    links: { mlflow: "", prefect: "", uptime_kuma: "" },
    thresholds: { min_accuracy: 0.8, max_accuracy_drop: 0.05, drift_p_value: 0.01, psi_threshold: 0.2 },
    api_key_required: false,
    predict_requires_key: false,
    endpoints: { monitoring_history: true, monitoring_run: true, predictions_timeseries: true, rollback: true },
  };

  const $ = (id) => document.getElementById(id);
  const state = {
    config: DEFAULT_CONFIG,
    health: null, // {ok, version}
    models: null, // /models body
    modelsError: null,
    runs: null, // newest first
    runsUnavailable: false,
    runsError: null,
    traffic: null,
    trafficUnavailable: false,
    trafficError: null,
    hist: null,
    histError: null,
    realized: null, // /predictions/performance/timeseries body
    realizedUnavailable: false,
    realizedError: null,
  };

  // --- HTTP ---------------------------------------------------------------------------

  class HttpError extends Error {
    constructor(status, detail) {
      super(detail);
      this.status = status;
      this.detail = detail;
    }
  }

  async function detailOf(response) {
    let text = "";
    try {
      text = await response.text();
      const body = JSON.parse(text);
      const detail = body && body.detail !== undefined ? body.detail : body;
      if (Array.isArray(detail)) {
        return detail
          .map((d) => {
            const loc = Array.isArray(d.loc) ? d.loc.filter((p) => p !== "body").join(".") : "";
            return (loc ? loc + ": " : "") + (d.msg || JSON.stringify(d));
          })
          .join("; ");
      }
      return typeof detail === "string" ? detail : JSON.stringify(detail);
    } catch (_) {
      return text.slice(0, 200) || response.statusText || "request failed";
    }
  }

  /* GET with the API key when one is stored (reads need it with IA_PROTECT_READS=true). */
  async function getJSON(path) {
    const headers = { Accept: "application/json" };
    const key = readKey();
    if (key) headers["X-API-Key"] = key;
    const response = await fetch(path, { headers, cache: "no-store" });
    if (!response.ok) throw new HttpError(response.status, await detailOf(response));
    return response.json();
  }

  /* POST with the API key when one is stored. On a 401 the key is asked for once and the
   * request retried; a second 401 is reported to the caller with the API's message. */
  async function postJSON(path, body, askOnAuth = true) {
    const headers = { "Content-Type": "application/json", Accept: "application/json" };
    const key = readKey();
    if (key) headers["X-API-Key"] = key;
    const response = await fetch(path, { method: "POST", headers, body: JSON.stringify(body || {}) });
    if (response.status === 401) {
      const detail = await detailOf(response);
      if (askOnAuth && (await askKey(detail))) return postJSON(path, body, false);
      throw new HttpError(401, detail);
    }
    if (!response.ok) throw new HttpError(response.status, await detailOf(response));
    return response.json();
  }

  function describeError(error) {
    if (error instanceof HttpError) return "Error " + error.status + ": " + error.detail;
    return "The API did not answer (" + (error && error.message ? error.message : "network error") + ").";
  }

  // --- API key (sessionStorage only) ------------------------------------------------------

  function readKey() {
    try {
      return sessionStorage.getItem(KEY_STORAGE) || "";
    } catch (_) {
      return "";
    }
  }

  function writeKey(value) {
    try {
      if (value) sessionStorage.setItem(KEY_STORAGE, value);
      else sessionStorage.removeItem(KEY_STORAGE);
    } catch (_) {
      /* storage disabled: the key lives for this request only */
    }
    updateKeyButton();
  }

  function updateKeyButton() {
    const button = $("key-button");
    const has = Boolean(readKey());
    button.textContent = has ? "API key: set" : state.config.api_key_required ? "API key: needed" : "API key";
  }

  let keyPrompt = null;
  function askKey(message) {
    if (keyPrompt) return keyPrompt; // one dialog at a time
    const dialog = $("key-dialog");
    const input = $("key-input");
    $("key-dialog-message").textContent = message || "";
    $("key-forget").hidden = !readKey();
    input.value = "";
    dialog.returnValue = "";
    keyPrompt = new Promise((resolve) => {
      dialog.addEventListener(
        "close",
        () => {
          keyPrompt = null;
          const action = dialog.returnValue;
          const value = input.value.trim();
          input.value = "";
          if (action === "save" && value) {
            writeKey(value);
            resolve(true);
          } else {
            if (action === "forget") writeKey("");
            resolve(false);
          }
        },
        { once: true }
      );
    });
    dialog.showModal();
    input.focus();
    return keyPrompt;
  }

  // --- formatting ----------------------------------------------------------------------

  const isNum = (v) => typeof v === "number" && Number.isFinite(v);
  const fmt = (v, digits = 3) => (isNum(v) ? v.toFixed(digits) : "—");
  const fmtP = (v) => (!isNum(v) ? "—" : v < 0.001 ? "<0.001" : v.toFixed(3));

  function toSeconds(value) {
    if (isNum(value)) return value > 1e12 ? value / 1000 : value;
    if (typeof value === "string") {
      const ms = Date.parse(value);
      return Number.isNaN(ms) ? null : ms / 1000;
    }
    return null;
  }

  function formatTime(value) {
    const s = toSeconds(value);
    if (s === null) return "—";
    return new Date(s * 1000).toLocaleString(undefined, {
      month: "short",
      day: "numeric",
      hour: "2-digit",
      minute: "2-digit",
      second: "2-digit",
    });
  }

  function formatAgo(value) {
    const s = toSeconds(value);
    if (s === null) return "—";
    const delta = Math.max(0, Date.now() / 1000 - s);
    if (delta < 45) return "just now";
    if (delta < 90 * 60) return Math.round(delta / 60) + " min ago";
    if (delta < 36 * 3600) return Math.round(delta / 3600) + " h ago";
    return formatTime(value);
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function badge(text, kind) {
    return el("span", { class: "badge badge-" + kind, text });
  }

  function decisionBadge(run) {
    switch (run.decision) {
      case "promoted":
        return badge("promoted " + (run.new_version || ""), "ok");
      case "kept_champion":
        return badge("retrained, champion kept", "warn");
      case "failed":
        return badge("failed", "bad");
      default:
        return badge("no action", "info");
    }
  }

  function statusBadge(status) {
    if (status === "ok") return badge("ok", "ok");
    if (status === "drift") return badge("drift", "warn");
    if (status === "failed") return badge("failed", "bad");
    return badge(status || "?", "muted");
  }

  // --- charts --------------------------------------------------------------------------

  const charts = new Map(); // element id -> {plot, key, digest, meta}

  function chartHeight(node) {
    const narrow = node.clientWidth < 460;
    if (node.classList.contains("chart-small")) return narrow ? 170 : 190;
    return narrow ? 200 : 240;
  }

  function axis(label, values) {
    const a = {
      stroke: "#4F5B6A",
      grid: { stroke: "#E6E9EE", width: 1 },
      ticks: { stroke: "#D5DBE3", width: 1 },
      font: "12px system-ui, sans-serif",
      labelFont: "600 12px system-ui, sans-serif",
    };
    if (label) {
      a.label = label;
      a.labelSize = 18;
    }
    if (values) a.values = values;
    return a;
  }

  const pad2 = (n) => String(n).padStart(2, "0");

  /* Compact 24-hour tick labels whose precision follows the visible span. */
  function timeTicks(u, ticks) {
    const span = (u.scales.x.max || 0) - (u.scales.x.min || 0);
    return ticks.map((t) => {
      const d = new Date(t * 1000);
      const hm = pad2(d.getHours()) + ":" + pad2(d.getMinutes());
      if (span <= 900) return hm + ":" + pad2(d.getSeconds());
      if (span <= 36 * 3600) return hm;
      return d.toLocaleDateString(undefined, { month: "short", day: "numeric" }) + " " + hm;
    });
  }

  function timeAxis() {
    return Object.assign(axis(null, timeTicks), { space: 70 });
  }

  function setNote(node, text) {
    let note = node.querySelector(":scope > .chart-note");
    if (!text) {
      if (note) note.remove();
      return;
    }
    if (!note) {
      note = el("p", { class: "chart-note" });
      node.prepend(note);
    }
    note.textContent = text;
  }

  /* Create the chart, or feed new data to the existing one (same series). ``build(meta)``
   * returns uPlot options whose ranges and draw hooks read ``meta.current``: updated on
   * every render, so scales and markers follow the data without recreating the chart. */
  function renderChart(id, build, data, meta, note) {
    const node = $(id);
    const points = data.slice(1).reduce((n, s) => n + s.filter((v) => v !== null && v !== undefined).length, 0);
    node.dataset.points = String(points);
    setNote(node, note);
    if (typeof uPlot === "undefined") {
      setNote(node, "Charting library not loaded.");
      return;
    }
    const holder = { current: meta };
    const opts = build(holder);
    const key = opts.series.map((s) => s.label || "").join("|") + "#" + data.length;
    const digest = JSON.stringify([data, meta]);
    let entry = charts.get(id);
    if (entry && entry.key === key) {
      if (entry.digest !== digest) {
        entry.meta.current = meta;
        entry.digest = digest;
        entry.plot.setData(data);
      }
      return;
    }
    if (entry) entry.plot.destroy();
    const hooks = opts.hooks || {};
    const drawWith = opts.drawWith;
    if (drawWith) hooks.draw = [(u) => drawWith(u, holder.current)];
    delete opts.drawWith;
    opts.hooks = hooks;
    // Small charts: labels only (no hover read-out) to keep the legend short.
    if (!opts.legend && node.classList.contains("chart-small")) opts.legend = { live: false };
    opts.padding = opts.padding || [12, 18, 0, 0]; // room for the last x tick label
    opts.width = Math.max(200, node.clientWidth);
    opts.height = chartHeight(node);
    const plot = new uPlot(opts, data, node);
    charts.set(id, { plot, key, digest, meta: holder, width: opts.width });
  }

  const resizer =
    typeof ResizeObserver === "undefined"
      ? null
      : new ResizeObserver((entries) => {
          for (const entry of entries) {
            const chart = charts.get(entry.target.id);
            if (!chart) continue;
            const width = Math.max(200, Math.floor(entry.contentRect.width));
            if (Math.abs(width - chart.width) < 2) continue;
            chart.width = width;
            chart.plot.setSize({ width, height: chartHeight(entry.target) });
          }
        });

  function pathsNone() {
    return null;
  }

  function stepped() {
    return uPlot.paths.stepped({ align: 1 });
  }

  function line(label, stroke, extra) {
    return Object.assign(
      {
        label,
        stroke,
        width: 2,
        spanGaps: true,
        points: { show: true, size: 6, fill: stroke },
        value: (u, v) => fmt(v),
      },
      extra || {}
    );
  }

  function thresholdLine(label, stroke, dash) {
    return {
      label,
      stroke,
      width: 1.5,
      dash: dash || [6, 4],
      spanGaps: true,
      paths: stepped(),
      points: { show: false },
      value: (u, v) => fmt(v),
    };
  }

  function markerSeries(label, stroke, size, fill) {
    return {
      label,
      stroke,
      width: 2.5,
      paths: pathsNone,
      points: { show: true, size, stroke, fill: fill || stroke, width: 2.5 },
      value: (u, v) => fmt(v),
    };
  }

  /* Rows {x, values...} -> uPlot columns, sorted by x, plus a padding row at both ends so
   * that threshold lines span the plot even when there is a single point. */
  function toColumns(rows, names, pad) {
    rows = rows.filter((r) => r.x !== null).sort((a, b) => a.x - b.x);
    for (let i = 1; i < rows.length; i++) {
      if (rows[i].x <= rows[i - 1].x) rows[i].x = rows[i - 1].x + 0.001; // uPlot needs increasing x
    }
    if (rows.length && pad) {
      const span = rows[rows.length - 1].x - rows[0].x;
      const margin = span >= 60 ? span * 0.05 : 60;
      rows.unshift(Object.assign({ x: rows[0].x - margin }, pad.left || {}));
      rows.push(Object.assign({ x: rows[rows.length - 1].x + margin }, pad.right || {}));
    }
    const columns = [rows.map((r) => r.x)];
    for (const name of names) columns.push(rows.map((r) => (isNum(r[name]) ? r[name] : null)));
    return columns;
  }

  function verticalMarkers(u, markers) {
    if (!markers || !markers.length) return;
    const ctx = u.ctx;
    const { top, height } = u.bbox;
    ctx.save();
    ctx.lineWidth = 1.5 * devicePixelRatio;
    for (const m of markers) {
      const x = Math.round(u.valToPos(m.x, "x", true));
      if (x < u.bbox.left || x > u.bbox.left + u.bbox.width) continue;
      ctx.strokeStyle = m.color;
      ctx.setLineDash([3 * devicePixelRatio, 3 * devicePixelRatio]);
      ctx.beginPath();
      ctx.moveTo(x, top);
      ctx.lineTo(x, top + height);
      ctx.stroke();
    }
    ctx.restore();
  }

  function modelsByVersion() {
    const map = new Map();
    for (const m of (state.models && state.models.models) || []) map.set(m.version, m);
    return map;
  }

  const REALIZED_HOURS = 24;
  const REALIZED_BUCKET = 600; // seconds: 144 buckets over 24 h
  const REALIZED_VERSIONS = 4; // the versions that served most recently

  /* Realized accuracy (served class vs feedback label) per model version and time bucket,
   * each beside its held-out accuracy (dashed), with the label coverage on the right axis. */
  function renderRealizedChart() {
    const body = state.realized;
    const points = (body && body.points) || [];
    const models = modelsByVersion();
    const lastSeen = new Map();
    for (const p of points) lastSeen.set(p.model_version, toSeconds(p.t));
    const versions = [...lastSeen.entries()]
      .sort((a, b) => b[1] - a[1])
      .slice(0, REALIZED_VERSIONS)
      .map((e) => e[0])
      .sort();
    const half = ((body && body.bucket_seconds) || REALIZED_BUCKET) / 2;
    const byX = new Map();
    for (const p of points) {
      const x = toSeconds(p.t) + half;
      let row = byX.get(x);
      if (!row) {
        row = { x, served: 0, labelled: 0 };
        byX.set(x, row);
      }
      row.served += p.served;
      row.labelled += p.labelled;
      if (!versions.includes(p.model_version)) continue;
      row["acc:" + p.model_version] = p.accuracy;
      const model = models.get(p.model_version);
      if (model && isNum(model.accuracy)) row["held:" + p.model_version] = model.accuracy;
    }
    const rows = [...byX.values()];
    for (const r of rows) r.coverage = r.served ? r.labelled / r.served : null;
    const names = ["coverage"];
    for (const v of versions) names.push("acc:" + v, "held:" + v);
    const data = toColumns(rows, names, null);
    const values = [];
    for (const v of versions) for (const n of ["acc:", "held:"]) values.push(...rows.map((r) => r[n + v]).filter(isNum));
    const low = values.length ? Math.min(...values) : 0.5;
    // The requested window, not the data's span: one bucket alone would otherwise span years.
    const now = Date.now() / 1000;
    const x = [
      toSeconds(body && body.since) || now - REALIZED_HOURS * 3600,
      Math.max(toSeconds(body && body.until) || now, ...rows.map((r) => r.x + half)), // the last bucket whole
    ];
    const meta = { x, y: [Math.max(0, low - 0.05), 1] };
    let note = null;
    if (state.realizedUnavailable) note = "This API has no GET /predictions/performance/timeseries.";
    else if (state.realizedError) note = "Realized accuracy could not be read: " + state.realizedError;
    else if (!points.length) note = "No predictions in the last " + REALIZED_HOURS + " h.";
    else if (!values.length) note = "No feedback yet: POST /feedback with the prediction ids.";
    const series = [{}, Object.assign(line("label coverage", C.grey, { width: 1.5, scale: "cov" }), { dash: [2, 3] })];
    versions.forEach((v, i) => {
      const color = VERSION_COLORS[i % VERSION_COLORS.length];
      series.push(line(v + " realized", color));
      // Points too: a version that served in one bucket only has no segment to draw.
      series.push(Object.assign(thresholdLine(v + " held-out", color, [6, 4]), { points: { show: true, size: 4 } }));
    });
    renderChart(
      "chart-realized",
      (m) => ({
        scales: {
          x: { time: true, range: () => m.current.x },
          y: { range: () => m.current.y },
          cov: { range: [0, 1] },
        },
        axes: [
          timeAxis(),
          axis("accuracy", (u, ticks) => ticks.map((t) => t.toFixed(2))),
          Object.assign(axis("label coverage", (u, ticks) => ticks.map((t) => Math.round(t * 100) + "%")), {
            scale: "cov",
            side: 1,
            grid: { show: false },
          }),
        ],
        series,
        legend: { live: true },
      }),
      data,
      meta,
      note
    );
    const totals = rows.reduce((a, r) => [a[0] + r.served, a[1] + r.labelled], [0, 0]);
    const caption = [];
    if (totals[0]) {
      caption.push(
        "Last " + REALIZED_HOURS + " h: " + totals[0] + " predictions, " + totals[1] + " with feedback (" +
          fmt(totals[1] / totals[0]) + " coverage)."
      );
    }
    caption.push(
      "Solid: accuracy of what each version served, on the predictions that received a label (10-minute buckets, " +
        "by prediction time). Dashed: its held-out accuracy at training. Grey: share of predictions labelled (right axis)."
    );
    $("caption-realized").textContent = caption.join(" ");
  }

  function renderAccuracyChart() {
    const thr = state.config.thresholds;
    const runs = (state.runs || []).slice().reverse();
    const rows = [];
    const markers = [];
    let lastFloor = null;
    for (const r of runs) {
      const x = toSeconds(r.started_at);
      const floor = isNum(r.reference_accuracy) ? r.reference_accuracy - thr.max_accuracy_drop : null;
      if (floor !== null) lastFloor = floor;
      const row = { x, acc: r.accuracy, floor, min: thr.min_accuracy };
      if (r.decision === "promoted") {
        row.promoted = isNum(r.new_accuracy) ? r.new_accuracy : r.accuracy;
        markers.push({ x, color: C.purple });
      } else if (r.decision === "kept_champion" && r.new_version) {
        row.kept = r.new_accuracy;
        markers.push({ x, color: C.grey });
      }
      rows.push(row);
    }
    for (const m of (state.models && state.models.models) || []) {
      rows.push({ x: toSeconds(m.created_at), model: m.accuracy, min: thr.min_accuracy });
    }
    const data = toColumns(rows, ["acc", "floor", "min", "model", "promoted", "kept"], {
      left: { min: thr.min_accuracy },
      right: { min: thr.min_accuracy, floor: lastFloor },
    });
    const values = data.slice(1).flat().filter(isNum);
    const low = Math.min(thr.min_accuracy, ...values);
    const high = Math.max(thr.min_accuracy, ...values);
    const meta = { markers, y: [Math.max(0, low - 0.03), Math.min(1, high + 0.02)] };
    let note = null;
    if (!rows.length) {
      note = state.runsUnavailable
        ? "No model yet, and this API has no monitoring history (GET /monitoring/history)."
        : "No data yet: generate a dataset, retrain, then run the monitor.";
    }
    renderChart(
      "chart-accuracy",
      (m) => ({
        scales: { x: { time: true }, y: { range: () => m.current.y } },
        axes: [timeAxis(), axis("accuracy", (u, ticks) => ticks.map((t) => t.toFixed(2)))],
        series: [
          {},
          line("champion on batch", C.blue),
          thresholdLine("retrain floor", C.amber),
          thresholdLine("min " + thr.min_accuracy, C.red, [2, 4]),
          markerSeries("new model", C.green, 9),
          markerSeries("promoted", C.purple, 13, "#FFFFFF"),
          markerSeries("kept champion", C.grey, 11, "#FFFFFF"),
        ],
        legend: { live: true },
        drawWith: (u, meta) => verticalMarkers(u, meta.markers),
      }),
      data,
      meta,
      note
    );
    const caption = [];
    const latest = state.runs && state.runs.find((r) => isNum(r.accuracy));
    if (latest) {
      caption.push(
        "Latest batch: champion " + (latest.champion_version || "?") + " scored " + fmt(latest.accuracy) +
          " (held-out " + fmt(latest.reference_accuracy) + ")."
      );
      const promotions = state.runs.filter((r) => r.decision === "promoted").length;
      caption.push(state.runs.length + " runs, " + promotions + " promotion" + (promotions === 1 ? "" : "s") + ".");
    } else if (state.runsUnavailable) {
      caption.push("Monitoring history is not available on this API: only the models' held-out accuracy is shown.");
    } else if (state.runsError) {
      caption.push("Monitoring history could not be read: " + state.runsError);
    } else {
      caption.push("No monitoring run yet: green points are the models' held-out accuracy.");
    }
    caption.push(
      "Retrain floor: the champion's held-out accuracy − " + thr.max_accuracy_drop + "; a batch below it or below " +
        thr.min_accuracy + " triggers a retrain. New model: held-out accuracy of each trained version. " +
        "Vertical lines: retrains by the monitor (purple: promoted)."
    );
    $("caption-accuracy").textContent = caption.join(" ");
  }

  function ksCritical(alpha, n, m) {
    // Two-sample KS critical value (asymptotic): c(α)·sqrt((n + m) / (n·m)).
    if (!isNum(n) || !isNum(m) || n <= 0 || m <= 0) return null;
    return Math.sqrt(-Math.log(alpha / 2) / 2) * Math.sqrt((n + m) / (n * m));
  }

  function renderDriftCharts() {
    const thr = state.config.thresholds;
    const byVersion = modelsByVersion();
    const runs = (state.runs || []).slice().reverse().filter((r) => r.drift);
    const ksRows = [];
    const psiRows = [];
    let firstCrit = null;
    let lastCrit = null;
    for (const r of runs) {
      const x = toSeconds(r.started_at);
      const f1 = r.drift.feature1 || {};
      const f2 = r.drift.feature2 || {};
      const champion = byVersion.get(r.champion_version);
      const n = champion ? (champion.training_samples || 0) + (champion.test_samples || 0) : r.batch_samples;
      const crit = ksCritical(thr.drift_p_value, n, r.batch_samples || n);
      if (crit !== null) {
        if (firstCrit === null) firstCrit = crit;
        lastCrit = crit;
      }
      ksRows.push({ x, f1: f1.ks_statistic, f2: f2.ks_statistic, crit });
      psiRows.push({ x, f1: f1.psi, f2: f2.psi, thr: thr.psi_threshold });
    }
    const ks = toColumns(ksRows, ["f1", "f2", "crit"], {
      left: { crit: firstCrit },
      right: { crit: lastCrit },
    });
    const psi = toColumns(psiRows, ["f1", "f2", "thr"], {
      left: { thr: thr.psi_threshold },
      right: { thr: thr.psi_threshold },
    });
    let note = null;
    if (!runs.length) {
      note = state.runsUnavailable
        ? "Not available on this API (no GET /monitoring/history)."
        : "No drift measured yet: run the monitor.";
    }
    const ksMax = Math.max(0.1, ...ks.slice(1).flat().filter(isNum)) * 1.1;
    const psiMax = Math.max(thr.psi_threshold * 1.3, ...psi.slice(1).flat().filter(isNum)) * 1.1;
    renderChart(
      "chart-ks",
      (m) => ({
        scales: { x: { time: true }, y: { range: () => m.current.y } },
        axes: [timeAxis(), axis("KS statistic", (u, t) => t.map((v) => v.toFixed(2)))],
        series: [
          {},
          line("feature1", C.blue),
          line("feature2", C.red),
          thresholdLine("p = " + thr.drift_p_value + " (critical)", C.ink, [2, 4]),
        ],
      }),
      ks,
      { y: [0, ksMax] },
      note
    );
    renderChart(
      "chart-psi",
      (m) => ({
        scales: { x: { time: true }, y: { range: () => m.current.y } },
        axes: [timeAxis(), axis("PSI", (u, t) => t.map((v) => v.toFixed(2)))],
        series: [
          {},
          line("feature1", C.blue),
          line("feature2", C.red),
          thresholdLine("threshold " + thr.psi_threshold, C.ink, [2, 4]),
        ],
      }),
      psi,
      { y: [0, psiMax] },
      note
    );
    const latest = runs.length ? runs[runs.length - 1] : null;
    if (latest) {
      const d = latest.drift;
      $("caption-ks").textContent =
        "Latest KS p-values: feature1 " + fmtP(d.feature1 && d.feature1.ks_p_value) +
        ", feature2 " + fmtP(d.feature2 && d.feature2.ks_p_value) +
        ". Above the dotted line, p < " + thr.drift_p_value + ": the feature has drifted.";
      $("caption-psi").textContent =
        "Latest PSI: feature1 " + fmt(d.feature1 && d.feature1.psi) + ", feature2 " +
        fmt(d.feature2 && d.feature2.psi) + " (threshold " + thr.psi_threshold + ").";
    } else {
      $("caption-ks").textContent = "KS statistic of each feature, champion's training data vs each batch.";
      $("caption-psi").textContent = "Population stability index of each feature, same comparison.";
    }
  }

  function trafficWindow() {
    const minutes = Number($("traffic-window").value) || 60;
    const bucket = minutes <= 15 ? 30 : minutes <= 60 ? 60 : minutes <= 360 ? 300 : 900;
    return { minutes, bucket };
  }

  /* Bucket rows -> the rows of a stepped line: a stepped series draws from one point to
   * the next, so one bucket alone drew nothing (201 predictions within one minute, empty
   * chart). Every bucket of the window is present (0 without traffic: the line drops
   * instead of holding the last value across a gap) and a closing row ends the last one. */
  function trafficSteps(byT, versions, bucket, from, to) {
    if (!byT.size) return [];
    const zero = (x) => {
      const row = { x, c0: 0, c1: 0 };
      for (const v of versions) row["v:" + v] = 0;
      return row;
    };
    const times = Array.from(byT.keys()).sort((a, b) => a - b);
    const first = Math.min(times[0], Math.floor(from / bucket) * bucket);
    const last = Math.max(times[times.length - 1], Math.floor(to / bucket) * bucket);
    const rows = [];
    if ((last - first) / bucket <= 20000) {
      for (let t = first; t <= last; t += bucket) rows.push(Object.assign(zero(t), byT.get(t) || {}));
    } else {
      for (const t of times) rows.push(Object.assign(zero(t), byT.get(t)));
    }
    const end = Object.assign({}, rows[rows.length - 1], { x: rows[rows.length - 1].x + bucket });
    rows.push(end);
    return rows;
  }

  function renderTrafficChart() {
    const { minutes, bucket } = trafficWindow();
    const points = (state.traffic && state.traffic.points) || [];
    const byT = new Map();
    const versions = [];
    let total0 = 0;
    let total1 = 0;
    const perVersion = new Map();
    for (const p of points) {
      const t = toSeconds(p.t);
      if (t === null) continue;
      const row = byT.get(t) || { x: t, c0: 0, c1: 0 };
      const c0 = Number(p.class_0) || 0;
      const c1 = Number(p.class_1) || 0;
      row.c0 += c0;
      row.c1 += c1;
      const v = String(p.model_version || "?");
      if (!versions.includes(v)) versions.push(v);
      row["v:" + v] = (row["v:" + v] || 0) + c0 + c1;
      byT.set(t, row);
      total0 += c0;
      total1 += c1;
      perVersion.set(v, (perVersion.get(v) || 0) + c0 + c1);
    }
    versions.sort((a, b) => a.localeCompare(b, undefined, { numeric: true }));
    const now = Date.now() / 1000;
    const rows = trafficSteps(byT, versions, bucket, now - minutes * 60, now);
    const data = toColumns(rows, ["c0", "c1", ...versions.map((v) => "v:" + v)], null);
    const peak = Math.max(1, ...data.slice(1).flat().filter(isNum));
    let note = null;
    if (state.trafficUnavailable) note = "Prediction logging is not available on this API (no GET /predictions/timeseries).";
    else if (state.trafficError) note = "Prediction traffic could not be read: " + state.trafficError;
    else if (!rows.length) note = "No prediction in this window: use Predict above.";
    const perBucket = bucket >= 60 ? "per " + bucket / 60 + " min" : "per " + bucket + " s";
    renderChart(
      "chart-traffic",
      (m) => ({
        scales: { x: { time: true, range: () => m.current.x }, y: { range: () => m.current.y } },
        axes: [timeAxis(), axis("predictions " + perBucket, (u, t) => t.map((v) => (Number.isInteger(v) ? String(v) : "")))],
        series: [
          {},
          line("class 0", C.blue, { paths: stepped(), points: { show: false }, fill: "rgba(0,114,178,0.12)", value: (u, v) => (isNum(v) ? String(v) : "—") }),
          line("class 1", C.red, { paths: stepped(), points: { show: false }, fill: "rgba(213,94,0,0.12)", value: (u, v) => (isNum(v) ? String(v) : "—") }),
          ...versions.map((v, i) =>
            line("model " + v, VERSION_COLORS[i % VERSION_COLORS.length], {
              dash: [5, 3],
              width: 1.5,
              paths: stepped(),
              points: { show: false },
              value: (u, val) => (isNum(val) ? String(val) : "—"),
            })
          ),
        ],
      }),
      data,
      { x: [now - minutes * 60, now + bucket], y: [0, peak * 1.15] },
      note
    );
    const parts = [total0 + total1 + " predictions in the window: " + total0 + " class 0, " + total1 + " class 1."];
    if (perVersion.size) {
      parts.push("By model: " + Array.from(perVersion.entries()).map(([v, n]) => v + " " + n).join(", ") + ".");
    }
    $("caption-traffic").textContent = state.trafficUnavailable ? "" : parts.join(" ");
  }

  function shares(counts) {
    if (!counts) return null;
    const total = counts.reduce((a, b) => a + b, 0) || 1;
    return counts.map((c) => (100 * c) / total);
  }

  function renderHistograms() {
    const hist = state.hist;
    for (const feature of ["feature1", "feature2"]) {
      const id = "chart-hist-" + feature;
      const h = hist && hist.features ? hist.features[feature] : null;
      let data = [[], [], []];
      let note = null;
      if (h) {
        const ref = shares(h.reference);
        const cur = shares(h.latest);
        // Stepped "after": the value at edge i holds until edge i + 1.
        const extend = (arr) => (arr ? arr.concat([arr[arr.length - 1]]) : h.edges.map(() => null));
        data = [h.edges, extend(ref), extend(cur)];
      } else if (state.histError) {
        note = "Histograms could not be read: " + state.histError;
      } else {
        note = "No dataset yet: generate one.";
      }
      const peak = Math.max(1, ...data.slice(1).flat().filter(isNum));
      const lo = data[0].length ? data[0][0] : 0;
      const hi = data[0].length ? data[0][data[0].length - 1] : 1;
      renderChart(
        id,
        (m) => ({
          scales: { x: { time: false, range: () => m.current.x }, y: { range: () => m.current.y } },
          axes: [axis(feature, (u, t) => t.map((v) => v.toFixed(1))), axis("% of rows", (u, t) => t.map((v) => v.toFixed(v % 1 ? 1 : 0)))],
          cursor: { points: { show: false } },
          series: [
            { value: (u, v) => fmt(v, 2) },
            {
              label: "champion's training data",
              stroke: C.blue,
              width: 2,
              fill: "rgba(0,114,178,0.22)",
              paths: stepped(),
              points: { show: false },
              value: (u, v) => (isNum(v) ? v.toFixed(1) + "%" : "—"),
            },
            {
              label: "latest dataset",
              stroke: C.red,
              width: 2,
              fill: "rgba(213,94,0,0.20)",
              paths: stepped(),
              points: { show: false },
              value: (u, v) => (isNum(v) ? v.toFixed(1) + "%" : "—"),
            },
          ],
        }),
        data,
        { x: [lo, hi], y: [0, peak * 1.15] },
        note
      );
      const caption = $("caption-hist-" + feature);
      if (h) {
        const parts = [];
        if (hist.reference) {
          parts.push(
            "Training: dataset #" + hist.reference.generation_id + " (" + (hist.reference.model_version || "champion") +
              ", hour " + hist.reference.hour_generated + "), mean " + fmt(h.reference_mean, 2) + "."
          );
        } else {
          parts.push("No champion yet.");
        }
        if (hist.latest) {
          parts.push(
            "Latest: dataset #" + hist.latest.generation_id + " (hour " + hist.latest.hour_generated + "), mean " +
              fmt(h.latest_mean, 2) + "."
          );
        }
        if (hist.reference && hist.latest && hist.reference.generation_id === hist.latest.generation_id) {
          parts.push("Same dataset: generate new data to compare.");
        }
        caption.textContent = feature + " — " + parts.join(" ");
      } else {
        caption.textContent = feature + ": distribution of the champion's training data against the latest dataset.";
      }
    }
  }

  // --- header and tables ------------------------------------------------------------------

  function renderHeader() {
    const status = $("kpi-status");
    status.replaceChildren(
      state.health === null
        ? badge("checking…", "muted")
        : state.health.ok
          ? badge("up", "ok")
          : badge("unreachable", "bad")
    );
    if (state.health && state.health.ok && state.health.version) {
      status.append(el("span", { class: "sub", text: "v" + state.health.version }));
    }
    const models = (state.models && state.models.models) || [];
    const active = (state.models && state.models.active_model) || models.find((m) => m.is_active);
    $("kpi-champion").replaceChildren(active ? active.version : el("span", { class: "sub", text: "none yet" }));
    const accuracy = $("kpi-accuracy");
    accuracy.replaceChildren(active ? fmt(active.accuracy) : "—");
    if (active && isNum(active.test_samples)) {
      accuracy.append(el("span", { class: "sub", text: "on " + active.test_samples + " rows" }));
    }
    const last = $("kpi-last-run");
    const run = state.runs && state.runs[0];
    if (state.runsUnavailable) {
      last.replaceChildren(el("span", { class: "sub", text: "not available" }));
    } else if (run) {
      const time = el("time", { datetime: run.started_at, title: formatTime(run.started_at), text: formatAgo(run.started_at) });
      last.replaceChildren(time, " ", decisionBadge(run));
    } else {
      last.replaceChildren(el("span", { class: "sub", text: state.runsError ? "unknown" : "none yet" }));
    }
  }

  function renderModelsTable() {
    const body = $("models-table").tBodies[0];
    const models = (state.models && state.models.models) || [];
    const canRollback = state.config.endpoints.rollback;
    body.replaceChildren(
      ...models.map((m) => {
        const trainedOn =
          (m.generation_id ? "dataset #" + m.generation_id + " · " : "") +
          m.training_samples + " train" + (isNum(m.test_samples) ? " + " + m.test_samples + " held-out" : "");
        const button = el("button", {
          type: "button",
          class: "btn btn-small",
          "data-version": m.version,
          "aria-label": m.is_active ? m.version + " is the champion" : "Roll back to " + m.version + " (make it the champion)",
          title: canRollback ? null : "Not available on this API (no POST /models/{version}/activate)",
          disabled: m.is_active || !canRollback,
          text: m.is_active ? "Champion" : "Roll back",
        });
        return el(
          "tr",
          { class: m.is_active ? "active" : null },
          el("th", { scope: "row", text: m.version }),
          el("td", { class: "num", text: fmt(m.accuracy) }),
          el("td", { class: "num", text: fmt(m.precision) }),
          el("td", { class: "num", text: fmt(m.recall) }),
          el("td", { class: "num", text: fmt(m.f1_score) }),
          el("td", { text: trainedOn }),
          el("td", {}, el("time", { datetime: m.created_at, text: formatTime(m.created_at) })),
          el("td", {}, m.is_active ? badge("champion", "ok") : badge("inactive", "muted")),
          el("td", {}, button)
        );
      })
    );
    const total = state.models && isNum(state.models.total) ? state.models.total : models.length;
    const paged = total > models.length && !state.modelsError;
    $("models-empty").hidden = models.length > 0 && !state.modelsError && !paged;
    if (state.modelsError) $("models-empty").textContent = "Models could not be read: " + state.modelsError;
    else if (paged) $("models-empty").textContent = "The " + models.length + " newest of " + total + " versions (GET /models?limit=&offset= pages through them all).";
    else $("models-empty").textContent = "No model yet: generate a dataset, then retrain.";
  }

  function renderRunsTable() {
    const body = $("runs-table").tBodies[0];
    const runs = (state.runs || []).slice(0, RUN_ROWS);
    body.replaceChildren(
      ...runs.map((r) => {
        const d = r.drift || {};
        const f1 = d.feature1 || {};
        const f2 = d.feature2 || {};
        const batch =
          r.generation_id ? "#" + r.generation_id + " · " + (r.batch_samples || "?") + " rows · hour " + r.hour_generated : "—";
        const decision = el("td", {}, decisionBadge(r));
        if (r.new_version) decision.append(" ", el("span", { text: r.new_version + " (" + fmt(r.new_accuracy) + ")" }));
        return el(
          "tr",
          {},
          el("td", {}, el("time", { datetime: r.started_at, text: formatTime(r.started_at) })),
          el("td", {}, statusBadge(r.status)),
          el("td", { text: r.champion_version || "—" }),
          el("td", { text: batch }),
          el("td", { class: "num", text: fmt(r.accuracy) }),
          el("td", { class: "num", text: fmtP(f1.ks_p_value) + " / " + fmtP(f2.ks_p_value) }),
          el("td", { class: "num", text: fmt(f1.psi) + " / " + fmt(f2.psi) }),
          decision,
          el("td", { class: "wrap", text: r.error || r.reason || "" })
        );
      })
    );
    const empty = $("runs-empty");
    empty.hidden = runs.length > 0;
    empty.textContent = state.runsUnavailable
      ? "Monitoring is not available on this API (no GET /monitoring/history)."
      : state.runsError
        ? "Monitoring runs could not be read: " + state.runsError
        : "No monitoring run yet: click “Run monitor now”.";
  }

  function renderAll() {
    renderHeader();
    renderModelsTable();
    renderRunsTable();
    for (const render of [renderAccuracyChart, renderRealizedChart, renderDriftCharts, renderTrafficChart, renderHistograms]) {
      try {
        render();
      } catch (error) {
        // One broken chart must not take the page down.
        console.warn("chart rendering failed", error);
      }
    }
  }

  // --- loading ----------------------------------------------------------------------------

  async function loadHealth() {
    try {
      const body = await getJSON("/health");
      state.health = { ok: body.status === "ok", version: body.version };
    } catch (_) {
      state.health = { ok: false };
    }
  }

  async function loadModels() {
    try {
      // One page, newest first (GET /models is paged: limit <= 500); the champion comes
      // whole in active_model even when it is older than the page.
      state.models = await getJSON("/models?limit=" + MODELS_SHOWN);
      state.modelsError = null;
    } catch (error) {
      state.modelsError = error.detail || error.message;
    }
  }

  async function loadOptional(endpoint, path, field) {
    if (!state.config.endpoints[endpoint]) {
      state[field] = null;
      state[field + "Unavailable"] = true;
      return;
    }
    try {
      state[field] = await getJSON(path);
      state[field + "Unavailable"] = false;
      state[field + "Error"] = null;
    } catch (error) {
      if (error instanceof HttpError && (error.status === 404 || error.status === 405)) {
        state[field] = null;
        state[field + "Unavailable"] = true;
      } else {
        state[field + "Error"] = error.detail || error.message;
      }
    }
  }

  async function loadRuns() {
    await loadOptional("monitoring_history", "/monitoring/history?limit=" + HISTORY_LIMIT, "runs");
    if (state.runs && !Array.isArray(state.runs)) state.runs = state.runs.items || [];
  }

  async function loadTraffic() {
    const { minutes, bucket } = trafficWindow();
    await loadOptional(
      "predictions_timeseries",
      "/predictions/timeseries?minutes=" + minutes + "&bucket_seconds=" + bucket,
      "traffic"
    );
  }

  async function loadRealized() {
    const since = new Date(Date.now() - REALIZED_HOURS * 3600 * 1000).toISOString();
    try {
      state.realized = await getJSON(
        "/predictions/performance/timeseries?bucket_seconds=" + REALIZED_BUCKET + "&since=" + encodeURIComponent(since)
      );
      state.realizedUnavailable = false;
      state.realizedError = null;
    } catch (error) {
      if (error instanceof HttpError && (error.status === 404 || error.status === 405)) {
        state.realized = null;
        state.realizedUnavailable = true;
      } else {
        state.realizedError = error.detail || error.message;
      }
    }
  }

  async function loadHistograms() {
    try {
      state.hist = await getJSON("/dashboard/histograms?bins=" + HIST_BINS);
      state.histError = null;
    } catch (error) {
      state.hist = null;
      state.histError = error.detail || error.message;
    }
  }

  let inflight = null;
  let again = false;
  let timer = null;
  let paused = false;

  function schedule() {
    clearTimeout(timer);
    if (!paused) timer = setTimeout(tick, state.config.refresh_seconds * 1000);
  }

  // A hidden tab asks nothing; it catches up as soon as it is shown again.
  function tick() {
    if (document.hidden) schedule();
    else refresh();
  }

  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && !paused) refresh();
  });

  /* One refresh at a time; a refresh asked for during another runs right after it, so an
   * action's result is never hidden by an older, slower answer. */
  function refresh() {
    if (inflight) {
      again = true;
      return inflight;
    }
    inflight = (async () => {
      do {
        again = false;
        await Promise.allSettled([loadHealth(), loadModels(), loadRuns(), loadTraffic(), loadRealized(), loadHistograms()]);
        renderAll();
      } while (again);
      $("last-refresh").textContent = "Updated " + new Date().toLocaleTimeString();
      document.body.dataset.refreshed = String((Number(document.body.dataset.refreshed) || 0) + 1);
    })().finally(() => {
      inflight = null;
      schedule();
    });
    return inflight;
  }

  // --- actions ------------------------------------------------------------------------------

  function setStatus(kind, text) {
    const status = $("action-status");
    status.className = "status " + kind;
    status.textContent = text;
  }

  async function runAction(button, work) {
    if (button.getAttribute("aria-disabled") === "true") return;
    // aria-disabled rather than disabled: the button keeps the keyboard focus.
    button.setAttribute("aria-disabled", "true");
    button.setAttribute("aria-busy", "true");
    setStatus("info", "Working…");
    try {
      setStatus("ok", await work());
    } catch (error) {
      setStatus("error", describeError(error));
    } finally {
      button.removeAttribute("aria-disabled");
      button.removeAttribute("aria-busy");
      await refresh();
    }
  }

  function hourOptions(select, emptyLabel, prefix) {
    select.replaceChildren(el("option", { value: "", text: emptyLabel }));
    for (let h = 0; h < 24; h++) {
      const text = prefix + pad2(h) + ":00 " + (h % 2 ? "odd" : "even");
      select.append(el("option", { value: String(h), text }));
    }
  }

  function bindActions() {
    hourOptions($("gen-hour"), "server clock", "");
    hourOptions($("mon-hour"), "newest data", "new batch at ");

    $("form-generate").addEventListener("submit", (event) => {
      event.preventDefault();
      runAction($("btn-generate"), async () => {
        const samples = Number($("gen-samples").value);
        const body = { samples: Number.isFinite(samples) && $("gen-samples").value !== "" ? samples : null };
        const hour = $("gen-hour").value;
        if (hour !== "") body.hour = Number(hour);
        const r = await postJSON("/generate", body);
        const shift = r.hour_generated % 2 ? "odd hour: feature1 shifted by −0.5" : "even hour: no shift";
        return "Dataset #" + r.generation_id + ": " + r.samples_created + " rows generated at hour " + r.hour_generated + " (" + shift + ").";
      });
    });

    $("form-retrain").addEventListener("submit", (event) => {
      event.preventDefault();
      runAction($("btn-retrain"), async () => {
        const r = await postJSON("/retrain", {});
        return "Model " + r.model_version + " trained on dataset #" + r.generation_id + ": held-out accuracy " + fmt(r.accuracy) + ". It is now the champion.";
      });
    });

    $("form-monitor").addEventListener("submit", (event) => {
      event.preventDefault();
      runAction($("btn-monitor"), async () => {
        const hour = $("mon-hour").value;
        const r = await postJSON("/monitoring/run", hour === "" ? {} : { hour: Number(hour) });
        let text = "Monitoring run #" + r.id + ": " + r.status;
        if (isNum(r.accuracy)) text += ", champion " + r.champion_version + " scored " + fmt(r.accuracy) + " on dataset #" + r.generation_id;
        text += ". Decision: " + String(r.decision).replace("_", " ");
        if (r.new_version) text += " (" + r.new_version + ", accuracy " + fmt(r.new_accuracy) + ")";
        text += ". " + (r.error || r.reason || "");
        return text.trim();
      });
    });

    $("form-predict").addEventListener("submit", (event) => {
      event.preventDefault();
      const output = $("predict-result");
      runAction($("btn-predict"), async () => {
        const features = [];
        for (const id of ["pred-f1", "pred-f2"]) {
          const input = $(id);
          const value = Number(input.value);
          if (input.value.trim() === "" || !Number.isFinite(value)) {
            input.focus();
            throw new HttpError(422, input.name + " must be a number");
          }
          features.push(value);
        }
        output.textContent = "";
        const r = await postJSON("/predict", { features });
        output.textContent = "class " + r.prediction + " · confidence " + fmt(r.confidence) + " · model " + r.model_version;
        return "Prediction for [" + features.join(", ") + "]: class " + r.prediction + " with confidence " + fmt(r.confidence) + " (model " + r.model_version + ").";
      });
    });

    $("models-table").addEventListener("click", (event) => {
      const button = event.target.closest("button[data-version]");
      if (!button || button.disabled) return;
      const version = button.dataset.version;
      runAction(button, async () => {
        await postJSON("/models/" + encodeURIComponent(version) + "/activate", {});
        return "Rolled back: " + version + " is now the champion.";
      });
    });

    $("traffic-window").addEventListener("change", () => refresh());
    $("key-button").addEventListener("click", () => askKey(""));
    $("refresh-toggle").addEventListener("click", (event) => {
      paused = !paused;
      event.currentTarget.setAttribute("aria-pressed", String(paused));
      event.currentTarget.textContent = paused ? "Resume auto-refresh" : "Pause auto-refresh";
      if (paused) clearTimeout(timer);
      else refresh();
    });
  }

  function applyConfig() {
    const cfg = state.config;
    const links = [
      ["link-mlflow", cfg.links.mlflow],
      ["link-prefect", cfg.links.prefect],
      ["link-kuma", cfg.links.uptime_kuma],
    ];
    for (const [id, url] of links) {
      const a = $(id);
      if (url) a.href = url;
      else a.hidden = true;
    }
    const monitor = cfg.endpoints.monitoring_run;
    $("btn-monitor").disabled = !monitor;
    $("mon-hour").disabled = !monitor;
    $("monitor-unavailable").hidden = monitor;
    $("refresh-info").textContent = "refreshes every " + cfg.refresh_seconds + " s";
    updateKeyButton();
  }

  async function start() {
    try {
      const cfg = await getJSON("/dashboard/config");
      state.config = Object.assign({}, DEFAULT_CONFIG, cfg);
    } catch (error) {
      setStatus("error", "Dashboard settings could not be read (" + describeError(error) + "): using defaults.");
    }
    applyConfig();
    bindActions();
    if (resizer) {
      for (const node of document.querySelectorAll(".chart")) resizer.observe(node);
    }
    await refresh();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
