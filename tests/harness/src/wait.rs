//! Polling for a condition, with a deadline and a message that says what was awaited.

use std::time::{Duration, Instant};

use crate::kubectl::KubectlError;

/// Polls `check` every 200 ms until it returns `Some`, or fails after `timeout`.
pub fn wait_for<T>(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Option<T>,
) -> Result<T, KubectlError> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            return Err(KubectlError::Timeout(timeout, what.to_string()));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
