// The new-run form: nanoGPT's keys with their defaults (GET /config/defaults), POST /runs,
// and the server's 422s shown by the field they name.

import { ApiError, api, errorDetail, getJSON, postJSON } from "./api.js";
import { addDatasetChoices } from "./datasets.js";
import { describe, h } from "./ui.js";

// What a key's value looks like in its input: text for everything but booleans.
function shown(field, value) {
  if (value == null) return "";
  if (field.type === "list[str]") return value.join("\n");
  return String(value);
}

// The input's text back to JSON. A number that does not parse is sent as typed: the
// server's answer says what is wrong with it.
function parsed(field, input) {
  const base = field.type.replace(" | None", "");
  const nullable = field.type.endsWith(" | None");
  if (base === "bool" && !nullable) return input.checked;
  const text = input.value.trim();
  if (text === "" && nullable) return null;
  if (base === "bool") return text === "true";
  if (base === "int" || base === "float") return text !== "" && Number.isFinite(Number(text)) ? Number(text) : text;
  if (base === "list[str]") return input.value.split("\n").filter((line) => line !== "");
  return input.value;
}

function control(field) {
  const base = field.type.replace(" | None", "");
  const nullable = field.type.endsWith(" | None");
  const attrs = { name: field.name, id: `field-${field.name}` };
  if (base === "bool" && !nullable) return h("input", { ...attrs, type: "checkbox" });
  if (base === "bool") {
    return h(
      "select",
      attrs,
      ["", "true", "false"].map((v) => h("option", { value: v }, v || "auto")),
    );
  }
  if (base === "list[str]") return h("textarea", { ...attrs, rows: 2, placeholder: "one per line" });
  if (field.choices && field.name !== "device") {
    const options = nullable ? ["", ...field.choices] : field.choices;
    return h(
      "select",
      attrs,
      options.map((v) => h("option", { value: v }, v || "(the dataset's own)")),
    );
  }
  const input = h("input", { ...attrs, type: "text", autocomplete: "off", spellcheck: false });
  if (base === "int" || base === "float") input.inputMode = "decimal";
  if (field.name === "device") input.setAttribute("list", "device-choices");
  return input;
}

function setValue(field, input, value) {
  if (input.type === "checkbox") input.checked = !!value;
  else if (input.tagName === "SELECT" && field.type === "bool | None") input.value = value == null ? "" : String(value);
  else input.value = shown(field, value);
}

export function newRunView(root, fromRunId) {
  let closed = false;
  root.replaceChildren(h("p", { class: "muted" }, "Loading the training options…"));

  async function load() {
    const spec = await getJSON("/config/defaults");
    const from = fromRunId ? await getJSON(`/runs/${encodeURIComponent(fromRunId)}`) : null;
    if (closed) return;
    render(spec, from);
  }

  function render(spec, from) {
    const fields = spec.fields.filter((f) => !f.server_set);
    const inputs = new Map(); // name -> input
    const errors = new Map(); // name -> the element that shows its error
    const edited = new Set(); // keys the user changed: a new dataset's recipe leaves them alone
    const name = h("input", {
      name: "name",
      id: "field-name",
      type: "text",
      placeholder: "optional",
      value: from?.name ?? "",
    });
    const nameError = h("div", { class: "field-error", id: "error-name" });
    const general = h("div", { class: "error", id: "form-error" });

    // The default a key has for the chosen dataset: its recipe's value, else train.py's.
    const defaults = () => {
      const dataset = inputs.get("dataset").value;
      const recipe = spec.datasets[dataset]?.recipe ?? {};
      return Object.fromEntries(fields.map((f) => [f.name, f.name in recipe ? recipe[f.name] : f.default]));
    };

    function fill() {
      const d = defaults();
      for (const f of fields) {
        if (f.name !== "dataset" && !edited.has(f.name)) setValue(f, inputs.get(f.name), d[f.name]);
      }
    }

    const groups = new Map();
    for (const f of fields) {
      const input = control(f);
      inputs.set(f.name, input);
      input.addEventListener("input", () => edited.add(f.name));
      const error = h("div", { class: "field-error", id: `error-${f.name}` });
      errors.set(f.name, error);
      const help = [
        f.help,
        f.name === "max_iters" ? `at most ${spec.limits.max_iters.toLocaleString("en-US")} here` : null,
      ];
      const row = h(
        "div",
        { class: "field", dataset: { field: f.name } },
        h("label", { for: input.id }, f.name),
        input,
        h("div", { class: "help muted" }, help.filter(Boolean).join("; ")),
        error,
      );
      if (!groups.has(f.group)) groups.set(f.group, []);
      groups.get(f.group).push(row);
    }
    inputs.get("dataset").addEventListener("change", fill);
    // Your own datasets join the built-in ones (a run from one of them names it by id).
    addDatasetChoices(inputs.get("dataset"), from?.config.dataset).catch(() => {});
    if (from) {
      // Every value of the run's config, as the starting point (out_dir is the server's).
      for (const f of fields) {
        if (f.name in from.config) setValue(f, inputs.get(f.name), from.config[f.name]);
      }
    } else {
      fill();
    }

    function clearErrors() {
      general.textContent = "";
      nameError.textContent = "";
      for (const [k, e] of errors) {
        e.textContent = "";
        inputs.get(k).removeAttribute("aria-invalid");
      }
    }

    function showErrors(detail) {
      if (!Array.isArray(detail)) {
        general.textContent = describe(detail);
        return;
      }
      const other = [];
      for (const d of detail) {
        const [where, what, key] = d.loc || [];
        if (where === "body" && what === "config" && errors.has(key)) {
          errors.get(key).textContent = d.msg;
          inputs.get(key).setAttribute("aria-invalid", "true");
        } else if (where === "body" && what === "name") {
          nameError.textContent = d.msg;
        } else {
          other.push(d);
        }
      }
      if (other.length) general.textContent = describe(other);
      root
        .querySelector("[aria-invalid], .field-error:not(:empty), .error:not(:empty)")
        ?.scrollIntoView({ block: "center" });
    }

    async function submit(e) {
      e.preventDefault();
      clearErrors();
      // Send what differs from the defaults (and the dataset): the server resolves the rest
      // exactly as it would for any client.
      const d = defaults();
      const config = { dataset: inputs.get("dataset").value };
      for (const f of fields) {
        const value = parsed(f, inputs.get(f.name));
        if (JSON.stringify(value) !== JSON.stringify(d[f.name])) config[f.name] = value;
      }
      const body = { config };
      if (name.value.trim()) body.name = name.value.trim();
      button.disabled = true;
      try {
        // The server's own checks first (200 either way): a bad value is shown by its field
        // without a failed request.
        const check = await postJSON("/config/validate", body);
        if (!check.ok) {
          showErrors(check.errors);
          return;
        }
        const resp = await api("/runs", { method: "POST", json: body });
        if (!resp.ok) throw new ApiError(resp.status, await errorDetail(resp));
        const run = await resp.json();
        location.hash = `#/runs/${encodeURIComponent(run.id)}`;
      } catch (err) {
        showErrors(err instanceof ApiError ? err.detail : err.message);
      } finally {
        button.disabled = false;
      }
    }

    const button = h("button", { type: "submit", id: "create-run", class: "primary" }, "Create run");
    const reset = h(
      "button",
      {
        type: "button",
        onclick: () => {
          edited.clear();
          clearErrors();
          fill();
        },
      },
      "Reset to defaults",
    );
    root.replaceChildren(
      h("h1", {}, from ? `New run from ${from.name || from.id}` : "New run"),
      h(
        "p",
        { class: "muted" },
        "nanoGPT's train.py keys. Defaults are train.py's, replaced by the chosen dataset's recipe; ",
        "only the keys you change are sent. out_dir is chosen by the server.",
      ),
      h(
        "form",
        { class: "run-form", novalidate: true, onsubmit: submit },
        h(
          "div",
          { class: "field" },
          h("label", { for: "field-name" }, "name"),
          name,
          h("div", { class: "help muted" }, "a label for the run"),
          nameError,
        ),
        ...[...groups].map(([group, rows]) => h("fieldset", {}, h("legend", {}, group), ...rows)),
        h(
          "datalist",
          { id: "device-choices" },
          ...["auto", "cpu", "cuda", "cuda:0", "mps"].map((v) => h("option", { value: v })),
        ),
        general,
        h("div", { class: "buttons" }, button, reset),
      ),
    );
  }

  load().catch((e) => {
    if (!closed) root.replaceChildren(h("p", { class: "error" }, `Could not load the form: ${e.message}`));
  });
  return () => {
    closed = true;
  };
}
