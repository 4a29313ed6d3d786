"""Editor integration: `pairline lsp`, a language server on stdio (inline completions, edits,
explanations) for VS Code, Neovim, Helix and any other LSP client. See docs/editor.md."""
