// The gptjobs dashboard: the views live in the URL's fragment, so one page serves them all.
//   #/              runs, updated every few seconds
//   #/runs/<id>     one run, live
//   #/compare?ids=  val loss of several runs on one chart
//   #/new[?from=id] the new-run form
//   #/datasets      your datasets, their preparing, an upload form
//   #/sweeps        your sweeps; #/sweeps/<id> one, live: scatters, curves, its runs

import { apiKey, askKey, forgetKey, getJSON } from "./api.js";
import { logToggle, makeChart, paletteColor, uPlot } from "./charts.js";
import { datasetsView } from "./datasets.js";
import { newRunView } from "./form.js";
import { runView } from "./run.js";
import { sweepView, sweepsView } from "./sweeps.js";
import { ACTIVE, age, h, num, pct, progressBar, statusBadge } from "./ui.js";

const LIST_POLL_MS = 3000;
const COMPARE_POLL_MS = 5000;
const SELECTED = "gptjobs.compare";

// Run the async fn over items, at most `n` at once.
async function pool(items, n, fn) {
  const queue = [...items];
  const worker = async () => {
    while (queue.length) await fn(queue.shift());
  };
  await Promise.all(Array.from({ length: Math.min(n, queue.length) }, worker));
}

// --- runs -----------------------------------------------------------------------------------

function runsView(root) {
  const selected = new Set(JSON.parse(localStorage.getItem(SELECTED) || "[]"));
  let timer = null;
  let closed = false;
  const note = h("span", { class: "muted" });
  const tbody = h("tbody");
  const compare = h("a", { class: "button", id: "compare-selected" });

  function updateCompare() {
    localStorage.setItem(SELECTED, JSON.stringify([...selected]));
    compare.textContent = `Compare selected (${selected.size})`;
    compare.href = `#/compare?ids=${[...selected].map(encodeURIComponent).join(",")}`;
    compare.classList.toggle("disabled", selected.size === 0);
  }

  function row(run) {
    const p = run.progress; // the list's glance: newest iter, loss, best val loss, MFU
    const box = h("input", {
      type: "checkbox",
      checked: selected.has(run.id),
      title: "select for comparison",
      onchange: (e) => {
        if (e.target.checked) selected.add(run.id);
        else selected.delete(run.id);
        updateCompare();
      },
    });
    const link = h("a", { href: `#/runs/${encodeURIComponent(run.id)}` }, run.name || run.id);
    return h(
      "tr",
      { id: `run-${run.id}`, dataset: { status: run.status } },
      h("td", {}, box),
      h(
        "td",
        {},
        link,
        h("div", { class: "muted mono small" }, run.id),
        run.sweep ? h("a", { class: "small", href: `#/sweeps/${encodeURIComponent(run.sweep)}` }, "its sweep") : null,
      ),
      h("td", {}, statusBadge(run.status)),
      h("td", {}, progressBar(p)),
      h("td", { class: "num" }, num(p?.loss)),
      h("td", { class: "num" }, num(p?.best_val_loss)),
      h("td", { class: "num" }, pct(p?.mfu)),
      h("td", { title: run.created_at }, age(run.created_at)),
    );
  }

  async function refresh() {
    try {
      const { runs } = await getJSON("/runs?limit=100");
      if (closed) return;
      tbody.replaceChildren(
        ...(runs.length
          ? runs.map(row)
          : [
              h(
                "tr",
                {},
                h("td", { colspan: 8, class: "muted" }, "No runs yet. ", h("a", { href: "#/new" }, "Create one.")),
              ),
            ]),
      );
      note.textContent = `updated ${new Date().toLocaleTimeString()}${runs.length === 100 ? " · the newest 100 runs" : ""}`;
    } catch (e) {
      if (!closed) note.textContent = `could not load runs: ${e.message}`;
    }
    if (!closed) timer = setTimeout(refresh, LIST_POLL_MS);
  }

  updateCompare();
  root.replaceChildren(
    h(
      "div",
      { class: "panel-title" },
      h("h1", {}, "Runs"),
      note,
      h("span", { class: "spacer" }),
      compare,
      h("a", { class: "button primary", href: "#/new" }, "New run"),
    ),
    h(
      "table",
      { class: "runs", id: "runs" },
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          ...["", "name", "status", "progress", "loss", "best val loss", "MFU", "age"].map((t) => h("th", {}, t)),
        ),
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

// --- compare --------------------------------------------------------------------------------

function compareView(root, ids) {
  const runs = new Map(); // id -> {run, x: [], val: [], after}
  let chart = null;
  let logScale = false;
  let timer = null;
  let closed = false;
  const picker = h("div", { class: "picker" });
  const box = h("div", { class: "chart", id: "compare-chart" });
  const table = h("tbody");

  function setIds(next) {
    location.hash = `#/compare?ids=${next.map(encodeURIComponent).join(",")}`;
  }

  async function loadPicker() {
    const { runs: recent } = await getJSON("/runs?limit=50");
    const known = new Set(recent.map((r) => r.id));
    const all = [...recent, ...ids.filter((id) => !known.has(id)).map((id) => ({ id, name: null }))];
    picker.replaceChildren(
      ...all.map((r) =>
        h(
          "label",
          { class: "chip" },
          h("input", {
            type: "checkbox",
            checked: ids.includes(r.id),
            onchange: (e) => setIds(e.target.checked ? [...ids, r.id] : ids.filter((x) => x !== r.id)),
          }),
          ` ${r.name || r.id}`,
        ),
      ),
    );
  }

  async function fetchRun(id) {
    const entry = runs.get(id) ?? { x: [], val: [], after: 0 };
    entry.run = await getJSON(`/runs/${encodeURIComponent(id)}`);
    for (;;) {
      const page = await getJSON(`/runs/${encodeURIComponent(id)}/events?type=eval&after=${entry.after}&limit=10000`);
      for (const ev of page.events) {
        entry.x.push(ev.iter);
        entry.val.push(ev.val_loss ?? null);
      }
      entry.after = page.next_after;
      if (!page.has_more) break;
    }
    runs.set(id, entry);
  }

  function draw() {
    const shown = ids.filter((id) => runs.has(id));
    const data = shown.length ? uPlot.join(shown.map((id) => [runs.get(id).x, runs.get(id).val])) : [[]];
    chart?.destroy();
    box.replaceChildren();
    chart = makeChart(
      box,
      {
        scales: { x: { time: false }, y: { distr: logScale ? 3 : 1 } },
        axes: [{ label: "iter" }, { label: "val loss" }],
        series: [
          { label: "iter" },
          ...shown.map((id, i) => ({
            label: runs.get(id).run.name || id,
            stroke: paletteColor(i),
            width: 2,
            spanGaps: true,
            value: (u, v) => (v == null ? "–" : v.toFixed(4)),
          })),
        ],
      },
      data,
    );
    root.dataset.series = String(shown.length);
    table.replaceChildren(
      ...shown.map((id, i) => {
        const { run, x, val } = runs.get(id);
        let best = null;
        val.forEach((v, j) => {
          if (v != null && (best == null || v < val[best])) best = j;
        });
        return h(
          "tr",
          {},
          h(
            "td",
            {},
            h("span", { class: "swatch", style: `background: ${paletteColor(i)}` }),
            " ",
            h("a", { href: `#/runs/${encodeURIComponent(id)}` }, run.name || id),
          ),
          h("td", {}, statusBadge(run.status)),
          h("td", { class: "num" }, best == null ? "–" : num(val[best])),
          h("td", { class: "num" }, best == null ? "–" : String(x[best])),
          h("td", { class: "num" }, num(val.at(-1))),
        );
      }),
    );
  }

  async function refresh() {
    const going = ids.filter((id) => !runs.has(id) || ACTIVE.has(runs.get(id).run.status));
    await pool(going, 4, async (id) => {
      try {
        await fetchRun(id);
      } catch {
        // an unknown id: left off the chart
      }
    });
    if (closed) return;
    draw();
    if (ids.some((id) => runs.has(id) && ACTIVE.has(runs.get(id).run.status)))
      timer = setTimeout(refresh, COMPARE_POLL_MS);
  }

  root.replaceChildren(
    h("h1", {}, "Compare val loss"),
    picker,
    h(
      "section",
      { class: "panel" },
      h(
        "div",
        { class: "panel-title" },
        h("h2", {}, "val loss per evaluation"),
        logToggle("log scale", (on) => {
          logScale = on;
          draw();
        }),
      ),
      box,
      h(
        "table",
        { class: "runs" },
        h(
          "thead",
          {},
          h("tr", {}, ...["run", "status", "best val loss", "at iter", "last val loss"].map((t) => h("th", {}, t))),
        ),
        table,
      ),
    ),
  );
  loadPicker().catch((e) => picker.replaceChildren(h("span", { class: "error" }, e.message)));
  refresh();
  return () => {
    closed = true;
    clearTimeout(timer);
    chart?.destroy();
  };
}

// --- the frame ------------------------------------------------------------------------------

const ROUTES = [
  [/^#\/runs\/([^/?]+)$/, (root, m) => runView(root, decodeURIComponent(m[1])), "runs"],
  [/^#\/new(?:\?(.*))?$/, (root, m) => newRunView(root, new URLSearchParams(m[1] || "").get("from")), "new"],
  [
    /^#\/compare(?:\?(.*))?$/,
    (root, m) => compareView(root, (new URLSearchParams(m[1] || "").get("ids") || "").split(",").filter(Boolean)),
    "compare",
  ],
  [/^#\/datasets$/, (root) => datasetsView(root), "datasets"],
  [/^#\/sweeps$/, (root) => sweepsView(root), "sweeps"],
  [/^#\/sweeps\/([^/?]+)$/, (root, m) => sweepView(root, decodeURIComponent(m[1])), "sweeps"],
  [/^(?:#\/?)?$/, (root) => runsView(root), "runs"],
];

let leave = null;

function route() {
  leave?.();
  leave = null;
  const root = document.getElementById("view");
  root.replaceChildren();
  for (const key of Object.keys(root.dataset)) delete root.dataset[key];
  for (const [pattern, view, nav] of ROUTES) {
    const m = location.hash.match(pattern);
    if (!m) continue;
    document.querySelectorAll("nav a[data-nav]").forEach((a) => a.classList.toggle("active", a.dataset.nav === nav));
    leave = view(root, m);
    return;
  }
  root.append(h("p", { class: "error" }, "No such page. "), h("a", { href: "#/" }, "Back to the runs."));
}

function keyButton() {
  const button = document.getElementById("key-button");
  button.textContent = apiKey() ? "API key ✓" : "API key";
  button.onclick = async () => {
    if (apiKey() && confirm("Forget the API key stored in this browser?")) {
      forgetKey();
    } else if (!apiKey()) {
      await askKey("Paste an API key (`gptjobs keys create --name you` on the server makes one).");
    }
    keyButton();
    route();
  };
}

document.getElementById("key-dialog").addEventListener("close", keyButton);
window.addEventListener("hashchange", route);

// Ask for a key before the first request needs one, rather than after it is refused.
async function start() {
  try {
    const { auth_required } = await getJSON("/config/defaults");
    if (auth_required && !apiKey()) {
      await askKey("This server needs an API key (`gptjobs keys create --name you` on the server makes one).");
    }
  } catch {
    // the views say what is wrong with the server
  }
  keyButton();
  route();
}

start();
