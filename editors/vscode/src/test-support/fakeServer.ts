// A scripted stand-in for `pairline serve`'s session socket, on an ephemeral loopback port: it
// answers the handshake with session.created and hands every client event to the test's script.
import { AddressInfo } from "node:net";
import { IncomingMessage } from "node:http";
import { WebSocket, WebSocketServer } from "ws";

export type ClientEvent = { type: string; [key: string]: unknown };

/** One client connection, from the server's side. */
export class FakeConnection {
  private seq = 0;
  readonly received: ClientEvent[] = [];
  private waiters: Array<{ type: string; resolve(ev: ClientEvent): void }> = [];

  constructor(readonly ws: WebSocket, readonly request: IncomingMessage) {}

  /** Send a server event with the next sequence_number. */
  send(type: string, fields: Record<string, unknown> = {}): void {
    this.ws.send(JSON.stringify({ type, sequence_number: this.seq++, ...fields }));
  }

  /** The next (or an already received) client event of this type. */
  waitFor(type: string): Promise<ClientEvent> {
    const seen = this.received.find((e) => e.type === type);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve) => this.waiters.push({ type, resolve }));
  }

  /** @internal */
  receive(ev: ClientEvent): void {
    this.received.push(ev);
    for (const w of this.waiters.filter((w) => w.type === ev.type)) {
      this.waiters.splice(this.waiters.indexOf(w), 1);
      w.resolve(ev);
    }
  }

  // The events of one response, in the server's order (docs/protocol.md, "Server events").

  created(id: string, previous: string | null = null): void {
    this.send("response.created", { response: response(id, "in_progress", "", previous) });
    this.send("response.output_item.added", { output_index: 0, item: { type: "message", id: `msg_${id}`, role: "assistant", content: [] } });
  }

  delta(id: string, text: string): void {
    this.send("response.output_text.delta", { item_id: `msg_${id}`, output_index: 0, content_index: 0, delta: text, logprobs: [] });
  }

  final(type: string, id: string, status: string, text: string, extra: Record<string, unknown> = {}): void {
    this.send("response.output_text.done", { item_id: `msg_${id}`, output_index: 0, content_index: 0, text });
    this.send(type, { response: { ...response(id, status, text, null), ...extra } });
  }

  error(code: string, eventId: string | null, message = code): void {
    this.send("error", { status: 400, error: { type: "invalid_request_error", code, message, param: null, event_id: eventId } });
  }
}

function response(id: string, status: string, text: string, previous: string | null): Record<string, unknown> {
  return {
    id, object: "response", status, output_text: text, previous_response_id: previous, incomplete_details: null,
    usage: status === "in_progress" ? null : { input_tokens: 10, output_tokens: 3, input_tokens_details: { cached_tokens: 0 } },
    timings: status === "in_progress" ? null : { ttft_s: 0.01, decode_tokens_per_s: 100, total_s: 0.03 },
  };
}

export class FakeServer {
  readonly connections: FakeConnection[] = [];

  private constructor(private readonly wss: WebSocketServer, readonly url: string) {}

  /**
   * Listen on 127.0.0.1:0. `script` sees each client event (already recorded on the connection);
   * `onConnect` may refuse the session instead of the default session.created.
   */
  static async start(script: (conn: FakeConnection, ev: ClientEvent) => void,
                     onConnect?: (conn: FakeConnection) => boolean): Promise<FakeServer> {
    const wss = new WebSocketServer({ host: "127.0.0.1", port: 0, path: "/v1/responses" });
    await new Promise<void>((resolve, reject) => {
      wss.once("listening", resolve);
      wss.once("error", reject);
    });
    const port = (wss.address() as AddressInfo).port;
    const server = new FakeServer(wss, `ws://127.0.0.1:${port}/v1/responses`);
    wss.on("connection", (ws, req) => {
      const conn = new FakeConnection(ws, req);
      server.connections.push(conn);
      ws.on("message", (data) => {
        const ev = JSON.parse(data.toString()) as ClientEvent;
        conn.receive(ev);
        script(conn, ev);
      });
      if (!onConnect || onConnect(conn)) conn.send("session.created", { session: { id: "sess_fake", object: "realtime.session" } });
    });
    return server;
  }

  async stop(): Promise<void> {
    for (const c of this.connections) c.ws.terminate();
    await new Promise<void>((resolve) => this.wss.close(() => resolve()));
  }
}
