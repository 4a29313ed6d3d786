// extension.js itself, under plain node: a stub `vscode` module (test-support/vscodeStub.ts) and
// the real vscode-languageclient, which starts a fake `pairline lsp` (test-support/fakeLsp.ts) from
// the settings. What VS Code would show is recorded by the stub; what the server received is in
// the fake's log.
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { installVscodeStub, Range, Recorder, Selection, textDocument } from "../test-support/vscodeStub";

const rec = new Recorder();
installVscodeStub(rec);  // before anything requires "vscode"
// require, not import: it must load after the stub is installed (imports are hoisted)
const extension = require("../extension") as typeof import("../extension");

const dir = mkdtempSync(join(tmpdir(), "pairline-vscode-test-"));
const logFile = join(dir, "lsp.jsonl");
const fakeLsp = join(__dirname, "..", "test-support", "fakeLsp.js");
const T = { timeout: 15_000 };
const URI = "file:///work/app.py";
const TEXT = "def mul(a, b):\n    pass\n";

type Logged = { argv?: string[]; method?: string; id?: unknown; params?: any };

function logged(): Logged[] {
  if (!existsSync(logFile)) return [];
  return readFileSync(logFile, "utf8").trim().split("\n").filter(Boolean).map((l) => JSON.parse(l) as Logged);
}

async function until<T>(what: string, probe: () => T | undefined | false, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = probe();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; server log: ${JSON.stringify(logged()).slice(-1500)}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

const context = { subscriptions: [] as Array<{ dispose(): unknown }> };

before(async () => {
  process.env.FAKE_LSP_LOG = logFile;
  rec.settings = {
    // a command line with a quoted word: node running the fake server
    "pairline.command": `"${process.execPath}" ${fakeLsp}`,
    "pairline.model": "smollm2-135m",
    "pairline.server": "",
    "pairline.inlineSuggestions": true,
  };
  const doc = textDocument(URI, TEXT);
  rec.documents.push(doc);
  rec.activeTextEditor = { document: doc, selection: new Selection(0, 0, 1, 8) };
  await extension.activate(context as never);
  await until("the inline completion provider", () => rec.inlineProviders.length > 0);
});

after(async () => {
  await extension.deactivate();
  for (const d of context.subscriptions) d.dispose();
  rmSync(dir, { recursive: true, force: true });
});

test("activate starts `pairline lsp` from the settings and asks to be prompted for instructions", T, async () => {
  assert.deepEqual(logged()[0].argv, ["lsp", "--model", "smollm2-135m", "--stdio"]);
  const init = logged().find((m) => m.method === "initialize")!;
  assert.deepEqual(init.params.initializationOptions, { promptForInstruction: true });
  assert.ok(init.params.capabilities.textDocument.inlineCompletion, "the client advertises inline completion");
  // the open document is synced (sent right after `initialized`, so it may trail the registrations)
  const open = await until("didOpen", () => logged().find((m) => m.method === "textDocument/didOpen"));
  assert.deepEqual(open.params.textDocument, { uri: URI, languageId: "python", version: 1, text: TEXT });
  for (const id of ["pairline.vscode.editSelection", "pairline.vscode.explainSelection", "pairline.vscode.openChat",
                    "pairline.vscode.restartServer", "pairline.editSelection", "pairline.explain"]) {
    assert.ok(rec.commands.has(id), id);  // the last two: the server's, registered by the language client
  }
  assert.deepEqual(rec.errors, []);
});

test("inline suggestions go to textDocument/inlineCompletion, and the setting turns them off", T, async () => {
  const provider = rec.inlineProviders[0];
  const token = { isCancellationRequested: false, onCancellationRequested: () => ({ dispose() {} }) };
  const doc = textDocument(URI, TEXT);
  const result = await provider.provideInlineCompletionItems(doc, { line: 1, character: 4 }, { triggerKind: 1 }, token) as
    Array<{ insertText: string; range: Range }>;
  assert.equal(result[0].insertText, "return a * b");
  assert.deepEqual([result[0].range.start.line, result[0].range.start.character], [1, 4]);
  const sent = logged().filter((m) => m.method === "textDocument/inlineCompletion");
  assert.equal(sent.length, 1);
  assert.deepEqual(sent[0].params.position, { line: 1, character: 4 });
  assert.equal(sent[0].params.textDocument.uri, URI);

  rec.settings["pairline.inlineSuggestions"] = false;
  try {
    assert.equal(await provider.provideInlineCompletionItems(doc, { line: 1, character: 4 }, { triggerKind: 1 }, token), undefined);
    assert.equal(logged().filter((m) => m.method === "textDocument/inlineCompletion").length, 1);  // nothing sent
  } finally {
    rec.settings["pairline.inlineSuggestions"] = true;
  }
});

test("Edit selection… prompts, sends [uri, range, instruction] and the server's edit is applied", T, async () => {
  rec.inputAnswers.push("  add type hints ");
  await rec.commands.get("pairline.vscode.editSelection")!();
  const calls = logged().filter((m) => m.method === "workspace/executeCommand");
  const call = calls[calls.length - 1];
  assert.equal(call.params.command, "pairline.editSelection");
  assert.deepEqual(call.params.arguments, [URI, { start: { line: 0, character: 0 }, end: { line: 1, character: 8 } }, "add type hints"]);
  assert.equal(rec.applied.length, 1);
  assert.equal(rec.applied[0].edits[0].newText, "EDITED");
  assert.equal(rec.applied[0].edits[0].uri, URI);
  assert.ok(rec.progress.includes("pairline: editing…"));

  // no instruction (Escape): nothing is sent
  const commandsSent = () => logged().filter((m) => m.method === "workspace/executeCommand").length;
  const before = commandsSent();
  rec.inputAnswers.push(undefined);
  await rec.commands.get("pairline.vscode.editSelection")!();
  assert.equal(commandsSent(), before);
});

test("the server's code action without an instruction is prompted for too", T, async () => {
  rec.inputAnswers.push("rename a to x");
  const range = { start: { line: 0, character: 0 }, end: { line: 0, character: 3 } };
  await rec.commands.get("pairline.editSelection")!(URI, range);  // what the code action runs
  const calls = logged().filter((m) => m.method === "workspace/executeCommand");
  assert.deepEqual(calls[calls.length - 1].params.arguments, [URI, range, "rename a to x"]);
});

test("Cancel on the progress notification cancels the request on the server", T, async () => {
  rec.inputAnswers.push("wait for cancel");
  rec.cancelProgressAfterMs = 200;
  try {
    await rec.commands.get("pairline.vscode.editSelection")!();
  } finally {
    rec.cancelProgressAfterMs = null;
  }
  const calls = logged().filter((m) => m.method === "workspace/executeCommand");
  const id = calls[calls.length - 1].id;
  assert.ok(logged().some((m) => m.method === "$/cancelRequest" && m.params.id === id));
  assert.deepEqual(rec.errors, []);  // a cancel is not an error
});

test("Explain selection asks the server not to show it, and opens the explanation as markdown", T, async () => {
  await rec.commands.get("pairline.vscode.explainSelection")!();
  const calls = logged().filter((m) => m.method === "workspace/executeCommand");
  assert.equal(calls[calls.length - 1].params.command, "pairline.explain");
  assert.deepEqual(calls[calls.length - 1].params.arguments[2], { show: false });
  assert.deepEqual(rec.opened[rec.opened.length - 1], { language: "markdown", content: "It multiplies a and b." });
});

test("changing the model restarts the language server with the new command line", T, async () => {
  rec.settings["pairline.model"] = "qwen2.5-coder-0.5b";
  rec.configChange.fire({ affectsConfiguration: (s: string) => s === "pairline.model" || s === "pairline" });
  await until("a second server", () => logged().filter((m) => m.argv).length === 2);
  assert.deepEqual(logged().filter((m) => m.argv)[1].argv, ["lsp", "--model", "qwen2.5-coder-0.5b", "--stdio"]);
  assert.ok(logged().some((m) => m.method === "shutdown"), "the old server was shut down");
  await until("the new server's provider", () => rec.inlineProviders.length > 0);
});
