// What the extension's settings mean, as pure functions: extension.ts reads the settings and hands
// them here, so this module needs no `vscode` and is tested under plain node.

export interface PairlineSettings {
  /** `pairline.command`: the pairline executable, or a command line such as `python -m pairline.cli`. */
  command: string;
  /** `pairline.model`: a registry name or a local .gguf / HF directory; empty for the server's default. */
  model: string;
  /** `pairline.server`: URL of a running `pairline serve`; empty to let `pairline lsp` load the model itself. */
  server: string;
  /** `pairline.inlineSuggestions`: ask the language server for inline completions as you type. */
  inlineSuggestions: boolean;
}

export const DEFAULT_SERVER = "http://127.0.0.1:8765";

export const DEFAULTS: PairlineSettings = { command: "pairline", model: "", server: "", inlineSuggestions: true };

/** Settings as read from a configuration, with anything missing or of the wrong type defaulted. */
export function normalize(raw: Partial<Record<keyof PairlineSettings, unknown>>): PairlineSettings {
  const str = (v: unknown, d: string): string => (typeof v === "string" ? v.trim() : d);
  return {
    command: str(raw.command, DEFAULTS.command) || DEFAULTS.command,
    model: str(raw.model, DEFAULTS.model),
    server: str(raw.server, DEFAULTS.server),
    inlineSuggestions: typeof raw.inlineSuggestions === "boolean" ? raw.inlineSuggestions : DEFAULTS.inlineSuggestions,
  };
}

/**
 * Split a command line into words, the way a POSIX shell would for the simple cases a setting holds:
 * whitespace separates, single and double quotes group (so a path with spaces can be quoted), a
 * backslash escapes the next character outside single quotes. No variables, globs or pipes: the
 * result is spawned without a shell.
 */
export function splitCommandLine(line: string): string[] {
  const words: string[] = [];
  let word = "";
  let inWord = false;
  let quote: "'" | '"' | null = null;
  for (let i = 0; i < line.length; i++) {
    const c = line[i];
    if (quote) {
      if (c === quote) quote = null;
      else if (c === "\\" && quote === '"' && i + 1 < line.length && '"\\'.includes(line[i + 1])) word += line[++i];
      else word += c;
    } else if (c === "'" || c === '"') {
      quote = c;
      inWord = true;
    } else if (c === "\\" && i + 1 < line.length) {
      word += line[++i];
      inWord = true;
    } else if (/\s/.test(c)) {
      if (inWord) words.push(word);
      word = "";
      inWord = false;
    } else {
      word += c;
      inWord = true;
    }
  }
  if (quote) throw new Error(`unbalanced ${quote} in the command line: ${line}`);
  if (inWord) words.push(word);
  return words;
}

/** How to start the language server: `pairline lsp [--model M] [--server URL] --stdio`. */
export function languageServerCommand(settings: PairlineSettings): { command: string; args: string[] } {
  const words = splitCommandLine(settings.command);
  if (words.length === 0) throw new Error("pairline.command is empty");
  const args = [...words.slice(1), "lsp"];
  if (settings.model) args.push("--model", settings.model);
  if (settings.server) args.push("--server", settings.server);
  // vscode-languageclient adds --stdio itself only with TransportKind.stdio; saying it here keeps
  // the whole command line in one place (and testable).
  args.push("--stdio");
  return { command: words[0], args };
}

/**
 * `pairline.server` as the session's WebSocket URL, as pairline/assistant/client.py's session_url
 * does: http(s):// and ws(s):// are taken, an OpenAI-style base URL ending in /v1 too, and the path
 * becomes /v1/responses. An empty setting means the default `pairline serve` address.
 */
export function sessionUrl(url: string): string {
  const text = url.trim() || DEFAULT_SERVER;
  const m = /^([A-Za-z][A-Za-z0-9+.-]*):\/\/([^/?#]*)([^?#]*)/.exec(text);
  const scheme = m ? ({ http: "ws", https: "wss", ws: "ws", wss: "wss" } as Record<string, string>)[m[1].toLowerCase()] : undefined;
  if (!m || !scheme || !m[2]) {
    throw new Error(`pairline.server takes http://HOST:PORT or ws://HOST:PORT, got ${JSON.stringify(url)}`);
  }
  let path = m[3].replace(/\/+$/, "");
  if (!path.endsWith("/v1/responses")) path = (path.endsWith("/v1") ? path.slice(0, -3) : path) + "/v1/responses";
  return `${scheme}://${m[2]}${path}`;
}
