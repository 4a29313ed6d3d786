// A client of pairline's WebSocket session protocol (docs/protocol.md): one connection is one
// session; the server keeps the conversation and its KV cache, so each turn sends only its new
// message. This module must not import `vscode`: it is tested under plain node.
import { performance } from "node:perf_hooks";
import WebSocket from "ws";

/** A message item, as in the Responses API. */
export interface InputMessage {
  type: "message";
  role: "user" | "assistant" | "system" | "developer";
  content: string | Array<{ type: "input_text"; text: string }>;
}

export type Input = string | InputMessage[];

/** The optional fields of `response.create` (the server rejects unknown ones by name). */
export interface CreateFields {
  instructions?: string;
  max_output_tokens?: number;
  temperature?: number;
  top_p?: number;
  seed?: number;
  prediction?: { type: "content"; content: string };
  grammar?: { kind: "lark" | "regex" | "json_schema"; source: unknown };
  metadata?: Record<string, string>;
  model?: string;
}

/** The response object of the server's events; only what this client reads is typed. */
export interface ResponseObject {
  id: string;
  status: string;
  output_text?: string;
  previous_response_id?: string | null;
  incomplete_details?: { reason?: string } | null;
  usage?: {
    input_tokens?: number;
    output_tokens?: number;
    input_tokens_details?: { cached_tokens?: number; prefilled_ahead_tokens?: number };
  } | null;
  timings?: { ttft_s?: number; decode_tokens_per_s?: number; total_s?: number } | null;
  [key: string]: unknown;
}

export interface ServerEvent {
  type: string;
  sequence_number?: number;
  [key: string]: unknown;
}

/** An `error` event from the server, as an Error. */
export class ProtocolError extends Error {
  readonly code: string;
  readonly param: string | null;
  readonly status: number | null;
  readonly eventId: string | null;

  constructor(message: string, code: string, param: string | null = null, status: number | null = null,
              eventId: string | null = null) {
    super(message);
    this.name = "ProtocolError";
    this.code = code;
    this.param = param;
    this.status = status;
    this.eventId = eventId;
  }

  static fromEvent(ev: ServerEvent): ProtocolError {
    const body = (ev.error ?? {}) as Record<string, unknown>;
    const str = (v: unknown): string | null => (typeof v === "string" ? v : null);
    return new ProtocolError(str(body.message) ?? "server error", str(body.code) ?? "server_error",
                             str(body.param), typeof ev.status === "number" ? ev.status : null, str(body.event_id));
  }
}

/** The socket closed while something waited on it. */
export class ConnectionClosedError extends Error {
  constructor(readonly code: number, readonly reason: string) {
    super(`the session's connection closed (code ${code}${reason ? `: ${reason}` : ""})`);
    this.name = "ConnectionClosedError";
  }
}

// Errors the server follows with a close: the turn cannot go on, and the close should name them.
const FATAL_CODES = new Set(["invalid_api_key", "session_limit_reached", "session_expired", "server_shutting_down"]);

export interface TurnHandlers {
  /** One released piece of text of the response `responseId`. */
  onDelta?(delta: string, responseId: string): void;
  /** A response started: the turn's own, or the successor of a steer. */
  onResponse?(response: ResponseObject): void;
}

export interface TurnResult {
  /** "completed", "incomplete" (max_output_tokens) or "cancelled" (a Stop). */
  status: string;
  /** The last response's text (after a steer, the successor's). */
  text: string;
  /** The last response, with usage and the server's timings. */
  response: ResponseObject;
  /** Every response of the turn, in order: more than one after a steer. */
  responses: ResponseObject[];
  /** Client clock: response.create sent to the first text delta (null if none came). */
  ttftMs: number | null;
  /** Client clock: response.create sent to the final event. */
  totalMs: number;
}

/** One user turn in progress. Ends when its last response ends: a steer continues the turn. */
export class Turn {
  readonly done: Promise<TurnResult>;
  readonly eventId: string;
  readonly responses: ResponseObject[] = [];
  /** Text of the response in progress, so far. */
  text = "";
  ttftMs: number | null = null;
  private readonly sentAt = performance.now();
  private created = false;
  private pendingError: ProtocolError | null = null;
  private settle!: { resolve(r: TurnResult): void; reject(e: Error): void };
  private finished = false;

  constructor(private readonly session: Session, eventId: string, private readonly handlers: TurnHandlers) {
    this.eventId = eventId;
    this.done = new Promise<TurnResult>((resolve, reject) => { this.settle = { resolve, reject }; });
    // A caller that only uses the handlers must not crash the process with an unhandled rejection.
    this.done.catch(() => undefined);
  }

  get active(): boolean {
    return !this.finished;
  }

  /** Stop the response in progress (`response.cancel`); the turn then ends with status "cancelled". */
  cancel(): void {
    if (!this.finished) this.session.send({ type: "response.cancel" });
  }

  /** Cut the response, append `text` as a user message and continue (`response.steer`). */
  steer(text: string): void {
    if (!this.finished) this.session.send({ type: "response.steer", input: text, event_id: this.session.nextEventId("steer") });
  }

  /** @internal One server event while this turn is the session's. Returns true when the turn ended. */
  handle(ev: ServerEvent): boolean {
    switch (ev.type) {
      case "response.created": {
        const response = ev.response as ResponseObject;
        this.created = true;
        this.text = "";
        this.responses.push(response);
        this.handlers.onResponse?.(response);
        return false;
      }
      case "response.output_text.delta": {
        const delta = typeof ev.delta === "string" ? ev.delta : "";
        if (this.ttftMs === null) this.ttftMs = performance.now() - this.sentAt;
        this.text += delta;
        this.handlers.onDelta?.(delta, this.currentId());
        return false;
      }
      case "response.completed":
      case "response.incomplete":
      case "response.cancelled":
        return this.finalEvent(ev.response as ResponseObject);
      case "response.failed": {
        const response = ev.response as ResponseObject;
        const err = (response?.error ?? null) as { code?: string; message?: string } | null;
        this.fail(this.pendingError ?? new ProtocolError(err?.message ?? "the response failed", err?.code ?? "server_error"));
        return true;
      }
      case "error": {
        const err = ProtocolError.fromEvent(ev);
        if (err.eventId === this.eventId && !this.created) {
          this.fail(err);  // response.create was refused: nothing runs, no final event will come
          return true;
        }
        if (err.eventId === this.eventId || FATAL_CODES.has(err.code)) {
          this.pendingError = err;  // response.failed or a close follows and ends the turn with it
          return false;
        }
        if (err.code === "server_error" && err.eventId === null) {
          this.fail(err);  // the server lost the turn (its own bug): no final event will come
          return true;
        }
        this.session.reportError(err);  // a late steer or cancel, a draft: the turn goes on
        return false;
      }
      default:
        return false;
    }
  }

  /** @internal The socket closed. */
  closed(err: ConnectionClosedError): void {
    this.fail(this.pendingError ?? err);
  }

  private finalEvent(response: ResponseObject): boolean {
    // Replace the created-time snapshot with the final one (usage, timings, text).
    const i = this.responses.findIndex((r) => r.id === response.id);
    if (i >= 0) this.responses[i] = response; else this.responses.push(response);
    if (response.status === "incomplete" && response.incomplete_details?.reason === "steered") {
      return false;  // a successor follows at once: the turn goes on
    }
    this.finished = true;
    this.settle.resolve({
      status: response.status,
      text: typeof response.output_text === "string" ? response.output_text : this.text,
      response,
      responses: this.responses.slice(),
      ttftMs: this.ttftMs,
      totalMs: performance.now() - this.sentAt,
    });
    return true;
  }

  private fail(err: Error): void {
    if (this.finished) return;
    this.finished = true;
    this.settle.reject(err);
  }

  private currentId(): string {
    return this.responses.length ? this.responses[this.responses.length - 1].id : "";
  }
}

export interface SessionOptions {
  /** Sent as `Authorization: Bearer KEY` when the server was started with one. */
  apiKey?: string;
  /** Handshake plus `session.created`; default 10 s. */
  connectTimeoutMs?: number;
  /** Quiet time after the last keystroke before a `draft.update` goes out; default 150 ms. */
  draftDebounceMs?: number;
  /** Errors that belong to no turn (a late steer, a draft that is too large). */
  onError?(err: ProtocolError): void;
  /** The connection closed (by either side). */
  onClose?(code: number, reason: string): void;
}

/** One session of `pairline serve` (or `pairline route`). */
export class Session {
  readonly id: string;
  private turn: Turn | null = null;
  private closedWith: ConnectionClosedError | null = null;
  private eventCounter = 0;
  private draftTimer: NodeJS.Timeout | null = null;
  private pendingDraft: string | null = null;
  private lastDraft = "";

  private constructor(private readonly ws: WebSocket, created: ServerEvent, private readonly opts: SessionOptions) {
    this.id = String((created.session as { id?: unknown } | undefined)?.id ?? "");
    ws.on("message", (data, isBinary) => {
      if (!isBinary) this.onMessage(data.toString());
    });
    ws.on("close", (code, reason) => this.onClose(code, reason.toString()));
    ws.on("error", () => undefined);  // a close always follows; it carries what matters
  }

  /** Connect and wait for `session.created`. */
  static open(url: string, opts: SessionOptions = {}): Promise<Session> {
    const timeoutMs = opts.connectTimeoutMs ?? 10_000;
    const headers: Record<string, string> = {};
    if (opts.apiKey) headers.Authorization = `Bearer ${opts.apiKey}`;
    return new Promise<Session>((resolve, reject) => {
      const ws = new WebSocket(url, { headers, handshakeTimeout: timeoutMs, maxPayload: 16 << 20 });
      let done = false;
      const finish = (err: Error | null, session?: Session): void => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        ws.removeListener("message", onFirst);
        if (err) {
          ws.terminate();
          reject(err);
        } else {
          resolve(session!);
        }
      };
      const timer = setTimeout(() => finish(new Error(`no session.created from ${url} within ${timeoutMs} ms`)), timeoutMs);
      const onFirst = (data: WebSocket.RawData): void => {
        let ev: ServerEvent;
        try {
          ev = JSON.parse(data.toString()) as ServerEvent;
        } catch {
          finish(new Error(`${url} did not answer with JSON: is it a pairline server?`));
          return;
        }
        if (ev.type === "session.created") finish(null, new Session(ws, ev, opts));
        else if (ev.type === "error") finish(ProtocolError.fromEvent(ev));
        else finish(new Error(`expected session.created from ${url}, got ${ev.type}`));
      };
      ws.on("message", onFirst);
      // `on`, not `once`: a second error (terminate() during the handshake emits one) must find a listener
      ws.on("error", (err) => finish(new Error(`cannot connect to ${url}: ${err.message}`)));
      ws.on("close", (code, reason) => finish(new ConnectionClosedError(code, reason.toString())));
    });
  }

  get closed(): boolean {
    return this.closedWith !== null;
  }

  /** The turn in progress, if any. */
  get activeTurn(): Turn | null {
    return this.turn;
  }

  /** Send one client event as it is (see docs/protocol.md, "Client events"). */
  send(event: Record<string, unknown>): void {
    if (this.closedWith) throw this.closedWith;
    this.ws.send(JSON.stringify(event));
  }

  /** Send `input` as the next turn. One turn at a time: the server refuses a second one. */
  createTurn(input: Input, fields: CreateFields = {}, handlers: TurnHandlers = {}): Turn {
    if (this.closedWith) throw this.closedWith;
    if (this.turn) throw new Error("a turn is already in progress: steer or cancel it");
    // response.create consumes the server's draft: one still waiting here would only be wasted prefill.
    this.dropPendingDraft();
    this.lastDraft = "";
    const turn = new Turn(this, this.nextEventId("create"), handlers);
    this.send({ type: "response.create", input, ...fields, event_id: turn.eventId });
    // Events are handled on later ticks, so the turn is in place before the first one arrives.
    this.turn = turn;
    turn.done.then(() => undefined, () => undefined).finally(() => {
      if (this.turn === turn) this.turn = null;
    });
    return turn;
  }

  /** Cancel the turn in progress, if any. */
  cancel(): void {
    this.turn?.cancel();
  }

  /**
   * The next input as typed so far, for the server to prefill while the user types. Debounced: only
   * the latest text goes out, once typing pauses (every draft replaces the last on the server).
   */
  setDraft(text: string): void {
    if (this.closedWith) return;
    this.pendingDraft = text;
    if (this.draftTimer) clearTimeout(this.draftTimer);
    this.draftTimer = setTimeout(() => this.flushDraft(), this.opts.draftDebounceMs ?? 150);
  }

  /** Send the pending draft now (if it differs from the last one sent). */
  flushDraft(): void {
    const text = this.pendingDraft;
    this.dropPendingDraft();
    if (text === null || text === this.lastDraft || this.closedWith) return;
    this.lastDraft = text;
    this.send({ type: "draft.update", text });
  }

  close(): void {
    this.dropPendingDraft();
    if (!this.closedWith) this.ws.close(1000, "client closed");
  }

  /** @internal */
  nextEventId(kind: string): string {
    this.eventCounter += 1;
    return `evt_${kind}_${this.eventCounter}`;
  }

  /** @internal */
  reportError(err: ProtocolError): void {
    this.opts.onError?.(err);
  }

  private dropPendingDraft(): void {
    if (this.draftTimer) clearTimeout(this.draftTimer);
    this.draftTimer = null;
    this.pendingDraft = null;
  }

  private onMessage(raw: string): void {
    let ev: ServerEvent;
    try {
      ev = JSON.parse(raw) as ServerEvent;
    } catch {
      this.reportError(new ProtocolError("the server sent a message that is not JSON", "invalid_json"));
      return;
    }
    const turn = this.turn;
    if (turn) {
      if (turn.handle(ev)) this.turn = null;
    } else if (ev.type === "error") {
      this.reportError(ProtocolError.fromEvent(ev));
    }
  }

  private onClose(code: number, reason: string): void {
    this.closedWith = new ConnectionClosedError(code, reason);
    this.dropPendingDraft();
    const turn = this.turn;
    this.turn = null;
    turn?.closed(this.closedWith);
    this.opts.onClose?.(code, reason);
  }
}
