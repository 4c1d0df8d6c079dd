//! The chat-node connection limit derived from the container's memory limit.
//!
//! chat-node on its own allows `RLIMIT_NOFILE − reserve` connections. File descriptors are
//! rarely what runs out first in a pod: memory is, and an OOM kill drops every connection of the
//! node at once. So when `spec.node.maxConnections` is unset and the container has a memory
//! limit, the operator passes
//!
//! ```text
//! CHAT_MAX_CONNECTIONS = max(MIN_CONNECTIONS, (memory limit − BASE_MEMORY) / MEMORY_PER_CONNECTION)
//! ```
//!
//! and chat-node still caps it by its file-descriptor limit at runtime. Without a memory limit
//! nothing is passed and chat-node's own fd-based limit applies. docs/api.md says the same.

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// Memory kept for the process itself (runtime, Redis client, history buffers, metrics).
pub const BASE_MEMORY_BYTES: i64 = 64 * 1024 * 1024;
/// Budget per connection: socket buffers, the WebSocket codec's buffers, the session task and
/// a share of its send queue. Deliberately generous, so a full node is refused (HTTP 503,
/// readiness off) rather than OOM-killed.
pub const MEMORY_PER_CONNECTION_BYTES: i64 = 32 * 1024;
/// Floor for tiny memory limits, so a node always accepts some connections.
pub const MIN_CONNECTIONS: i64 = 64;

/// The connection limit for a container with these resources, or `None` when it has no memory limit.
pub fn max_connections_from_resources(resources: Option<&ResourceRequirements>) -> Option<i64> {
    let limit = resources?.limits.as_ref()?.get("memory")?;
    let bytes = quantity_to_bytes(limit)?;
    Some(((bytes - BASE_MEMORY_BYTES) / MEMORY_PER_CONNECTION_BYTES).max(MIN_CONNECTIONS))
}

/// Parses a Kubernetes quantity (`512Mi`, `1G`, `1.5Gi`, `2e9`, `1000`) into whole bytes.
/// Returns `None` for anything the API server would not have accepted for memory.
pub fn quantity_to_bytes(quantity: &Quantity) -> Option<i64> {
    let text = quantity.0.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let multiplier: f64 = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exponent if exponent.starts_with(['e', 'E']) => 10f64.powi(exponent[1..].parse().ok()?),
        _ => return None,
    };
    let bytes = (number * multiplier).ceil();
    (bytes.is_finite() && bytes >= 0.0 && bytes < i64::MAX as f64).then_some(bytes as i64)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn with_memory_limit(limit: &str) -> ResourceRequirements {
        ResourceRequirements {
            limits: Some(BTreeMap::from([("memory".into(), Quantity(limit.into()))])),
            ..ResourceRequirements::default()
        }
    }

    #[test]
    fn parses_binary_decimal_and_exponent_quantities() {
        let q = |s: &str| quantity_to_bytes(&Quantity(s.into()));
        assert_eq!(q("512Mi"), Some(512 * 1024 * 1024));
        assert_eq!(q("1G"), Some(1_000_000_000));
        assert_eq!(q("1.5Gi"), Some(1_610_612_736));
        assert_eq!(q("2e3"), Some(2000));
        assert_eq!(q("1000"), Some(1000));
        assert_eq!(q("12x"), None);
        assert_eq!(q(""), None);
    }

    #[test]
    fn derives_limit_from_memory() {
        // (512 Mi − 64 Mi) / 32 Ki = 14336
        assert_eq!(
            max_connections_from_resources(Some(&with_memory_limit("512Mi"))),
            Some(14_336)
        );
        // 2 Gi → (2048 − 64) Mi / 32 Ki = 63488
        assert_eq!(
            max_connections_from_resources(Some(&with_memory_limit("2Gi"))),
            Some(63_488)
        );
    }

    #[test]
    fn tiny_limits_get_the_floor_and_no_limit_gets_none() {
        assert_eq!(
            max_connections_from_resources(Some(&with_memory_limit("32Mi"))),
            Some(MIN_CONNECTIONS)
        );
        assert_eq!(max_connections_from_resources(None), None);
        assert_eq!(
            max_connections_from_resources(Some(&ResourceRequirements::default())),
            None
        );
    }
}
