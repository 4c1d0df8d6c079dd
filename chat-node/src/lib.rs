//! chat-node: the lean WebSocket server of a ChatCluster. See `docs/chat-node.md`.
