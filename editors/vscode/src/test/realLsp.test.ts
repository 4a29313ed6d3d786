// extension.js (under the stub `vscode`) driving the REAL `pairline lsp`, when PAIRLINE_TEST_LSP
// holds the command line that runs pairline (e.g. `/venv/bin/python -m pairline.cli`). With
// PAIRLINE_TEST_SERVER set too, the language server uses that `pairline serve` (--server) instead
// of loading a model itself. Skipped without PAIRLINE_TEST_LSP.
import assert from "node:assert/strict";
import { after, test } from "node:test";
import { installVscodeStub, Recorder, Selection, textDocument } from "../test-support/vscodeStub";

const COMMAND = process.env.PAIRLINE_TEST_LSP ?? "";
const SKIP = "PAIRLINE_TEST_LSP is not set (the command line that runs pairline, e.g. `python -m pairline.cli`)";
const URI = "file:///tmp/pairline-vscode-test/app.py";
const TEXT = "def add(a, b):\n    return a + b\n\ndef mul(a, b):\n    ";

const rec = new Recorder();
let extension: typeof import("../extension") | null = null;

after(async () => {
  await extension?.deactivate();
});

test("real language server: inline suggestion, then Edit selection applies the server's edit", { timeout: 180_000 }, async (t) => {
  if (!COMMAND) {
    t.skip(SKIP);
    return;
  }
  installVscodeStub(rec);
  // require, not import: it must load after the stub is installed (imports are hoisted)
  extension = require("../extension") as typeof import("../extension");
  rec.settings = {
    "pairline.command": COMMAND,
    "pairline.model": process.env.PAIRLINE_TEST_LSP_MODEL ?? "smollm2-135m",
    "pairline.server": process.env.PAIRLINE_TEST_SERVER ?? "",
    "pairline.inlineSuggestions": true,
  };
  const doc = textDocument(URI, TEXT);
  rec.documents.push(doc);
  rec.activeTextEditor = { document: doc, selection: new Selection(3, 0, 4, 4) };
  await extension.activate({ subscriptions: [] } as never);
  const deadline = Date.now() + 120_000;
  while (rec.inlineProviders.length === 0) {
    assert.deepEqual(rec.errors, []);
    assert.ok(Date.now() < deadline, "the language server did not register inline completion");
    await new Promise((r) => setTimeout(r, 50));
  }

  const token = { isCancellationRequested: false, onCancellationRequested: () => ({ dispose() {} }) };
  const items = await rec.inlineProviders[0].provideInlineCompletionItems(doc, { line: 4, character: 4 },
                                                                          { triggerKind: 1 }, token);
  const list = (Array.isArray(items) ? items : (items as { items: unknown[] }).items) as Array<{ insertText: string }>;
  assert.ok(Array.isArray(list), JSON.stringify(items));
  for (const item of list) assert.equal(typeof item.insertText, "string");

  rec.inputAnswers.push("implement mul: return a * b");
  await rec.commands.get("pairline.vscode.editSelection")!();
  assert.deepEqual(rec.errors, []);
  // A tiny model may not manage the edit; when it does, it arrives as a workspace/applyEdit on our file.
  for (const edit of rec.applied) for (const e of edit.edits) assert.equal(e.uri, URI);
  assert.ok(rec.applied.length > 0 || rec.infos.length > 0, "neither an edit nor a message came back");
});
