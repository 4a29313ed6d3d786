// The language server's workspace/executeCommand names and answers (pairline/editor/actions.py),
// kept apart from extension.ts so they are tested without VS Code.

/** [uri, range, instruction]: the server edits the range and applies it with workspace/applyEdit. */
export const SERVER_EDIT = "pairline.editSelection";
/** [uri, range, {show}]: answers {"explanation": text}; show: false leaves out its window/showMessage. */
export const SERVER_EXPLAIN = "pairline.explain";

/** The explanation's text, whichever shape the server answers with ({"explanation": text} today). */
export function explanationText(result: unknown): string {
  if (typeof result === "string") return result;
  if (result && typeof result === "object") {
    for (const key of ["explanation", "markdown", "text", "value"]) {
      const v = (result as Record<string, unknown>)[key];
      if (typeof v === "string") return v;
    }
  }
  return "";
}
