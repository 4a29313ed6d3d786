// A stand-in for `pairline lsp --stdio`, run as a child process by vscode-languageclient in the
// extension test. It offers what the real server offers (inline completion, the two commands) and
// logs its command line and every message it receives, one JSON line each, to $FAKE_LSP_LOG.
import { appendFileSync } from "node:fs";

type Message = { jsonrpc: "2.0"; id?: number | string; method?: string; params?: any; result?: unknown; error?: unknown };

const log = (entry: unknown): void => {
  if (process.env.FAKE_LSP_LOG) appendFileSync(process.env.FAKE_LSP_LOG, JSON.stringify(entry) + "\n");
};

function write(msg: Omit<Message, "jsonrpc">): void {
  const body = Buffer.from(JSON.stringify({ jsonrpc: "2.0", ...msg }), "utf8");
  process.stdout.write(`Content-Length: ${body.length}\r\n\r\n`);
  process.stdout.write(body);
}

let nextId = 1;
const waitingReplies = new Map<number | string, (m: Message) => void>();
const cancelled = new Map<number | string, () => void>();

/** A request to the client (workspace/applyEdit), answered through `waitingReplies`. */
function request(method: string, params: unknown): Promise<Message> {
  const id = `srv${nextId++}`;
  write({ id, method, params });
  return new Promise((resolve) => waitingReplies.set(id, resolve));
}

async function handle(msg: Message): Promise<void> {
  log(msg);
  if (msg.method === undefined) {  // a reply to one of ours
    waitingReplies.get(msg.id!)?.(msg);
    return;
  }
  const reply = (result: unknown) => write({ id: msg.id, result });
  switch (msg.method) {
    case "initialize":
      return reply({
        capabilities: {
          textDocumentSync: 2,
          inlineCompletionProvider: {},
          executeCommandProvider: { commands: ["pairline.editSelection", "pairline.explain"] },
        },
        serverInfo: { name: "fake pairline lsp" },
      });
    case "textDocument/inlineCompletion": {
      const at = msg.params.position;
      return reply([{ insertText: "return a * b", range: { start: at, end: at } }]);
    }
    case "workspace/executeCommand": {
      const [uri, range, third] = msg.params.arguments ?? [];
      if (msg.params.command === "pairline.explain") return reply({ explanation: "It multiplies a and b." });
      if (third === "wait for cancel") {
        await new Promise<void>((resolve) => cancelled.set(msg.id!, resolve));
        return write({ id: msg.id, error: { code: -32800, message: "cancelled" } });
      }
      const edit = { documentChanges: [{ textDocument: { uri, version: null }, edits: [{ range, newText: "EDITED" }] }] };
      const answer = await request("workspace/applyEdit", { label: "pairline", edit });
      return reply({ status: "applied", applied: (answer.result as { applied?: boolean })?.applied === true });
    }
    case "$/cancelRequest":
      cancelled.get(msg.params.id)?.();
      return;
    case "shutdown":
      return reply(null);
    case "exit":
      process.exit(0);
      return;
    default:
      if (msg.id !== undefined) write({ id: msg.id, error: { code: -32601, message: `no ${msg.method} here` } });
  }
}

log({ argv: process.argv.slice(2) });
let buffer = Buffer.alloc(0);
process.stdin.on("data", (chunk: Buffer) => {
  buffer = Buffer.concat([buffer, chunk]);
  for (;;) {
    const headerEnd = buffer.indexOf("\r\n\r\n");
    if (headerEnd < 0) return;
    const length = Number(/Content-Length: (\d+)/i.exec(buffer.subarray(0, headerEnd).toString())?.[1]);
    if (buffer.length < headerEnd + 4 + length) return;
    const body = buffer.subarray(headerEnd + 4, headerEnd + 4 + length).toString("utf8");
    buffer = buffer.subarray(headerEnd + 4 + length);
    void handle(JSON.parse(body) as Message);
  }
});
