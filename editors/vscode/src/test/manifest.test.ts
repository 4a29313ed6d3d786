// package.json and the code agree: what VS Code reads from the manifest (commands, settings, entry
// point, engine) is what extension.ts registers and reads. Checked on the built output, since
// extension.js itself can only run inside VS Code.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { DEFAULTS } from "../settings";

const ROOT = join(__dirname, "..", "..");
const manifest = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8"));
const extensionJs = readFileSync(join(ROOT, "out", "extension.js"), "utf8");

test("every contributed command is registered by the extension, and only those", () => {
  const contributed: string[] = manifest.contributes.commands.map((c: { command: string }) => c.command);
  const registered = [...extensionJs.matchAll(/registerCommand\("([^"]+)"/g)].map((m) => m[1]);
  assert.deepEqual([...registered].sort(), [...contributed].sort());
  // the server's own executeCommand names must not be taken: vscode-languageclient registers them
  for (const id of contributed) assert.ok(!["pairline.editSelection", "pairline.explain"].includes(id), id);
  const titles = manifest.contributes.commands.map((c: { title: string }) => c.title);
  assert.ok(titles.includes("Edit selection…") && titles.includes("Explain selection"), titles.join(", "));
});

test("the settings in the manifest are the ones settings.ts knows, with the same defaults", () => {
  const props = manifest.contributes.configuration.properties as Record<string, { default: unknown }>;
  const keys = Object.keys(DEFAULTS).map((k) => `pairline.${k}`);
  assert.deepEqual(Object.keys(props).sort(), keys.sort());
  for (const [k, v] of Object.entries(DEFAULTS)) assert.equal(props[`pairline.${k}`].default, v, k);
});

test("entry point, engine and the pinned VS Code API types match", () => {
  assert.equal(manifest.main, "./out/extension.js");
  assert.equal(manifest.engines.vscode, "^1.85.0");
  // vsce refuses @types/vscode newer than the engine: pinned to the engine's floor
  assert.equal(manifest.devDependencies["@types/vscode"], "1.85.0");
  assert.ok(manifest.activationEvents.length > 0);
  assert.match(manifest.scripts.package, /^vsce package/);
});
