//! The kube-runtime Controller: watches ChatClusters and (through `owns_with`) their children of
//! every kind in `children::kinds`, the table the orphan sweep and the API checks read too.
//!
//! Children of an optional API (prometheus-operator's, the Gateway API's HTTPRoutes: their
//! acceptance is in the ChatCluster's status) are watched when the API is installed (checked
//! when the controller starts). With the Gateway API it also watches the Gateways, which wake
//! the ChatClusters attached to them (a Gateway publishing its address changes their endpoint).
//! Without an API nothing of it is watched: a watch of a missing API would only fail over and
//! over.

use std::future::Future;
use std::sync::Arc;

use futures::{FutureExt, StreamExt};
use k8s_openapi::NamespaceResourceScope;
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::controller::Error as ControllerError;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tracing::{debug, info, warn};

use crate::api::ChatCluster;
use crate::children::gateway_api::Gateway;
use crate::children::{self, http_route};
use crate::labels;
use crate::reconcile::{self, Context};

/// True when the API of `K` is served (a failed discovery counts as not installed: the resync
/// still reconciles, only without that watch).
async fn installed<K: Resource<DynamicType = ()>>(ctx: &Context) -> bool {
    installed_resource(ctx, &ApiResource::erase::<K>(&())).await
}

/// [`installed`] for a resource known at run time.
async fn installed_resource(ctx: &Context, resource: &ApiResource) -> bool {
    match ctx.api_installed(resource).await {
        Ok(present) => present,
        Err(error) => {
            warn!(%error, api = %resource.api_version, kind = %resource.kind, "cannot tell whether the API is installed: not watching it");
            false
        }
    }
}

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

/// Runs the controllers until `stop` resolves (then lets running reconciles finish): one for
/// every namespace of `namespaces`, or one for all namespaces when it is empty. One controller
/// per namespace keeps every watch namespaced, so the operator needs its rights in those
/// namespaces only (a Role in each).
pub async fn run(
    client: Client,
    namespaces: Vec<String>,
    ctx: Arc<Context>,
    stop: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let stop = stop.shared();
    if namespaces.is_empty() {
        return run_one(client, None, ctx, stop).await;
    }
    futures::future::join_all(
        namespaces
            .into_iter()
            .map(|ns| run_one(client.clone(), Some(ns), ctx.clone(), stop.clone())),
    )
    .await;
}

/// One controller, for `namespace` or (`None`) all namespaces.
async fn run_one(
    client: Client,
    namespace: Option<String>,
    ctx: Arc<Context>,
    stop: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let ns = namespace.as_deref();
    // Only children the operator labelled are watched: less memory, fewer wakeups.
    let children =
        watcher::Config::default().labels(&format!("{}={}", labels::MANAGED_BY, labels::MANAGER));
    let mut controller = Controller::new(
        api::<ChatCluster>(&client, ns),
        watcher::Config::default().any_semantic(),
    );
    // Every kind of child, from the one table the sweep and the API checks read too. Only the
    // children's metadata is watched (`owns_with` keeps no cache of them).
    for kind in children::kinds::child_kinds() {
        let resource = kind.resource;
        if kind.optional && !installed_resource(&ctx, &resource).await {
            info!(
                api = %resource.api_version, kind = %resource.kind,
                "not installed: not watched (restart the operator after installing it to watch it; the resync applies these children anyway)"
            );
            continue;
        }
        let children_api: Api<DynamicObject> = match ns {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
            None => Api::all_with(client.clone(), &resource),
        };
        controller = controller.owns_with(children_api, resource, children.clone());
    }
    if installed::<Gateway>(&ctx).await {
        let clusters = controller.store();
        controller = controller.watches(
            api::<Gateway>(&client, ns),
            watcher::Config::default(),
            move |gateway| {
                clusters
                    .state()
                    .into_iter()
                    .filter(|cluster| http_route::attaches_to(cluster, &gateway))
                    .map(|cluster| ObjectRef::from_obj(&*cluster))
                    .collect::<Vec<_>>()
            },
        );
    }
    controller
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
