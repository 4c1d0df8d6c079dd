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

    /// Image of a managed Redis whose ChatCluster sets no `spec.redis.image` (`repo:tag` or
    /// `repo@sha256:…`, e.g. a mirror's); `spec.redis.version` replaces its tag. Always allowed.
    #[arg(
        long,
        env = "CHAT_OPERATOR_DEFAULT_REDIS_IMAGE",
        default_value_t = crate::api::default_redis_image(),
        value_parser = clap::builder::NonEmptyStringValueParser::new()
    )]
    pub default_redis_image: String,

    /// Image of a managed OpenTelemetry Collector whose ChatCluster sets no
    /// `spec.observability.collector.image` (`repo:tag` or `repo@sha256:…`). Always allowed.
    #[arg(
        long,
        env = "CHAT_OPERATOR_DEFAULT_COLLECTOR_IMAGE",
        default_value = crate::api::observability::DEFAULT_COLLECTOR_IMAGE,
        value_parser = clap::builder::NonEmptyStringValueParser::new()
    )]
    pub default_collector_image: String,

    /// Size of the volume each managed Redis pod gets when its ChatCluster sets neither
    /// `spec.redis.storage` nor `spec.redis.ephemeral`, e.g. `1Gi`; `none`: an emptyDir. The
    /// volume is on `--default-redis-storage-class`, else on the cluster's default
    /// StorageClass; without one, Redis gets an emptyDir and a Warning Event.
    #[arg(
        long,
        env = "CHAT_OPERATOR_DEFAULT_REDIS_STORAGE_SIZE",
        default_value = crate::reconcile::redis_storage::DEFAULT_SIZE,
        value_parser = parse_storage_size
    )]
    pub default_redis_storage_size: StorageSize,

    /// StorageClass of those default Redis volumes. Default: the cluster's default StorageClass
    /// (looked up when a Redis is created; needs `list` on StorageClasses).
    #[arg(
        long,
        env = "CHAT_OPERATOR_DEFAULT_REDIS_STORAGE_CLASS",
        value_parser = parse_dns_subdomain
    )]
    pub default_redis_storage_class: Option<String>,

    /// Secrets (comma-separated names, looked up in each ChatCluster's namespace) every pod the
    /// operator runs pulls its image with: chat-node, managed Redis, managed Collector. A
    /// ChatCluster's `spec.imagePullSecrets` are added. Default: none.
    #[arg(long, env = "CHAT_OPERATOR_IMAGE_PULL_SECRETS", default_value = "", value_parser = parse_secret_names)]
    pub image_pull_secrets: SecretNames,

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

    /// Labels on every ServiceMonitor, PrometheusRule and AlertmanagerConfig the operator
    /// creates, comma-separated `key=value` pairs, merged under each ChatCluster's own labels of
    /// those sections. kube-prometheus-stack selects only objects labelled with its release:
    /// e.g. `release=kube-prometheus-stack`. Default: none (the `MonitoringReady` condition warns).
    #[arg(long, env = "CHAT_OPERATOR_MONITORING_LABELS", default_value = "", value_parser = parse_labels)]
    pub monitoring_labels: std::collections::BTreeMap<String, String>,

    /// Base URL of the runbooks every alert links to (`<url>/<Alert>.md`), unless a ChatCluster
    /// sets `spec.observability.prometheusRule.runbookBaseUrl`. Default: this project's
    /// docs/runbooks on its repository (point it at your own copy or wiki to add local steps).
    #[arg(
        long,
        env = "CHAT_OPERATOR_RUNBOOK_BASE_URL",
        default_value_t = crate::children::observability::rules::default_runbook_base_url(),
        value_parser = parse_base_url
    )]
    pub runbook_base_url: String,

    /// Log format; the filter is RUST_LOG (default `info`).
    #[arg(
        long,
        env = "CHAT_OPERATOR_LOG_FORMAT",
        value_enum,
        default_value = "json"
    )]
    pub log_format: LogFormat,
}

/// Names of Secrets, parsed from a comma-separated list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SecretNames(pub Vec<String>);

/// Comma-separated Secret names, each a DNS subdomain (checked here so a typo is a start-up
/// error rather than pods that cannot pull).
fn parse_secret_names(list: &str) -> Result<SecretNames, String> {
    let mut names = Vec::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if !is_dns_subdomain(name) {
            return Err(format!(
                "{name:?} is not a Secret name (lowercase letters, digits, '-' and '.')"
            ));
        }
        if !names.iter().any(|n| n == name) {
            names.push(name.to_owned());
        }
    }
    Ok(SecretNames(names))
}

/// A Kubernetes object name of the DNS-subdomain kind (Secrets, StorageClasses).
fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

fn parse_dns_subdomain(name: &str) -> Result<String, String> {
    let name = name.trim();
    if is_dns_subdomain(name) {
        Ok(name.to_owned())
    } else {
        Err(format!(
            "{name:?} is not an object name (lowercase letters, digits, '-' and '.')"
        ))
    }
}

/// The size of a default volume: a quantity, or `none` for no default volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageSize(pub Option<String>);

fn parse_storage_size(size: &str) -> Result<StorageSize, String> {
    let size = size.trim();
    if size == "none" {
        return Ok(StorageSize(None));
    }
    let quantity = k8s_openapi::apimachinery::pkg::api::resource::Quantity(size.to_owned());
    match crate::limits::quantity_to_bytes(&quantity) {
        Some(bytes) if bytes >= 1 << 20 => Ok(StorageSize(Some(size.to_owned()))),
        _ => Err(format!(
            "{size:?} is not a volume size of at least 1Mi (e.g. 1Gi), nor none"
        )),
    }
}

fn parse_patterns(list: &str) -> Result<crate::admission::tenant::Patterns, String> {
    Ok(crate::admission::tenant::Patterns::parse(list))
}

/// `key=value,key=value` with Kubernetes label syntax checked here, so a typo is a start-up
/// error rather than an apply error on every ChatCluster.
fn parse_labels(list: &str) -> Result<std::collections::BTreeMap<String, String>, String> {
    let mut labels = std::collections::BTreeMap::new();
    for pair in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("{pair:?} is not key=value"))?;
        let (key, value) = (key.trim(), value.trim());
        if !crate::labels::is_valid_key(key) {
            return Err(format!(
                "{key:?} is not a label key ([prefix/]name, name at most 63 characters)"
            ));
        }
        if !crate::labels::is_valid_value(value) {
            return Err(format!(
                "{value:?} (label {key}) is not a label value (at most 63 characters of [A-Za-z0-9-_.], alphanumeric at both ends)"
            ));
        }
        labels.insert(key.to_owned(), value.to_owned());
    }
    Ok(labels)
}

/// An `http(s)://` URL without a trailing slash.
fn parse_base_url(url: &str) -> Result<String, String> {
    let url = url.trim().trim_end_matches('/');
    if !(url.starts_with("https://") || url.starts_with("http://")) || url.len() <= "https://".len()
    {
        return Err(format!("{url:?} is not an http(s):// URL"));
    }
    Ok(url.to_owned())
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

    #[test]
    fn monitoring_labels_are_parsed_and_checked_at_start() {
        assert!(run_args(&[]).monitoring_labels.is_empty());
        let args = run_args(&[
            "--monitoring-labels",
            "release=kube-prometheus-stack, example.com/team=chat,empty=",
        ]);
        assert_eq!(
            args.monitoring_labels,
            std::collections::BTreeMap::from([
                ("release".to_owned(), "kube-prometheus-stack".to_owned()),
                ("example.com/team".to_owned(), "chat".to_owned()),
                ("empty".to_owned(), String::new()),
            ])
        );
        for bad in [
            "release",
            "=x",
            "bad key=x",
            "release=has space",
            "release=-dash",
            "a/b/c=x",
        ] {
            let parsed = Cli::try_parse_from(["chat-operator", "run", "--monitoring-labels", bad]);
            assert!(parsed.is_err(), "{bad:?} accepted");
        }
        let long = format!("release={}", "x".repeat(64));
        assert!(
            Cli::try_parse_from(["chat-operator", "run", "--monitoring-labels", &long]).is_err()
        );
    }

    #[test]
    fn operand_defaults_are_the_built_in_images_and_no_pull_secrets() {
        let args = run_args(&[]);
        assert_eq!(args.default_redis_image, "docker.io/library/redis:7.4");
        assert_eq!(
            args.default_collector_image,
            crate::api::observability::DEFAULT_COLLECTOR_IMAGE
        );
        assert!(args.image_pull_secrets.0.is_empty());
        let args = run_args(&[
            "--image-pull-secrets",
            " mirror, team.pull ,mirror,",
            "--default-redis-image",
            "mirror.example/redis@sha256:0123",
        ]);
        assert_eq!(args.image_pull_secrets.0, ["mirror", "team.pull"]);
        assert_eq!(args.default_redis_image, "mirror.example/redis@sha256:0123");
        for bad in ["Mirror", "a_b", "-a", "a..b"] {
            let parsed = Cli::try_parse_from(["chat-operator", "run", "--image-pull-secrets", bad]);
            assert!(parsed.is_err(), "{bad:?} accepted");
        }
        assert_eq!(args.default_redis_storage_size.0.as_deref(), Some("1Gi"));
        assert_eq!(args.default_redis_storage_class, None);
        let args = run_args(&[
            "--default-redis-storage-size",
            "none",
            "--default-redis-storage-class",
            "local-path",
        ]);
        assert_eq!(args.default_redis_storage_size.0, None);
        assert_eq!(
            args.default_redis_storage_class.as_deref(),
            Some("local-path")
        );
        for (flag, bad) in [
            ("--default-redis-storage-size", "lots"),
            ("--default-redis-storage-size", "0"),
            ("--default-redis-storage-size", "512Ki"),
            ("--default-redis-storage-class", "Fast_SSD"),
        ] {
            let parsed = Cli::try_parse_from(["chat-operator", "run", flag, bad]);
            assert!(parsed.is_err(), "{flag} {bad:?} accepted");
        }
        let empty = Cli::try_parse_from(["chat-operator", "run", "--default-redis-image", ""]);
        assert!(empty.is_err(), "an empty default image");
    }

    #[test]
    fn runbook_base_url_defaults_to_the_repository_and_is_checked() {
        assert_eq!(
            run_args(&[]).runbook_base_url,
            crate::children::observability::rules::default_runbook_base_url()
        );
        let args = run_args(&["--runbook-base-url", "https://wiki.example.com/runbooks/"]);
        assert_eq!(args.runbook_base_url, "https://wiki.example.com/runbooks");
        for bad in ["", "wiki.example.com", "ftp://x", "https://"] {
            let parsed = Cli::try_parse_from(["chat-operator", "run", "--runbook-base-url", bad]);
            assert!(parsed.is_err(), "{bad:?} accepted");
        }
    }
}
