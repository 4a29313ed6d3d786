// The chat panel's glue (chatPanel.ts) under the stub `vscode`: the test plays the page, a fake
// server plays `pairline serve`.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { ClientEvent, FakeConnection, FakeServer } from "../test-support/fakeServer";
import { installVscodeStub, Recorder, StubPanel } from "../test-support/vscodeStub";

const rec = new Recorder();
installVscodeStub(rec);
// require, not import: it must load after the stub is installed (imports are hoisted)
const { ChatPanel } = require("../chatPanel") as typeof import("../chatPanel");
const T = { timeout: 10_000 };

let server: FakeServer;
let panel: StubPanel;

async function until<T>(what: string, probe: () => T | undefined | false, timeoutMs = 5000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = probe();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; posted: ${JSON.stringify(panel?.posted)}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

const posted = (type: string) => panel.posted.filter((m) => m.type === type);
const sent = (type: string) => server.connections[0]?.received.filter((e) => e.type === type) ?? [];

function script(conn: FakeConnection, ev: ClientEvent): void {
  if (ev.type === "response.create" && ev.input === "hello") {
    conn.created("r1");
    conn.delta("r1", "Hi");
    conn.delta("r1", " there");
    conn.final("response.completed", "r1", "completed", "Hi there");
  } else if (ev.type === "response.create") {  // a long answer: it ends only on a cancel or a steer
    conn.created("r2");
    conn.delta("r2", "Once");
  } else if (ev.type === "response.steer") {
    conn.final("response.incomplete", "r2", "incomplete", "Once", { incomplete_details: { reason: "steered" } });
    conn.created("r3", "r2");
    conn.delta("r3", "Short.");
    conn.final("response.completed", "r3", "completed", "Short.");
  } else if (ev.type === "response.cancel") {
    conn.send("response.cancelled", { response: { id: "r2", status: "cancelled", output_text: "Once" } });
  }
}

before(async () => {
  server = await FakeServer.start(script);
  ChatPanel.show(server.url);
  panel = rec.panels[0];
});

after(async () => {
  ChatPanel.disposeCurrent();
  await server.stop();
});

test("the panel shows the page and connects when it is ready", T, async () => {
  assert.match(panel.webview.html, /Content-Security-Policy/);
  assert.deepEqual(panel.options, { enableScripts: true, localResourceRoots: [], retainContextWhenHidden: true });
  panel.fromPage({ type: "ready" });
  await until("session status", () => posted("status").some((m) => String(m.text).includes("sess_fake")));
  assert.equal(server.connections.length, 1);
});

test("typing sends a debounced draft; Enter sends a turn that streams into the page", T, async () => {
  panel.fromPage({ type: "draft", text: "hel" });
  panel.fromPage({ type: "draft", text: "hell" });
  await until("a draft", () => sent("draft.update").length === 1);
  assert.equal(sent("draft.update")[0].text, "hell");
  panel.fromPage({ type: "send", text: "hello" });
  const end = await until("turnEnd", () => posted("turnEnd")[0]);
  assert.equal(end.status, "completed");
  assert.match(String(end.latency), /^TTFT \d+ ms · total [\d.]+ s · 3 tokens · 100\.0 tok\/s$/);
  assert.deepEqual(posted("delta").map((m) => m.text), ["Hi", " there"]);
  const types = panel.posted.map((m) => m.type).filter((t) => t !== "status");
  assert.deepEqual(types, ["turnStart", "response", "delta", "delta", "turnEnd"]);
});

test("Enter while an answer streams steers it; Stop cancels", T, async () => {
  const start = panel.posted.length;
  panel.fromPage({ type: "send", text: "tell a story" });
  await until("the first delta", () => panel.posted.slice(start).some((m) => m.type === "delta"));
  panel.fromPage({ type: "send", text: "shorter" });  // a steer, not a new turn
  await until("the steered turn's end", () => posted("turnEnd").length === 2);
  assert.equal(sent("response.steer")[0].input, "shorter");
  assert.equal(sent("response.create").length, 2);
  assert.equal(panel.posted.slice(start).filter((m) => m.type === "response").length, 2);  // r2, then r3

  panel.fromPage({ type: "send", text: "another story" });
  await until("the next delta", () => posted("delta").length === 5);
  panel.fromPage({ type: "stop" });
  const end = await until("the cancelled turn", () => posted("turnEnd")[2]);
  assert.equal(end.status, "cancelled");
  assert.equal(sent("response.cancel").length, 1);
});

test("a server that is not there is an error in the page, with a hint", T, async () => {
  ChatPanel.disposeCurrent();
  await until("the old session to close", () => server.connections[0].ws.readyState === 3);
  ChatPanel.show("ws://127.0.0.1:9/v1/responses");  // the discard port: nothing listens
  panel = rec.panels[rec.panels.length - 1];
  panel.fromPage({ type: "send", text: "hello" });
  const err = await until("an error", () => posted("error")[0]);
  assert.match(String(err.text), /cannot connect to ws:\/\/127\.0\.0\.1:9.*is `pairline serve` running/);
});
