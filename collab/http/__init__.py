"""Plain HTTP on the WebSocket port: request heads, the router, the JSON API, the web page's files."""
