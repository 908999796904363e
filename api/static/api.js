// Talking to the gptjobs API: fetch with the API key, the key prompt, the run's WebSocket.

const KEY_STORAGE = "gptjobs.apiKey";

export class ApiError extends Error {
  constructor(status, detail) {
    super(typeof detail === "string" ? detail : `HTTP ${status}`);
    this.status = status;
    this.detail = detail; // a string, or FastAPI's list of {loc, msg} for a 422
  }
}

export function apiKey() {
  return localStorage.getItem(KEY_STORAGE) || "";
}

export function forgetKey() {
  localStorage.removeItem(KEY_STORAGE);
}

// One prompt at a time: every request that got a 401 meanwhile waits for the same answer.
let asking = null;

export function askKey(message) {
  if (asking) return asking;
  const dialog = document.getElementById("key-dialog");
  const input = dialog.querySelector("input[name=key]");
  dialog.querySelector(".key-message").textContent = message || "This server needs an API key.";
  input.value = "";
  asking = new Promise((resolve) => {
    dialog.addEventListener(
      "close",
      () => {
        const key = input.value.trim();
        if (key) localStorage.setItem(KEY_STORAGE, key);
        asking = null;
        resolve();
      },
      { once: true },
    );
  });
  dialog.showModal();
  input.focus();
  return asking;
}

// fetch() with the key; a 401 asks for a key and tries again. `json` is sent as the body.
export async function api(path, { json, headers, ...options } = {}) {
  for (;;) {
    const h = new Headers(headers || {});
    const key = apiKey();
    if (key) h.set("Authorization", `Bearer ${key}`);
    if (json !== undefined) {
      h.set("Content-Type", "application/json");
      options.body = JSON.stringify(json);
    }
    const resp = await fetch(path, { ...options, headers: h });
    if (resp.status !== 401) return resp;
    const detail = await errorDetail(resp);
    await askKey(apiKey() ? `The API refused the key: ${detail}` : detail);
  }
}

export async function errorDetail(resp) {
  try {
    const body = await resp.json();
    return body.detail ?? `HTTP ${resp.status}`;
  } catch {
    return `HTTP ${resp.status} ${resp.statusText}`;
  }
}

export async function getJSON(path) {
  const resp = await api(path);
  if (!resp.ok) throw new ApiError(resp.status, await errorDetail(resp));
  return resp.json();
}

export async function postJSON(path, body) {
  const resp = await api(path, { method: "POST", json: body });
  if (!resp.ok) throw new ApiError(resp.status, await errorDetail(resp));
  return resp.json();
}

// Follow a run's events over the WebSocket from seq `after`: history, live, then a normal
// close after the final status. A dropped socket reconnects with the last seq seen (so
// nothing is missed or repeated), waiting 1 s, 2 s, 4 s... up to 30 s between tries.
// Returns a function that stops following.
export function followRun(runId, after, { onEvent, onState }) {
  let seq = after;
  let delay = 1000;
  let ws = null;
  let timer = null;
  let stopped = false;

  function connect() {
    const params = new URLSearchParams({ after: String(seq) });
    if (apiKey()) params.set("token", apiKey());
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    ws = new WebSocket(`${proto}//${location.host}/runs/${encodeURIComponent(runId)}/stream?${params}`);
    ws.onopen = () => onState("live");
    ws.onmessage = (msg) => {
      const ev = JSON.parse(msg.data);
      if (ev.seq <= seq) return;
      seq = ev.seq;
      delay = 1000;
      onEvent(ev);
    };
    ws.onclose = async (e) => {
      ws = null;
      if (stopped) return;
      if (e.code === 1000) return onState("ended");
      if (e.code === 4404) return onState("not found");
      if (e.code === 4401) {
        await askKey(`The stream refused the key: ${e.reason}`);
        if (!stopped) connect();
        return;
      }
      onState(`disconnected; retrying in ${delay / 1000} s`);
      timer = setTimeout(connect, delay);
      delay = Math.min(delay * 2, 30000);
    };
  }

  connect();
  return () => {
    stopped = true;
    clearTimeout(timer);
    if (!ws) return;
    // Closing a socket that is still connecting makes the browser log an error: let it open first.
    const socket = ws;
    if (socket.readyState === WebSocket.CONNECTING) socket.onopen = () => socket.close();
    else socket.close();
  };
}
