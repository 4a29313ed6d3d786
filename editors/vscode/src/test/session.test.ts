// The protocol client against a scripted fake server: every test has a timeout, so a turn that
// never ends fails the test instead of hanging the run.
import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import { test } from "node:test";
import { ConnectionClosedError, ProtocolError, Session, SessionOptions } from "../session";
import { ClientEvent, FakeConnection, FakeServer } from "../test-support/fakeServer";

const T = { timeout: 5000 };

/** Start a fake server with `script`, open a session on it, run `body`, then tear both down. */
async function withSession(script: (conn: FakeConnection, ev: ClientEvent) => void,
                           body: (session: Session, server: FakeServer) => Promise<void>,
                           opts: SessionOptions = {}): Promise<void> {
  const server = await FakeServer.start(script);
  const session = await Session.open(server.url, opts);
  try {
    await body(session, server);
  } finally {
    session.close();
    await server.stop();
  }
}

/** The usual answer: created, deltas, completed. */
function answer(conn: FakeConnection, id: string, pieces: string[]): void {
  conn.created(id);
  for (const p of pieces) conn.delta(id, p);
  conn.final("response.completed", id, "completed", pieces.join(""));
}

test("a turn streams its deltas and completes", T, async () => {
  await withSession((conn, ev) => {
    if (ev.type === "response.create") answer(conn, "resp_1", ["Hel", "lo", "!"]);
  }, async (session, server) => {
    assert.equal(session.id, "sess_fake");
    const deltas: string[] = [];
    const turn = session.createTurn("Say hello", { max_output_tokens: 8 }, { onDelta: (d) => deltas.push(d) });
    const result = await turn.done;
    assert.deepEqual(deltas, ["Hel", "lo", "!"]);
    assert.equal(result.status, "completed");
    assert.equal(result.text, "Hello!");
    assert.equal(result.response.usage?.output_tokens, 3);
    assert.ok(result.ttftMs !== null && result.ttftMs >= 0 && result.ttftMs <= result.totalMs);
    assert.equal(session.activeTurn, null);
    const sent = server.connections[0].received[0];
    assert.equal(sent.type, "response.create");
    assert.equal(sent.input, "Say hello");
    assert.equal(sent.max_output_tokens, 8);
    assert.equal(typeof sent.event_id, "string");
    // the session goes on: a second turn on the same connection
    const again = await session.createTurn("Again").done;
    assert.equal(again.text, "Hello!");
    assert.equal(server.connections.length, 1);
  });
});

test("one turn at a time", T, async () => {
  await withSession(() => undefined, async (session) => {
    session.createTurn("first");
    assert.throws(() => session.createTurn("second"), /already in progress/);
  });
});

test("cancel sends response.cancel and the turn ends as cancelled", T, async () => {
  await withSession((conn, ev) => {
    if (ev.type === "response.create") {
      conn.created("resp_1");
      conn.delta("resp_1", "Once upon");  // ... and it would go on: only a cancel ends it
    } else if (ev.type === "response.cancel") {
      conn.send("response.cancelled", { response: { id: "resp_1", status: "cancelled", output_text: "Once upon" } });
    }
  }, async (session, server) => {
    let first!: () => void;
    const gotDelta = new Promise<void>((r) => { first = r; });
    const turn = session.createTurn("Tell a long story.", {}, { onDelta: () => first() });
    await gotDelta;
    turn.cancel();
    const result = await turn.done;
    assert.equal(result.status, "cancelled");
    assert.equal(result.text, "Once upon");
    assert.ok(server.connections[0].received.some((e) => e.type === "response.cancel"));
    assert.equal(session.activeTurn, null);
  });
});

test("a steer cuts the response and the turn continues with its successor", T, async () => {
  await withSession((conn, ev) => {
    if (ev.type === "response.create") {
      conn.created("resp_1");
      conn.delta("resp_1", "Decorators are");
    } else if (ev.type === "response.steer") {
      conn.final("response.incomplete", "resp_1", "incomplete", "Decorators are",
                 { incomplete_details: { reason: "steered" } });
      conn.created("resp_2", "resp_1");
      conn.delta("resp_2", "Short");
      conn.delta("resp_2", ".");
      conn.final("response.completed", "resp_2", "completed", "Short.");
    }
  }, async (session, server) => {
    const byResponse = new Map<string, string>();
    const started: string[] = [];
    const turn = session.createTurn("Explain decorators in detail.", {}, {
      onResponse: (r) => started.push(r.id),
      onDelta: (d, id) => {
        byResponse.set(id, (byResponse.get(id) ?? "") + d);
        if (d === "Decorators are") turn.steer("Stop. One sentence.");
      },
    });
    const result = await turn.done;
    assert.equal(result.status, "completed");
    assert.equal(result.text, "Short.");
    assert.deepEqual(started, ["resp_1", "resp_2"]);
    assert.deepEqual(result.responses.map((r) => [r.id, r.status]), [["resp_1", "incomplete"], ["resp_2", "completed"]]);
    assert.deepEqual([...byResponse], [["resp_1", "Decorators are"], ["resp_2", "Short."]]);
    const steer = await server.connections[0].waitFor("response.steer");
    assert.equal(steer.input, "Stop. One sentence.");
  });
});

test("an error event for the request rejects the turn; the session stays usable", T, async () => {
  await withSession((conn, ev) => {
    if (ev.type !== "response.create") return;
    if (ev.input === "bad") conn.error("unknown_parameter", ev.event_id as string, "unknown parameter 'tools'");
    else answer(conn, "resp_ok", ["fine"]);
  }, async (session) => {
    const turn = session.createTurn("bad");
    await assert.rejects(turn.done, (err: unknown) => {
      assert.ok(err instanceof ProtocolError);
      assert.equal(err.code, "unknown_parameter");
      assert.match(err.message, /tools/);
      return true;
    });
    assert.equal(session.activeTurn, null);
    assert.equal((await session.createTurn("good").done).text, "fine");
  });
});

test("a response that fails after it started rejects with the server's error", T, async () => {
  await withSession((conn, ev) => {
    if (ev.type !== "response.create") return;
    conn.created("resp_1");
    conn.error("context_length_exceeded", ev.event_id as string, "the conversation no longer fits");
    conn.send("response.failed", { response: { id: "resp_1", status: "failed", error: { code: "context_length_exceeded" } } });
  }, async (session) => {
    await assert.rejects(session.createTurn("x").done, { name: "ProtocolError", code: "context_length_exceeded" });
    assert.equal(session.activeTurn, null);
  });
});

test("errors that belong to no turn go to onError and the turn goes on", T, async () => {
  const errors: ProtocolError[] = [];
  const server = await FakeServer.start((conn, ev) => {
    if (ev.type === "response.create") {
      conn.created("resp_1");
      conn.error("rate_limit_exceeded", null, "too many drafts");  // not this turn's
      conn.delta("resp_1", "ok");
      conn.final("response.completed", "resp_1", "completed", "ok");
    }
  });
  const session = await Session.open(server.url, { onError: (e) => errors.push(e) });
  try {
    assert.equal((await session.createTurn("hi").done).text, "ok");
    assert.deepEqual(errors.map((e) => e.code), ["rate_limit_exceeded"]);
  } finally {
    session.close();
    await server.stop();
  }
});

test("the socket closing mid-turn ends the turn with an error", T, async () => {
  await withSession((conn, ev) => {
    if (ev.type === "response.create") {
      conn.created("resp_1");
      conn.delta("resp_1", "partial");
      setImmediate(() => conn.ws.close(1011, "engine crashed"));
    }
  }, async (session) => {
    const turn = session.createTurn("hi");
    await assert.rejects(turn.done, (err: unknown) => {
      assert.ok(err instanceof ConnectionClosedError);
      assert.equal(err.code, 1011);
      assert.match(err.message, /engine crashed/);
      return true;
    });
    assert.ok(session.closed);
    assert.throws(() => session.createTurn("again"), ConnectionClosedError);
  });
});

test("a connection dropped without a close frame ends the turn too", T, async () => {
  await withSession((conn, ev) => {
    if (ev.type === "response.create") {
      conn.created("resp_1");
      setImmediate(() => conn.ws.terminate());
    }
  }, async (session) => {
    await assert.rejects(session.createTurn("hi").done, { name: "ConnectionClosedError", code: 1006 });
  });
});

test("a fatal error before the close names the cause (server_shutting_down, close 1001)", T, async () => {
  await withSession((conn, ev) => {
    if (ev.type === "response.create") {
      conn.created("resp_1");
      conn.error("server_shutting_down", null, "the server is shutting down");
      setImmediate(() => conn.ws.close(1001, "shutting down"));
    }
  }, async (session) => {
    await assert.rejects(session.createTurn("hi").done, { name: "ProtocolError", code: "server_shutting_down" });
  });
});

test("drafts are debounced: only the latest text goes out, and a turn drops a pending one", T, async () => {
  await withSession((conn, ev) => {
    if (ev.type === "response.create") answer(conn, "resp_1", ["ok"]);
  }, async (session, server) => {
    for (const text of ["d", "de", "def", "def f"]) session.setDraft(text);
    await server.connections[0].waitFor("draft.update");
    await sleep(100);
    const drafts = () => server.connections[0].received.filter((e) => e.type === "draft.update").map((e) => e.text);
    assert.deepEqual(drafts(), ["def f"]);
    session.setDraft("def f");  // unchanged: not sent again
    session.setDraft("def fo");
    await session.createTurn("def foo").done;  // sent before the debounce fired: the draft is dropped
    await sleep(100);
    assert.deepEqual(drafts(), ["def f"]);
    const types = server.connections[0].received.map((e) => e.type);
    assert.deepEqual(types, ["draft.update", "response.create"]);
  }, { draftDebounceMs: 30 });
});

test("open: an API key goes in the Authorization header", T, async () => {
  const server = await FakeServer.start(() => undefined);
  const session = await Session.open(server.url, { apiKey: "sekrit" });
  try {
    assert.equal(server.connections[0].request.headers.authorization, "Bearer sekrit");
  } finally {
    session.close();
    await server.stop();
  }
});

test("open: a refused session rejects with the server's error", T, async () => {
  const server = await FakeServer.start(() => undefined, (conn) => {
    conn.error("invalid_api_key", null, "invalid API key");
    conn.ws.close(1008, "invalid api key");
    return false;
  });
  try {
    await assert.rejects(Session.open(server.url), { name: "ProtocolError", code: "invalid_api_key" });
  } finally {
    await server.stop();
  }
});

test("open: nothing listening rejects quickly", T, async () => {
  const server = await FakeServer.start(() => undefined);
  const url = server.url;
  await server.stop();  // the port is free again: a refused connection
  await assert.rejects(Session.open(url, { connectTimeoutMs: 2000 }), /cannot connect|closed/);
});

test("open: a server that never says session.created times out", T, async () => {
  const server = await FakeServer.start(() => undefined, () => false);
  try {
    await assert.rejects(Session.open(server.url, { connectTimeoutMs: 200 }), /no session.created/);
  } finally {
    await server.stop();
  }
});
