"""The web app: `pairline app [DIR]` (docs/app.md). The page is static files (static/); this
package is what serves it, confines it to the workspace and runs its turns over the session
protocol."""
