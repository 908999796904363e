// Small DOM and formatting helpers shared by the views.

// h("a", {href: "#/"}, "text", child...): an element; attributes starting with "on" are listeners.
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k === "value") el.value = v;
    else if (k in el && typeof v !== "string") el[k] = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  el.append(...children.flat().filter((c) => c != null && c !== false));
  return el;
}

export const ACTIVE = new Set(["queued", "running", "recovering"]);
export const TERMINAL = new Set(["succeeded", "failed", "cancelled", "pruned"]);

export const num = (x, digits = 4) => (typeof x === "number" && Number.isFinite(x) ? x.toFixed(digits) : "–");
export const pct = (x) => (typeof x === "number" ? `${(x * 100).toFixed(2)}%` : "n/a");
export const int = (x) => (typeof x === "number" ? Math.round(x).toLocaleString("en-US") : "–");

export function duration(s) {
  if (typeof s !== "number" || !Number.isFinite(s)) return "–";
  if (s < 60) return `${Math.round(s)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.round((s % 86400) / 3600)} h`;
}

export function age(iso) {
  const s = (Date.now() - Date.parse(iso)) / 1000;
  return s < 5 ? "just now" : `${duration(s).split(" ").slice(0, 2).join(" ")} ago`;
}

export const statusBadge = (status) => h("span", { class: `status status-${status}` }, status);

// Iterations done (iter N is the (N+1)-th) out of max_iters.
export function progressBar(p) {
  // fraction 1: the run finished all max_iters (log_interval may have left the last unreported)
  const done = p?.fraction === 1 && p.max_iters ? p.max_iters : p?.iter == null ? null : p.iter + 1;
  const frac = done != null && p.max_iters ? Math.min(1, done / p.max_iters) : 0;
  const label = done == null ? "–" : `${int(done)} / ${int(p.max_iters)}`;
  return h(
    "span",
    { class: "progress", title: `${(frac * 100).toFixed(1)}%` },
    h("span", { class: "bar" }, h("span", { class: "fill", style: `width: ${(frac * 100).toFixed(1)}%` })),
    h("span", { class: "label" }, label),
  );
}

// A 422's detail (FastAPI's list of {loc, msg}) or any other detail, as one line.
export function describe(detail) {
  if (Array.isArray(detail)) return detail.map((d) => `${(d.loc || []).slice(1).join(".")}: ${d.msg}`).join("; ");
  return String(detail);
}

// Events as nanoGPT's log lines: the same text as GET /runs/{id}/log (gpt/logfmt.py).
export function logLines(ev) {
  const n = (x, d) => (typeof x === "number" ? x.toFixed(d) : "n/a");
  switch (ev.type) {
    case "iter": {
      const mfu = ev.mfu_avg ?? ev.mfu;
      return [`iter ${ev.iter}: loss ${n(ev.loss, 4)}, time ${n(ev.step_ms, 2)}ms, mfu ${pct(mfu)}`];
    }
    case "eval":
      return [
        `step ${ev.iter}: train loss ${n(ev.train_loss, 4)}, val loss ${n(ev.val_loss, 4)}`,
        `eval time ${n(ev.eval_ms, 2)}ms`,
      ];
    case "checkpoint": {
      const size = typeof ev.bytes === "number" ? `${(ev.bytes / 1e6).toFixed(1)} MB, ` : "";
      return [
        `saving checkpoint to ${ev.path ?? "out"}${ev.best ? " (best so far)" : ""} (${size}${n(ev.ckpt_ms, 0)}ms)`,
      ];
    }
    case "status": {
      let line = `run ${ev.status}`;
      if (ev.from_iter != null) line += ` (resuming from iter ${ev.from_iter})`;
      return [ev.reason ? `${line}: ${ev.reason}` : line];
    }
    case "warning":
      return [`warning [${ev.code}] at iter ${ev.iter}: ${ev.message}`];
    case "sample":
      return [`sample at iter ${ev.iter} for ${JSON.stringify(ev.prompt)}:`, ...String(ev.text ?? "").split("\n")];
    default:
      return [`${ev.type}: ${JSON.stringify(ev)}`];
  }
}
