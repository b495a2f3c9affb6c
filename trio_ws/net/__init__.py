"""The port: the HTTP front door, our websocket connection and its frames, the
server's routes, the subscribe and publish endpoints, control, metrics, the
dashboard and its static files."""
