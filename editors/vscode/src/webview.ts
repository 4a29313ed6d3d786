// The chat panel's page, as a string. It needs no `vscode` import (the panel passes its webview's
// cspSource in), so it is tested under plain node. The page never touches the network: it talks to
// the extension host through postMessage, and the host holds the session.
import { randomBytes } from "node:crypto";

/** Messages the page posts to the extension host. */
export type FromPage =
  | { type: "ready" }
  | { type: "send"; text: string }
  | { type: "draft"; text: string }
  | { type: "stop" };

/** Messages the extension host posts to the page. */
export type ToPage =
  | { type: "status"; text: string }
  | { type: "turnStart" }
  | { type: "response" }
  | { type: "delta"; text: string }
  | { type: "turnEnd"; status: string; latency: string }
  | { type: "error"; text: string };

/** A fresh nonce for one page: the only inline script and style that may run carry it. */
export function makeNonce(): string {
  return randomBytes(18).toString("base64").replace(/[^A-Za-z0-9]/g, "");
}

/** The per-turn latency line: time to first token on the client's clock, then the server's figures. */
export function latencyLine(ttftMs: number | null, totalMs: number, outputTokens?: number, tokensPerS?: number): string {
  const parts = [ttftMs === null ? "TTFT -" : `TTFT ${Math.round(ttftMs)} ms`, `total ${(totalMs / 1000).toFixed(2)} s`];
  if (typeof outputTokens === "number") parts.push(`${outputTokens} tokens`);
  if (typeof tokensPerS === "number" && tokensPerS > 0) parts.push(`${tokensPerS.toFixed(1)} tok/s`);
  return parts.join(" · ");
}

/**
 * The page. `cspSource` is the webview's own origin (webview.cspSource). The Content-Security-Policy
 * allows nothing by default; the one script and the one style block run by nonce; text from the model
 * is only ever set with textContent, never parsed as HTML.
 */
export function chatHtml(nonce: string, cspSource: string): string {
  if (!/^[A-Za-z0-9]+$/.test(nonce)) throw new Error("the nonce must be alphanumeric");
  const csp = [
    "default-src 'none'",
    `style-src ${cspSource} 'nonce-${nonce}'`,
    `script-src 'nonce-${nonce}'`,
  ].join("; ");
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="UTF-8">
<meta http-equiv="Content-Security-Policy" content="${csp}">
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<title>pairline chat</title>
<style nonce="${nonce}">
  body { font-family: var(--vscode-font-family); color: var(--vscode-foreground); margin: 0; padding: 0 8px;
         display: flex; flex-direction: column; height: 100vh; box-sizing: border-box; }
  #log { flex: 1; overflow-y: auto; padding: 8px 0; }
  .msg { white-space: pre-wrap; margin: 6px 0; padding: 6px 8px; border-radius: 4px; }
  .user { background: var(--vscode-input-background); }
  .assistant { font-family: var(--vscode-editor-font-family); }
  .steer { font-style: italic; }
  .latency, #status { font-size: 0.85em; opacity: 0.75; margin: 2px 0 8px; }
  .error { color: var(--vscode-errorForeground); }
  #bar { display: flex; gap: 6px; padding: 8px 0; }
  #input { flex: 1; resize: vertical; min-height: 3em; color: var(--vscode-input-foreground);
           background: var(--vscode-input-background); border: 1px solid var(--vscode-input-border, transparent); }
  button { color: var(--vscode-button-foreground); background: var(--vscode-button-background); border: none; padding: 4px 10px; }
  button:disabled { opacity: 0.5; }
</style>
</head>
<body>
<div id="log" role="log" aria-live="polite"></div>
<div id="status"></div>
<div id="bar">
  <textarea id="input" placeholder="Ask pairline (Enter sends, Shift+Enter for a new line; Enter while it answers steers)"></textarea>
  <button id="send">Send</button>
  <button id="stop" disabled>Stop</button>
</div>
<script nonce="${nonce}">
(function () {
  const vscode = acquireVsCodeApi();
  const log = document.getElementById("log");
  const input = document.getElementById("input");
  const stop = document.getElementById("stop");
  const status = document.getElementById("status");
  let answer = null;   // the element the current response's deltas go to
  let running = false;

  function add(cls, text) {
    const div = document.createElement("div");
    div.className = cls;
    div.textContent = text;
    log.appendChild(div);
    log.scrollTop = log.scrollHeight;
    return div;
  }
  function submit() {
    const text = input.value.trim();
    if (!text) return;
    add(running ? "msg user steer" : "msg user", text);
    vscode.postMessage({ type: "send", text: text });
    input.value = "";
  }
  document.getElementById("send").addEventListener("click", submit);
  stop.addEventListener("click", function () { vscode.postMessage({ type: "stop" }); });
  input.addEventListener("keydown", function (e) {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); submit(); }
  });
  // Every keystroke: the host debounces and sends draft.update, so the server prefills while we type.
  input.addEventListener("input", function () { vscode.postMessage({ type: "draft", text: input.value }); });

  window.addEventListener("message", function (event) {
    const m = event.data;
    switch (m.type) {
      case "status": status.textContent = m.text; break;
      case "turnStart": running = true; stop.disabled = false; answer = null; break;
      case "response": answer = add("msg assistant", ""); break;
      case "delta":
        if (!answer) answer = add("msg assistant", "");
        answer.textContent += m.text;
        log.scrollTop = log.scrollHeight;
        break;
      case "turnEnd":
        running = false; stop.disabled = true; answer = null;
        add("latency", (m.status === "completed" ? "" : m.status + " · ") + m.latency);
        break;
      case "error":
        running = false; stop.disabled = true; answer = null;
        add("msg error", m.text);
        break;
    }
  });
  vscode.postMessage({ type: "ready" });
})();
</script>
</body>
</html>`;
}
