"""The `tidings` command and the tools around the planes: `tidings dev`, `send`,
`replay`, `crds`. Imports the planes; nothing imports it."""
