"""The web console (`tidings console`, and `/console/` under `tidings dev`).

Server-rendered pages over the same data the planes use: the Kubernetes API
for EventSources and Triggers (their spec and status), Redis for delivery
state, attempt logs, dead letters and events. Every read and every action is
checked with the viewer's own Kubernetes identity (tidings.console.auth).

- `auth.py`: who the viewer is (TokenReview, a trusted proxy, or open on
  loopback in dev), what they may do (SubjectAccessReview), CSRF tokens.
- `objects.py`: where EventSources and Triggers come from (the API, or the
  manifests `tidings dev` loaded) and how pause/resume and replay are done.
- `data.py`: the Redis reads behind the pages.
- `app.py`: the aiohttp routes, security headers and the pages.
"""
