// The settings' meaning, without VS Code.
import assert from "node:assert/strict";
import { test } from "node:test";
import { explanationText } from "../serverCommands";
import { DEFAULTS, languageServerCommand, normalize, sessionUrl, splitCommandLine } from "../settings";

test("sessionUrl converts as pairline/assistant/client.py's session_url does", () => {
  // the same cases as tests/test_eval_humaneval.py::test_server_url_takes_http_and_ws
  const cases: Array<[string, string]> = [
    ["ws://h:1", "ws://h:1/v1/responses"],
    ["http://h:1/", "ws://h:1/v1/responses"],
    ["https://h/v1", "wss://h/v1/responses"],
    ["HTTP://h:1/v1/responses", "ws://h:1/v1/responses"],
    ["wss://h/pre/fix", "wss://h/pre/fix/v1/responses"],
    ["http://127.0.0.1:8765", "ws://127.0.0.1:8765/v1/responses"],
    ["  http://[::1]:9000/v1/  ", "ws://[::1]:9000/v1/responses"],
  ];
  for (const [given, url] of cases) assert.equal(sessionUrl(given), url, given);
});

test("sessionUrl: empty means the default server; other schemes are refused", () => {
  assert.equal(sessionUrl(""), "ws://127.0.0.1:8765/v1/responses");
  for (const bad of ["ftp://h:1", "127.0.0.1:8765", "http://", "localhost"]) {
    assert.throws(() => sessionUrl(bad), /pairline.server takes/, bad);
  }
});

test("the language server's command line follows the settings", () => {
  assert.deepEqual(languageServerCommand(DEFAULTS), { command: "pairline", args: ["lsp", "--stdio"] });
  assert.deepEqual(
    languageServerCommand({ ...DEFAULTS, model: "smollm2-135m", server: "http://127.0.0.1:8765" }),
    { command: "pairline", args: ["lsp", "--model", "smollm2-135m", "--server", "http://127.0.0.1:8765", "--stdio"] },
  );
  assert.deepEqual(
    languageServerCommand({ ...DEFAULTS, command: '"/opt/my venv/bin/python" -m pairline.cli', model: "/m/a b.gguf" }),
    { command: "/opt/my venv/bin/python", args: ["-m", "pairline.cli", "lsp", "--model", "/m/a b.gguf", "--stdio"] },
  );
});

test("splitCommandLine: quotes group, backslashes escape, empty quotes are a word", () => {
  assert.deepEqual(splitCommandLine("  a  b\tc "), ["a", "b", "c"]);
  assert.deepEqual(splitCommandLine(`'x y' "p \\"q\\"" r\\ s ''`), ["x y", 'p "q"', "r s", ""]);
  assert.deepEqual(splitCommandLine(""), []);
  assert.throws(() => splitCommandLine('"open'), /unbalanced/);
});

test("normalize fills in defaults and ignores wrong types", () => {
  assert.deepEqual(normalize({}), DEFAULTS);
  assert.deepEqual(normalize({ command: " ", model: 3, server: " http://h:1 ", inlineSuggestions: false }),
                   { command: "pairline", model: "", server: "http://h:1", inlineSuggestions: false });
});

test("the explanation is read from the server's answer", () => {
  assert.equal(explanationText({ explanation: "It adds." }), "It adds.");
  assert.equal(explanationText("plain"), "plain");
  assert.equal(explanationText(null), "");
  assert.equal(explanationText({ status: "x" }), "");
});
