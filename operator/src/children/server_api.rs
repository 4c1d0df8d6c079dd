//! The chat-node server API (`docs/server-api.md`): its key in the Secret `<name>-api-key`
//! (generated once, never changed by the operator, so running backends keep working; a user may
//! rotate it by writing a new key into the Secret: chat-nodes re-read the mounted file), the key
//! file mounted into every chat-node, and the ClusterIP Service `<name>-api` on port 9092 for
//! backends inside the cluster. Neither the Ingress nor the HTTPRoute ever routes that Service.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    KeyToPath, Secret, SecretVolumeSource, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use rand::distr::{Alphanumeric, SampleString};

use super::{API_PORT, COMPONENT_SERVER, child_meta, names, node_selector};
use crate::api::ChatCluster;
use crate::labels;

/// Key of the API key in the Secret `<name>-api-key`.
pub const API_KEY_KEY: &str = "api-key";
/// Where the API key Secret is mounted in chat-node containers.
pub const API_KEY_MOUNT_PATH: &str = "/etc/chat-node/api";
/// Name of the API key volume.
pub const API_KEY_VOLUME: &str = "api-key";
/// Length of a generated key (alphanumeric: ~238 bits).
pub const KEY_LENGTH: usize = 40;
/// The name of the API port on the container and the Service.
pub const PORT_NAME: &str = "api";

/// A new random key. Called only when the Secret does not exist yet.
pub fn generate_key() -> String {
    Alphanumeric.sample_string(&mut rand::rng(), KEY_LENGTH)
}

/// The Secret `<name>-api-key` (key `api-key`), created once by the reconciler.
pub fn build_secret(cluster: &ChatCluster, key: &str) -> Secret {
    Secret {
        metadata: child_meta(
            cluster,
            names::api_key_secret(&cluster.name_any()),
            labels::APP_CHAT_NODE,
            COMPONENT_SERVER,
        ),
        type_: Some("Opaque".into()),
        string_data: Some(BTreeMap::from([(API_KEY_KEY.to_string(), key.to_string())])),
        ..Secret::default()
    }
}

/// The ClusterIP Service `<name>-api`, port 9092 named `api`, for backends in the cluster.
pub fn build_service(cluster: &ChatCluster) -> Service {
    Service {
        metadata: child_meta(
            cluster,
            names::api_service(&cluster.name_any()),
            labels::APP_CHAT_NODE,
            PORT_NAME,
        ),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(node_selector(cluster)),
            ports: Some(vec![ServicePort {
                name: Some(PORT_NAME.into()),
                port: API_PORT,
                target_port: Some(IntOrString::String(PORT_NAME.into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// The path of the key file in chat-node containers (`CHAT_API_KEY_FILE`).
pub fn key_file() -> String {
    format!("{API_KEY_MOUNT_PATH}/{API_KEY_KEY}")
}

/// The key Secret as a read-only volume of chat-node pods. The whole Secret is mounted (no
/// `subPath`), so the kubelet updates the file when the Secret changes.
pub fn volume(cluster: &ChatCluster) -> (Volume, VolumeMount) {
    let volume = Volume {
        name: API_KEY_VOLUME.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(names::api_key_secret(&cluster.name_any())),
            items: Some(vec![KeyToPath {
                key: API_KEY_KEY.into(),
                path: API_KEY_KEY.into(),
                mode: None,
            }]),
            default_mode: Some(0o440),
            optional: Some(false),
        }),
        ..Volume::default()
    };
    let mount = VolumeMount {
        name: API_KEY_VOLUME.into(),
        mount_path: API_KEY_MOUNT_PATH.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    };
    (volume, mount)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::children::fixtures::cluster;

    #[test]
    fn keys_are_long_random_and_alphanumeric() {
        let (a, b) = (generate_key(), generate_key());
        assert_eq!(a.len(), KEY_LENGTH);
        assert_ne!(a, b);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
    }

    #[test]
    fn secret_holds_the_key_and_is_owned_by_the_cluster() {
        let s = build_secret(&cluster("demo"), "k");
        assert_eq!(s.metadata.name.as_deref(), Some("demo-api-key"));
        assert_eq!(s.string_data.unwrap()[API_KEY_KEY], "k");
        assert_eq!(s.metadata.owner_references.unwrap().len(), 1);
    }

    #[test]
    fn service_is_cluster_ip_on_9092() {
        let s = build_service(&cluster("demo"));
        assert_eq!(s.metadata.name.as_deref(), Some("demo-api"));
        let spec = s.spec.unwrap();
        assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
        assert_eq!(spec.selector.unwrap()[labels::NAME], "chat-node");
        let p = &spec.ports.unwrap()[0];
        assert_eq!((p.name.as_deref(), p.port), (Some("api"), 9092));
        assert_eq!(p.target_port, Some(IntOrString::String("api".into())));
    }

    #[test]
    fn the_volume_mounts_the_key_file_read_only() {
        let (v, m) = volume(&cluster("demo"));
        let secret = v.secret.unwrap();
        assert_eq!(secret.secret_name.as_deref(), Some("demo-api-key"));
        assert_eq!(m.read_only, Some(true));
        assert!(
            m.sub_path.is_none(),
            "a subPath mount would never see a rotated key"
        );
        assert_eq!(key_file(), "/etc/chat-node/api/api-key");
    }
}
