// The chat page: a strict CSP, scripts and styles only by nonce, model text never parsed as HTML.
import assert from "node:assert/strict";
import { test } from "node:test";
import { chatHtml, latencyLine, makeNonce } from "../webview";

test("the page's CSP allows nothing by default and runs only nonced script and style", () => {
  const nonce = makeNonce();
  assert.match(nonce, /^[A-Za-z0-9]{16,}$/);
  assert.notEqual(nonce, makeNonce());
  const html = chatHtml(nonce, "vscode-webview://abc");
  const csp = /http-equiv="Content-Security-Policy" content="([^"]+)"/.exec(html)?.[1] ?? "";
  assert.match(csp, /default-src 'none'/);
  assert.match(csp, new RegExp(`script-src 'nonce-${nonce}'(;|$)`));
  assert.match(csp, new RegExp(`style-src vscode-webview://abc 'nonce-${nonce}'`));
  assert.doesNotMatch(csp, /unsafe-(inline|eval)/);
  const scripts = html.match(/<script[^>]*>/g) ?? [];
  assert.equal(scripts.length, 1);
  for (const tag of [...scripts, ...(html.match(/<style[^>]*>/g) ?? [])]) assert.ok(tag.includes(`nonce="${nonce}"`), tag);
  assert.doesNotMatch(html, /innerHTML|outerHTML|insertAdjacentHTML|document\.write|\son[a-z]+=/);
  for (const id of ["log", "input", "send", "stop", "status"]) assert.ok(html.includes(`id="${id}"`), id);
});

test("a nonce that could break out of the attribute is refused", () => {
  assert.throws(() => chatHtml(`x' 'unsafe-inline`, "src"), /alphanumeric/);
});

test("the latency line", () => {
  assert.equal(latencyLine(312.4, 2500, 42, 11.23), "TTFT 312 ms · total 2.50 s · 42 tokens · 11.2 tok/s");
  assert.equal(latencyLine(null, 40), "TTFT - · total 0.04 s");
});
