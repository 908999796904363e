// #/sweeps: your sweeps (GET /sweeps). #/sweeps/<id>: one sweep, polled while it runs: the
// best run so far (linked), a scatter per parameter of each run's value against its best val
// loss, every run's val loss curve overlaid (pruned runs dashed, the best one thick), and
// its runs as a table. The curves come from each run's eval events, fetched once a run ends.

import { ApiError, getJSON, postJSON } from "./api.js";
import { logToggle, makeChart, paletteColor, uPlot } from "./charts.js";
import { ACTIVE, TERMINAL, age, h, num, statusBadge } from "./ui.js";

const POLL_MS = 2000;
const STATUS_COLORS = {
  succeeded: "#2e9e44",
  pruned: "#9d5fb5",
  failed: "#d62728",
  cancelled: "#7f7f7f",
  running: "#4c78a8",
  recovering: "#f58518",
  queued: "#9ab8d8",
};
const SHOWN_STATUSES = Object.keys(STATUS_COLORS);

const show = (v) => (typeof v === "number" ? String(Number(v.toPrecision(4))) : JSON.stringify(v));
// Iterations done: iter N is the (N+1)-th; a finished run did all of them.
const done = (r) =>
  r.status === "succeeded" ? `${r.max_iters} / ${r.max_iters}` : r.iter == null ? "–" : `${r.iter + 1} / ${r.max_iters}`;
const paramsText = (params) =>
  Object.entries(params)
    .map(([k, v]) => `${k}=${show(v)}`)
    .join(" ");

// --- the list --------------------------------------------------------------------------------

export function sweepsView(root) {
  let timer = null;
  let closed = false;
  const note = h("span", { class: "muted" });
  const tbody = h("tbody");

  function row(w) {
    const started = Object.values(w.runs_by_status).reduce((a, b) => a + b, 0);
    const counts = Object.entries(w.runs_by_status)
      .map(([s, n]) => `${n} ${s}`)
      .join(", ");
    return h(
      "tr",
      { id: `sweep-${w.id}`, dataset: { status: w.status } },
      h(
        "td",
        {},
        h("a", { href: `#/sweeps/${encodeURIComponent(w.id)}` }, w.name || w.id),
        h("div", { class: "muted mono small" }, w.id),
      ),
      h("td", {}, statusBadge(w.status)),
      h("td", {}, w.method, w.early_stop ? h("div", { class: "muted small" }, "ASHA") : null),
      h("td", {}, `${started} / ${w.max_runs}`, h("div", { class: "muted small" }, counts)),
      h("td", { class: "num" }, w.best ? num(w.best.val_loss) : "–"),
      h("td", { title: w.created_at }, age(w.created_at)),
    );
  }

  async function refresh() {
    try {
      const { sweeps } = await getJSON("/sweeps");
      if (closed) return;
      tbody.replaceChildren(
        ...(sweeps.length
          ? sweeps.map(row)
          : [
              h(
                "tr",
                {},
                h(
                  "td",
                  { colspan: 6, class: "muted" },
                  "No sweeps yet: ",
                  h("code", {}, "gptjobs sweep create sweep.yaml"),
                  " or POST /sweeps starts one.",
                ),
              ),
            ]),
      );
      note.textContent = `updated ${new Date().toLocaleTimeString()}`;
      if (sweeps.some((w) => w.status === "running")) timer = setTimeout(refresh, POLL_MS);
    } catch (e) {
      if (!closed) note.textContent = `could not load sweeps: ${e.message}`;
    }
  }

  root.replaceChildren(
    h("div", { class: "panel-title" }, h("h1", {}, "Sweeps"), note),
    h(
      "table",
      { class: "runs", id: "sweeps" },
      h(
        "thead",
        {},
        h("tr", {}, ...["name", "status", "method", "runs", "best val loss", "age"].map((t) => h("th", {}, t))),
      ),
      tbody,
    ),
  );
  refresh();
  return () => {
    closed = true;
    clearTimeout(timer);
  };
}

// --- one sweep -------------------------------------------------------------------------------

// A parameter's values as x positions: numbers as they are (log scale for a log range or a
// wide positive spread), anything else by its place in the listed values.
function axisOf(name, spec, runs) {
  const values = runs.map((r) => r.params[name]);
  const numeric = values.every((v) => typeof v === "number");
  if (numeric) {
    const lo = Math.min(...values);
    const hi = Math.max(...values);
    const log = spec.log === true || (lo > 0 && hi / lo >= 20);
    return { pos: (v) => v, log, label: (v) => show(v) };
  }
  const listed = (spec.values || []).map((v) => JSON.stringify(v));
  return {
    pos: (v) => listed.indexOf(JSON.stringify(v)),
    log: false,
    label: (i) => (Number.isInteger(i) && listed[i] != null ? listed[i] : ""),
    categorical: true,
  };
}

function scatter(el, name, spec, runs) {
  const axis = axisOf(name, spec, runs);
  const scored = runs
    .filter((r) => r.best_val_loss != null)
    .map((r) => ({ x: axis.pos(r.params[name]), y: r.best_val_loss, status: r.status }))
    .sort((a, b) => a.x - b.x);
  const statuses = SHOWN_STATUSES.filter((s) => scored.some((p) => p.status === s));
  const data = [scored.map((p) => p.x), ...statuses.map((s) => scored.map((p) => (p.status === s ? p.y : null)))];
  const axes = [{ label: name }, { label: "best val loss" }];
  if (axis.log) {
    // uPlot puts a tick at every 1..9 of a decade; only the decades get a label.
    const decade = (t) => Math.abs(Math.log10(t) - Math.round(Math.log10(t))) < 1e-6;
    axes[0].values = (u, ticks) => ticks.map((t) => (decade(t) ? t.toExponential(0) : ""));
  }
  if (axis.categorical) {
    axes[0].splits = () => spec.values.map((_, i) => i);
    axes[0].values = (u, ticks) => ticks.map((t) => axis.label(t));
  }
  return makeChart(
    el,
    {
      height: 220,
      scales: { x: { time: false, distr: axis.log ? 3 : 1, ...(axis.categorical ? { range: [-0.5, spec.values.length - 0.5] } : {}) } },
      axes,
      cursor: { drag: { x: false, y: false } },
      series: [
        { label: name, value: (u, v) => (v == null ? "–" : axis.label(v)) },
        ...statuses.map((s) => ({
          label: s,
          stroke: STATUS_COLORS[s],
          fill: STATUS_COLORS[s],
          paths: () => null,
          points: { show: true, size: 9, stroke: STATUS_COLORS[s], fill: STATUS_COLORS[s] },
          value: (u, v) => (v == null ? "–" : v.toFixed(4)),
        })),
      ],
    },
    data,
  );
}

export function sweepView(root, sweepId) {
  const curves = new Map(); // run id -> {x: [], val: [], status, after}
  let sweep = null;
  let timer = null;
  let closed = false;
  let logScale = false;
  let charts = [];

  const el = {
    head: h("div", { class: "run-head" }),
    cards: h("div", { class: "cards" }),
    scatters: h("div", { class: "scatters", id: "sweep-scatters" }),
    curves: h("div", { class: "chart", id: "sweep-curves" }),
    thead: h("tr"),
    table: h("tbody"),
  };

  async function fetchCurve(run) {
    const entry = curves.get(run.id) ?? { x: [], val: [], after: 0, status: null };
    for (;;) {
      const page = await getJSON(`/runs/${encodeURIComponent(run.id)}/events?type=eval&after=${entry.after}&limit=10000`);
      for (const ev of page.events) {
        entry.x.push(ev.iter);
        entry.val.push(ev.val_loss ?? null);
      }
      entry.after = page.next_after;
      if (!page.has_more) break;
    }
    entry.status = run.status;
    curves.set(run.id, entry);
  }

  function renderHead() {
    const cancel = h(
      "button",
      {
        type: "button",
        id: "cancel-sweep",
        onclick: async () => {
          if (!confirm("Cancel this sweep? Its queued runs end now, running ones after a checkpoint.")) return;
          try {
            sweep = await postJSON(`/sweeps/${encodeURIComponent(sweepId)}/cancel`, {});
            render();
          } catch (e) {
            alert(e.message);
          }
        },
      },
      "Cancel sweep",
    );
    const es = sweep.early_stop;
    el.head.replaceChildren(
      h(
        "div",
        { class: "title" },
        h("h1", {}, sweep.name || sweep.id),
        sweep.name ? h("span", { class: "muted mono" }, sweep.id) : null,
        statusBadge(sweep.status),
        h(
          "span",
          { class: "muted" },
          `${sweep.method} · ${sweep.max_runs} runs, ${sweep.max_concurrent} at a time` +
            (es ? ` · ASHA from iter ${es.min_iter}, keeping 1/${es.reduction_factor} a rung` : ""),
        ),
      ),
      h("p", { class: "reason", id: "sweep-reason" }, sweep.reason || ""),
      h("div", { class: "actions" }, sweep.status === "running" ? cancel : null),
    );
    root.dataset.status = sweep.status;
  }

  function renderCards() {
    const card = (label, value, cls = "card") =>
      h("div", { class: cls }, h("div", { class: "label" }, label), h("div", {}, value));
    const best = sweep.best;
    const started = sweep.runs.length;
    el.cards.replaceChildren(
      card(
        "best run",
        best
          ? h(
              "span",
              {},
              h("a", { href: `#/runs/${encodeURIComponent(best.run)}`, id: "best-run" }, best.run),
              h("div", { class: "muted small" }, paramsText(best.params)),
            )
          : "–",
        "card wide",
      ),
      card("best val loss", best ? num(best.val_loss) : "–"),
      card("runs started", `${started} / ${sweep.max_runs}`),
      card("left", String(sweep.left)),
      ...SHOWN_STATUSES.filter((s) => sweep.runs_by_status[s]).map((s) => card(s, String(sweep.runs_by_status[s]))),
    );
  }

  function renderTable() {
    const names = Object.keys(sweep.parameters);
    el.thead.replaceChildren(...["#", "run", "status", ...names, "iterations", "best val loss"].map((t) => h("th", {}, t)));
    el.table.replaceChildren(
      ...sweep.runs.map((r) =>
        h(
          "tr",
          { id: `sweep-run-${r.id}`, dataset: { status: r.status } },
          h("td", { class: "num" }, String(r.trial)),
          h("td", {}, h("a", { href: `#/runs/${encodeURIComponent(r.id)}` }, r.id)),
          h("td", {}, statusBadge(r.status), r.reason ? h("div", { class: "muted small" }, r.reason) : null),
          ...names.map((n) => h("td", { class: "num" }, show(r.params[n]))),
          h("td", { class: "num" }, done(r)),
          h("td", { class: "num" }, num(r.best_val_loss), sweep.best?.run === r.id ? " ★" : ""),
        ),
      ),
    );
  }

  function renderCharts() {
    for (const c of charts) c.destroy();
    charts = [];
    const names = Object.keys(sweep.parameters);
    el.scatters.replaceChildren(
      ...names.map((n) => h("div", { class: "scatter" }, h("h3", {}, `${n} against best val loss`), h("div", { class: "chart", dataset: { param: n } }))),
    );
    names.forEach((n, i) => {
      const box = el.scatters.children[i].querySelector(".chart");
      charts.push(scatter(box, n, sweep.parameters[n], sweep.runs));
    });

    const shown = sweep.runs.filter((r) => curves.get(r.id)?.x.length);
    const data = shown.length ? uPlot.join(shown.map((r) => [curves.get(r.id).x, curves.get(r.id).val])) : [[]];
    el.curves.replaceChildren();
    charts.push(
      makeChart(
        el.curves,
        {
          scales: { x: { time: false }, y: { distr: logScale ? 3 : 1 } },
          axes: [{ label: "iter" }, { label: "val loss" }],
          series: [
            { label: "iter" },
            ...shown.map((r, i) => ({
              label: `#${r.trial} ${paramsText(r.params)}${r.status === "pruned" ? " (pruned)" : ""}`,
              stroke: paletteColor(i),
              width: sweep.best?.run === r.id ? 3 : 1.5,
              dash: r.status === "pruned" ? [6, 4] : undefined,
              spanGaps: true,
              value: (u, v) => (v == null ? "–" : v.toFixed(4)),
            })),
          ],
        },
        data,
      ),
    );
    root.dataset.curves = String(shown.length);
    root.dataset.pruned = String(shown.filter((r) => r.status === "pruned").length);
    root.dataset.scatters = String(names.length);
    root.dataset.points = String(sweep.runs.filter((r) => r.best_val_loss != null).length);
  }

  function render() {
    renderHead();
    renderCards();
    renderTable();
    renderCharts();
  }

  async function refresh() {
    try {
      sweep = await getJSON(`/sweeps/${encodeURIComponent(sweepId)}`);
      // A curve is fetched again while its run goes on, and once more as it ends.
      const stale = sweep.runs.filter((r) => !curves.has(r.id) || !TERMINAL.has(curves.get(r.id).status));
      for (const r of stale) await fetchCurve(r);
      if (closed) return;
      render();
      if (sweep.status === "running" || sweep.runs.some((r) => ACTIVE.has(r.status))) timer = setTimeout(refresh, POLL_MS);
    } catch (e) {
      if (closed) return;
      root.replaceChildren(
        h("p", { class: "error" }, e instanceof ApiError && e.status === 404 ? `No sweep ${sweepId}.` : e.message),
        h("a", { href: "#/sweeps" }, "Back to the sweeps."),
      );
    }
  }

  root.replaceChildren(
    el.head,
    el.cards,
    h("section", { class: "panel" }, h("h2", {}, "Each parameter against the best val loss"), el.scatters),
    h(
      "section",
      { class: "panel" },
      h(
        "div",
        { class: "panel-title" },
        h("h2", {}, "val loss of every run"),
        h("span", { class: "muted small" }, "dashed: pruned · thick: the best run"),
        logToggle("log scale", (on) => {
          logScale = on;
          if (sweep) renderCharts();
        }),
      ),
      el.curves,
    ),
    h(
      "section",
      { class: "panel" },
      h("h2", {}, "Runs"),
      h(
        "table",
        { class: "runs", id: "sweep-runs" },
        h("thead", {}, el.thead),
        el.table,
      ),
    ),
  );
  refresh();
  return () => {
    closed = true;
    clearTimeout(timer);
    for (const c of charts) c.destroy();
  };
}
