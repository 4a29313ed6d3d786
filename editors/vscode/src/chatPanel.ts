// The chat panel: a webview page (webview.ts) and, on the extension host, one pairline session
// (session.ts) that the page drives through postMessage. Only this glue imports `vscode`.
import * as vscode from "vscode";
import { ConnectionClosedError, ProtocolError, Session, Turn } from "./session";
import { chatHtml, FromPage, latencyLine, makeNonce, ToPage } from "./webview";

export class ChatPanel {
  private static current: ChatPanel | null = null;
  private session: Session | null = null;
  private connecting: Promise<Session> | null = null;
  private turn: Turn | null = null;
  private disposed = false;
  private readonly disposables: vscode.Disposable[] = [];

  /** Show the panel, creating it on first use. `url` is the session's ws:// URL. */
  static show(url: string): void {
    if (ChatPanel.current) {
      ChatPanel.current.url = url;  // a settings change applies from the next connection
      ChatPanel.current.panel.reveal();
      return;
    }
    const panel = vscode.window.createWebviewPanel("pairline.chat", "pairline chat", vscode.ViewColumn.Beside, {
      enableScripts: true,
      localResourceRoots: [],  // the page loads nothing
      retainContextWhenHidden: true,  // the conversation lives on the server; the page keeps its transcript
    });
    ChatPanel.current = new ChatPanel(panel, url);
  }

  static disposeCurrent(): void {
    ChatPanel.current?.panel.dispose();
  }

  private constructor(private readonly panel: vscode.WebviewPanel, private url: string) {
    panel.webview.html = chatHtml(makeNonce(), panel.webview.cspSource);
    panel.webview.onDidReceiveMessage((m: FromPage) => this.onPage(m), null, this.disposables);
    panel.onDidDispose(() => this.dispose(), null, this.disposables);
  }

  private post(m: ToPage): void {
    if (!this.disposed) void this.panel.webview.postMessage(m);  // a closing session still reports
  }

  /** The session, opened on first need and again after the server went away. */
  private connect(): Promise<Session> {
    if (this.session && !this.session.closed) return Promise.resolve(this.session);
    if (!this.connecting) {
      this.post({ type: "status", text: `connecting to ${this.url}…` });
      this.connecting = Session.open(this.url, {
        apiKey: process.env.PAIRLINE_API_KEY,
        onError: (err) => this.post({ type: "status", text: `server: ${err.message} (${err.code})` }),
        onClose: (code, reason) => this.post({ type: "status", text: `disconnected (${code}${reason ? ` ${reason}` : ""}); the next message reconnects` }),
      }).then((s) => {
        this.session = s;
        this.post({ type: "status", text: `session ${s.id} on ${this.url}` });
        return s;
      }).finally(() => { this.connecting = null; });
    }
    return this.connecting;
  }

  private async onPage(m: FromPage): Promise<void> {
    try {
      switch (m.type) {
        case "ready":
          await this.connect();  // early, so the first draft can already be prefilled
          break;
        case "draft":
          if (!this.turn) (await this.connect()).setDraft(m.text);
          break;
        case "stop":
          this.turn?.cancel();
          break;
        case "send":
          if (this.turn?.active) this.turn.steer(m.text);
          else await this.startTurn(m.text);
          break;
      }
    } catch (err) {
      const hint = err instanceof ProtocolError || err instanceof ConnectionClosedError ? ""
        : " (is `pairline serve` running? see the pairline.server setting)";
      this.post({ type: "error", text: `${(err as Error).message}${hint}` });
    }
  }

  private async startTurn(text: string): Promise<void> {
    const session = await this.connect();
    this.post({ type: "turnStart" });
    const turn = session.createTurn(text, {}, {
      onResponse: () => this.post({ type: "response" }),  // each response (a steer's successor too) gets its own block
      onDelta: (delta) => this.post({ type: "delta", text: delta }),
    });
    this.turn = turn;
    try {
      const result = await turn.done;
      const r = result.response;
      this.post({ type: "turnEnd", status: result.status,
                  latency: latencyLine(result.ttftMs, result.totalMs, r.usage?.output_tokens, r.timings?.decode_tokens_per_s) });
    } finally {
      if (this.turn === turn) this.turn = null;
    }
  }

  private dispose(): void {
    this.disposed = true;
    ChatPanel.current = null;
    this.turn?.cancel();
    this.session?.close();
    void this.connecting?.then((s) => s.close(), () => undefined);
    for (const d of this.disposables.splice(0)) d.dispose();
  }
}
