// The one bundled part of pairline's web app: CodeMirror 6, built into
// pairline/app/static/vendor/codemirror.js by `npm run build` (see package.json).
// The page (pairline/app/static/app.js) imports only what is exported here.
import { EditorView, lineNumbers, highlightActiveLine, highlightActiveLineGutter,
  highlightSpecialChars, drawSelection, keymap } from "@codemirror/view";
import { EditorState, Compartment } from "@codemirror/state";
import { syntaxHighlighting, defaultHighlightStyle, foldGutter, foldKeymap,
  bracketMatching } from "@codemirror/language";
import { defaultKeymap } from "@codemirror/commands";
import { searchKeymap, highlightSelectionMatches } from "@codemirror/search";
import { python } from "@codemirror/lang-python";
import { javascript } from "@codemirror/lang-javascript";
import { json } from "@codemirror/lang-json";
import { markdown } from "@codemirror/lang-markdown";
import { html } from "@codemirror/lang-html";
import { css } from "@codemirror/lang-css";
import { oneDark } from "@codemirror/theme-one-dark";

// A lean setup for a read-only viewer: no autocompletion, no linting, no history.
export const viewerSetup = [
  lineNumbers(),
  highlightActiveLineGutter(),
  highlightSpecialChars(),
  foldGutter(),
  drawSelection(),
  syntaxHighlighting(defaultHighlightStyle, { fallback: true }),
  bracketMatching(),
  highlightActiveLine(),
  highlightSelectionMatches(),
  keymap.of([...defaultKeymap, ...searchKeymap, ...foldKeymap]),
];

export { EditorView, EditorState, Compartment, oneDark,
  python, javascript, json, markdown, html, css };
