//! Command-line flags (each with an environment fallback), parsed once in `main`.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// The chat-operator command line.
#[derive(Parser, Debug)]
#[command(
    name = "chat-operator",
    version,
    about = "Kubernetes operator for ChatCluster realtime chat clusters"
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
#[allow(clippy::large_enum_variant)] // parsed once at start; boxing buys nothing
pub enum Command {
    /// Run the controller (uses KUBECONFIG, else the in-cluster config).
    Run(RunArgs),
    /// Print the ChatCluster CustomResourceDefinition as YAML.
    Crd,
    /// Print the operator's least-privilege ClusterRole as YAML.
    Rbac,
    /// Print the ValidatingAdmissionPolicy that guards ChatClusters' Secret references and
    /// images (docs/security.md) as YAML.
    AdmissionPolicy,
}

/// on / off.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Switch {
    /// Enabled.
    On,
    /// Disabled.
    Off,
}

/// Log output format.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable lines.
    Text,
}

/// Flags of `chat-operator run`.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Address of the admin server (/metrics, /healthz, /readyz); port 0 picks a free port.
    #[arg(
        long,
        env = "CHAT_OPERATOR_ADMIN_LISTEN",
        default_value = "0.0.0.0:9090"
    )]
    pub admin_listen: SocketAddr,

    /// Leader election through a coordination.k8s.io Lease, so several replicas can run.
    #[arg(
        long,
        env = "CHAT_OPERATOR_LEADER_ELECTION",
        value_enum,
        default_value = "on"
    )]
    pub leader_election: Switch,

    /// Namespace of the leader-election Lease.
    #[arg(long, env = "CHAT_OPERATOR_LEASE_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,

    /// Name of the leader-election Lease.
    #[arg(
        long,
        env = "CHAT_OPERATOR_LEASE_NAME",
        default_value = "chat-operator"
    )]
    pub lease_name: String,

    /// How long a Lease holds without renewal (whole seconds).
    #[arg(long, env = "CHAT_OPERATOR_LEASE_DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
    pub lease_duration: Duration,

    /// How long before expiry the holder renews (whole seconds, less than the duration).
    #[arg(long, env = "CHAT_OPERATOR_LEASE_RENEW_BEFORE", default_value = "5s", value_parser = humantime::parse_duration)]
    pub lease_renew_before: Duration,

    /// This replica's identity in the Lease (default: POD_NAME or the host name, plus a random suffix).
    #[arg(long, env = "CHAT_OPERATOR_IDENTITY")]
    pub identity: Option<String>,

    /// Watch only these namespaces, comma-separated (default: all namespaces).
    #[arg(long, env = "CHAT_OPERATOR_NAMESPACE", value_delimiter = ',')]
    pub namespace: Vec<String>,

    /// Reconcile every ChatCluster at least this often, to repair drift no watch reports.
    #[arg(long, env = "CHAT_OPERATOR_RESYNC_INTERVAL", default_value = "5m", value_parser = humantime::parse_duration)]
    pub resync_interval: Duration,

    /// Deadline of each Kubernetes API call.
    #[arg(long, env = "CHAT_OPERATOR_API_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub api_timeout: Duration,

    /// First retry delay after a failed reconcile; doubles per consecutive failure of one object.
    #[arg(long, env = "CHAT_OPERATOR_BACKOFF_BASE", default_value = "1s", value_parser = humantime::parse_duration)]
    pub backoff_base: Duration,

    /// Longest retry delay after failed reconciles.
    #[arg(long, env = "CHAT_OPERATOR_BACKOFF_MAX", default_value = "5m", value_parser = humantime::parse_duration)]
    pub backoff_max: Duration,

    /// The chat-node image of new ChatClusters without `spec.image` (default: the chat-node
    /// image of this operator's version). Existing clusters keep the image they run
    /// (`status.nodeImage`) unless they set `spec.imagePolicy: followOperator`.
    #[arg(
        long,
        env = "CHAT_OPERATOR_DEFAULT_NODE_IMAGE",
        default_value_t = crate::api::default_node_image(),
        value_parser = clap::builder::NonEmptyStringValueParser::new()
    )]
    pub default_node_image: String,

    /// Images a ChatCluster may name in `spec.image`, `spec.redis.image` and
    /// `spec.observability.collector.image`: comma-separated registries or prefixes (an entry
    /// matches at a `/`, `:` or `@` boundary), `*` for any. Others are refused (condition
    /// `Degraded`, reason `ImageNotAllowed`). The operator's own defaults are always allowed.
    #[arg(
        long,
        env = "CHAT_OPERATOR_ALLOWED_IMAGE_PREFIXES",
        default_value = crate::admission::DEFAULT_ALLOWED_IMAGE_PREFIXES,
        value_parser = parse_allow_list
    )]
    pub allowed_image_prefixes: crate::admission::ImageAllowList,

    /// Ingress annotation keys a ChatCluster may not set (comma-separated, `*` matches any
    /// run of characters). Default: every ingress-nginx snippet.
    #[arg(long, env = "CHAT_OPERATOR_DENIED_INGRESS_ANNOTATIONS", default_value = crate::admission::tenant::DEFAULT_DENIED_INGRESS_ANNOTATIONS, value_parser = parse_patterns)]
    pub denied_ingress_annotations: crate::admission::tenant::Patterns,

    /// Host names `spec.ingress.host` may name (comma-separated, `*` patterns). Default: any.
    #[arg(long, env = "CHAT_OPERATOR_ALLOWED_INGRESS_HOSTS", default_value = crate::admission::tenant::DEFAULT_ALLOWED_INGRESS_HOSTS, value_parser = parse_patterns)]
    pub allowed_ingress_hosts: crate::admission::tenant::Patterns,

    /// Priority classes a ChatCluster may not name (comma-separated, `*` patterns). Default:
    /// Kubernetes' own `system-*`.
    #[arg(long, env = "CHAT_OPERATOR_DENIED_PRIORITY_CLASSES", default_value = crate::admission::tenant::DEFAULT_DENIED_PRIORITY_CLASSES, value_parser = parse_patterns)]
    pub denied_priority_classes: crate::admission::tenant::Patterns,

    /// Taint keys a ChatCluster's tolerations may not tolerate (comma-separated, `*`
    /// patterns); while not empty, a toleration without a key is refused too. Default: the
    /// control plane's `node-role.kubernetes.io/*`.
    #[arg(long, env = "CHAT_OPERATOR_DENIED_TOLERATION_KEYS", default_value = crate::admission::tenant::DEFAULT_DENIED_TOLERATION_KEYS, value_parser = parse_patterns)]
    pub denied_toleration_keys: crate::admission::tenant::Patterns,

    /// Log format; the filter is RUST_LOG (default `info`).
    #[arg(
        long,
        env = "CHAT_OPERATOR_LOG_FORMAT",
        value_enum,
        default_value = "json"
    )]
    pub log_format: LogFormat,
}

fn parse_patterns(list: &str) -> Result<crate::admission::tenant::Patterns, String> {
    Ok(crate::admission::tenant::Patterns::parse(list))
}

fn parse_allow_list(list: &str) -> Result<crate::admission::ImageAllowList, String> {
    Ok(crate::admission::ImageAllowList::parse(list))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn run_args(args: &[&str]) -> RunArgs {
        let cli = Cli::try_parse_from([&["chat-operator", "run"], args].concat()).unwrap();
        match cli.command {
            Command::Run(args) => args,
            _ => unreachable!(),
        }
    }

    /// An empty list is a choice (the chart renders `[]` as an empty value): nothing refused,
    /// not the default.
    #[test]
    fn an_empty_pattern_list_is_empty_not_the_default() {
        let args = run_args(&["--denied-toleration-keys", ""]);
        assert!(args.denied_toleration_keys.is_empty());
        let args = run_args(&[]);
        assert_eq!(
            args.denied_toleration_keys.joined(),
            "node-role.kubernetes.io/*"
        );
    }
}
