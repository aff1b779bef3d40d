"""The review page: one HTML document, its script and style, and a vendored Mermaid, all served
by the app from the package (no CDN, no build step), behind a strict Content-Security-Policy."""
