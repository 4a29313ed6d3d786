// The extension's entry: the language client for `pairline lsp` and the commands. Thin on purpose:
// what can be decided without VS Code lives in settings.ts, serverCommands.ts, session.ts and
// webview.ts (tested under plain node); this file and chatPanel.ts connect them to the `vscode` API.
import * as vscode from "vscode";
import {
  ExecuteCommandRequest,
  LanguageClient,
  LanguageClientOptions,
  LSPErrorCodes,
  ResponseError,
  ServerOptions,
} from "vscode-languageclient/node";
import { ChatPanel } from "./chatPanel";
import { explanationText, SERVER_EDIT, SERVER_EXPLAIN } from "./serverCommands";
import { languageServerCommand, normalize, PairlineSettings, sessionUrl } from "./settings";

// Our own VS Code commands have other ids (pairline.vscode.*) than the server's command names:
// vscode-languageclient registers a VS Code command under each name the server lists in
// executeCommandProvider, and a second registration of the same id would fail.

let client: LanguageClient | null = null;
let output: vscode.OutputChannel | null = null;

function readSettings(): PairlineSettings {
  const c = vscode.workspace.getConfiguration("pairline");
  return normalize({
    command: c.get("command"),
    model: c.get("model"),
    server: c.get("server"),
    inlineSuggestions: c.get("inlineSuggestions"),
  });
}

function showStartError(message: string): void {
  void vscode.window.showErrorMessage(`pairline: ${message}`, "Open settings").then((pick) => {
    if (pick) void vscode.commands.executeCommand("workbench.action.openSettings", "pairline");
  });
}

async function startClient(): Promise<void> {
  let command: string, args: string[];
  try {
    ({ command, args } = languageServerCommand(readSettings()));
  } catch (err) {  // an unbalanced quote in pairline.command, say
    showStartError((err as Error).message);
    return;
  }
  const serverOptions: ServerOptions = { command, args };  // stdio: args already carry --stdio
  const clientOptions: LanguageClientOptions = {
    documentSelector: [{ scheme: "file" }, { scheme: "untitled" }],
    outputChannel: output ?? undefined,
    // The server then offers the code action "Edit selection with pairline…" without an instruction,
    // and we ask for it (middleware below) before the command goes out.
    initializationOptions: { promptForInstruction: true },
    middleware: {
      // Code actions run the server's commands through here: the same prompt, progress and display
      // as our own commands.
      executeCommand: (command, args, next) => {
        if (command === SERVER_EDIT && client) return runEdit(client, args);
        if (command === SERVER_EXPLAIN && client && args.length <= 2) return runExplain(client, args);
        return next(command, args);
      },
      // Read on every request, so turning the setting off takes effect without a restart.
      provideInlineCompletionItems: (document, position, context, token, next) =>
        readSettings().inlineSuggestions ? next(document, position, context, token) : undefined,
    },
  };
  const c = new LanguageClient("pairline", "pairline", serverOptions, clientOptions);
  // textDocument/inlineCompletion (LSP 3.18) is a proposed feature in vscode-languageclient 9:
  // registering it advertises the capability and, when the server offers inlineCompletionProvider,
  // registers VS Code's inline completion provider, which forwards VS Code's cancellation token.
  c.registerProposedFeatures();
  client = c;
  try {
    await c.start();
  } catch (err) {
    if (client === c) client = null;
    showStartError(`could not start \`${[command, ...args].join(" ")}\`: ${(err as Error).message}`);
  }
}

async function restartClient(): Promise<void> {
  const old = client;
  client = null;
  if (old) await old.stop().catch(() => undefined);
  await startClient();
}

/** The selection, or the cursor's whole line when nothing is selected. */
function targetRange(editor: vscode.TextEditor): vscode.Range {
  const sel = editor.selection;
  return sel.isEmpty ? editor.document.lineAt(sel.active.line).range : new vscode.Range(sel.start, sel.end);
}

/** The active editor's [uri, range], the first two arguments of both server commands. */
function selectionArgs(c: LanguageClient): unknown[] | undefined {
  const editor = vscode.window.activeTextEditor;
  if (!editor) {
    void vscode.window.showWarningMessage("pairline: open a file and select some code first.");
    return undefined;
  }
  return [editor.document.uri.toString(), c.code2ProtocolConverter.asRange(targetRange(editor))];
}

function runningClient(): LanguageClient | undefined {
  if (client?.isRunning()) return client;
  void vscode.window.showErrorMessage("pairline: the language server is not running (see the pairline output).");
  return undefined;
}

/**
 * workspace/executeCommand on the server under a progress notification whose Cancel cancels the
 * request (the token goes with it). The server's own progress shows only in the status bar.
 */
async function sendCommand(c: LanguageClient, title: string, command: string, args: unknown[]): Promise<unknown> {
  let cancelled = false;
  try {
    return await vscode.window.withProgress(
      { location: vscode.ProgressLocation.Notification, title, cancellable: true },
      (_progress, token) => {
        token.onCancellationRequested(() => { cancelled = true; });
        return c.sendRequest(ExecuteCommandRequest.type, { command, arguments: args }, token);
      },
    );
  } catch (err) {
    if (cancelled || (err instanceof ResponseError && err.code === LSPErrorCodes.RequestCancelled)) return undefined;
    void vscode.window.showErrorMessage(`pairline: ${(err as Error).message}`);
    return undefined;
  }
}

/** `pairline.editSelection` [uri, range, instruction], asking for the instruction when it is missing. */
async function runEdit(c: LanguageClient, args: unknown[]): Promise<unknown> {
  if (args.length < 3) {
    const instruction = await vscode.window.showInputBox({
      title: "pairline: Edit selection",
      prompt: "What should pairline do with the selection?",
      placeHolder: "e.g. add type hints",
      ignoreFocusOut: true,
    });
    if (!instruction?.trim()) return undefined;
    args = [args[0], args[1], instruction.trim()];
  }
  // The server makes the edit and applies it through workspace/applyEdit (one Undo reverts it).
  return sendCommand(c, "pairline: editing…", SERVER_EDIT, args);
}

/** `pairline.explain` [uri, range]; the answer opens beside the editor as markdown. */
async function runExplain(c: LanguageClient, args: unknown[]): Promise<unknown> {
  // {"show": false}: we show it in a document, so the server need not also send window/showMessage
  const result = await sendCommand(c, "pairline: explaining…", SERVER_EXPLAIN, [args[0], args[1], { show: false }]);
  const text = explanationText(result);
  if (text.trim()) {
    const doc = await vscode.workspace.openTextDocument({ language: "markdown", content: text });
    await vscode.window.showTextDocument(doc, { viewColumn: vscode.ViewColumn.Beside, preserveFocus: true });
  }
  return result;
}

async function editSelection(): Promise<void> {
  const c = runningClient();
  const args = c && selectionArgs(c);
  if (c && args) await runEdit(c, args);
}

async function explainSelection(): Promise<void> {
  const c = runningClient();
  const args = c && selectionArgs(c);
  if (c && args) await runExplain(c, args);
}

function openChat(): void {
  try {
    ChatPanel.show(sessionUrl(readSettings().server));
  } catch (err) {
    void vscode.window.showErrorMessage(`pairline: ${(err as Error).message}`);
  }
}

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  output = vscode.window.createOutputChannel("pairline");
  context.subscriptions.push(
    output,
    vscode.commands.registerCommand("pairline.vscode.editSelection", editSelection),
    vscode.commands.registerCommand("pairline.vscode.explainSelection", explainSelection),
    vscode.commands.registerCommand("pairline.vscode.openChat", openChat),
    vscode.commands.registerCommand("pairline.vscode.restartServer", restartClient),
    vscode.workspace.onDidChangeConfiguration((e) => {
      if (["command", "model", "server"].some((k) => e.affectsConfiguration(`pairline.${k}`))) void restartClient();
    }),
    { dispose: () => ChatPanel.disposeCurrent() },
  );
  void startClient();  // not awaited: loading a model must not hold up VS Code's activation
}

export async function deactivate(): Promise<void> {
  const c = client;
  client = null;
  if (c) await c.stop().catch(() => undefined);
}
