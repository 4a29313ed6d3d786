// pairline's web app: the page side of docs/app.md (the WebSocket protocol and the element ids).
// A plain ES module; the only import is the CodeMirror bundle built from web/.
import {
  EditorView, EditorState, Compartment, oneDark, viewerSetup,
  python, javascript, json, markdown, html, css,
} from "./vendor/codemirror.js";

const $ = (id) => document.getElementById(id);
const el = {
  tree: $("tree"), currentPath: $("current-path"), fileNote: $("file-note"), editor: $("editor"),
  instruction: $("instruction"), send: $("send"), tier: $("tier"), stop: $("stop"), undo: $("undo"),
  answer: $("answer"), diff: $("diff"), steps: $("steps"), stepsBox: $("steps-box"),
  status: $("status"), error: $("error"), conflict: $("conflict"), conflictMessage: $("conflict-message"),
  conflictClose: $("conflict-close"), ttft: $("ttft"), tps: $("tps"), accepted: $("accepted"),
  spark: $("spark"), acceptAll: $("accept-all"), rejectAll: $("reject-all"), reconnect: $("reconnect"),
  workspace: $("workspace"), git: $("git"), model: $("model"),
};

// What the page measured, for the tests (docs/app.md).
const stats = (window.pairlineStats = { turns: [], stopClickedAt: null, lastDeltaAt: null, stoppedAt: null });

const TOKEN_KEY = "pairline.token";
const DRAFT_MS = 40;

const state = {
  ws: null,
  ready: false,
  token: null,
  openPath: null,
  running: new Set(),      // turns started and not done
  current: null,           // the turn whose answer is shown
  pendingSendAt: null,     // performance.now() of an edit not yet answered by turn.started
  turns: new Map(),        // turn -> {sentAt, firstDeltaAt, stoppedMs, tier}
  retries: 0,
  retryTimer: null,
  draftTimer: null,
  lastError: null,         // the last error event's message
};

// ------------------------------------------------------------------ editor

const language = new Compartment();
const editor = new EditorView({
  parent: el.editor,
  state: EditorState.create({
    doc: "",
    extensions: [viewerSetup, oneDark, EditorState.readOnly.of(true), language.of([])],
  }),
});

function languageFor(path) {
  const m = /\.([^./]+)$/.exec(path || "");
  switch (m ? m[1].toLowerCase() : "") {
    case "py": case "pyi": case "pyw": return python();
    case "js": case "mjs": case "cjs": return javascript();
    case "jsx": return javascript({ jsx: true });
    case "ts": case "mts": case "cts": return javascript({ typescript: true });
    case "tsx": return javascript({ typescript: true, jsx: true });
    case "json": return json();
    case "md": case "markdown": return markdown();
    case "html": case "htm": return html();
    case "css": return css();
    default: return [];
  }
}

let editorPath = null; // the path whose language is loaded

function showText(path, text, note = "") {
  if (path !== editorPath) {
    editorPath = path;
    editor.dispatch({ effects: language.reconfigure(languageFor(path)) });
  }
  const doc = text == null ? "" : text;
  if (editor.state.doc.toString() !== doc) {
    // one change over the whole document keeps the scroll position where it can
    editor.dispatch({ changes: { from: 0, to: editor.state.doc.length, insert: doc } });
  }
  el.fileNote.textContent = note;
}

// ------------------------------------------------------------------ socket

function send(msg) {
  if (!state.ws || state.ws.readyState !== WebSocket.OPEN || !state.ready) {
    setError("not connected: the message was not sent");
    return false;
  }
  state.ws.send(JSON.stringify(msg));
  return true;
}

function takeToken() {
  const params = new URLSearchParams(location.hash.replace(/^#/, ""));
  const fromHash = params.get("token");
  if (fromHash) {
    try { sessionStorage.setItem(TOKEN_KEY, fromHash); } catch { /* storage off: this load still works */ }
  }
  if (location.hash) history.replaceState(null, "", location.pathname + location.search);
  if (fromHash) return fromHash;
  try { return sessionStorage.getItem(TOKEN_KEY); } catch { return null; }
}

function connect() {
  clearTimeout(state.retryTimer);
  state.retryTimer = null;
  el.reconnect.hidden = true;
  setState("connecting");
  setStatus("connecting…");
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  let ws;
  try {
    ws = new WebSocket(`${scheme}//${location.host}/app/ws`);
  } catch (err) {
    onClosed({ code: 0, reason: String(err) });
    return;
  }
  state.ws = ws;
  state.ready = false;
  ws.onopen = () => ws.send(JSON.stringify({ type: "hello", token: state.token }));
  ws.onmessage = (ev) => {
    let msg;
    try { msg = JSON.parse(ev.data); } catch { return; }
    const handler = handlers[msg && msg.type];
    if (handler) handler(msg);
  };
  ws.onclose = (ev) => { if (state.ws === ws) onClosed(ev); };
}

function onClosed(ev) {
  state.ws = null;
  state.ready = false;
  state.running.clear();
  state.pendingSendAt = null;
  updateBusy();
  setState("closed");
  const why = `connection closed (code ${ev.code}${ev.reason ? `: ${ev.reason}` : ""})`;
  el.reconnect.hidden = false;
  // a wrong token, or a server without a workspace, will not get better by retrying
  if (ev.code === 4401) {
    setStatus("disconnected: unauthorized");
    setError(`${why}. The token was refused: open the URL that \`pairline app\` printed.`);
    return;
  }
  if (ev.code === 4404) {
    setStatus("no workspace");
    el.workspace.textContent = "no workspace";
    setError(`${state.lastError || "this server has no workspace"} (${why})`);
    return;
  }
  const delay = Math.min(15000, 1000 * 2 ** state.retries);
  state.retries += 1;
  setStatus(`disconnected; retrying in ${Math.round(delay / 1000)} s`);
  setError(`${why}. Reconnecting…`);
  state.retryTimer = setTimeout(connect, delay);
}

// ------------------------------------------------------------------ status, errors

function setStatus(text) { el.status.textContent = text; el.status.title = text; }
function setError(text) { el.error.textContent = text || ""; }
function setState(s) { document.body.dataset.state = s; }

function busy() { return state.running.size > 0 || state.pendingSendAt !== null; }

function updateBusy() {
  const b = busy();
  el.stop.disabled = !b;
  el.send.textContent = state.running.size > 0 ? "Steer" : "Send";
  document.body.dataset.turn = b ? "running" : "idle";
}

// ------------------------------------------------------------------ file tree

function renderTree(files) {
  el.tree.replaceChildren();
  if (!files.length) {
    const p = document.createElement("div");
    p.className = "empty";
    p.textContent = "no files";
    el.tree.append(p);
    return;
  }
  const root = { dirs: new Map(), files: [] };
  for (const path of files) {
    const parts = path.split("/");
    let node = root;
    for (const part of parts.slice(0, -1)) {
      if (!node.dirs.has(part)) node.dirs.set(part, { dirs: new Map(), files: [] });
      node = node.dirs.get(part);
    }
    node.files.push([parts[parts.length - 1], path]);
  }
  const byName = (a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0);
  const build = (node, into) => {
    for (const [name, sub] of [...node.dirs].sort(byName)) {
      const d = document.createElement("details");
      d.className = "dir";
      d.open = true;
      const s = document.createElement("summary");
      s.textContent = name;
      const kids = document.createElement("div");
      kids.className = "children";
      d.append(s, kids);
      build(sub, kids);
      into.append(d);
    }
    for (const [name, path] of node.files.sort(byName)) {
      const b = document.createElement("button");
      b.type = "button";
      b.className = "file";
      b.dataset.path = path;
      b.setAttribute("role", "treeitem");
      b.textContent = name;
      b.title = path;
      into.append(b);
    }
  };
  build(root, el.tree);
  markOpen();
}

function markOpen() {
  for (const b of el.tree.querySelectorAll(".file.open")) b.classList.remove("open");
  if (state.openPath == null) return;
  for (const b of el.tree.querySelectorAll(".file")) {
    if (b.dataset.path === state.openPath) b.classList.add("open");
  }
}

function openFile(path) {
  state.openPath = path;
  el.currentPath.textContent = path;
  markOpen();
  send({ type: "open", path });
}

el.tree.addEventListener("click", (ev) => {
  const b = ev.target.closest(".file");
  if (b) openFile(b.dataset.path);
});

// ------------------------------------------------------------------ instruction, send, stop

function sendEdit() {
  const pressedAt = performance.now();
  const instruction = el.instruction.value;
  if (!instruction.trim()) return;
  if (!state.openPath) { setError("open a file first: the instruction is about the open file"); return; }
  const steering = state.running.size > 0;
  clearTimeout(state.draftTimer);
  if (!send({ type: "edit", path: state.openPath, instruction, tier: el.tier.value })) return;
  state.pendingSendAt = pressedAt;
  el.instruction.value = "";
  setStatus(steering ? `steering turn ${state.current}` : "sending…");
  updateBusy();
}

function stop() {
  if (!busy()) return;
  stats.stopClickedAt = performance.now();
  if (send({ type: "stop" })) setStatus("stopping…");
}

el.instruction.addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
    ev.preventDefault();
    sendEdit();
  }
});
el.instruction.addEventListener("input", () => {
  clearTimeout(state.draftTimer);
  state.draftTimer = setTimeout(() => {
    if (state.ready) send({ type: "draft", text: el.instruction.value, path: state.openPath });
  }, DRAFT_MS);
});
el.send.addEventListener("click", sendEdit);
el.stop.addEventListener("click", stop);
window.addEventListener("keydown", (ev) => {
  if (ev.key === "Escape" && busy()) { ev.preventDefault(); stop(); }
}, true);
el.undo.addEventListener("click", () => send({ type: "undo" }));
el.reconnect.addEventListener("click", () => { state.retries = 0; connect(); });
el.conflictClose.addEventListener("click", () => { el.conflict.hidden = true; });

// ------------------------------------------------------------------ the diff

function linesBox(items) {
  const pre = document.createElement("pre");
  pre.className = "lines";
  for (const [cls, text] of items) {
    const s = document.createElement("span");
    s.className = cls;
    s.textContent = text;
    pre.append(s);
  }
  return pre;
}

function group(path, create = true) {
  for (const g of el.diff.children) if (g.dataset.path === path) return g;
  if (!create) return null;
  const g = document.createElement("div");
  g.className = "group";
  g.dataset.path = path;
  const head = document.createElement("div");
  head.className = "group-head";
  const name = document.createElement("span");
  name.textContent = path;
  const note = document.createElement("span");
  note.className = "note";
  head.append(name, note);
  g.append(head);
  el.diff.append(g);
  return g;
}

function groupNote(g, text) { g.querySelector(".group-head .note").textContent = text; }

function hunksOf(path) {
  return [...el.diff.querySelectorAll(".hunk")].filter((h) => h.dataset.path === path);
}

function pending(h) {
  return !h.classList.contains("accepted") && !h.classList.contains("rejected");
}

function refreshHunk(h) {
  const decided = !pending(h);
  for (const b of h.querySelectorAll("button")) b.disabled = decided || h.classList.contains("busy");
  h.querySelector(".state").textContent =
    h.classList.contains("accepted") ? "accepted" : h.classList.contains("rejected") ? "rejected" : "";
}

function refreshAll() {
  const any = [...el.diff.querySelectorAll(".hunk")].some((h) => pending(h) && !h.classList.contains("busy"));
  el.acceptAll.disabled = !any;
  el.rejectAll.disabled = !any;
}

function decide(kind, path, hunkEls) {
  const ids = hunkEls.map((h) => Number(h.dataset.hunk));
  if (!ids.length || !send({ type: kind, path, hunks: ids })) return;
  for (const h of hunkEls) { h.classList.add("busy"); refreshHunk(h); }
  refreshAll();
}

function decideAll(kind) {
  const paths = new Map();
  for (const h of el.diff.querySelectorAll(".hunk")) {
    if (!pending(h) || h.classList.contains("busy")) continue;
    if (!paths.has(h.dataset.path)) paths.set(h.dataset.path, []);
    paths.get(h.dataset.path).push(h);
  }
  for (const [path, hs] of paths) decide(kind, path, hs);
}

el.diff.addEventListener("click", (ev) => {
  const b = ev.target.closest("button");
  const h = b && b.closest(".hunk");
  if (!h || b.disabled) return;
  if (b.classList.contains("accept")) decide("accept", h.dataset.path, [h]);
  else if (b.classList.contains("reject")) decide("reject", h.dataset.path, [h]);
});
el.acceptAll.addEventListener("click", () => decideAll("accept"));
el.rejectAll.addEventListener("click", () => decideAll("reject"));

function setHunks(path, ids, cls) {
  const want = new Set((ids || []).map(String));
  for (const h of hunksOf(path)) {
    if (!want.has(h.dataset.hunk)) continue;
    h.classList.remove("busy", "accepted", "rejected");
    h.classList.add(cls);
    refreshHunk(h);
  }
  refreshAll();
}

function unbusy(path) {
  for (const h of hunksOf(path)) { h.classList.remove("busy"); refreshHunk(h); }
  refreshAll();
}

// ------------------------------------------------------------------ readout

function fmtMs(v) { return v == null ? "–" : `${v < 10 ? Number(v).toFixed(1) : Math.round(v)} ms`; }

function drawSpark() {
  const vals = stats.turns.slice(-20).map((t) => t.ttft_ms).filter((v) => typeof v === "number");
  const line = el.spark.querySelector("polyline");
  if (!vals.length) { line.setAttribute("points", ""); return; }
  const max = Math.max(...vals, 1);
  const step = vals.length > 1 ? 100 / (vals.length - 1) : 0;
  const pts = vals.map((v, i) => `${(i * step).toFixed(1)},${(19 - (v / max) * 17).toFixed(1)}`);
  if (pts.length === 1) pts.push(`100,${pts[0].split(",")[1]}`);
  line.setAttribute("points", pts.join(" "));
  el.spark.querySelector("title")?.remove();
  const title = document.createElementNS("http://www.w3.org/2000/svg", "title");
  title.textContent = `TTFT, last ${vals.length} turns: ${vals.map((v) => Math.round(v)).join(", ")} ms`;
  el.spark.append(title);
}

// ------------------------------------------------------------------ server events

function turnInfo(n) {
  if (!state.turns.has(n)) state.turns.set(n, { sentAt: null, firstDeltaAt: null, stoppedMs: null });
  return state.turns.get(n);
}

const handlers = {
  ready(m) {
    state.ready = true;
    state.retries = 0;
    setState("ready");
    el.reconnect.hidden = true;
    if (/^connection closed/.test(el.error.textContent)) setError("");
    el.workspace.textContent = m.workspace || "no workspace";
    el.git.hidden = !m.git;
    el.model.textContent = m.model || "";
    document.title = m.workspace ? `${m.workspace} · pairline` : "pairline";
    const files = Array.isArray(m.files) ? m.files : [];
    renderTree(files);
    setStatus("idle");
    updateBusy();
    const again = state.openPath && files.includes(state.openPath) ? state.openPath : files[0];
    if (again) openFile(again);
  },

  file(m) {
    if (state.openPath !== null && m.path !== state.openPath) return;
    state.openPath = m.path;
    el.currentPath.textContent = m.path;
    markOpen();
    showText(m.path, m.text, m.text == null ? "(not a text file)" : "");
  },

  "turn.started"(m) {
    const t = turnInfo(m.turn);
    t.sentAt = state.pendingSendAt ?? performance.now();
    t.tier = m.tier;
    state.pendingSendAt = null;
    state.running.add(m.turn);
    state.current = m.turn;
    el.answer.textContent = "";
    el.steps.replaceChildren();
    el.stepsBox.hidden = m.tier !== "deep";
    setError("");
    // a new turn: drop what is decided and the provisional blocks; pending hunks of other files stay
    for (const g of [...el.diff.children]) {
      if (g.dataset.path === m.path || !hunksOf(g.dataset.path).some(pending)) g.remove();
      else for (const b of g.querySelectorAll(".block")) b.remove();
    }
    refreshAll();
    setStatus(`streaming turn ${m.turn} (${m.tier})`);
    updateBusy();
  },

  delta(m) {
    if (state.current !== null && m.turn < state.current) return; // a cut (steered) turn
    if (state.current !== m.turn) { state.current = m.turn; el.answer.textContent = ""; }
    const stick = el.answer.scrollHeight - el.answer.scrollTop - el.answer.clientHeight < 24;
    const last = el.answer.lastChild;
    if (last && last.nodeType === Node.TEXT_NODE) last.appendData(m.text);
    else el.answer.append(document.createTextNode(m.text));
    if (stick) el.answer.scrollTop = el.answer.scrollHeight;
    const now = performance.now();
    stats.lastDeltaAt = now;
    const t = turnInfo(m.turn);
    if (t.firstDeltaAt === null) {
      t.firstDeltaAt = now;
      if (t.sentAt !== null) el.ttft.textContent = fmtMs(now - t.sentAt);
    }
  },

  block(m) {
    const g = group(m.path);
    groupNote(g, "streaming…");
    const b = document.createElement("div");
    b.className = "block";
    b.dataset.path = m.path;
    const head = document.createElement("div");
    head.className = "block-head";
    head.textContent = "search/replace (provisional)";
    const split = (s) => (s === "" ? [] : String(s).split("\n"));
    b.append(head, linesBox([
      ...split(m.search).map((l) => ["del", `-${l}`]),
      ...split(m.replace).map((l) => ["add", `+${l}`]),
    ]));
    g.append(b);
  },

  step(m) {
    el.stepsBox.hidden = false;
    const d = document.createElement("div");
    d.className = "step";
    d.textContent = m.text;
    d.title = m.text;
    el.steps.append(d);
    el.steps.scrollTop = el.steps.scrollHeight;
  },

  proposal(m) {
    const g = group(m.path);
    for (const x of [...g.querySelectorAll(".block, .hunk")]) x.remove();
    g.dataset.turn = m.turn;
    g.dataset.baseSha = m.base_sha || "";
    const hunks = Array.isArray(m.hunks) ? m.hunks : [];
    groupNote(g, hunks.length ? `turn ${m.turn} · ${hunks.length} hunk${hunks.length === 1 ? "" : "s"}` : "no changes");
    for (const hk of hunks) {
      const h = document.createElement("div");
      h.className = "hunk";
      h.dataset.path = m.path;
      h.dataset.hunk = String(hk.id);
      const head = document.createElement("div");
      head.className = "hunk-head";
      const hdr = document.createElement("span");
      hdr.className = "hdr";
      hdr.textContent = hk.header;
      const st = document.createElement("span");
      st.className = "state";
      const rej = document.createElement("button");
      rej.type = "button"; rej.className = "reject"; rej.textContent = "Reject";
      const acc = document.createElement("button");
      acc.type = "button"; acc.className = "accept"; acc.textContent = "Accept";
      head.append(hdr, st, rej, acc);
      const cls = { "-": "del", "+": "add" };
      h.append(head, linesBox((hk.lines || []).map((l) => [cls[l[0]] || "ctx", l])));
      g.append(h);
      refreshHunk(h);
    }
    refreshAll();
  },

  applied(m) {
    el.conflict.hidden = true;
    setHunks(m.path, m.hunks, "accepted");
    if (m.path === state.openPath) showText(m.path, m.text);
    const n = (m.hunks || []).length;
    const what = n ? `applied hunk${n === 1 ? "" : "s"} ${m.hunks.join(", ")} to ${m.path}` : `${m.path} changed`;
    if (!busy()) setStatus(m.commit ? `${what} · commit ${String(m.commit).slice(0, 8)}` : what);
  },

  conflict(m) {
    unbusy(m.path);
    const why = m.message || "the file changed on disk";
    const written = /nothing was written/i.test(why) ? "" : " Nothing was written.";
    el.conflictMessage.textContent = `${why.includes(m.path) ? "" : `${m.path}: `}${why.replace(/\.?$/, ".")}${written} ` +
      "The editor shows the file as it is on disk now, and the pending hunks can be accepted again.";
    el.conflict.hidden = false;
    if (m.path === state.openPath) showText(m.path, m.text);
    setStatus(`conflict: ${m.path} changed on disk; nothing written`);
  },

  rejected(m) {
    setHunks(m.path, m.hunks, "rejected");
    const n = (m.hunks || []).length;
    if (!busy()) setStatus(`rejected ${n} hunk${n === 1 ? "" : "s"} of ${m.path}`);
  },

  undone(m) {
    for (const f of m.files || []) {
      for (const h of hunksOf(f.path)) {
        h.classList.remove("accepted", "busy");
        refreshHunk(h);
      }
      if (f.path === state.openPath) {
        showText(f.path, f.text, f.text == null ? "(deleted by undo)" : "");
      }
    }
    refreshAll();
    setStatus(m.commit ? `undone (commit ${String(m.commit).slice(0, 8)} dropped)` : "undone");
  },

  stopped(m) {
    const t = turnInfo(m.turn);
    t.stoppedMs = m.ms;
    stats.stoppedAt = performance.now();
    for (const rec of stats.turns) if (rec.turn === m.turn) rec.stopped_ms = m.ms; // its turn.done came first
    setStatus(`stopped in ${fmtMs(m.ms)} (server)`);
  },

  "turn.done"(m) {
    const t = turnInfo(m.turn);
    const s = m.stats || {};
    const ttft = t.firstDeltaAt !== null && t.sentAt !== null ? t.firstDeltaAt - t.sentAt : null;
    stats.turns.push({
      turn: m.turn, ttft_ms: ttft, server_ttft_ms: s.ttft_ms ?? null,
      tokens_per_s: s.tokens_per_s ?? null, status: m.status, stopped_ms: t.stoppedMs,
    });
    state.running.delete(m.turn);
    updateBusy();
    // a steered turn ends while its successor runs: the readout and the status follow the newest
    if (state.current !== null && m.turn < state.current) return;
    el.ttft.textContent = fmtMs(ttft);
    el.ttft.parentElement.title = `time to first token: ${fmtMs(ttft)} in this page, ${fmtMs(s.ttft_ms)} at the server`;
    el.tps.textContent = s.tokens_per_s == null ? "–" : Number(s.tokens_per_s).toFixed(1);
    el.accepted.textContent = s.accepted == null ? "–" : s.predicted > 0 ? `${s.accepted}/${s.predicted}` : String(s.accepted);
    drawSpark();
    for (const g of el.diff.children) if (g.querySelector(".block") && !g.querySelector(".hunk")) groupNote(g, "provisional: no proposal");
    const errors = Array.isArray(m.errors) && m.errors.length ? ` · ${m.errors.join("; ")}` : "";
    const stopped = t.stoppedMs != null ? `stopped in ${fmtMs(t.stoppedMs)} (server) · ` : "";
    setStatus(`${stopped}turn ${m.turn}: ${m.status}${errors}`);
  },

  error(m) {
    state.lastError = m.message || m.code || "";
    setError(`${m.code || "error"}: ${m.message || ""}`);
    const refusal = ["bad_request", "bad_path", "not_found", "no_workspace", "unauthorized"].includes(m.code);
    if (state.pendingSendAt !== null && (refusal || state.running.size === 0)) {
      state.pendingSendAt = null; // the edit was refused
      updateBusy();
      if (state.running.size === 0) setStatus("idle");
    }
    if (m.code === "no_proposal" || m.code === "bad_request" || m.code === "conflict") {
      for (const h of el.diff.querySelectorAll(".hunk.busy")) { h.classList.remove("busy"); refreshHunk(h); }
      refreshAll();
    }
  },
};

// ------------------------------------------------------------------ start

state.token = takeToken();
updateBusy();
if (!state.token) {
  setState("closed");
  setStatus("not connected");
  setError("No access token: open the URL that `pairline app DIR` (or `pairline serve --workspace DIR`) printed; " +
    "it ends in #token=….");
  el.workspace.textContent = "not connected";
} else {
  connect();
}

// A token pasted into this tab's address bar later (the page was first opened without one).
window.addEventListener("hashchange", () => {
  if (!/(^#|&)token=/.test(location.hash)) return;
  state.token = takeToken();
  if (state.token && !state.ws) { state.retries = 0; setError(""); connect(); }
});
