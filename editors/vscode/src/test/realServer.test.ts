// Against a real `pairline serve` (tests/test_vscode_extension.py starts one on SmolLM2-135M):
// PAIRLINE_TEST_SERVER=http://127.0.0.1:PORT (or ws://…). Skipped without it.
import assert from "node:assert/strict";
import { test } from "node:test";
import { ProtocolError, Session } from "../session";
import { sessionUrl } from "../settings";

const SERVER = process.env.PAIRLINE_TEST_SERVER ?? "";
const SKIP = "PAIRLINE_TEST_SERVER is not set (a running `pairline serve`, e.g. http://127.0.0.1:8765)";
// A real model on a busy 2-core machine: generous, but a hang still fails.
const T = { timeout: 90_000 };

async function open(): Promise<Session> {
  return Session.open(sessionUrl(SERVER), { connectTimeoutMs: 30_000, draftDebounceMs: 20, apiKey: process.env.PAIRLINE_API_KEY });
}

test("real server: a draft, then one turn streams text and completes", T, async (t) => {
  if (!SERVER) {
    t.skip(SKIP);
    return;
  }
  const session = await open();
  try {
    assert.match(session.id, /^sess_/);
    const question = "Is the sky blue? Answer yes or no.";
    session.setDraft(question.slice(0, 20));  // typed so far: the server may prefill it ahead
    session.flushDraft();
    let streamed = "";
    // A grammar keeps a tiny model's answer short and the status "completed" (it ends the answer).
    const turn = session.createTurn(question, { max_output_tokens: 16, grammar: { kind: "regex", source: "(yes|no)" } },
                                    { onDelta: (d) => { streamed += d; } });
    const result = await turn.done;
    assert.equal(result.status, "completed");
    assert.ok(result.text.length > 0);
    assert.match(result.text, /^(yes|no)$/);
    assert.equal(streamed, result.text);
    assert.ok(result.ttftMs !== null && result.ttftMs > 0);
    assert.ok((result.response.usage?.output_tokens ?? 0) > 0);
    assert.equal(typeof result.response.timings?.ttft_s, "number");

    // The session keeps the conversation: a second turn reuses the first one's KV.
    const second = await session.createTurn("Say hello.", { max_output_tokens: 12 }).done;
    assert.ok(["completed", "incomplete"].includes(second.status), second.status);
    assert.ok(second.text.length > 0);
    assert.ok((second.response.usage?.input_tokens_details?.cached_tokens ?? 0) > 0);

    // An unknown field is refused by name, and the session stays usable.
    const bad = session.createTurn("x", { tools: [] } as never);
    await assert.rejects(bad.done, (err: unknown) => err instanceof ProtocolError && err.code === "unknown_parameter"
      && err.param === "tools");
  } finally {
    session.close();
  }
});

test("real server: a cancel stops the turn, a steer continues it", T, async (t) => {
  if (!SERVER) {
    t.skip(SKIP);
    return;
  }
  const session = await open();
  try {
    let stopped = false;
    const long = session.createTurn("Tell a very long story about a dragon.", { max_output_tokens: 400 }, {
      onDelta: () => {
        if (!stopped) long.cancel();  // Stop at the first token
        stopped = true;
      },
    });
    const cancelled = await long.done;
    assert.equal(cancelled.status, "cancelled");

    let steered = false;
    const turn = session.createTurn("Write a long poem about the sea.", { max_output_tokens: 200 }, {
      onDelta: () => {
        if (!steered) {
          steered = true;
          turn.steer("Stop. Say only: ok.");
        }
      },
    });
    const result = await turn.done;
    assert.ok(result.responses.length >= 2, `responses: ${result.responses.map((r) => r.status).join(", ")}`);
    assert.equal(result.responses[0].incomplete_details?.reason, "steered");
    assert.equal(result.responses[1].previous_response_id, result.responses[0].id);
    assert.ok(["completed", "incomplete"].includes(result.status), result.status);
  } finally {
    session.close();
  }
});
