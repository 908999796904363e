// #/datasets: your corpora (GET /datasets), a progress bar while each is prepared, its
// preview, and an upload form for a file sent in one request (POST /datasets; a large file
// is better sent with `gptjobs datasets upload`, which resumes after a drop).

import { ApiError, api, errorDetail, getJSON } from "./api.js";
import { age, describe, h, int, statusBadge } from "./ui.js";

const POLL_MS = 2000;

const size = (n) =>
  n < 1e6
    ? `${(n / 1e3).toLocaleString("en-US", { maximumFractionDigits: 1 })} kB`
    : `${(n / 1e6).toLocaleString("en-US", { maximumFractionDigits: 1 })} MB`;

function preparing(ds) {
  const p = ds.progress || {};
  const frac = ds.bytes ? Math.min(1, (p.bytes_done || 0) / ds.bytes) : 0;
  const what = p.phase ? `${p.phase}: ${int(p.tokens)} tokens, ${int(p.tokens_per_s)}/s` : "waiting for a prepare worker";
  return h(
    "span",
    { class: "progress", title: `${(frac * 100).toFixed(1)}%` },
    h("span", { class: "bar" }, h("span", { class: "fill", style: `width: ${(frac * 100).toFixed(1)}%` })),
    h("span", { class: "label" }, what),
  );
}

function row(ds, onDelete) {
  const tokens =
    ds.status === "ready"
      ? `${int(ds.train_tokens + ds.val_tokens)} (${int(ds.train_tokens)} train, ${int(ds.val_tokens)} val)`
      : ds.status === "preparing"
        ? preparing(ds)
        : h("span", { class: "error" }, ds.reason || "failed");
  const preview = ds.preview
    ? h("details", {}, h("summary", { class: "muted" }, "preview"), h("pre", { class: "preview" }, ds.preview))
    : null;
  return h(
    "tr",
    { id: `dataset-${ds.id}`, dataset: { status: ds.status } },
    h("td", {}, ds.name, h("div", { class: "muted mono small" }, ds.id), preview),
    h("td", {}, statusBadge(ds.status)),
    h("td", { class: "num" }, size(ds.bytes)),
    h("td", {}, tokens),
    h("td", {}, ds.tokenizer ?? "–", ds.vocab_size ? h("div", { class: "muted small" }, `vocabulary ${int(ds.vocab_size)}`) : null),
    h("td", {}, ds.format ?? "–"),
    h("td", { title: ds.created_at }, age(ds.created_at)),
    h("td", {}, h("button", { type: "button", class: "small", onclick: () => onDelete(ds) }, "Delete")),
  );
}

function uploadForm(onUploaded) {
  const note = h("span", { class: "muted", id: "upload-note" });
  const form = h(
    "form",
    { class: "upload", id: "upload-form" },
    h("label", {}, "File ", h("input", { type: "file", name: "file", required: true })),
    h("label", {}, "Name ", h("input", { type: "text", name: "name", required: true, placeholder: "my-corpus" })),
    h(
      "label",
      {},
      "Tokenizer ",
      h(
        "select",
        { name: "tokenizer" },
        h("option", { value: "" }, "gpt2 (a nanoGPT archive: its own)"),
        h("option", { value: "gpt2" }, "gpt2"),
        h("option", { value: "char" }, "char"),
      ),
    ),
    h(
      "label",
      {},
      "Format ",
      h(
        "select",
        { name: "format" },
        ["", "text", "jsonl", "nanogpt"].map((v) => h("option", { value: v }, v || "from the file")),
      ),
    ),
    h("button", { class: "primary", type: "submit" }, "Upload"),
    note,
  );
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const body = new FormData(form);
    for (const k of ["tokenizer", "format"]) if (!body.get(k)) body.delete(k);
    note.textContent = "uploading…";
    note.className = "muted";
    const resp = await api("/datasets", { method: "POST", body });
    if (resp.ok) {
      note.textContent = "uploaded: it is prepared below";
      form.reset();
      onUploaded(await resp.json());
    } else {
      note.textContent = describe(await errorDetail(resp));
      note.className = "error";
    }
  });
  return form;
}

export function datasetsView(root) {
  let timer = null;
  let closed = false;
  const note = h("span", { class: "muted" });
  const tbody = h("tbody");

  async function remove(ds) {
    if (!confirm(`Delete dataset ${ds.name}?`)) return;
    const resp = await api(`/datasets/${encodeURIComponent(ds.id)}`, { method: "DELETE" });
    if (!resp.ok) alert(describe(await errorDetail(resp)));
    refresh();
  }

  async function refresh() {
    clearTimeout(timer);
    try {
      const { datasets } = await getJSON("/datasets");
      if (closed) return;
      tbody.replaceChildren(
        ...(datasets.length
          ? datasets.map((ds) => row(ds, remove))
          : [h("tr", {}, h("td", { colspan: 8, class: "muted" }, "No datasets yet: upload one above."))]),
      );
      note.textContent = `updated ${new Date().toLocaleTimeString()}`;
      if (datasets.some((ds) => ds.status === "preparing")) timer = setTimeout(refresh, POLL_MS);
    } catch (e) {
      if (!closed) note.textContent = `could not load datasets: ${e instanceof ApiError ? e.message : e}`;
    }
  }

  root.replaceChildren(
    h("div", { class: "panel-title" }, h("h1", {}, "Datasets"), note),
    h(
      "section",
      { class: "panel" },
      h("h2", {}, "Upload"),
      uploadForm(() => refresh()),
      h(
        "p",
        { class: "muted small" },
        "Text, JSON Lines (a document per line, in its text field), gzip or zstd of either, or a nanoGPT data " +
          "directory as a tar. For large files: ",
        h("code", {}, "gptjobs datasets upload FILE --name NAME"),
        " (resumable, parts in parallel).",
      ),
    ),
    h(
      "table",
      { class: "runs", id: "datasets" },
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          ...["name", "status", "size", "tokens", "tokenizer", "format", "age", ""].map((t) => h("th", {}, t)),
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

// The new-run form's dataset picker: the built-in ones, then your ready datasets by name.
export async function addDatasetChoices(select, current) {
  const { datasets } = await getJSON("/datasets");
  const ready = datasets.filter((ds) => ds.status === "ready");
  if (!ready.length) return;
  select.append(
    h(
      "optgroup",
      { label: "your datasets" },
      ready.map((ds) =>
        h("option", { value: ds.id }, `${ds.name} (${ds.tokenizer}, ${int(ds.train_tokens + ds.val_tokens)} tokens)`),
      ),
    ),
  );
  if (current) select.value = current;
}
