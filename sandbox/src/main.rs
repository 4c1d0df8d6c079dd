//! chat-sandbox: see `docs/sandbox.md`.
fn main() {}
