//! Test fixtures: ChatClusters as they come back from the API server.

use std::collections::BTreeMap;

use kube::api::ObjectMeta;

use crate::api::{ChatCluster, ChatClusterSpec};

/// A ChatCluster `name` in namespace `chat`, with a uid and a label of its own (which children
/// must not copy), and an empty spec.
pub fn cluster(name: &str) -> ChatCluster {
    let mut cluster = ChatCluster::new(name, ChatClusterSpec::default());
    cluster.metadata = ObjectMeta {
        name: Some(name.into()),
        namespace: Some("chat".into()),
        uid: Some("0000-uid".into()),
        generation: Some(1),
        labels: Some(BTreeMap::from([("team".into(), "chat".into())])),
        ..ObjectMeta::default()
    };
    cluster
}
