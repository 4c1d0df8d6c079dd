//! Invalid manifests are refused by the API server itself, with the CEL messages.

use crate::support::*;

fn manifest(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: realtime.dev/v1alpha1\nkind: ChatCluster\nmetadata:\n  name: {name}\nspec:\n{spec}"
    )
}

#[tokio::test]
async fn invalid_manifests_are_refused_with_clear_messages() {
    let cp = control_plane().await;
    cp.with_temp_ns("validation", |_client, ns| async move {
        let cases = [
            (
                "  redis:\n    mode: external\n",
                "spec.redis.url is required when spec.redis.mode is external",
            ),
            (
                "  ingress:\n    sessionAffinity: none\n    tlsSecretName: t\n",
                "spec.ingress.tlsSecretName needs spec.ingress.host",
            ),
            ("  replicas: -1\n", "spec.replicas"),
            ("  replicas: 100000\n", "spec.replicas"),
            (
                "  node:\n    drainTimeout: soon\n",
                "drainTimeout must be a duration",
            ),
            (
                "  node:\n    drainTimeout: 2h\n",
                "drainTimeout must be a duration between 0s and 1h",
            ),
            (
                "  node:\n    heartbeatInterval: 10ms\n",
                "heartbeatInterval must be a duration between 1s and 10m",
            ),
            (
                "  node:\n    maxConnections: 0\n",
                "spec.node.maxConnections",
            ),
            (
                "  redis:\n    mode: external\n    url: http://x\n",
                "spec.redis.url must start with redis://",
            ),
            (
                "  redis:\n    mode: managed\n    url: redis://x\n",
                "apply only to mode external",
            ),
            (
                "  redis:\n    mode: managed\n    caSecretRef:\n      name: ca\n",
                "apply only to mode external",
            ),
            (
                "  redis:\n    mode: external\n    url: redis://x\n    caSecretRef:\n      name: ca\n",
                "spec.redis.caSecretRef needs a TLS URL",
            ),
            ("  redis:\n    mode: sideways\n", "spec.redis.mode"),
            (
                "  observability:\n    collector:\n      endpoint: http://otel:4317\n      caSecretRef:\n        name: ca\n",
                "spec.observability.collector.caSecretRef needs an https:// endpoint",
            ),
            (
                "  observability:\n    collector:\n      caSecretRef:\n        name: ca\n",
                "spec.observability.collector.caSecretRef needs an https:// endpoint",
            ),
            (
                "  auth: {}\n",
                "set exactly one of spec.auth.jwtSecretRef and spec.auth.jwtPublicKeyRef",
            ),
            (
                "  redis:\n    mode: managed\n    maxMemory: 512Ki\n",
                "spec.redis.maxMemory must be a quantity of at least 1Mi, e.g. 256Mi",
            ),
            (
                "  redis:\n    mode: managed\n    maxMemory: lots\n",
                "spec.redis.maxMemory must be a quantity of at least 1Mi",
            ),
            (
                "  redis:\n    mode: managed\n    maxMemoryPolicy: allkeys-newest\n",
                "Unsupported value: \"allkeys-newest\"",
            ),
            (
                "  redis:\n    mode: external\n    url: redis://r:6379\n    maxMemory: 64Mi\n",
                "maxMemory, maxMemoryPolicy and replicas apply only to mode managed",
            ),
            (
                "  ingress: {}\n",
                "spec.ingress makes the cluster reachable from outside: configure spec.auth, or set spec.anonymous: true",
            ),
            (
                "  anonymous: false\n  ingress:\n    provider: gateway\n    gateway:\n      name: traefik\n",
                "configure spec.auth, or set spec.anonymous: true",
            ),
            (
                "  anonymous: true\n  ingress:\n    sessionAffinity: clientIP\n",
                "spec.ingress.sessionAffinity clientIP is not available with provider traefik (the default)",
            ),
            (
                "  anonymous: true\n  ingress:\n    provider: traefik\n    sessionAffinity: clientIP\n",
                "every client of one Traefik replica would stick to one chat-node",
            ),
            (
                "  anonymous: true\n  auth:\n    jwtSecretRef:\n      name: jwt\n",
                "spec.anonymous: true and spec.auth contradict each other",
            ),
            (
                "  podTemplate:\n    labels:\n      app.kubernetes.io/name: x\n",
                "may not set app.kubernetes.io/* labels",
            ),
            (
                "  ingress:\n    host: Not_A_Host\n",
                "spec.ingress.host must be a lowercase DNS name",
            ),
            (
                "  ingress:\n    provider: gateway\n",
                "spec.ingress.gateway is required with provider gateway: name the Gateway the HTTPRoute attaches to",
            ),
            (
                "  ingress:\n    gateway:\n      name: traefik\n",
                "spec.ingress.gateway applies only to provider gateway",
            ),
            (
                "  ingress:\n    provider: traefik\n    gateway:\n      name: traefik\n",
                "spec.ingress.gateway applies only to provider gateway",
            ),
            (
                "  ingress:\n    provider: gateway\n    gateway:\n      name: traefik\n    sessionAffinity: cookie\n",
                "spec.ingress.sessionAffinity must be none with provider gateway: the standard channel of Gateway API v1.4.0 has no sessionPersistence on HTTPRoute (it is experimental) and Traefik v3.6's Gateway provider does not implement it",
            ),
            (
                "  ingress:\n    provider: gateway\n    gateway:\n      name: traefik\n    sessionAffinity: clientIP\n",
                "spec.ingress.sessionAffinity must be none with provider gateway",
            ),
            (
                "  ingress:\n    provider: gateway\n    gateway:\n      name: traefik\n    className: traefik\n",
                "spec.ingress.className does not apply to provider gateway",
            ),
            (
                "  ingress:\n    provider: gateway\n    gateway:\n      name: traefik\n    host: chat.example.com\n    tlsSecretName: tls\n",
                "spec.ingress.tlsSecretName does not apply to provider gateway: TLS terminates at the Gateway's listener",
            ),
            (
                "  ingress:\n    provider: gateway\n    gateway:\n      name: traefik\n    cookieName: sticky\n",
                "spec.ingress.cookieName does not apply to provider gateway",
            ),
            (
                "  ingress:\n    provider: gateway\n    gateway:\n      namespace: traefik\n",
                "spec.ingress.gateway.name",
            ),
            (
                "  channels:\n    namespaces:\n      - name: typing\n      - name: typing\n",
                "spec.channels.namespaces lists a name twice",
            ),
            (
                "  channels:\n    namespaces:\n      - name: chat:room\n",
                "a channel namespace name is 1-64 characters of A-Z a-z 0-9 _ - . /",
            ),
            (
                "  channels:\n    namespaces:\n      - presence: true\n",
                "spec.channels.namespaces[0].name: Required value",
            ),
            (
                "  channels:\n    defaults:\n      history:\n        ttl: forever\n",
                "history.ttl must be a duration of at least 1s",
            ),
            (
                "  channels:\n    namespaces:\n      - name: chat\n        history:\n          size: -1\n",
                "spec.channels.namespaces[0].history.size",
            ),
        ];
        for (i, (spec, message)) in cases.iter().enumerate() {
            let doc = manifest(&format!("bad-{i}"), spec);
            let (ok, _, stderr) = kubectl_stdin(cp, &["apply", "-n", &ns, "-f", "-"], &doc);
            assert!(!ok, "accepted:\n{doc}");
            assert!(
                stderr.contains(message),
                "for\n{doc}\nexpected {message:?} in: {stderr}"
            );
        }

        // Cookie affinity needs no host: the Ingress then answers every host name (ingress-nginx
        // and Traefik both keep the cookie on a host-less rule). Valid provider gateway specs.
        for (i, spec) in [
            "  anonymous: true\n  ingress: {}\n",
            "  redis:\n    mode: managed\n    maxMemory: 64Mi\n    maxMemoryPolicy: noeviction\n",
            "  redis:\n    mode: managed\n    maxMemory: 1Gi\n",
            "  channels:\n    defaults:\n      anonymousSubscribe: false\n    namespaces:\n      - name: typing\n        history:\n          enabled: false\n      - name: default\n        presence: true\n        history:\n          size: 0\n          ttl: 90m\n",
            "  anonymous: true\n  ingress:\n    sessionAffinity: cookie\n    cookieName: sticky\n",
            "  anonymous: true\n  ingress:\n    provider: nginx\n    sessionAffinity: clientIP\n",
            "  anonymous: true\n  ingress:\n    provider: traefik\n    sessionAffinity: cookie\n",
            // Provider gateway: only the Gateway's name is needed; affinity none is allowed.
            "  anonymous: true\n  ingress:\n    provider: gateway\n    gateway:\n      name: traefik\n",
            "  anonymous: true\n  ingress:\n    provider: gateway\n    gateway:\n      name: traefik\n      namespace: traefik\n      sectionName: web\n    host: chat.example.com\n    sessionAffinity: none\n    annotations:\n      team: chat\n",
        ]
        .iter()
        .enumerate()
        {
            let doc = manifest(&format!("hostless-{i}"), spec);
            let (ok, _, stderr) = kubectl_stdin(cp, &["apply", "-n", &ns, "-f", "-"], &doc);
            assert!(ok, "refused:\n{doc}\n{stderr}");
        }

        // Names every child name derives from: refused when some child could never be created
        // (a dotted name is no Service name; 47 characters overflow the managed Redis'
        // `controller-revision-hash` label), accepted up to the limit.
        let longest = format!("n{}", "x".repeat(45));
        assert_eq!(longest.len(), chat_operator::api::MAX_NAME_LENGTH);
        for name in ["chat.example", "1chat", &format!("{longest}x")] {
            let doc = manifest(name, "  replicas: 1\n");
            let (ok, _, stderr) = kubectl_stdin(cp, &["apply", "-n", &ns, "-f", "-"], &doc);
            assert!(!ok, "accepted the name {name:?}");
            assert!(
                stderr.contains("metadata.name must be at most 46 characters"),
                "{name}: {stderr}"
            );
        }
        let doc = manifest(&longest, "  replicas: 1\n");
        let (ok, _, stderr) = kubectl_stdin(cp, &["apply", "-n", &ns, "-f", "-"], &doc);
        assert!(ok, "refused a {}-character name: {stderr}", longest.len());

        // A valid cluster is accepted; then its Redis mode cannot change.
        let valid = manifest("good", "  redis:\n    mode: managed\n");
        let (ok, _, stderr) = kubectl_stdin(cp, &["apply", "-n", &ns, "-f", "-"], &valid);
        assert!(ok, "{stderr}");
        let changed = manifest(
            "good",
            "  redis:\n    mode: external\n    url: redis://elsewhere:6379\n",
        );
        let (ok, _, stderr) = kubectl_stdin(cp, &["apply", "-n", &ns, "-f", "-"], &changed);
        assert!(!ok);
        assert!(stderr.contains("spec.redis.mode is immutable"), "{stderr}");
        // Dropping spec.redis means managed, so that is allowed.
        let (ok, _, stderr) = kubectl_stdin(
            cp,
            &["apply", "-n", &ns, "-f", "-"],
            &manifest("good", "  replicas: 1\n"),
        );
        assert!(ok, "{stderr}");
    })
    .await;
}
