// A run's page: live charts from the WebSocket, its log, diagnostics, config, lineage, cancel, sampling.

import { ApiError, api, errorDetail, followRun, getJSON, postJSON } from "./api.js";
import { COLORS, logToggle, makeChart, markersPlugin, thin, uPlot } from "./charts.js";
import { ACTIVE, TERMINAL, describe, duration, h, int, logLines, num, pct, progressBar, statusBadge } from "./ui.js";

const HISTORY_POINTS = 2000; // iter events loaded for the chart, thinned by the server
const LIVE_POINTS = 6000; // iter points kept before the chart thins them
const LOG_LINES = 300; // the log tail
const DETAIL_POLL_MS = 5000; // progress and diagnostics while the run is going
const REDRAW_MS = 250; // live events are drawn at most this often

export function runView(root, runId) {
  const iters = { x: [], loss: [], ms: [], mfu: [] };
  const evals = { x: [], train: [], val: [] };
  let marks = []; // {iter, kind: eval|checkpoint|warning, label, best}
  let run = null;
  let lastIter = null; // the newest iter event, for the cards between polls
  let log = [];
  let logSeq = 0;
  let unfollow = null;
  let pollTimer = null;
  let drawTimer = null;
  let closed = false;
  let logScale = false;
  let lossChart = null;
  let perfChart = null;
  let cancelling = false;

  const el = {
    head: h("div", { class: "run-head" }),
    cards: h("div", { class: "cards" }),
    live: h("span", { class: "muted live-state" }),
    lossBox: h("div", { class: "chart", id: "loss-chart" }),
    perfBox: h("div", { class: "chart", id: "perf-chart" }),
    mfuNote: h("span", { class: "muted" }),
    pointsNote: h("span", { class: "muted points" }),
    warnings: h("ul", { class: "warnings" }),
    summary: h("ul", { class: "summary" }),
    log: h("pre", { class: "log", id: "log" }),
    config: h("table", { class: "config" }),
  };
  const sampler = samplePanel(runId);
  root.replaceChildren(
    el.head,
    el.cards,
    h(
      "section",
      { class: "panel" },
      h(
        "div",
        { class: "panel-title" },
        h("h2", {}, "Loss"),
        logToggle("log scale", (on) => {
          logScale = on;
          makeLossChart();
        }),
        el.pointsNote,
        el.live,
      ),
      el.lossBox,
      h(
        "p",
        { class: "legend-note muted" },
        h("span", { class: "key eval" }),
        " evaluation  ",
        h("span", { class: "key checkpoint" }),
        " checkpoint (filled: best so far)  ",
        h("span", { class: "key warning" }),
        " warning",
      ),
      el.warnings,
    ),
    h(
      "section",
      { class: "panel" },
      h("div", { class: "panel-title" }, h("h2", {}, "Step time and MFU"), el.mfuNote),
      el.perfBox,
    ),
    h("section", { class: "panel" }, h("h2", {}, "Diagnostics"), el.summary),
    sampler.panel,
    h("section", { class: "panel" }, h("h2", {}, "Log"), el.log),
    h("section", { class: "panel" }, h("details", {}, h("summary", {}, h("h2", {}, "Config")), el.config)),
  );

  // --- charts ------------------------------------------------------------------------------

  const valueFmt = (digits) => (u, v) => (v == null ? "–" : v.toFixed(digits));
  const sync = { key: `run-${runId}` };

  function makeLossChart() {
    lossChart?.destroy();
    el.lossBox.replaceChildren();
    lossChart = makeChart(
      el.lossBox,
      {
        cursor: { sync },
        scales: { x: { time: false }, y: { distr: logScale ? 3 : 1 } },
        axes: [{ label: "iter" }, { label: "loss" }],
        series: [
          { label: "iter" },
          { label: "loss", stroke: COLORS.loss, width: 1, value: valueFmt(4), points: { show: false } },
          { label: "train loss (eval)", stroke: COLORS.train, width: 2, value: valueFmt(4), points: { size: 6 } },
          { label: "val loss (eval)", stroke: COLORS.val, width: 2, value: valueFmt(4), points: { size: 6 } },
        ],
        plugins: [markersPlugin(() => marks)],
      },
      lossData(),
    );
  }

  function makePerfChart() {
    const mfuRange = (u, min, max) => [0, Math.max(1, (max ?? 0) * 1.2)];
    perfChart = makeChart(
      el.perfBox,
      {
        height: 220,
        cursor: { sync },
        scales: { x: { time: false }, ms: {}, mfu: { range: mfuRange } },
        axes: [
          { label: "iter" },
          { scale: "ms", label: "step ms" },
          { scale: "mfu", label: "MFU %", side: 1, grid: { show: false } },
        ],
        series: [
          { label: "iter" },
          { label: "step ms", scale: "ms", stroke: COLORS.ms, width: 1, value: valueFmt(2), points: { show: false } },
          { label: "MFU %", scale: "mfu", stroke: COLORS.mfu, width: 1, value: valueFmt(2), points: { show: false } },
        ],
        plugins: [markersPlugin(() => marks.filter((m) => m.kind !== "eval"))],
      },
      perfData(),
    );
  }

  const lossData = () =>
    uPlot.join([
      [iters.x.slice(), iters.loss.slice()],
      [evals.x, evals.train, evals.val],
    ]);
  const perfData = () => [iters.x.slice(), iters.ms.slice(), iters.mfu.slice()];

  function redraw() {
    drawTimer = null;
    if (closed) return;
    thin([iters.x, iters.loss, iters.ms, iters.mfu], LIVE_POINTS);
    lossChart.setData(lossData());
    perfChart.setData(perfData());
    root.dataset.points = String(iters.x.length);
    root.dataset.evals = String(evals.x.length);
    el.pointsNote.textContent = `${int(iters.x.length)} iter points, ${evals.x.length} evals`;
    const noMfu = iters.x.length > 0 && iters.mfu.every((v) => v == null);
    el.mfuNote.textContent = noMfu ? "MFU n/a: the peak FLOP/s of this device is not known (set peak_flops)" : "";
    renderWarnings();
    renderCards();
    renderLog();
  }

  const schedule = () => {
    drawTimer ??= setTimeout(redraw, REDRAW_MS);
  };

  // --- events ------------------------------------------------------------------------------

  // Cut the series back to an iteration: points at or after it (evals after it) go.
  function cutIters(k) {
    let n = iters.x.length;
    while (n > 0 && iters.x[n - 1] >= k) n--;
    for (const col of Object.values(iters)) col.length = n;
  }
  function cutEvals(k) {
    let n = evals.x.length;
    while (n > 0 && evals.x[n - 1] > k) n--;
    for (const col of Object.values(evals)) col.length = n;
  }

  function addEvent(ev) {
    switch (ev.type) {
      case "iter": {
        cutIters(ev.iter); // iterations only grow; anything else is a redone stretch
        const mfu = ev.mfu_avg ?? ev.mfu;
        iters.x.push(ev.iter);
        iters.loss.push(typeof ev.loss === "number" ? ev.loss : null);
        iters.ms.push(ev.step_ms ?? null);
        iters.mfu.push(typeof mfu === "number" ? mfu * 100 : null);
        lastIter = ev;
        break;
      }
      case "eval":
        cutEvals(ev.iter - 1);
        evals.x.push(ev.iter);
        evals.train.push(ev.train_loss ?? null);
        evals.val.push(ev.val_loss ?? null);
        marks.push({ iter: ev.iter, kind: "eval" });
        break;
      case "checkpoint":
        marks.push({ iter: ev.iter, kind: "checkpoint", best: !!ev.best });
        break;
      case "warning":
        marks.push({ iter: ev.iter, kind: "warning", label: ev.code, message: ev.message });
        break;
      case "status":
        if (ev.from_iter != null) {
          // Resumed after its worker was lost: what that worker reported after the
          // checkpoint is replaced by what follows.
          cutIters(ev.from_iter);
          cutEvals(ev.from_iter);
          marks = marks.filter((m) => m.iter <= ev.from_iter && !(m.kind === "warning" && m.iter >= ev.from_iter));
        }
        if (run) {
          run.status = ev.status;
          if (ev.reason != null) run.reason = ev.reason;
          renderHead();
        }
        break;
    }
  }

  function addLog(ev) {
    if (ev.seq <= logSeq) return;
    logSeq = ev.seq;
    log.push(...logLines(ev));
    if (log.length > LOG_LINES * 2) log = log.slice(-LOG_LINES);
  }

  function onLive(ev) {
    addEvent(ev);
    addLog(ev);
    schedule();
    if (ev.type === "status" && TERMINAL.has(ev.status)) refreshDetail();
  }

  // --- the rest of the page ----------------------------------------------------------------

  function renderHead() {
    const cancel = h(
      "button",
      { class: "danger", id: "cancel", onclick: cancelRun, disabled: cancelling },
      cancelling ? "Cancelling…" : "Cancel run",
    );
    el.head.replaceChildren(
      h(
        "div",
        { class: "title" },
        h("h1", {}, run.name || run.id),
        run.name ? h("span", { class: "muted mono" }, run.id) : null,
        statusBadge(run.status),
        h("span", { class: "muted" }, `attempt ${run.attempt}`),
      ),
      h("p", { class: "reason", id: "reason" }, run.reason || ""),
      lineage(run),
      h(
        "div",
        { class: "actions" },
        ACTIVE.has(run.status) ? cancel : null,
        h("a", { class: "button", href: `#/new?from=${encodeURIComponent(run.id)}` }, "New run from this config"),
        h("a", { class: "button", href: `#/compare?ids=${encodeURIComponent(run.id)}` }, "Compare"),
      ),
    );
    root.dataset.status = run.status;
  }

  // Where its weights and data came from: another run's checkpoint, a dataset of yours.
  function lineage(run) {
    const parts = [];
    if (run.parent) {
      parts.push(
        "started from ",
        h("a", { id: "parent", href: `#/runs/${encodeURIComponent(run.parent.run_id)}` }, `run ${run.parent.run_id}`),
        ` at iter ${run.parent.iter}`,
      );
    } else if (run.config.init_from && !["scratch", "resume"].includes(run.config.init_from)) {
      parts.push(`started from the pretrained ${run.config.init_from}`);
    }
    if (run.dataset) {
      if (parts.length) parts.push("; ");
      parts.push("trained on ", h("a", { href: "#/datasets" }, `dataset ${run.dataset.id}`), ` (sha256 ${run.dataset.sha256.slice(0, 12)}…)`);
    }
    return parts.length ? h("p", { class: "muted lineage", id: "lineage" }, ...parts) : null;
  }

  function renderCards() {
    if (!run) return;
    const p = { ...run.progress };
    if (lastIter && (p.iter == null || lastIter.iter > p.iter)) {
      p.iter = lastIter.iter;
      p.loss = lastIter.loss;
    }
    const card = (label, value, cls = "card") =>
      h("div", { class: cls }, h("div", { class: "label" }, label), h("div", {}, value));
    el.cards.replaceChildren(
      card("progress", progressBar(p), "card wide"),
      card("loss", num(p.loss)),
      card("best val loss", num(p.best_val_loss)),
      card("last val loss", num(p.last_val_loss)),
      card("step (median)", p.median_step_ms == null ? "–" : `${num(p.median_step_ms, 1)} ms`),
      card("MFU", pct(p.mfu)),
      card("tokens/s", int(p.tokens_per_s)),
      card("tokens seen", int(p.tokens_seen)),
      card("ETA", ACTIVE.has(run.status) ? duration(p.eta_s) : "–"),
    );
  }

  function renderWarnings() {
    const ws = marks.filter((m) => m.kind === "warning");
    el.warnings.replaceChildren(
      ...ws.map((w) => h("li", {}, h("b", {}, `iter ${w.iter} · ${w.label}`), ": ", w.message || "")),
    );
  }

  function renderLog() {
    const pre = el.log;
    const atBottom = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 30;
    pre.textContent = log.slice(-LOG_LINES).join("\n");
    if (atBottom) pre.scrollTop = pre.scrollHeight;
  }

  function renderDetail() {
    renderHead();
    renderCards();
    const summary = run.diagnostics?.summary || [];
    el.summary.replaceChildren(
      ...(summary.length ? summary.map((s) => h("li", {}, s)) : [h("li", { class: "muted" }, "nothing yet")]),
    );
    el.config.replaceChildren(
      ...Object.entries(run.config).map(([k, v]) =>
        h("tr", {}, h("th", {}, k), h("td", { class: "mono" }, JSON.stringify(v))),
      ),
    );
  }

  async function refreshDetail() {
    clearTimeout(pollTimer);
    try {
      run = await getJSON(`/runs/${encodeURIComponent(runId)}`);
      if (closed) return;
      renderDetail();
    } catch (e) {
      if (closed) return;
      el.live.textContent = `could not refresh: ${e.message}`;
    }
    if (!closed && ACTIVE.has(run.status)) pollTimer = setTimeout(refreshDetail, DETAIL_POLL_MS);
  }

  async function cancelRun() {
    if (!confirm(`Cancel run ${run.name || run.id}? A running run checkpoints first.`)) return;
    cancelling = true;
    renderHead();
    try {
      const updated = await postJSON(`/runs/${encodeURIComponent(runId)}/cancel`, {});
      run.status = updated.status;
      renderHead();
      if (TERMINAL.has(updated.status)) refreshDetail();
    } catch (err) {
      cancelling = false;
      renderHead();
      el.head.querySelector(".reason").textContent = `Cancel failed: ${err.message}`;
    }
  }

  async function load() {
    try {
      run = await getJSON(`/runs/${encodeURIComponent(runId)}`);
    } catch (e) {
      root.replaceChildren(
        h("p", { class: "error" }, e instanceof ApiError && e.status === 404 ? `No run ${runId}.` : e.message),
      );
      return;
    }
    if (closed) return;
    renderDetail();
    makeLossChart();
    makePerfChart();
    const base = `/runs/${encodeURIComponent(runId)}/events`;
    const history = await getJSON(`${base}?max_points=${HISTORY_POINTS}`);
    const after = history.next_after;
    const tail = await getJSON(`${base}?after=${Math.max(0, after - LOG_LINES)}&limit=${LOG_LINES}`);
    if (closed) return;
    history.events.forEach(addEvent);
    tail.events.filter((ev) => ev.seq <= after).forEach(addLog);
    redraw();
    if (TERMINAL.has(run.status)) {
      el.live.textContent = "";
    } else {
      unfollow = followRun(runId, after, {
        onEvent: onLive,
        onState: (s) => {
          el.live.textContent = s === "live" ? "● live" : s;
        },
      });
      pollTimer = setTimeout(refreshDetail, DETAIL_POLL_MS);
    }
  }

  load().catch((e) => {
    if (!closed) el.live.textContent = `error: ${e.message}`;
  });

  return () => {
    closed = true;
    unfollow?.();
    sampler.stop();
    clearTimeout(pollTimer);
    clearTimeout(drawTimer);
    lossChart?.destroy();
    perfChart?.destroy();
  };
}

// The prompt box: POST /runs/{id}/samples with stream: true, read as text as it arrives.
function samplePanel(runId) {
  let ctrl = null;
  const prompt = h("textarea", { name: "prompt", rows: 2, value: "ROMEO:" });
  const tokens = h("input", { name: "max_new_tokens", type: "number", min: 1, value: "300" });
  const temperature = h("input", { name: "temperature", type: "number", min: 0, step: "0.1", value: "0.8" });
  const which = h(
    "select",
    { name: "checkpoint" },
    h("option", { value: "latest" }, "latest"),
    h("option", { value: "best" }, "best"),
  );
  const go = h("button", { type: "submit", id: "sample-go" }, "Sample");
  const stopBtn = h("button", { type: "button", disabled: true, onclick: () => ctrl?.abort() }, "Stop");
  const meta = h("span", { class: "muted", id: "sample-meta" });
  const promptOut = h("b");
  const textOut = h("span");
  const out = h("pre", { class: "sample-out", id: "sample-out" }, promptOut, textOut);

  async function run(e) {
    e.preventDefault();
    ctrl?.abort();
    ctrl = new AbortController();
    const body = {
      prompt: prompt.value,
      max_new_tokens: Number(tokens.value),
      temperature: Number(temperature.value),
      checkpoint: which.value,
      stream: true,
    };
    go.disabled = true;
    stopBtn.disabled = false;
    out.dataset.state = "waiting";
    out.dataset.chunks = "0";
    meta.textContent = "waiting for the sampling worker…";
    promptOut.textContent = body.prompt;
    textOut.textContent = "";
    let received = "";
    try {
      const resp = await api(`/runs/${encodeURIComponent(runId)}/samples`, {
        method: "POST",
        json: body,
        signal: ctrl.signal,
      });
      if (!resp.ok) throw new ApiError(resp.status, await errorDetail(resp));
      meta.textContent = `checkpoint at iter ${resp.headers.get("X-Checkpoint-Iter")}, seed ${resp.headers.get("X-Seed")}`;
      out.dataset.state = "streaming";
      const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        received += value;
        out.dataset.chunks = String(Number(out.dataset.chunks) + 1);
        // The answer starts with the prompt, then the new text.
        textOut.textContent = received.slice(body.prompt.length);
      }
      out.dataset.state = "done";
    } catch (err) {
      out.dataset.state = "error";
      meta.textContent =
        err.name === "AbortError" ? "stopped" : `could not sample: ${describe(err.detail ?? err.message)}`;
    } finally {
      go.disabled = false;
      stopBtn.disabled = true;
    }
  }

  const panel = h(
    "section",
    { class: "panel" },
    h("h2", {}, "Sample"),
    h(
      "form",
      { class: "sample-form", onsubmit: run },
      h("label", {}, "prompt", prompt),
      h("label", {}, "max_new_tokens", tokens),
      h("label", {}, "temperature", temperature),
      h("label", {}, "checkpoint", which),
      h("div", { class: "buttons" }, go, stopBtn),
    ),
    meta,
    out,
  );
  return { panel, stop: () => ctrl?.abort() };
}
