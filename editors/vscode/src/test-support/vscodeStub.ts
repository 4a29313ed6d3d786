// Just enough of the `vscode` module to run out/extension.js and vscode-languageclient under plain
// node: the classes the converters build, recorders for what the extension registers and shows,
// and answers the test queues (input boxes). Anything else resolves to an inert stand-in, so an
// unused corner of the API does not have to be written out.
import Module from "node:module";

type Listener<T> = (e: T) => unknown;

export class Disposable {
  constructor(private readonly fn: () => void = () => undefined) {}
  static from(...items: Array<{ dispose(): unknown }>): Disposable {
    return new Disposable(() => items.forEach((d) => d.dispose()));
  }
  dispose(): void {
    this.fn();
  }
}

export class EventEmitter<T> {
  private listeners: Array<Listener<T>> = [];
  readonly event = (listener: Listener<T>): Disposable => {
    this.listeners.push(listener);
    return new Disposable(() => { this.listeners = this.listeners.filter((l) => l !== listener); });
  };
  fire(e: T): void {
    for (const l of this.listeners.slice()) l(e);
  }
  dispose(): void {
    this.listeners = [];
  }
}

export class CancellationTokenSource {
  private readonly emitter = new EventEmitter<void>();
  readonly token = {
    isCancellationRequested: false,
    onCancellationRequested: this.emitter.event,
  };
  cancel(): void {
    if (this.token.isCancellationRequested) return;
    this.token.isCancellationRequested = true;
    this.emitter.fire();
  }
  dispose(): void {
    this.emitter.dispose();
  }
}

export class CancellationError extends Error {}

export class Position {
  constructor(readonly line: number, readonly character: number) {}
}

export class Range {
  readonly start: Position;
  readonly end: Position;
  constructor(a: number | Position, b: number | Position, c?: number, d?: number) {
    this.start = typeof a === "number" ? new Position(a, b as number) : a;
    this.end = typeof a === "number" ? new Position(c as number, d as number) : (b as Position);
  }
  get isEmpty(): boolean {
    return this.start.line === this.end.line && this.start.character === this.end.character;
  }
}

export class Selection extends Range {
  get active(): Position {
    return this.end;
  }
}

export class Uri {
  private constructor(private readonly text: string) {}
  static parse(text: string): Uri {
    return new Uri(text);
  }
  static file(path: string): Uri {
    return new Uri(`file://${path}`);
  }
  get fsPath(): string {
    return this.text.replace(/^file:\/\//, "");
  }
  get scheme(): string {
    return this.text.split(":")[0];
  }
  toString(): string {
    return this.text;
  }
}

export class InlineCompletionItem {
  constructor(readonly insertText: string, readonly range?: Range, readonly command?: unknown) {}
}

export class InlineCompletionList {
  constructor(readonly items: InlineCompletionItem[]) {}
}

export class TextEdit {
  constructor(readonly range: Range, readonly newText: string) {}
}

export class WorkspaceEdit {
  readonly edits: Array<{ uri: string; range: Range; newText: string }> = [];
  replace(uri: Uri, range: Range, newText: string): void {
    this.edits.push({ uri: uri.toString(), range, newText });
  }
  set(uri: Uri, edits: TextEdit[]): void {
    for (const e of edits) this.replace(uri, e.range, e.newText);
  }
}

export const ProgressLocation = { SourceControl: 1, Window: 10, Notification: 15 };
export const ViewColumn = { Active: -1, Beside: -2, One: 1 };

/** A text document: enough for the converters and for the extension's lineAt. */
export function textDocument(uri: string, text: string, languageId = "python") {
  const lines = text.split("\n");
  return {
    uri: Uri.parse(uri), languageId, version: 1, isClosed: false, isUntitled: false, lineCount: lines.length,
    getText: () => text,
    lineAt: (line: number) => ({ text: lines[line], range: new Range(line, 0, line, lines[line].length) }),
  };
}

/** A webview panel: the page's side is played by the test (`fromPage`), what the host posts is kept. */
export class StubPanel {
  readonly posted: Array<{ type: string; [key: string]: unknown }> = [];
  private readonly received = new EventEmitter<unknown>();
  private readonly disposed = new EventEmitter<void>();
  isDisposed = false;
  readonly webview = {
    html: "",
    cspSource: "vscode-webview://stub",
    postMessage: async (m: { type: string }) => {
      if (this.isDisposed) throw new Error("Webview is disposed");
      this.posted.push(m);
      return true;
    },
    onDidReceiveMessage: (listener: (m: unknown) => unknown, thisArg?: unknown, bucket?: Disposable[]) => {
      const d = this.received.event((m) => listener.call(thisArg, m));
      bucket?.push(d);
      return d;
    },
  };
  constructor(readonly viewType: string, readonly title: string, readonly options: unknown) {}
  onDidDispose = (listener: () => unknown, thisArg?: unknown, bucket?: Disposable[]) => {
    const d = this.disposed.event(() => listener.call(thisArg));
    bucket?.push(d);
    return d;
  };
  reveal(): void {}
  /** The page posts `m` to the extension host. */
  fromPage(m: unknown): void {
    this.received.fire(m);
  }
  dispose(): void {
    if (this.isDisposed) return;
    this.isDisposed = true;
    this.disposed.fire();
  }
}

/** What the extension did to VS Code, and what the test answers. */
export class Recorder {
  readonly commands = new Map<string, (...args: unknown[]) => unknown>();
  readonly inlineProviders: Array<{ provideInlineCompletionItems(...args: unknown[]): unknown }> = [];
  readonly errors: string[] = [];
  readonly infos: string[] = [];
  readonly opened: Array<{ language?: string; content?: string }> = [];
  readonly applied: WorkspaceEdit[] = [];
  readonly progress: string[] = [];
  readonly inputAnswers: Array<string | undefined> = [];
  readonly panels: StubPanel[] = [];
  readonly configChange = new EventEmitter<{ affectsConfiguration(section: string): boolean }>();
  settings: Record<string, unknown> = {};
  /** Open documents (workspace.textDocuments): the language client sends didOpen for them as it starts. */
  readonly documents: unknown[] = [];
  activeTextEditor: unknown = undefined;
  /** Cancel each progress notification's token after this many ms (the user pressing Cancel). */
  cancelProgressAfterMs: number | null = null;
}

function inert(path: string): unknown {
  // A function so it can be called and constructed; every property is another stand-in.
  const target = function () { /* inert */ };
  return new Proxy(target, {
    get(_t, prop) {
      if (prop === "then") return undefined;  // not a thenable: `await` must not wait on it
      if (prop === Symbol.iterator) return function* () { /* empty */ };
      if (prop === Symbol.toPrimitive) return () => path;
      if (prop === "dispose") return () => undefined;
      if (prop === "length") return 0;
      return inert(`${path}.${String(prop)}`);
    },
    apply: () => new Disposable(),
    construct: () => inert(`new ${path}`) as object,
  });
}

/** Fill in inert stand-ins for whatever `obj` does not define. */
function withFallback<T extends object>(path: string, obj: T): T {
  return new Proxy(obj, {
    get(t, prop, receiver) {
      if (prop in t) return Reflect.get(t, prop, receiver);
      if (typeof prop === "symbol" || prop === "then") return undefined;
      return inert(`${path}.${prop}`);
    },
  });
}

export function makeVscode(rec: Recorder): Record<string, unknown> {
  const event = () => new Disposable();
  const onEvent = (_listener: unknown) => new Disposable();
  const workspace = withFallback("workspace", {
    workspaceFolders: undefined,
    get textDocuments() { return rec.documents; },
    notebookDocuments: [] as unknown[],
    getConfiguration: (section?: string) => ({
      get: <T>(key: string, dflt?: T): T | undefined => {
        const full = section ? `${section}.${key}` : key;
        return (full in rec.settings ? rec.settings[full] : dflt) as T | undefined;
      },
      has: (key: string) => `${section}.${key}` in rec.settings,
      inspect: () => undefined,
      update: async () => undefined,
    }),
    onDidChangeConfiguration: rec.configChange.event,
    onDidOpenTextDocument: onEvent, onDidCloseTextDocument: onEvent, onDidChangeTextDocument: onEvent,
    onDidSaveTextDocument: onEvent, onWillSaveTextDocument: onEvent, onDidChangeWorkspaceFolders: onEvent,
    onDidOpenNotebookDocument: onEvent, onDidSaveNotebookDocument: onEvent, onDidCloseNotebookDocument: onEvent,
    onDidChangeNotebookDocument: onEvent,
    createFileSystemWatcher: () => ({ onDidCreate: event, onDidChange: event, onDidDelete: event, dispose() {} }),
    applyEdit: async (edit: WorkspaceEdit) => { rec.applied.push(edit); return true; },
    openTextDocument: async (what: { language?: string; content?: string }) => {
      rec.opened.push(what);
      return textDocument("untitled:1", what.content ?? "", what.language);
    },
  });
  const output = () => withFallback("outputChannel", {
    name: "pairline", append() {}, appendLine() {}, replace() {}, clear() {}, show() {}, hide() {}, dispose() {},
  });
  const window = withFallback("window", {
    get activeTextEditor() { return rec.activeTextEditor; },
    visibleTextEditors: [] as unknown[],
    tabGroups: { all: [] as unknown[], onDidChangeTabs: onEvent, onDidChangeTabGroups: onEvent },
    onDidChangeActiveTextEditor: onEvent,
    onDidChangeVisibleTextEditors: onEvent,
    createOutputChannel: output,
    showErrorMessage: async (msg: string) => { rec.errors.push(msg); return undefined; },
    showWarningMessage: async (msg: string) => { rec.errors.push(msg); return undefined; },
    showInformationMessage: async (msg: string) => { rec.infos.push(msg); return undefined; },
    showInputBox: async () => rec.inputAnswers.shift(),
    showTextDocument: async () => undefined,
    createWebviewPanel: (viewType: string, title: string, _column: unknown, options: unknown) => {
      const panel = new StubPanel(viewType, title, options);
      rec.panels.push(panel);
      return panel;
    },
    withProgress: async <R>(opts: { title?: string }, task: (p: unknown, t: unknown) => Promise<R>): Promise<R> => {
      rec.progress.push(opts.title ?? "");
      const source = new CancellationTokenSource();
      const timer = rec.cancelProgressAfterMs === null ? null : setTimeout(() => source.cancel(), rec.cancelProgressAfterMs);
      try {
        return await task({ report() {} }, source.token);
      } finally {
        if (timer) clearTimeout(timer);
      }
    },
  });
  const languages = withFallback("languages", {
    match: () => 10,
    registerInlineCompletionItemProvider: (_selector: unknown, provider: Recorder["inlineProviders"][number]) => {
      rec.inlineProviders.push(provider);
      return new Disposable(() => rec.inlineProviders.splice(rec.inlineProviders.indexOf(provider), 1));
    },
    createDiagnosticCollection: () => withFallback("diagnostics", { set() {}, delete() {}, clear() {}, dispose() {} }),
  });
  const commands = withFallback("commands", {
    registerCommand: (id: string, fn: (...args: unknown[]) => unknown) => {
      if (rec.commands.has(id)) throw new Error(`command '${id}' already exists`);
      rec.commands.set(id, fn);
      return new Disposable(() => rec.commands.delete(id));
    },
    executeCommand: async (id: string, ...args: unknown[]) => {
      const fn = rec.commands.get(id);
      return fn ? fn(...args) : undefined;
    },
  });
  return withFallback("vscode", {
    version: "1.85.0",
    env: withFallback("env", { appName: "stub", language: "en", machineId: "stub", sessionId: "stub" }),
    workspace, window, languages, commands,
    Disposable, EventEmitter, CancellationTokenSource, CancellationError, Position, Range, Selection, Uri,
    InlineCompletionItem, InlineCompletionList, TextEdit, WorkspaceEdit, ProgressLocation, ViewColumn,
  });
}

/** Make `require("vscode")` return the stub from now on. */
export function installVscodeStub(rec: Recorder): void {
  const stub = makeVscode(rec);
  const mod = Module as unknown as { _load(request: string, parent: unknown, isMain: boolean): unknown };
  const load = mod._load;
  mod._load = function (request: string, parent: unknown, isMain: boolean) {
    return request === "vscode" ? stub : load.call(this, request, parent, isMain);
  };
}
