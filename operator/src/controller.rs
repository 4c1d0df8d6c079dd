//! The kube-runtime Controller: watches ChatClusters and (through `.owns()`) their children.

use std::future::Future;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::runtime::controller::Error as ControllerError;
use kube::runtime::{Controller, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tracing::{debug, warn};

use crate::api::ChatCluster;
use crate::labels;
use crate::reconcile::{self, Context};

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Runs the controller until `stop` resolves (then lets running reconciles finish).
pub async fn run(
    client: Client,
    namespace: Option<String>,
    ctx: Arc<Context>,
    stop: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let ns = namespace.as_deref();
    // Only children the operator labelled are watched: less memory, fewer wakeups.
    let children =
        watcher::Config::default().labels(&format!("{}={}", labels::MANAGED_BY, labels::MANAGER));
    Controller::new(
        api::<ChatCluster>(&client, ns),
        watcher::Config::default().any_semantic(),
    )
    .owns(api::<Deployment>(&client, ns), children.clone())
    .owns(api::<StatefulSet>(&client, ns), children.clone())
    .owns(api::<Service>(&client, ns), children.clone())
    .owns(api::<Ingress>(&client, ns), children.clone())
    .owns(api::<NetworkPolicy>(&client, ns), children.clone())
    .owns(api::<PodDisruptionBudget>(&client, ns), children.clone())
    .owns(api::<ConfigMap>(&client, ns), children)
    .graceful_shutdown_on(stop)
    .run(reconcile::reconcile, reconcile::error_policy, ctx)
    .for_each(|result| async move {
        match result {
            Ok((object, _)) => debug!(%object, "reconciled"),
            // A child changed after its ChatCluster was deleted (each deletion does this): the
            // normal course of garbage collection, nothing to reconcile.
            Err(ControllerError::ObjectNotFound(object)) => {
                debug!(%object, "skipped: the ChatCluster is gone")
            }
            // Already logged inside the reconcile's span (with the cluster), counted and
            // turned into a Warning Event there.
            Err(ControllerError::ReconcilerFailed(error, object)) => {
                debug!(%object, %error, "reconcile failed")
            }
            Err(error) => warn!(%error, "controller"),
        }
    })
    .await;
}
