//! The confused deputy (issue 11, item 11): someone who may create ChatClusters but not read
//! Secrets must not get the operator to mount a Secret into pods of an image of their choice.
//!
//! - The generated ValidatingAdmissionPolicy (config/admission/, what the chart ships), bound to
//!   one test namespace with its allow-list parameter, refuses through the real API server's
//!   `authorizer` every Secret reference the author may not `get` (each field of the table, one
//!   by one), and every image outside the allow-list; it admits the same object from a user who
//!   may read the Secret, and an edit that leaves the references alone.
//! - The same policy enforces the operator's tenant policy (snippet annotations, Ingress hosts,
//!   priority classes, tolerations) from the keys of the same parameter ConfigMap, with the
//!   operator's defaults for a key that is not there, and the reconciler's own messages.
//! - The reconciler refuses an image outside `--allowed-image-prefixes` even without the policy:
//!   `Degraded` / `ImageNotAllowed`, a Warning Event, and nothing applied.
//!
//! Users are real RBAC subjects, reached through impersonation.

use chat_operator::admission::policy::ALLOWED_IMAGE_PREFIXES_KEY;
use chat_operator::admission::tenant::{self, Patterns, TenantPolicy};
use chat_operator::admission::{SECRET_LIST_REFERENCES, SECRET_REFERENCES};
use chat_operator::api::ChatCluster;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::Ingress;
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use test_harness::kube::{ControlPlane, Impersonation};
use tokio::sync::OnceCell;

use crate::support::*;

static POLICY: OnceCell<()> = OnceCell::const_new();

/// Installs the generated policy (cluster-wide; it does nothing until a binding selects a
/// namespace, so other tests are not affected).
async fn install_policy(cp: &ControlPlane) {
    POLICY
        .get_or_init(|| async {
            kubectl_ok(
                cp,
                &[
                    "apply",
                    "--server-side",
                    "-f",
                    repo("config/admission/validatingadmissionpolicy.yaml")
                        .to_str()
                        .unwrap(),
                ],
            );
            // The API server type-checks the policy's CEL against the ChatCluster schema and
            // reports in status: no warning may be there.
            let status = wait_for("the policy's type check", || async {
                let (ok, out, _) = kubectl(
                    cp,
                    &[
                        "get",
                        "validatingadmissionpolicy",
                        chat_operator::admission::policy::POLICY_NAME,
                        "-o",
                        "jsonpath={.status}",
                    ],
                );
                let status: Value = serde_json::from_str(&out).ok()?;
                (ok && status["observedGeneration"].as_i64().is_some()).then_some(status)
            })
            .await;
            assert!(
                status["typeChecking"]["expressionWarnings"].is_null(),
                "the policy does not type-check: {status:#}"
            );
        })
        .await;
}

/// Binds the policy to `ns` only, with `allowed` as its image allow-list (a ConfigMap in `ns`),
/// as the chart's binding does for its release namespace. Returns the binding's name.
fn bind_policy(cp: &ControlPlane, ns: &str, allowed: &str) -> String {
    bind_policy_with(cp, ns, json!({ALLOWED_IMAGE_PREFIXES_KEY: allowed}))
}

/// [`bind_policy`] with `data` as the parameter ConfigMap's data.
fn bind_policy_with(cp: &ControlPlane, ns: &str, data: Value) -> String {
    let binding = format!("chat-admission-{ns}");
    let objects = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": {"name": "chat-admission", "namespace": ns},
         "data": data},
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
         "metadata": {"name": binding},
         "spec": {
            "policyName": chat_operator::admission::policy::POLICY_NAME,
            "validationActions": ["Deny"],
            "paramRef": {"name": "chat-admission", "namespace": ns, "parameterNotFoundAction": "Deny"},
            "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}}
         }},
    ]});
    let (ok, _, stderr) = kubectl_stdin(cp, &["apply", "-f", "-"], &objects.to_string());
    assert!(ok, "{stderr}");
    binding
}

/// RBAC: `alice` may do anything with ChatClusters in `ns` and nothing with Secrets; `bob`
/// may also `get` the Secret `jwt` (by name, nothing else).
fn grant_users(cp: &ControlPlane, ns: &str) {
    let rbac = |kind: &str, name: &str, body: Value| {
        let mut object = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind,
            "metadata": {"name": name, "namespace": ns}});
        object
            .as_object_mut()
            .unwrap()
            .extend(body.as_object().unwrap().clone());
        object
    };
    let binding = |name: &str, role: &str, users: &[&str]| {
        rbac(
            "RoleBinding",
            name,
            json!({"roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
                   "subjects": users.iter().map(|u| json!({"kind": "User", "name": u, "apiGroup": "rbac.authorization.k8s.io"})).collect::<Vec<_>>()}),
        )
    };
    let objects = json!({"apiVersion": "v1", "kind": "List", "items": [
        rbac("Role", "chat-editor", json!({"rules": [{"apiGroups": ["realtime.dev"], "resources": ["chatclusters"], "verbs": ["*"]}]})),
        rbac("Role", "jwt-reader", json!({"rules": [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["jwt"], "verbs": ["get"]}]})),
        binding("chat-editors", "chat-editor", &["alice", "bob"]),
        binding("jwt-readers", "jwt-reader", &["bob"]),
    ]});
    let (ok, _, stderr) = kubectl_stdin(cp, &["apply", "-f", "-"], &objects.to_string());
    assert!(ok, "{stderr}");
}

fn user(cp: &ControlPlane, name: &str) -> Client {
    cp.client_as(&Impersonation {
        user: name.into(),
        groups: vec!["system:authenticated".into()],
    })
}

fn cluster(name: &str, spec: Value) -> ChatCluster {
    serde_json::from_value(json!({
        "apiVersion": "realtime.dev/v1alpha1", "kind": "ChatCluster",
        "metadata": {"name": name}, "spec": spec,
    }))
    .unwrap()
}

/// Creates (dry run unless `persist`) as `user` in `ns`; the refusal message or Ok.
async fn create(
    user: &Client,
    ns: &str,
    name: &str,
    spec: Value,
    persist: bool,
) -> Result<(), String> {
    let api: Api<ChatCluster> = Api::namespaced(user.clone(), ns);
    let params = PostParams {
        dry_run: !persist,
        ..PostParams::default()
    };
    api.create(&params, &cluster(name, spec))
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

/// A spec that sets the Secret reference `field` to `name` (and whatever that field needs to
/// be valid), for each field of the table.
fn spec_naming(field: &str, name: &str) -> Value {
    let key = json!({"name": name, "key": "k"});
    match field {
        "spec.auth.jwtSecretRef" => json!({"auth": {"jwtSecretRef": {"name": name}}}),
        "spec.auth.jwtPublicKeyRef" => json!({"auth": {"jwtPublicKeyRef": {"name": name}}}),
        "spec.redis.passwordSecretRef" => {
            json!({"redis": {"mode": "external", "url": "redis://r:6379", "passwordSecretRef": {"name": name}}})
        }
        "spec.redis.caSecretRef" => {
            json!({"redis": {"mode": "external", "url": "rediss://r:6379", "caSecretRef": {"name": name}}})
        }
        "spec.ingress.tlsSecretName" => {
            json!({"anonymous": true, "ingress": {"host": "chat.example.com", "tlsSecretName": name}})
        }
        "spec.observability.collector.caSecretRef" => {
            json!({"observability": {"collector": {"endpoint": "https://otel:4317", "caSecretRef": {"name": name}}}})
        }
        "spec.observability.collector.traces.headersSecretRef" => {
            json!({"observability": {"collector": {"traces": {"endpoint": "http://tempo:4317",
                "headersSecretRef": {"name": name, "headers": ["Authorization"]}}}}})
        }
        "spec.observability.collector.logs.headersSecretRef" => {
            json!({"observability": {"collector": {"logs": {"endpoint": "http://loki:3100/otlp",
                "headersSecretRef": {"name": name, "headers": ["X-Scope-OrgID", "Authorization"]}}}}})
        }
        "spec.alerting.critical.pagerDuty.routingKeySecretRef" => {
            json!({"alerting": {"critical": {"pagerDuty": {"routingKeySecretRef": key}}}})
        }
        "spec.alerting.critical.opsGenie.apiKeySecretRef" => {
            json!({"alerting": {"critical": {"opsGenie": {"apiKeySecretRef": key}}}})
        }
        "spec.imagePullSecrets" => json!({"imagePullSecrets": [{"name": name}]}),
        "spec.alerting.warning.slack.apiUrlSecretRef" => {
            json!({"alerting": {"warning": {"slack": {"apiUrlSecretRef": key}}}})
        }
        "spec.alerting.info.slack.apiUrlSecretRef" => {
            json!({"alerting": {"info": {"slack": {"apiUrlSecretRef": key}}}})
        }
        other => panic!("no spec for {other}: add one"),
    }
}

#[tokio::test]
async fn the_admission_policy_refuses_secrets_the_author_cannot_read_and_foreign_images() {
    let cp = control_plane().await;
    install_policy(cp).await;
    cp.with_temp_ns("admission", |client, ns| async move {
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        for name in ["jwt", "other"] {
            let secret: Secret = serde_json::from_value(json!({"metadata": {"name": name},
                "stringData": {"secret": "0123456789abcdef0123456789abcdef"}}))
            .unwrap();
            secrets.create(&PostParams::default(), &secret).await.unwrap();
        }
        grant_users(cp, &ns);
        let binding = bind_policy(cp, &ns, "ghcr.io/chatcluster/, registry.example.invalid/team");
        let alice = user(cp, "alice");
        let bob = user(cp, "bob");

        // The binding takes effect asynchronously: wait until the API server applies it.
        let jwt = json!({"auth": {"jwtSecretRef": {"name": "jwt"}}});
        let refusal = wait_for("the policy binding to take effect", || async {
            create(&alice, &ns, "probe", jwt.clone(), false).await.err()
        })
        .await;
        assert!(
            refusal.contains("spec.auth.jwtSecretRef names Secret jwt")
                && refusal.contains(&format!("namespace {ns}")),
            "{refusal}"
        );

        // Every Secret reference of the table, one at a time: alice is refused, naming it.
        let mut refused_for_alice = 0;
        for reference in SECRET_REFERENCES.iter().chain(SECRET_LIST_REFERENCES) {
            let spec = spec_naming(reference.field, "jwt");
            let refused = create(&alice, &ns, "each", spec.clone(), false)
                .await
                .expect_err(reference.field);
            assert!(
                refused.contains(&format!("{} names Secret jwt", reference.field)),
                "{}: {refused}",
                reference.field
            );
            refused_for_alice += 1;
            // bob may read `jwt`: the same object is admitted.
            create(&bob, &ns, "each", spec, false)
                .await
                .unwrap_or_else(|e| panic!("{}: bob refused: {e}", reference.field));
            // ...but not `other`.
            let refused = create(&bob, &ns, "each", spec_naming(reference.field, "other"), false)
                .await
                .expect_err(reference.field);
            assert!(refused.contains("names Secret other"), "{refused}");
        }

        // 13 references, the OTLP header Secrets of traces and logs, the info alerts' Slack
        // URL and the image pull Secrets among them.
        assert_eq!(refused_for_alice, 13);

        // Two at once: bob may read one, not the other: refused, naming the other.
        let both = json!({"auth": {"jwtSecretRef": {"name": "jwt"}},
            "redis": {"mode": "external", "url": "redis://r:6379", "passwordSecretRef": {"name": "other"}}});
        let refused = create(&bob, &ns, "both", both, false).await.unwrap_err();
        assert!(
            refused.contains("spec.redis.passwordSecretRef names Secret other")
                && !refused.contains("Secret jwt"),
            "{refused}"
        );

        // A list of pull Secrets: one bob may not read refuses the list, which the message
        // names whole (the message may not ask the authorizer which one).
        let pulls = json!({"imagePullSecrets": [{"name": "jwt"}, {"name": "other"}]});
        let refused = create(&bob, &ns, "pulls", pulls, false).await.unwrap_err();
        assert!(
            refused.contains("spec.imagePullSecrets names Secret jwt or Secret other, which you may not get"),
            "{refused}"
        );

        // Images: outside the list, refused for anyone (bob too); at a boundary only.
        for (field, spec) in [
            ("spec.image", json!({"image": "docker.io/attacker/reads-secrets:1"})),
            ("spec.image", json!({"image": "ghcr.io/chatcluster-evil/chat-node:1"})),
            ("spec.image", json!({"image": "registry.example.invalid/teamx/chat-node:1"})),
            ("spec.redis.image", json!({"redis": {"mode": "managed", "image": "docker.io/attacker/redis:7"}})),
            ("spec.observability.collector.image", json!({"observability": {"collector": {"image": "docker.io/attacker/otel:1"}}})),
        ] {
            let refused = create(&bob, &ns, "img", spec.clone(), false)
                .await
                .expect_err(field);
            assert!(
                refused.contains(&format!("{field} is "))
                    && refused.contains("not in the operator's allow-list"),
                "{spec}: {refused}"
            );
        }
        for image in [
            "ghcr.io/chatcluster/chat-node:9.9.9",
            "registry.example.invalid/team/chat-node@sha256:0123",
        ] {
            create(&alice, &ns, "img", json!({"image": image}), false)
                .await
                .unwrap_or_else(|e| panic!("{image}: {e}"));
        }

        // Edits: bob's cluster names `jwt`; alice may scale it (the reference is unchanged)
        // but not point it elsewhere, nor move the same Secret to another field.
        create(&bob, &ns, "bobs", jwt.clone(), true).await.unwrap();
        let alices: Api<ChatCluster> = Api::namespaced(alice.clone(), &ns);
        alices
            .patch("bobs", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 3}})))
            .await
            .expect("alice scales a cluster whose references she does not change");
        let refused = alices
            .patch(
                "bobs",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"auth": {"jwtSecretRef": null, "jwtPublicKeyRef": {"name": "jwt"}}}})),
            )
            .await
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains("spec.auth.jwtPublicKeyRef names Secret jwt"),
            "{refused}"
        );
        let stored: ChatCluster = Api::namespaced(client.clone(), &ns).get("bobs").await.unwrap();
        assert_eq!(stored.spec.replicas, Some(3));
        assert_eq!(
            stored.spec.auth.unwrap().jwt_secret_ref.unwrap().name,
            "jwt",
            "the refused edit changed nothing"
        );

        // Without its parameter the policy refuses everything rather than allow any image.
        kubectl_ok(cp, &["delete", "configmap", "chat-admission", "-n", &ns]);
        wait_for("a refusal without the parameter", || async {
            create(&bob, &ns, "noparam", json!({}), false).await.err()
        })
        .await;

        kubectl_ok(
            cp,
            &["delete", "validatingadmissionpolicybinding", &binding, "--wait=false"],
        );
    })
    .await;
}

/// What the reconciler says about `spec` under `policy`: the admission policy must say the same.
fn reconciler_says(policy: &TenantPolicy, spec: &Value) -> Vec<String> {
    let found = policy.violations(&serde_json::from_value(spec.clone()).unwrap());
    assert!(!found.is_empty(), "{spec} breaks nothing");
    found
}

#[tokio::test]
async fn the_admission_policy_enforces_the_tenant_policy() {
    let cp = control_plane().await;
    install_policy(cp).await;
    cp.with_temp_ns("admission-tenant", |client, ns| async move {
        grant_users(cp, &ns);
        // The parameter holds only the image list: the tenant policy's defaults apply, as they
        // do for an operator started without the flags.
        let binding = bind_policy_with(cp, &ns, json!({ALLOWED_IMAGE_PREFIXES_KEY: "ghcr.io/chatcluster/"}));
        let alice = user(cp, "alice");
        let defaults = TenantPolicy::default();
        let snippet = json!({"anonymous": true, "ingress": {"host": "chat.example.com", "annotations": {
            "nginx.ingress.kubernetes.io/configuration-snippet": "location /x { proxy_pass http://kubernetes.default; }",
            "nginx.ingress.kubernetes.io/proxy-read-timeout": "3600"}}});
        let refused = wait_for("the policy binding to take effect", || async {
            create(&alice, &ns, "snippet", snippet.clone(), false).await.err()
        })
        .await;
        assert!(
            refused.contains("refused by the operator's tenant policy: spec.ingress.annotations sets nginx.ingress.kubernetes.io/configuration-snippet (refused: *-snippet,*-snippets)"),
            "{refused}"
        );
        assert!(!refused.contains("proxy-read-timeout"), "{refused}");

        // Each default, one at a time, refused with the reconciler's own message.
        let refusals = [
            snippet.clone(),
            json!({"anonymous": true, "ingress": {"host": "chat.example.com", "annotations": {
                "nginx.ingress.kubernetes.io/server-snippets": "x"}}}),
            json!({"podTemplate": {"priorityClassName": "system-node-critical"}}),
            json!({"podTemplate": {"priorityClassName": "system-cluster-critical"}}),
            json!({"podTemplate": {"tolerations": [
                {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"}]}}),
            json!({"podTemplate": {"tolerations": [{"operator": "Exists"}]}}),
        ];
        for spec in &refusals {
            let refused = create(&alice, &ns, "each", spec.clone(), false)
                .await
                .expect_err(&spec.to_string());
            for part in reconciler_says(&defaults, spec) {
                assert!(refused.contains(&part), "{part} not in: {refused}");
            }
        }
        // All at once: every violation in one message.
        let all = json!({"anonymous": true,
            "ingress": {"host": "chat.example.com", "annotations": {
                "nginx.ingress.kubernetes.io/configuration-snippet": "x",
                "nginx.ingress.kubernetes.io/auth-snippet": "y"}},
            "podTemplate": {"priorityClassName": "system-node-critical", "tolerations": [
                {"key": "node-role.kubernetes.io/master", "operator": "Exists"},
                {"operator": "Exists"}]}});
        let refused = create(&alice, &ns, "all", all.clone(), false).await.unwrap_err();
        let expected = reconciler_says(&defaults, &all);
        assert_eq!(expected.len(), 5);
        for part in &expected {
            assert!(refused.contains(part.as_str()), "{part} not in: {refused}");
        }
        // Within the defaults: admitted (any host, a harmless annotation, a team's class and
        // taint). `kept` is stored, for the edit below.
        let fine = json!({"anonymous": true,
            "ingress": {"host": "pay.example.com", "annotations": {"nginx.ingress.kubernetes.io/proxy-read-timeout": "3600"}},
            "podTemplate": {"priorityClassName": "tier1", "tolerations": [
                {"key": "dedicated", "operator": "Equal", "value": "chat", "effect": "NoSchedule"},
                {"key": "node-role.kubernetes.io-not/control-plane", "operator": "Exists"}]}});
        assert!(defaults.violations(&serde_json::from_value(fine.clone()).unwrap()).is_empty());
        create(&alice, &ns, "kept", fine.clone(), true)
            .await
            .unwrap_or_else(|e| panic!("within the defaults: {e}"));

        // The lists from the parameter, as the chart writes them from `operator.tenantPolicy`:
        // hosts limited to the team's domain, `tier[1]` (RE2 specials match themselves) and the
        // team's `tier*` denied, no toleration key denied (so a keyless one is fine).
        let params: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client.clone(), &ns);
        params
            .patch(
                "chat-admission",
                &PatchParams::default(),
                &Patch::Merge(json!({"data": {
                    tenant::ALLOWED_INGRESS_HOSTS.key: "*.team-a.example.com, chat.example.com",
                    tenant::DENIED_PRIORITY_CLASSES.key: "system-*,tier[1],gold*",
                    tenant::DENIED_TOLERATION_KEYS.key: "",
                }})),
            )
            .await
            .unwrap();
        let narrowed = TenantPolicy {
            allowed_ingress_hosts: Patterns::parse("*.team-a.example.com,chat.example.com"),
            denied_priority_classes: Patterns::parse("system-*,tier[1],gold*"),
            denied_toleration_keys: Patterns::parse(""),
            ..TenantPolicy::default()
        };
        let host = |h: &str| json!({"anonymous": true, "ingress": {"host": h}});
        let refused = wait_for("the new parameter to take effect", || async {
            create(&alice, &ns, "host", host("pay.example.com"), false).await.err()
        })
        .await;
        assert!(
            refused.contains("spec.ingress.host is pay.example.com (allowed: *.team-a.example.com,chat.example.com)"),
            "{refused}"
        );
        for (what, spec) in [
            ("the bare domain", host("team-a.example.com")),
            ("a suffix after the domain", host("chat.team-a.example.com.evil.io")),
            ("`.` is not any character", host("a.team-axexample.com")),
            ("a prefix before an exact entry", host("xchat.example.com")),
            ("a class of the parameter", json!({"podTemplate": {"priorityClassName": "gold-plus"}})),
            ("`[1]` matches itself", json!({"podTemplate": {"priorityClassName": "tier[1]"}})),
        ] {
            let refused = create(&alice, &ns, "narrow", spec.clone(), false)
                .await
                .expect_err(what);
            for part in reconciler_says(&narrowed, &spec) {
                assert!(refused.contains(&part), "{what}: {part} not in: {refused}");
            }
        }
        for (what, spec) in [
            ("a host of the domain", host("chat.team-a.example.com")),
            ("an exact host", host("chat.example.com")),
            ("`[1]` is not a character class", json!({"podTemplate": {"priorityClassName": "tier1"}})),
            ("no toleration key denied", json!({"podTemplate": {"tolerations": [
                {"operator": "Exists"}, {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}]}})),
        ] {
            assert!(
                narrowed.violations(&serde_json::from_value(spec.clone()).unwrap()).is_empty(),
                "{what}"
            );
            create(&alice, &ns, "narrow", spec, false)
                .await
                .unwrap_or_else(|e| panic!("{what}: {e}"));
        }

        // `kept` now breaks the narrowed list (its host), as an object admitted before a
        // list was narrowed does: an edit that leaves those values alone is admitted (the
        // reconciler still refuses to apply it); one that sets another refused value is not.
        let clusters: Api<ChatCluster> = Api::namespaced(alice.clone(), &ns);
        clusters
            .patch("kept", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 3}})))
            .await
            .expect("an edit that keeps the refused values as they were");
        let refused = clusters
            .patch(
                "kept",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"podTemplate": {"priorityClassName": "gold"}}})),
            )
            .await
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains("spec.podTemplate.priorityClassName is gold (refused: system-*,tier[1],gold*)")
                && !refused.contains("spec.ingress.host"),
            "{refused}"
        );
        let stored: ChatCluster = Api::namespaced(client.clone(), &ns).get("kept").await.unwrap();
        assert_eq!(stored.spec.replicas, Some(3));
        assert_eq!(
            stored.spec.pod_template().priority_class_name.as_deref(),
            Some("tier1"),
            "the refused edit changed nothing"
        );

        kubectl_ok(
            cp,
            &["delete", "validatingadmissionpolicybinding", &binding, "--wait=false"],
        );
    })
    .await;
}

#[tokio::test]
async fn the_reconciler_refuses_images_outside_the_allow_list() {
    let cp = control_plane().await;
    cp.with_temp_ns("image-allow", |client, ns| async move {
        grant_operator_rbac(&client, &ns).await;
        // The default allow-list: the project's registry.
        let operator = start_operator(cp, &ns).await;
        let clusters: Api<ChatCluster> = Api::namespaced(client.clone(), &ns);
        let evil = "docker.io/attacker/reads-secrets:1";
        clusters
            .create(
                &PostParams::default(),
                &cluster("evil", json!({"image": evil, "redis": {"mode": "managed", "image": "docker.io/attacker/redis:7"}})),
            )
            .await
            .unwrap();
        let degraded = wait_for("Degraded / ImageNotAllowed", || async {
            let c = clusters.get("evil").await.ok()?;
            let cond = c.status?.condition("Degraded")?.clone();
            (cond.status == "True" && cond.reason == "ImageNotAllowed").then_some(cond)
        })
        .await;
        assert!(
            degraded.message.contains(&format!("spec.image is {evil}"))
                && degraded.message.contains("spec.redis.image is docker.io/attacker/redis:7")
                && degraded.message.contains("ghcr.io/chatcluster/"),
            "{}",
            degraded.message
        );
        let events: Api<Event> = Api::namespaced(client.clone(), &ns);
        wait_for("a Warning Event ImageNotAllowed", || async {
            let list = events.list(&ListParams::default()).await.ok()?;
            list.items.into_iter().find(|e| {
                e.reason.as_deref() == Some("ImageNotAllowed")
                    && e.type_.as_deref() == Some("Warning")
                    && e.note.as_deref().unwrap_or_default().contains(evil)
            })
        })
        .await;
        operator.wait_for_more_runs(2).await;
        // Nothing was applied: no Deployment, no StatefulSet, no Redis Secret.
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        assert!(deployments.list(&ListParams::default()).await.unwrap().items.is_empty());
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        assert!(secrets.get_opt("evil-redis-auth").await.unwrap().is_none());

        // An allowed image: reconciled.
        clusters
            .patch(
                "evil",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"image": "ghcr.io/chatcluster/chat-node:9.9.9", "redis": {"image": null}}})),
            )
            .await
            .unwrap();
        let d: Deployment = wait_for_object(&client, &ns, "evil").await;
        assert_eq!(
            d.spec.unwrap().template.spec.unwrap().containers[0].image.as_deref(),
            Some("ghcr.io/chatcluster/chat-node:9.9.9")
        );
        operator.stop().await;
    })
    .await;
}

#[tokio::test]
async fn the_reconciler_refuses_snippets_system_priority_and_control_plane_tolerations() {
    let cp = control_plane().await;
    cp.with_temp_ns("tenant-policy", |client, ns| async move {
        grant_operator_rbac(&client, &ns).await;
        // The defaults, plus hosts limited to the team's domain.
        let operator =
            start_operator_with(cp, &ns, &["--allowed-ingress-hosts", "*.team-a.example.com"])
                .await;
        let clusters: Api<ChatCluster> = Api::namespaced(client.clone(), &ns);
        let spec = json!({
            "anonymous": true,
            "ingress": {"host": "pay.example.com", "annotations": {
                "nginx.ingress.kubernetes.io/server-snippet": "location /x { proxy_pass http://kubernetes.default; }",
                "nginx.ingress.kubernetes.io/proxy-read-timeout": "3600"}},
            "podTemplate": {"priorityClassName": "system-node-critical", "tolerations": [
                {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"},
                {"operator": "Exists"}]}
        });
        clusters
            .create(&PostParams::default(), &cluster("greedy", spec))
            .await
            .unwrap();
        let degraded = wait_for("Degraded / PolicyViolation", || async {
            let c = clusters.get("greedy").await.ok()?;
            let cond = c.status?.condition("Degraded")?.clone();
            (cond.status == "True" && cond.reason == "PolicyViolation").then_some(cond)
        })
        .await;
        let refused = [
            "spec.ingress.annotations sets nginx.ingress.kubernetes.io/server-snippet",
            "spec.ingress.host is pay.example.com (allowed: *.team-a.example.com)",
            "spec.podTemplate.priorityClassName is system-node-critical",
            "spec.podTemplate.tolerations tolerates node-role.kubernetes.io/control-plane",
            "a toleration without a key",
        ];
        for part in refused {
            assert!(degraded.message.contains(part), "{part} not in: {}", degraded.message);
        }
        assert!(!degraded.message.contains("proxy-read-timeout"), "{}", degraded.message);
        let events: Api<Event> = Api::namespaced(client.clone(), &ns);
        wait_for("a Warning Event PolicyViolation", || async {
            let list = events.list(&ListParams::default()).await.ok()?;
            list.items.into_iter().find(|e| {
                e.reason.as_deref() == Some("PolicyViolation")
                    && e.note.as_deref().unwrap_or_default().contains("server-snippet")
            })
        })
        .await;
        operator.wait_for_more_runs(2).await;
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        assert!(deployments.list(&ListParams::default()).await.unwrap().items.is_empty());
        let ingresses: Api<Ingress> = Api::namespaced(client.clone(), &ns);
        assert!(ingresses.list(&ListParams::default()).await.unwrap().items.is_empty());

        // Within the policy: reconciled, the harmless annotation kept.
        clusters
            .patch(
                "greedy",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {
                    "ingress": {"host": "chat.team-a.example.com", "annotations": {
                        "nginx.ingress.kubernetes.io/server-snippet": null}},
                    "podTemplate": null}})),
            )
            .await
            .unwrap();
        let ingress: Ingress = wait_for_object(&client, &ns, "greedy").await;
        let annotations = ingress.metadata.annotations.unwrap_or_default();
        assert_eq!(
            annotations.get("nginx.ingress.kubernetes.io/proxy-read-timeout").map(String::as_str),
            Some("3600")
        );
        assert!(!annotations.keys().any(|k| k.ends_with("-snippet")));
        operator.stop().await;
    })
    .await;
}
