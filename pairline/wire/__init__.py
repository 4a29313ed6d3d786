"""What the server (pairline.server) and the router (pairline.router) both speak, so that a client
cannot tell them apart and neither imports the other:

- protocol.py: the WebSocket session protocol: ids, errors, API keys, JSON limits, client events,
  the Responses-API objects and events (docs/protocol.md);
- session_socket.py: a session's socket (events numbered in wire order, idle timeout, close codes)
  and the turn that response.cancel and response.steer act on;
- openai.py: OpenAI-compatible HTTP: request bodies, `messages` and `prompt`, error bodies, SSE;
- guard.py: the web guard (Origin, Host, body type) against hostile pages (docs/server.md);
- listen.py: the listening socket, the --allow-host/--allow-origin options, the exposed-bind warning;
- asgi.py: uvicorn settings, and a uvicorn server on a loopback port in a thread;
- metrics.py: Prometheus text format: histograms and metric families."""
