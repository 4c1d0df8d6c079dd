//! The reconciler: gather state, call the builders, apply, sweep, write status.
//!
//! One pass over a ChatCluster:
//! 1. paused? write only the `Paused` condition and stop;
//! 2. managed Redis: create its password Secret if missing (never update it);
//! 3. [`plan`] the children (every builder set) and server-side apply them in order, skipping
//!    (and reporting) children of optional APIs that are not installed;
//! 4. delete labelled children the spec no longer asks for;
//! 5. read the Deployment/StatefulSet back, compute the status, write it only if it changed,
//!    and publish an Event for every condition that flipped.
//!
//! Errors end the pass, count in the failures metric under the failing step, become a Warning
//! Event and the `Degraded` condition, and retry with per-object exponential backoff.

pub mod apply;
pub mod context;
pub mod endpoint;
pub mod observability;
pub mod redis_storage;
pub mod status;

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ApiResource, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::{Instrument, info_span, warn};

pub use context::{Context, Settings};
pub use status::{GatewayObserved, Observed};

use crate::api::{
    ChatCluster, ChatClusterStatus, ResolvedImage, needs_running_image, resolve_node_image,
};
use crate::children::gateway_api::{Gateway, HTTPRoute};
use crate::children::kinds::ChildKind;
use crate::children::observability::MonitoringDefaults;
use crate::children::operands::OperandDefaults;
use crate::children::{self, Child, http_route, names};
use crate::error::Error;
use crate::labels;

/// Reason of the Warning Event published when a new managed Redis gets an emptyDir because no
/// default volume could be given (see [`redis_storage`]).
pub const REDIS_DATA_EPHEMERAL: &str = "RedisDataEphemeral";

/// Every child a ChatCluster asks for, from every builder set, plus the kinds to sweep.
pub struct Plan {
    /// Children in apply order.
    pub children: Vec<Child>,
    /// Kinds the orphan sweep looks at (each marked optional when its API may be missing).
    pub kinds: Vec<ChildKind>,
}

/// The plan for `cluster` with its chat nodes on `node_image` (see [`resolve_image`]), the
/// operator-wide `monitoring` settings and `operands` defaults (images, pull secrets): the observability stack's children (collector first, so
/// chat-nodes find it), then the chat cluster's own, which get the stack's `OTEL_*` env.
/// Another set of children joins here the same way: push its `Child`ren, and add their kinds
/// to the one table, `children::kinds`.
pub fn plan(
    cluster: &ChatCluster,
    node_image: &str,
    monitoring: &MonitoringDefaults,
    operands: &OperandDefaults,
) -> Result<Plan, Error> {
    let observability = observability::plan(cluster, monitoring, operands)
        .map_err(|source| Error::InvalidSpec { source })?;
    let mut children = observability.children;
    children.extend(children::desired(
        cluster,
        node_image,
        &observability.node_env,
        operands,
    ));
    children::operands::add_pull_secrets(&mut children, &operands.pull_secrets(cluster));
    Ok(Plan {
        children,
        kinds: children::kinds::child_kinds(),
    })
}

/// True when a child belongs to prometheus-operator's API (for the MonitoringReady condition).
fn is_monitoring_child(child: &Child) -> bool {
    observability::is_monitoring_api(&format!(
        "{} {}",
        child.resource.api_version, child.resource.kind
    ))
}

fn now() -> Time {
    Time(Timestamp::now())
}

/// Reconciles one ChatCluster (the `kube::runtime::Controller` calls this).
pub async fn reconcile(cluster: Arc<ChatCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let span = info_span!(
        "reconcile",
        cluster = %cluster.name_any(),
        namespace = %cluster.namespace().unwrap_or_default(),
        generation = cluster.metadata.generation.unwrap_or_default()
    );
    async move {
        ctx.metrics.reconcile_runs.inc();
        let started = Instant::now();
        let object = ObjectRef::from_obj(&*cluster);
        let result = reconcile_cluster(&cluster, &ctx).await;
        ctx.metrics
            .reconcile_duration
            .observe(started.elapsed().as_secs_f64());
        match &result {
            Ok(_) => ctx.reset_backoff(&object),
            Err(error) => {
                ctx.metrics.record_failure(error);
                warn!(%error, "reconcile failed");
                publish(
                    &ctx,
                    &cluster,
                    EventType::Warning,
                    error.reason(),
                    error.to_string(),
                )
                .await;
                if !matches!(error, Error::PatchStatus { .. } | Error::MissingNamespace) {
                    record_error_in_status(&cluster, &ctx, error).await;
                }
            }
        }
        result
    }
    .instrument(span)
    .await
}

/// Retry delay after a failed reconcile: exponential per object.
pub fn error_policy(cluster: Arc<ChatCluster>, _error: &Error, ctx: Arc<Context>) -> Action {
    Action::requeue(ctx.next_backoff(ObjectRef::from_obj(&*cluster)))
}

async fn reconcile_cluster(cluster: &ChatCluster, ctx: &Context) -> Result<Action, Error> {
    let namespace = cluster.namespace().ok_or(Error::MissingNamespace)?;
    let object = ObjectRef::from_obj(cluster);
    if cluster.spec.is_paused() {
        ctx.set_paused(object, true);
        write_status(ctx, cluster, &namespace, status::paused(cluster, &now())).await?;
        return Ok(Action::requeue(ctx.settings.resync_interval));
    }
    ctx.set_paused(object, false);

    let refused = ctx.settings.allowed_images.refused(&cluster.spec);
    if !refused.is_empty() {
        return Err(Error::ImageNotAllowed {
            refused: refused
                .iter()
                .map(|(field, image)| format!("{field} is {image}"))
                .collect::<Vec<_>>()
                .join(", "),
            allowed: ctx.settings.allowed_images.prefixes().join(", "),
        });
    }

    let violations = ctx.settings.tenant_policy.violations(&cluster.spec);
    if !violations.is_empty() {
        return Err(Error::PolicyViolation {
            violations: violations.join("; "),
        });
    }

    let image = resolve_image(ctx, cluster, &namespace).await?;
    let storage = redis_storage::resolve(ctx, cluster, &namespace).await?;
    if let Some(warning) = storage.as_ref().and_then(|s| s.warning.clone()) {
        publish(
            ctx,
            cluster,
            EventType::Warning,
            REDIS_DATA_EPHEMERAL,
            warning,
        )
        .await;
    }
    // The children are built from the spec with the storage decision filled in.
    let effective = storage.as_ref().map(|s| s.apply(cluster));
    let plan = plan(
        effective.as_ref().unwrap_or(cluster),
        &image.image,
        &ctx.settings.monitoring,
        &ctx.settings.operands,
    )?;
    let monitoring_wanted = plan.children.iter().any(is_monitoring_child);
    let mut to_apply = Vec::with_capacity(plan.children.len());
    let mut missing_apis = Vec::new();
    for child in plan.children {
        let optional = plan.kinds.iter().any(|k| {
            k.optional
                && k.resource.api_version == child.resource.api_version
                && k.resource.kind == child.resource.kind
        });
        if optional && !ctx.api_installed(&child.resource).await? {
            let api = format!("{} {}", child.resource.api_version, child.resource.kind);
            if !missing_apis.contains(&api) {
                missing_apis.push(api);
            }
            continue;
        }
        to_apply.push(child);
    }

    // Never touch what this ChatCluster does not control: check every name first, and apply
    // nothing while any is taken (the Redis and API key Secrets included: their content would be
    // trusted).
    let mut targets: Vec<(ApiResource, String)> = to_apply
        .iter()
        .map(|c| (c.resource.clone(), c.name()))
        .collect();
    targets.push((
        ApiResource::erase::<Secret>(&()),
        names::api_key_secret(&cluster.name_any()),
    ));
    if cluster.spec.redis_is_managed() {
        for secret in [names::redis_secret, names::redis_config] {
            targets.push((
                ApiResource::erase::<Secret>(&()),
                secret(&cluster.name_any()),
            ));
        }
    }
    let ownership = apply::foreign_objects(ctx, cluster, &namespace, &targets).await?;
    if !ownership.foreign.is_empty() {
        return Err(Error::Conflict {
            objects: ownership.foreign.join(", "),
        });
    }

    if let Some(created) = apply::ensure_api_key_secret(ctx, cluster, &namespace).await? {
        let note = format!("created {created}");
        publish(ctx, cluster, EventType::Normal, "ApiKeySecretCreated", note).await;
    }
    if cluster.spec.redis_is_managed() {
        for created in apply::ensure_redis_secrets(ctx, cluster, &namespace).await? {
            let note = format!("created {created}");
            publish(ctx, cluster, EventType::Normal, "RedisSecretCreated", note).await;
        }
    }

    for child in &to_apply {
        apply::apply_child(ctx, &namespace, child, ownership.owns(child)).await?;
    }
    let applied = to_apply;
    for deleted in apply::sweep_orphans(ctx, cluster, &namespace, &plan.kinds, &applied).await? {
        publish(
            ctx,
            cluster,
            EventType::Normal,
            "OrphanDeleted",
            format!("deleted {deleted}"),
        )
        .await;
    }

    let recorded = cluster.status.as_ref().and_then(|s| s.node_image.clone());
    if let Some(before) = recorded.filter(|before| *before != image.image) {
        let note = format!(
            "chat-node image {before} -> {} ({:?}): the chat nodes roll",
            image.image, image.source
        );
        publish(ctx, cluster, EventType::Normal, "NodeImageChanged", note).await;
    }
    let mut observed = observe(ctx, cluster, &namespace).await?;
    observed.node_image = Some(image.image);
    observed
        .extra_conditions
        .push(observability::monitoring_ready(
            cluster,
            monitoring_wanted,
            &applied,
            &missing_apis,
            &now(),
        ));
    let waiting_for_apis = !missing_apis.is_empty();
    observed.missing_apis = missing_apis;
    write_status(
        ctx,
        cluster,
        &namespace,
        status::compute(cluster, &observed, &now()),
    )
    .await?;
    Ok(Action::requeue(next_resync(
        &ctx.settings,
        waiting_for_apis,
    )))
}

/// The chat-node image to run (see [`crate::api::resolve_node_image`]). Reads the existing
/// chat-node Deployment only when neither the spec nor the status says which image it is.
async fn resolve_image(
    ctx: &Context,
    cluster: &ChatCluster,
    namespace: &str,
) -> Result<ResolvedImage, Error> {
    let running = if needs_running_image(cluster) {
        let name = names::main(&cluster.name_any());
        read_controlled::<Deployment>(ctx, cluster, namespace, &name)
            .await?
            .and_then(|d| running_node_image(cluster, &d))
    } else {
        None
    };
    Ok(resolve_node_image(
        cluster,
        running.as_deref(),
        &ctx.settings.default_node_image,
    ))
}

/// The chat-node container's image of `deployment`, if it is this cluster's.
fn running_node_image(cluster: &ChatCluster, deployment: &Deployment) -> Option<String> {
    if !children::is_controlled_by(cluster, &deployment.metadata) {
        return None;
    }
    deployment
        .spec
        .as_ref()?
        .template
        .spec
        .as_ref()?
        .containers
        .iter()
        .find(|c| c.name == children::deployment::CONTAINER)?
        .image
        .clone()
}

/// When the next reconcile of a healthy ChatCluster is due. While an optional API the spec
/// asks for is not installed (e.g. prometheus-operator's CRDs), look again once the discovery
/// cache has expired, so objects appear within about a minute of the CRDs being installed,
/// without polling faster than discovery is refreshed (no hot loop).
pub fn next_resync(settings: &Settings, waiting_for_apis: bool) -> Duration {
    if waiting_for_apis {
        settings
            .resync_interval
            .min(settings.discovery_ttl.max(MIN_API_POLL))
    } else {
        settings.resync_interval
    }
}

/// The floor of [`next_resync`] while waiting for an API, whatever `discovery_ttl` is.
const MIN_API_POLL: Duration = Duration::from_secs(10);

/// The `K` named `name` in `namespace`, when it exists and this ChatCluster controls it.
pub(crate) async fn read_controlled<K>(
    ctx: &Context,
    cluster: &ChatCluster,
    namespace: &str,
    name: &str,
) -> Result<Option<K>, Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), namespace);
    Ok(ctx
        .call(api.get_opt(name))
        .await
        .map_err(|source| Error::Read {
            what: format!("{}/{name}", K::kind(&())),
            source,
        })?
        .filter(|object| children::is_controlled_by(cluster, object.meta())))
}

/// Reads back what the status is computed from: the chat-node Deployment, the managed Redis
/// StatefulSet, the Ingress when its status decides the endpoint, and with provider `gateway`
/// the HTTPRoute and its Gateway.
async fn observe(ctx: &Context, cluster: &ChatCluster, namespace: &str) -> Result<Observed, Error> {
    let name = cluster.name_any();
    let deployment =
        read_controlled::<Deployment>(ctx, cluster, namespace, &names::main(&name)).await?;
    let mut redis_storage = None;
    let redis_ready = if cluster.spec.redis_is_managed() {
        let sts =
            read_controlled::<StatefulSet>(ctx, cluster, namespace, &names::redis(&name)).await?;
        redis_storage = sts.as_ref().map(redis_storage::describe_existing);
        Some(
            sts.and_then(|s| s.status)
                .and_then(|s| s.ready_replicas)
                .unwrap_or(0)
                // High availability: a majority of the pods (and sentinels).
                >= if cluster.spec.redis().sentinel() {
                    cluster.spec.redis().quorum()
                } else {
                    1
                },
        )
    } else {
        None
    };
    // The address the ingress controller publishes is the endpoint of an Ingress without a
    // host. The Ingress is watched (`.owns()`), so its controller writing that status triggers
    // a reconcile that reads it here.
    let ingress = if endpoint::needs_ingress_status(cluster) {
        read_controlled::<Ingress>(ctx, cluster, namespace, &names::main(&name)).await?
    } else {
        None
    };
    let gateway = if http_route::gateway_ref(cluster).is_some() {
        Some(observe_gateway(ctx, cluster, namespace).await?)
    } else {
        None
    };
    Ok(Observed {
        deployment,
        redis_ready,
        redis_storage,
        ingress,
        gateway,
        ..Observed::default()
    })
}

/// Provider `gateway`: reads the HTTPRoute back (for its acceptance) and the Gateway it attaches
/// to (for the endpoint). The Gateway is someone else's object, possibly in a namespace the
/// operator may not read: a failure to read it only leaves the endpoint at the in-cluster URL
/// (logged), it does not fail the reconcile.
async fn observe_gateway(
    ctx: &Context,
    cluster: &ChatCluster,
    namespace: &str,
) -> Result<GatewayObserved, Error> {
    let routes = ApiResource::erase::<HTTPRoute>(&());
    if !ctx.api_installed(&routes).await? {
        return Ok(GatewayObserved::default());
    }
    let name = names::main(&cluster.name_any());
    let route = read_controlled::<HTTPRoute>(ctx, cluster, namespace, &name).await?;
    let gateway = match http_route::gateway_key(cluster) {
        Some((gateway_namespace, gateway_name)) => {
            let gateways: Api<Gateway> = Api::namespaced(ctx.client.clone(), &gateway_namespace);
            match ctx.call(gateways.get_opt(&gateway_name)).await {
                Ok(gateway) => gateway,
                Err(error) => {
                    warn!(%error, gateway = %format!("{gateway_namespace}/{gateway_name}"),
                        "cannot read the Gateway: status.endpoint stays the in-cluster URL");
                    None
                }
            }
        }
        None => None,
    };
    Ok(GatewayObserved {
        api_installed: true,
        route,
        gateway,
    })
}

/// Writes `status` if it differs from the stored one, then publishes an Event per flipped condition.
async fn write_status(
    ctx: &Context,
    cluster: &ChatCluster,
    namespace: &str,
    status: ChatClusterStatus,
) -> Result<(), Error> {
    if cluster.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let api: Api<ChatCluster> = Api::namespaced(ctx.client.clone(), namespace);
    let body = json!({
        "apiVersion": ChatCluster::api_version(&()),
        "kind": ChatCluster::kind(&()),
        "status": status,
    });
    let params = PatchParams::apply(labels::MANAGER).force();
    ctx.call(api.patch_status(&cluster.name_any(), &params, &Patch::Apply(&body)))
        .await
        .map_err(|source| Error::PatchStatus { source })?;
    for (before, condition) in status::flipped(cluster.status.as_ref(), &status) {
        let Some(type_) = status::event_type(before, condition) else {
            continue;
        };
        let note = format!(
            "{} is {}: {}",
            condition.type_, condition.status, condition.message
        );
        publish(ctx, cluster, type_, &condition.reason, note).await;
    }
    Ok(())
}

/// Best effort after a failure: show it as `Degraded` (the error is already logged and counted).
async fn record_error_in_status(cluster: &ChatCluster, ctx: &Context, error: &Error) {
    let Some(namespace) = cluster.namespace() else {
        return;
    };
    let mut observed = match observe(ctx, cluster, &namespace).await {
        Ok(observed) => observed,
        Err(e) => {
            warn!(error = %e, "cannot read state to record the failure in status");
            return;
        }
    };
    observed.error = Some(error.to_string());
    observed.error_reason = Some(error.reason());
    let status = status::compute(cluster, &observed, &now());
    if let Err(e) = write_status(ctx, cluster, &namespace, status).await {
        warn!(error = %e, "cannot record the failure in status");
    }
}

/// Publishes an Event on the ChatCluster; a failure is logged, never fails the reconcile.
async fn publish(
    ctx: &Context,
    cluster: &ChatCluster,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note.chars().take(1000).collect()),
        action: "Reconcile".into(),
        secondary: None,
    };
    let reference = cluster.object_ref(&());
    if let Err(error) = ctx.call(ctx.recorder.publish(&event, &reference)).await {
        warn!(%error, reason, "cannot publish an Event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_for_an_api_polls_at_the_discovery_ttl_not_faster_not_slower_than_resync() {
        let settings = Settings::default();
        assert_eq!(next_resync(&settings, false), settings.resync_interval);
        assert_eq!(next_resync(&settings, true), settings.discovery_ttl);
        let zero_ttl = Settings {
            discovery_ttl: Duration::ZERO,
            ..Settings::default()
        };
        assert_eq!(next_resync(&zero_ttl, true), MIN_API_POLL, "no hot loop");
        let short_resync = Settings {
            resync_interval: Duration::from_secs(5),
            ..Settings::default()
        };
        assert_eq!(next_resync(&short_resync, true), Duration::from_secs(5));
    }

    /// Every child with a pod template in a plan with every workload (chat-node, managed Redis,
    /// managed Collector) pulls with the operator's and the cluster's pull secrets, and the
    /// operands run the operator's default images.
    #[test]
    fn every_pod_template_gets_the_pull_secrets_and_the_default_images() {
        use crate::children::fixtures::cluster;
        use crate::children::operands::pod_spec_mut;
        use k8s_openapi::api::core::v1::LocalObjectReference;
        let mut demo = cluster("demo");
        demo.spec.observability = Some(crate::api::observability::ObservabilitySpec {
            collector: Some(Default::default()),
            ..Default::default()
        });
        demo.spec.image_pull_secrets = Some(vec![LocalObjectReference {
            name: "team".into(),
        }]);
        let operands = OperandDefaults {
            image_pull_secrets: vec!["mirror".into()],
            redis_image: "mirror.example/redis@sha256:0123".into(),
            collector_image: "mirror.example/otel:1".into(),
            ..OperandDefaults::default()
        };
        let full = plan(
            &demo,
            "mirror.example/chat-node:1",
            &Default::default(),
            &operands,
        )
        .unwrap();
        let mut images = Vec::new();
        for mut child in full.children {
            let what = child.describe();
            let Some(pod) = pod_spec_mut(&mut child) else {
                continue;
            };
            assert_eq!(
                pod["imagePullSecrets"],
                serde_json::json!([{"name": "mirror"}, {"name": "team"}]),
                "{what}"
            );
            for container in pod["containers"].as_array().unwrap() {
                images.push((
                    what.clone(),
                    container["image"].as_str().unwrap().to_owned(),
                ));
            }
        }
        images.sort();
        assert_eq!(
            images,
            [
                (
                    "Deployment/demo".into(),
                    "mirror.example/chat-node:1".into()
                ),
                (
                    "Deployment/demo-otel-collector".into(),
                    "mirror.example/otel:1".into()
                ),
                (
                    "StatefulSet/demo-redis".into(),
                    "mirror.example/redis@sha256:0123".into()
                ),
            ] as [(String, String); 3]
        );
        // Without pull secrets the field is not written at all.
        let plain = plan(
            &cluster("demo"),
            "c:1",
            &Default::default(),
            &Default::default(),
        );
        for mut child in plain.unwrap().children {
            if let Some(pod) = pod_spec_mut(&mut child) {
                assert!(!pod.contains_key("imagePullSecrets"));
            }
        }
    }

    #[test]
    fn the_running_image_is_read_only_from_this_clusters_deployment() {
        use crate::children::fixtures::cluster;
        let demo = cluster("demo");
        let deployment = children::deployment::build(&demo, "chat-node:running", &[]);
        assert_eq!(
            running_node_image(&demo, &deployment).as_deref(),
            Some("chat-node:running")
        );
        let mut other = cluster("demo");
        other.metadata.uid = Some("another-uid".into());
        assert_eq!(
            running_node_image(&other, &deployment),
            None,
            "a Deployment controlled by another (e.g. a deleted and re-created) ChatCluster"
        );
    }
}
