//! Status from what was observed: pure functions, so every condition rule is unit-tested.
//!
//! `lastTransitionTime` moves only when a condition's status flips; everything else about a
//! condition (reason, message, observedGeneration) is refreshed in place. The caller writes the
//! result only when it differs from the stored status, so a steady state writes nothing.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::runtime::events::EventType;

use crate::api::{ChatCluster, ChatClusterStatus, Phase, condition_types as types, reasons};
use crate::children::gateway_api::{Gateway, HTTPRoute};
use crate::children::{http_route, node_selector};
use crate::labels;

/// What the reconciler saw this round.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// The chat-node Deployment as read back (None if missing).
    pub deployment: Option<Deployment>,
    /// Managed Redis ready? `None` for an external Redis.
    pub redis_ready: Option<bool>,
    /// Where the managed Redis keeps its data, as its StatefulSet says (see
    /// `redis_storage::describe_existing`), for `RedisReady`'s message; `None` for an external
    /// Redis or before the StatefulSet exists.
    pub redis_storage: Option<String>,
    /// The error that ended this reconcile early, if any.
    pub error: Option<String>,
    /// The reason for that error (`Degraded` condition); unset: `ReconcileFailed`.
    pub error_reason: Option<&'static str>,
    /// Optional APIs (third-party CRDs) that the spec needs but the cluster lacks.
    pub missing_apis: Vec<String>,
    /// Conditions contributed by other builder sets (e.g. `MonitoringReady`).
    pub extra_conditions: Vec<Condition>,
    /// The chat-node image the applied Deployment runs; `None` when this reconcile ended before
    /// applying it (the recorded image is then kept).
    pub node_image: Option<String>,
    /// The Ingress as read back, when the endpoint comes from the address its controller
    /// publishes (`spec.ingress` without a host; see [`super::endpoint`]).
    pub ingress: Option<Ingress>,
    /// With provider `gateway`: the HTTPRoute and its Gateway as read back.
    pub gateway: Option<GatewayObserved>,
}

/// What the reconciler read about the HTTPRoute of provider `gateway` and its Gateway.
#[derive(Clone, Debug, Default)]
pub struct GatewayObserved {
    /// False when the Gateway API (the HTTPRoute CRD) is not installed: there is no route.
    pub api_installed: bool,
    /// The HTTPRoute (None until it exists).
    pub route: Option<HTTPRoute>,
    /// The Gateway it attaches to, when it could be read (None: missing or not readable).
    pub gateway: Option<Gateway>,
}

/// Condition type listing optional APIs the spec needs but the cluster lacks (only present
/// when the spec asks for such children).
pub const OPTIONAL_APIS_AVAILABLE: &str = "OptionalApisAvailable";

/// Sets `new` into `conditions`, keeping `lastTransitionTime` when the status did not flip.
pub fn set_condition(conditions: &mut Vec<Condition>, mut new: Condition) {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(old) => {
            if old.status == new.status {
                new.last_transition_time = old.last_transition_time.clone();
            }
            *old = new;
        }
        None => conditions.push(new),
    }
}

fn condition(
    cluster: &ChatCluster,
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    now: &Time,
) -> Condition {
    Condition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        observed_generation: cluster.metadata.generation,
        last_transition_time: now.clone(),
    }
}

/// The status while `spec.paused` is set: the last observed status with `Paused=True`.
pub fn paused(cluster: &ChatCluster, now: &Time) -> ChatClusterStatus {
    let mut status = cluster.status.clone().unwrap_or_default();
    let mut conditions = status.conditions.take().unwrap_or_default();
    set_condition(
        &mut conditions,
        condition(
            cluster,
            types::PAUSED,
            true,
            reasons::PAUSED,
            "spec.paused is true: the operator changes nothing".into(),
            now,
        ),
    );
    status.conditions = Some(conditions);
    status.phase = Some(Phase::Paused);
    status
}

/// The full status after a reconcile (successful or not).
pub fn compute(cluster: &ChatCluster, observed: &Observed, now: &Time) -> ChatClusterStatus {
    let desired = cluster.spec.replicas();
    let dep_status = observed
        .deployment
        .as_ref()
        .and_then(|d| d.status.clone())
        .unwrap_or_default();
    let dep_generation = observed
        .deployment
        .as_ref()
        .and_then(|d| d.metadata.generation);
    let replicas = dep_status.replicas.unwrap_or(0);
    let ready = dep_status.ready_replicas.unwrap_or(0);
    let updated = dep_status.updated_replicas.unwrap_or(0);
    let deployment_current =
        observed.deployment.is_some() && dep_status.observed_generation >= dep_generation;
    let rolled_out =
        deployment_current && updated >= desired && replicas == desired && ready >= desired;
    let stuck = dep_status.conditions.iter().flatten().any(|c| {
        c.type_ == "Progressing"
            && c.status == "False"
            && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    });
    let redis_ok = observed.redis_ready.unwrap_or(true);

    let mut conditions = cluster
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let mut set = |c: Condition| set_condition(&mut conditions, c);

    let ready_ok = ready >= desired && redis_ok;
    set(condition(
        cluster,
        types::READY,
        ready_ok,
        if ready_ok {
            reasons::ALL_REPLICAS_READY
        } else if !redis_ok {
            reasons::REDIS_NOT_READY
        } else {
            reasons::REPLICAS_NOT_READY
        },
        if redis_ok {
            format!("{ready} of {desired} chat-node pods ready")
        } else {
            format!("{ready} of {desired} chat-node pods ready, the managed Redis is not ready")
        },
        now,
    ));
    set(condition(
        cluster,
        types::PROGRESSING,
        !rolled_out,
        if rolled_out {
            reasons::ROLLOUT_COMPLETE
        } else {
            reasons::ROLLOUT_IN_PROGRESS
        },
        format!("{updated} of {desired} pods updated, {ready} ready, {replicas} exist"),
        now,
    ));
    let (degraded, degraded_reason, degraded_message) = match (&observed.error, stuck) {
        (Some(error), _) => (
            true,
            observed.error_reason.unwrap_or(reasons::RECONCILE_FAILED),
            error.clone(),
        ),
        (None, true) => (
            true,
            reasons::ROLLOUT_STUCK,
            "the chat-node Deployment exceeded its progress deadline".to_string(),
        ),
        (None, false) => (
            false,
            reasons::RECONCILED,
            "every child is applied".to_string(),
        ),
    };
    set(condition(
        cluster,
        types::DEGRADED,
        degraded,
        degraded_reason,
        degraded_message.clone(),
        now,
    ));
    // kstatus' two conditions, next to the ones above and derived from the same facts, so the
    // two views never disagree: Stalled is Degraded, Reconciling is "not done and not stalled".
    set(condition(
        cluster,
        types::STALLED,
        degraded,
        if degraded {
            degraded_reason
        } else {
            reasons::NOT_STALLED
        },
        if degraded {
            degraded_message.clone()
        } else {
            "no reconcile error, the rollout is within its progress deadline".to_string()
        },
        now,
    ));
    let done = ready_ok && rolled_out;
    let reconciling = !degraded && !done;
    set(condition(
        cluster,
        types::RECONCILING,
        reconciling,
        if !reconciling {
            reasons::RECONCILED
        } else if !rolled_out {
            reasons::ROLLOUT_IN_PROGRESS
        } else {
            reasons::REDIS_NOT_READY
        },
        if !reconciling && degraded {
            "stalled: see the Stalled condition".to_string()
        } else if !reconciling {
            format!("every child is applied, {ready} of {desired} chat-node pods ready")
        } else if !rolled_out {
            format!("{updated} of {desired} pods updated, {ready} ready, {replicas} exist")
        } else {
            "waiting for the managed Redis to be ready".to_string()
        },
        now,
    ));
    let with_storage = |message: &str| match &observed.redis_storage {
        Some(storage) => format!("{message}; {storage}"),
        None => message.to_owned(),
    };
    set(match observed.redis_ready {
        Some(true) => condition(
            cluster,
            types::REDIS_READY,
            true,
            reasons::REDIS_READY,
            with_storage("the managed Redis is ready"),
            now,
        ),
        Some(false) => condition(
            cluster,
            types::REDIS_READY,
            false,
            reasons::REDIS_NOT_READY,
            with_storage("the managed Redis is not ready yet"),
            now,
        ),
        None => condition(
            cluster,
            types::REDIS_READY,
            true,
            reasons::REDIS_EXTERNAL,
            "external Redis: not probed by the operator".into(),
            now,
        ),
    });
    set(condition(
        cluster,
        types::PAUSED,
        false,
        reasons::NOT_PAUSED,
        "reconciling".into(),
        now,
    ));
    if !observed.missing_apis.is_empty() {
        set(condition(
            cluster,
            OPTIONAL_APIS_AVAILABLE,
            false,
            "ApiNotInstalled",
            format!(
                "not installed, children skipped: {}",
                observed.missing_apis.join(", ")
            ),
            now,
        ));
    } else {
        conditions.retain(|c| c.type_ != OPTIONAL_APIS_AVAILABLE);
    }
    match &observed.gateway {
        _ if http_route::gateway_ref(cluster).is_none() => {
            conditions.retain(|c| c.type_ != http_route::ROUTE_ACCEPTED)
        }
        Some(g) if g.api_installed => set_condition(
            &mut conditions,
            http_route::accepted_condition(cluster, g.route.as_ref(), now),
        ),
        Some(_) => set_condition(
            &mut conditions,
            http_route::api_missing_condition(cluster, now),
        ),
        // Not read this round (cannot happen: `observe` reads it whenever the spec asks for a
        // route): keep what was there.
        None => {}
    }
    for extra in &observed.extra_conditions {
        set_condition(&mut conditions, extra.clone());
    }

    let phase = if degraded {
        Phase::Degraded
    } else if ready_ok && rolled_out {
        Phase::Ready
    } else if ready == 0 && desired > 0 {
        Phase::Pending
    } else {
        Phase::Progressing
    };

    ChatClusterStatus {
        observed_generation: cluster.metadata.generation,
        replicas: Some(replicas),
        ready_replicas: Some(ready),
        selector: Some(labels::to_selector_string(&node_selector(cluster))),
        phase: Some(phase),
        endpoint: Some(super::endpoint::endpoint(cluster, observed)),
        node_image: observed
            .node_image
            .clone()
            .or_else(|| cluster.status.as_ref().and_then(|s| s.node_image.clone())),
        conditions: Some(conditions),
    }
}

/// Conditions whose status differs between `old` and `new` (for Events): each new condition
/// with the one it replaces, if there was one.
pub fn flipped<'a>(
    old: Option<&'a ChatClusterStatus>,
    new: &'a ChatClusterStatus,
) -> Vec<(Option<&'a Condition>, &'a Condition)> {
    new.conditions
        .iter()
        .flatten()
        .map(|c| (old.and_then(|o| o.condition(&c.type_)), c))
        .filter(|(before, c)| before.map(|b| &b.status) != Some(&c.status))
        .collect()
}

/// The Event for a flipped condition, if it is worth one: a warning for something a user should
/// look at, not for the normal course of creating, scaling or pausing a ChatCluster.
///
/// - A ChatCluster that first appears not paused gets no Event: that is every new ChatCluster.
/// - A condition turning `Unknown` gets none: nothing has been decided (e.g. `RouteAccepted`
///   while no Gateway controller has reported on the route yet).
/// - `Degraded` warns when it turns True.
/// - `Progressing` and `Paused` only inform (a rollout starting or ending, a pause asked for).
/// - Every other condition (`Ready`, `RedisReady`, `MonitoringReady`, ...) is good when True
///   and warns when it turns False, with two exceptions. Pods not ready yet
///   (`ReplicasNotReady`) is the normal course of creating, scaling and rolling out; pods that
///   never get ready show as `Degraded` (`RolloutStuck`, after the Deployment's progress
///   deadline), and the pods' own Events say why. The managed Redis not ready
///   (`RedisNotReady`) warns once it had been ready, not while it first starts.
pub fn event_type(before: Option<&Condition>, now: &Condition) -> Option<EventType> {
    let is_true = now.status == "True";
    let warning = match (now.type_.as_str(), now.reason.as_str()) {
        // kstatus' view of Progressing and Degraded, which have their own Events.
        (types::RECONCILING | types::STALLED, _) => return None,
        (types::PAUSED, _) if before.is_none() && !is_true => return None,
        _ if now.status == "Unknown" => return None,
        (types::DEGRADED, _) => is_true,
        (types::PROGRESSING | types::PAUSED, _) => false,
        _ if is_true => false,
        (_, reasons::REPLICAS_NOT_READY) => false,
        (_, reasons::REDIS_NOT_READY) => before.is_some(),
        _ => true,
    };
    Some(if warning {
        EventType::Warning
    } else {
        EventType::Normal
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::{DeploymentCondition, DeploymentStatus};
    use k8s_openapi::jiff::Timestamp;
    use kube::api::ObjectMeta;

    use super::*;
    use crate::children::fixtures::cluster;

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).unwrap())
    }

    fn deployment(replicas: i32, ready: i32, updated: i32) -> Deployment {
        Deployment {
            metadata: ObjectMeta {
                generation: Some(1),
                ..ObjectMeta::default()
            },
            spec: None,
            status: Some(DeploymentStatus {
                observed_generation: Some(1),
                replicas: Some(replicas),
                ready_replicas: Some(ready),
                updated_replicas: Some(updated),
                ..DeploymentStatus::default()
            }),
        }
    }

    fn cond<'a>(s: &'a ChatClusterStatus, t: &str) -> &'a Condition {
        s.condition(t).unwrap()
    }

    #[test]
    fn all_ready_is_ready_and_not_progressing() {
        let c = cluster("demo");
        let observed = Observed {
            deployment: Some(deployment(2, 2, 2)),
            redis_ready: Some(true),
            ..Observed::default()
        };
        let s = compute(&c, &observed, &at(100));
        assert_eq!(s.phase, Some(Phase::Ready));
        assert_eq!(cond(&s, "Ready").status, "True");
        assert_eq!(cond(&s, "Progressing").status, "False");
        assert_eq!(cond(&s, "Degraded").status, "False");
        assert_eq!(cond(&s, "RedisReady").status, "True");
        assert_eq!(cond(&s, "Paused").status, "False");
        assert_eq!(s.observed_generation, Some(1));
        assert_eq!(s.ready_replicas, Some(2));
        assert_eq!(
            s.selector.as_deref(),
            Some("app.kubernetes.io/instance=demo,app.kubernetes.io/name=chat-node")
        );
        assert_eq!(s.endpoint.as_deref(), Some("ws://demo.chat.svc:8080/ws"));
    }

    /// kstatus: Current needs Reconciling and Stalled not True; InProgress Reconciling True;
    /// Failed Stalled True. Each case also holds observedGeneration (tests/kstatus.rs checks the
    /// same cases with the real kstatus library on objects from an API server).
    #[test]
    fn kstatus_conditions_follow_progress_and_degradation() {
        let c = cluster("demo");
        let kstatus = |observed: &Observed| {
            let s = compute(&c, observed, &at(100));
            let pair = |t: &str| {
                let found = cond(&s, t);
                assert_eq!(found.observed_generation, Some(1), "{t}");
                (found.status.clone(), found.reason.clone())
            };
            (pair(types::RECONCILING), pair(types::STALLED))
        };
        let done = Observed {
            deployment: Some(deployment(2, 2, 2)),
            redis_ready: Some(true),
            ..Observed::default()
        };
        assert_eq!(
            kstatus(&done),
            (
                ("False".into(), reasons::RECONCILED.into()),
                ("False".into(), reasons::NOT_STALLED.into())
            )
        );
        let rolling = Observed {
            deployment: Some(deployment(3, 1, 2)),
            ..done.clone()
        };
        assert_eq!(
            kstatus(&rolling).0,
            ("True".into(), reasons::ROLLOUT_IN_PROGRESS.into())
        );
        let redis_starting = Observed {
            redis_ready: Some(false),
            ..done.clone()
        };
        assert_eq!(
            kstatus(&redis_starting).0,
            ("True".into(), reasons::REDIS_NOT_READY.into())
        );
        let refused = Observed {
            error: Some("image not allowed".into()),
            error_reason: Some(reasons::IMAGE_NOT_ALLOWED),
            ..rolling.clone()
        };
        assert_eq!(
            kstatus(&refused),
            (
                ("False".into(), reasons::RECONCILED.into()),
                ("True".into(), reasons::IMAGE_NOT_ALLOWED.into())
            ),
            "a stalled cluster is not reconciling, even mid-rollout"
        );
        let s = compute(&c, &refused, &at(100));
        assert_eq!(cond(&s, types::STALLED).message, "image not allowed");
        assert_eq!(event_type(None, cond(&s, types::STALLED)), None);
    }

    #[test]
    fn node_image_is_recorded_and_kept_when_a_reconcile_ends_early() {
        let mut c = cluster("demo");
        let applied = Observed {
            deployment: Some(deployment(2, 2, 2)),
            node_image: Some("chat-node:1".into()),
            ..Observed::default()
        };
        let s = compute(&c, &applied, &at(100));
        assert_eq!(s.node_image.as_deref(), Some("chat-node:1"));
        c.status = Some(s);
        let failed = Observed {
            deployment: Some(deployment(2, 2, 2)),
            error: Some("failed to apply Service/demo".into()),
            ..Observed::default()
        };
        let s = compute(&c, &failed, &at(200));
        assert_eq!(
            s.node_image.as_deref(),
            Some("chat-node:1"),
            "an error must not drop the recorded image"
        );
    }

    #[test]
    fn no_pods_ready_is_pending_and_redis_not_ready_blocks_ready() {
        let c = cluster("demo");
        let observed = Observed {
            deployment: Some(deployment(2, 0, 2)),
            redis_ready: Some(false),
            ..Observed::default()
        };
        let s = compute(&c, &observed, &at(100));
        assert_eq!(s.phase, Some(Phase::Pending));
        assert_eq!(cond(&s, "Ready").status, "False");
        assert_eq!(cond(&s, "RedisReady").status, "False");
        assert_eq!(cond(&s, "Progressing").status, "True");
    }

    #[test]
    fn error_and_stuck_rollout_are_degraded() {
        let c = cluster("demo");
        let observed = Observed {
            error: Some("failed to apply Service/demo: boom".into()),
            ..Observed::default()
        };
        let s = compute(&c, &observed, &at(100));
        assert_eq!(s.phase, Some(Phase::Degraded));
        assert_eq!(cond(&s, "Degraded").reason, "ReconcileFailed");
        assert!(cond(&s, "Degraded").message.contains("boom"));

        let mut d = deployment(2, 1, 1);
        d.status.as_mut().unwrap().conditions = Some(vec![DeploymentCondition {
            type_: "Progressing".into(),
            status: "False".into(),
            reason: Some("ProgressDeadlineExceeded".into()),
            ..DeploymentCondition::default()
        }]);
        let s = compute(
            &c,
            &Observed {
                deployment: Some(d),
                ..Observed::default()
            },
            &at(100),
        );
        assert_eq!(cond(&s, "Degraded").reason, "RolloutStuck");
    }

    #[test]
    fn transition_time_moves_only_on_flips() {
        let mut c = cluster("demo");
        let pending = Observed {
            deployment: Some(deployment(2, 0, 2)),
            redis_ready: Some(true),
            ..Observed::default()
        };
        c.status = Some(compute(&c, &pending, &at(100)));
        // Same observation later: nothing changes at all.
        let again = compute(&c, &pending, &at(200));
        assert_eq!(Some(&again), c.status.as_ref());
        // Ready flips: its time moves, Degraded's stays.
        let ready = Observed {
            deployment: Some(deployment(2, 2, 2)),
            redis_ready: Some(true),
            ..Observed::default()
        };
        let s = compute(&c, &ready, &at(300));
        assert_eq!(cond(&s, "Ready").last_transition_time, at(300));
        assert_eq!(cond(&s, "Degraded").last_transition_time, at(100));
        let flips: Vec<_> = flipped(c.status.as_ref(), &s)
            .iter()
            .map(|(_, c)| c.type_.clone())
            .collect();
        assert_eq!(flips, ["Ready", "Progressing", "Reconciling"]);
    }

    /// The Events a user sees for the flips, as (condition, reason, warning?).
    fn events(
        old: Option<&ChatClusterStatus>,
        new: &ChatClusterStatus,
    ) -> Vec<(String, String, bool)> {
        flipped(old, new)
            .into_iter()
            .filter_map(|(before, c)| {
                let warning = event_type(before, c)? == EventType::Warning;
                Some((c.type_.clone(), c.reason.clone(), warning))
            })
            .collect()
    }

    fn ev(type_: &str, reason: &str, warning: bool) -> (String, String, bool) {
        (type_.into(), reason.into(), warning)
    }

    #[test]
    fn creating_scaling_and_pausing_are_normal_events_outages_warn() {
        let mut c = cluster("demo");
        let observe = |ready, redis| Observed {
            deployment: Some(deployment(2, ready, 2)),
            redis_ready: Some(redis),
            ..Observed::default()
        };
        // Created: pods and Redis still starting. Nothing to look at yet.
        let created = compute(&c, &observe(0, false), &at(100));
        let first = events(None, &created);
        assert!(first.iter().all(|(_, _, warning)| !warning), "{first:?}");
        assert!(
            first.iter().all(|(type_, _, _)| type_ != "Paused"),
            "{first:?}"
        );
        assert!(
            first.contains(&ev("Ready", "RedisNotReady", false)),
            "{first:?}"
        );
        assert_eq!(
            cond(&created, "Ready").message,
            "0 of 2 chat-node pods ready, the managed Redis is not ready"
        );
        c.status = Some(created);
        // Everything up: good news, all Normal.
        let up = compute(&c, &observe(2, true), &at(200));
        assert_eq!(
            events(c.status.as_ref(), &up),
            [
                ev("Ready", "AllReplicasReady", false),
                ev("Progressing", "RolloutComplete", false),
                ev("RedisReady", "RedisReady", false),
            ]
        );
        c.status = Some(up);
        // Redis goes away after it was ready: that is a warning.
        let down = compute(&c, &observe(2, false), &at(300));
        assert_eq!(
            events(c.status.as_ref(), &down),
            [
                ev("Ready", "RedisNotReady", true),
                ev("RedisReady", "RedisNotReady", true),
            ]
        );
        c.status = Some(down);
        // Pausing and a failed reconcile.
        let paused_status = paused(&c, &at(400));
        assert_eq!(
            events(c.status.as_ref(), &paused_status),
            [ev("Paused", "SpecPaused", false)]
        );
        let failed = compute(
            &c,
            &Observed {
                error: Some("boom".into()),
                ..observe(2, true)
            },
            &at(500),
        );
        assert!(events(c.status.as_ref(), &failed).contains(&ev(
            "Degraded",
            "ReconcileFailed",
            true
        )));
        // A condition that appears False for a reason other than starting up warns at once.
        let missing = Condition {
            type_: "MonitoringReady".into(),
            status: "False".into(),
            reason: "CRDNotInstalled".into(),
            ..cond(&failed, "Ready").clone()
        };
        assert_eq!(event_type(None, &missing), Some(EventType::Warning));
        // Scaling up from a ready state: pods not ready yet is no warning.
        let mut steady = cluster("demo");
        steady.status = Some(compute(&steady, &observe(2, true), &at(600)));
        let scaling = compute(&steady, &observe(1, true), &at(700));
        assert_eq!(
            events(steady.status.as_ref(), &scaling),
            [
                ev("Ready", "ReplicasNotReady", false),
                ev("Progressing", "RolloutInProgress", false),
            ]
        );
    }

    #[test]
    fn paused_keeps_the_rest_and_sets_paused() {
        let mut c = cluster("demo");
        let ready = Observed {
            deployment: Some(deployment(2, 2, 2)),
            redis_ready: Some(true),
            ..Observed::default()
        };
        c.status = Some(compute(&c, &ready, &at(100)));
        let s = paused(&c, &at(200));
        assert_eq!(s.phase, Some(Phase::Paused));
        assert_eq!(cond(&s, "Paused").status, "True");
        assert_eq!(cond(&s, "Paused").last_transition_time, at(200));
        assert_eq!(cond(&s, "Ready").status, "True");
    }

    fn gateway_cluster() -> ChatCluster {
        let mut c = cluster("demo");
        c.spec.ingress = Some(crate::api::IngressSpec {
            provider: Some(crate::api::IngressProvider::Gateway),
            gateway: Some(crate::api::GatewayRef {
                name: "traefik".into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        c
    }

    fn route_reported(c: &ChatCluster, accepted: &str, reason: &str) -> HTTPRoute {
        use crate::children::gateway_api::{
            HttpRouteStatus, ParentReference, RouteParentStatus, StatusCondition,
        };
        let mut route = http_route::build(c).unwrap();
        route.status = Some(HttpRouteStatus {
            parents: vec![RouteParentStatus {
                parent_ref: ParentReference {
                    name: "traefik".into(),
                    ..ParentReference::default()
                },
                controller_name: "traefik.io/gateway-controller".into(),
                conditions: vec![StatusCondition {
                    type_: "Accepted".into(),
                    status: accepted.into(),
                    reason: reason.into(),
                    message: String::new(),
                    observed_generation: None,
                }],
            }],
        });
        route
    }

    #[test]
    fn route_acceptance_is_a_condition_with_events_only_on_decisions() {
        let mut c = gateway_cluster();
        let observe = |route: Option<HTTPRoute>| Observed {
            deployment: Some(deployment(2, 2, 2)),
            redis_ready: Some(true),
            gateway: Some(GatewayObserved {
                api_installed: true,
                route,
                gateway: None,
            }),
            ..Observed::default()
        };
        // Created, no controller has looked yet: Unknown, no Event.
        let pending = compute(&c, &observe(Some(http_route::build(&c).unwrap())), &at(100));
        let route = cond(&pending, http_route::ROUTE_ACCEPTED);
        assert_eq!(
            (route.status.as_str(), route.reason.as_str()),
            ("Unknown", "Pending")
        );
        assert_eq!(event_type(None, route), None);
        assert_eq!(
            pending.phase,
            Some(Phase::Ready),
            "the pods decide the phase"
        );
        c.status = Some(pending);
        // Accepted: a Normal Event.
        let accepted = compute(
            &c,
            &observe(Some(route_reported(&c, "True", "Accepted"))),
            &at(200),
        );
        assert_eq!(
            events(c.status.as_ref(), &accepted),
            [ev("RouteAccepted", "Accepted", false)]
        );
        c.status = Some(accepted);
        // Refused by the Gateway's listeners: a Warning with the controller's reason.
        let refused = compute(
            &c,
            &observe(Some(route_reported(&c, "False", "NotAllowedByListeners"))),
            &at(300),
        );
        assert_eq!(
            events(c.status.as_ref(), &refused),
            [ev("RouteAccepted", "NotAllowedByListeners", true)]
        );
        // The same again: nothing changes, so nothing is written.
        c.status = Some(refused.clone());
        let again = compute(
            &c,
            &observe(Some(route_reported(&c, "False", "NotAllowedByListeners"))),
            &at(400),
        );
        assert_eq!(again, refused);
    }

    #[test]
    fn route_acceptance_without_the_api_and_after_leaving_provider_gateway() {
        let mut c = gateway_cluster();
        let missing = Observed {
            missing_apis: vec!["gateway.networking.k8s.io/v1 HTTPRoute".into()],
            gateway: Some(GatewayObserved::default()),
            ..Observed::default()
        };
        let s = compute(&c, &missing, &at(100));
        let route = cond(&s, http_route::ROUTE_ACCEPTED);
        assert_eq!(
            (route.status.as_str(), route.reason.as_str()),
            ("Unknown", "ApiNotInstalled")
        );
        assert_eq!(
            event_type(None, route),
            None,
            "OptionalApisAvailable warns once"
        );
        let apis = cond(&s, OPTIONAL_APIS_AVAILABLE);
        assert_eq!(event_type(None, apis), Some(EventType::Warning));
        assert!(apis.message.contains("HTTPRoute"), "{}", apis.message);
        assert_ne!(
            s.phase,
            Some(Phase::Degraded),
            "a missing optional API is no error"
        );
        // Back to an Ingress: the condition goes away.
        c.status = Some(s);
        c.spec.ingress = Some(crate::api::IngressSpec::default());
        let s = compute(&c, &Observed::default(), &at(200));
        assert!(s.condition(http_route::ROUTE_ACCEPTED).is_none());
    }

    #[test]
    fn missing_optional_apis_are_a_condition() {
        let c = cluster("demo");
        let observed = Observed {
            missing_apis: vec!["monitoring.coreos.com/v1 PrometheusRule".into()],
            ..Observed::default()
        };
        let s = compute(&c, &observed, &at(1));
        let cond = cond(&s, OPTIONAL_APIS_AVAILABLE);
        assert_eq!(cond.status, "False");
        assert!(cond.message.contains("PrometheusRule"));
    }
}
