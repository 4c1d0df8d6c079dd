use super::*;
use serde_json::json;

fn pod(spec: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "demo-7d9f-abcde", "namespace": "default", "labels": {"app": "chat"}},
        "spec": spec,
    }))
    .expect("valid pod")
}

fn secret(name: &str, key: &str, value: &str) -> (String, Secret) {
    let s: Secret = serde_json::from_value(json!({
        "metadata": {"name": name},
        "stringData": {},
    }))
    .expect("secret");
    let mut s = s;
    s.data = Some(
        [(
            key.to_string(),
            k8s_openapi::ByteString(value.as_bytes().to_vec()),
        )]
        .into(),
    );
    (name.to_string(), s)
}

fn programs() -> Programs {
    Programs {
        chat_node: "/bin/chat-node".into(),
        redis_server: "/usr/bin/redis-server".into(),
    }
}

fn chat_node_pod() -> Pod {
    pod(json!({
        "containers": [{
            "name": "chat-node",
            "image": "ghcr.io/chatcluster/chat-node:0.1.0",
            "ports": [{"name": "ws", "containerPort": 8080}, {"name": "admin", "containerPort": 9091}],
            "env": [
                {"name": "CHAT_LISTEN", "value": "0.0.0.0:8080"},
                {"name": "CHAT_ADMIN_LISTEN", "value": "[::]:9091"},
                {"name": "CHAT_NODE_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "REDIS_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "demo-redis-auth", "key": "password"}}},
                {"name": "CHAT_REDIS_URL", "value": "redis://:$(REDIS_PASSWORD)@demo-redis.default.svc:6379/0"},
                {"name": "CHAT_JWT_SECRET_FILE", "value": "/etc/chat/jwt/secret"},
                {"name": "LITERAL", "value": "$$(REDIS_PASSWORD) $(UNKNOWN)"}
            ],
            "volumeMounts": [{"name": "jwt", "mountPath": "/etc/chat/jwt", "readOnly": true}],
            "readinessProbe": {"httpGet": {"path": "/readyz", "port": "admin"}}
        }, {
            "name": "sidecar",
            "image": "example.com/unknown:1"
        }],
        "volumes": [{"name": "jwt", "secret": {"secretName": "jwt-key"}}]
    }))
}

#[test]
fn images_are_recognised_by_repository_name() {
    assert_eq!(
        ImageKind::of("ghcr.io/chatcluster/chat-node:0.1.0"),
        Some(ImageKind::ChatNode)
    );
    assert_eq!(ImageKind::of("redis:7.4-alpine"), Some(ImageKind::Redis));
    assert_eq!(
        ImageKind::of("docker.io/library/redis@sha256:abc"),
        Some(ImageKind::Redis)
    );
    assert_eq!(ImageKind::of("otel/opentelemetry-collector:0.1"), None);
}

#[test]
fn chat_node_pod_becomes_a_local_chat_node() {
    let pod = chat_node_pod();
    let (container, kind) = select_container(&pod).expect("known container");
    assert_eq!(kind, ImageKind::ChatNode);
    let secrets: BTreeMap<_, _> = [
        secret("demo-redis-auth", "password", "s3cret"),
        secret("jwt-key", "secret", "k"),
    ]
    .into();
    let services: ServiceTable =
        [("demo-redis.default.svc".to_string(), [(6379, 40001)].into())].into();
    let ports: BTreeMap<i32, u16> = [(8080, 41000), (9091, 41001)].into();
    let cmd = translate(
        &pod,
        container,
        kind,
        &ports,
        &Inputs {
            secrets: &secrets,
            config_maps: &BTreeMap::new(),
            services: &services,
            programs: &programs(),
            pod_dir: Path::new("/sb/pods/demo"),
        },
    )
    .expect("translates");
    let env: BTreeMap<_, _> = cmd.env.iter().cloned().collect();
    assert_eq!(env["CHAT_LISTEN"], "127.0.0.1:41000");
    assert_eq!(env["CHAT_ADMIN_LISTEN"], "127.0.0.1:41001");
    assert_eq!(env["CHAT_NODE_ID"], "demo-7d9f-abcde");
    assert_eq!(env["CHAT_REDIS_URL"], "redis://:s3cret@127.0.0.1:40001/0");
    assert_eq!(
        env["CHAT_JWT_SECRET_FILE"],
        "/sb/pods/demo/volumes/jwt/secret"
    );
    assert_eq!(env["LITERAL"], "$(REDIS_PASSWORD) $(UNKNOWN)");
    assert_eq!(cmd.program, PathBuf::from("/bin/chat-node"));
    assert!(cmd.args.is_empty());
    assert_eq!(
        cmd.files,
        vec![(
            PathBuf::from("/sb/pods/demo/volumes/jwt/secret"),
            b"k".to_vec()
        )]
    );
    assert_eq!(
        cmd.readiness,
        Readiness::Http {
            port: 41001,
            path: "/readyz".into()
        }
    );
}

#[test]
fn a_missing_secret_is_an_error_not_an_empty_value() {
    let pod = chat_node_pod();
    let (container, kind) = select_container(&pod).expect("known container");
    let err = translate(
        &pod,
        container,
        kind,
        &[(8080, 1), (9091, 2)].into(),
        &Inputs {
            secrets: &BTreeMap::new(),
            config_maps: &BTreeMap::new(),
            services: &ServiceTable::new(),
            programs: &programs(),
            pod_dir: Path::new("/x"),
        },
    )
    .expect_err("secret missing");
    assert_eq!(
        err,
        TranslateError::MissingSecret("jwt-key".into()),
        "volumes are resolved first"
    );
}

#[test]
fn redis_pod_runs_redis_server_on_its_mapped_port() {
    let pod = pod(json!({
        "containers": [{
            "name": "redis",
            "image": "redis:7.4",
            "command": ["redis-server"],
            "args": ["--requirepass", "$(REDIS_PASSWORD)", "--port", "6379", "--dir", "/data"],
            "ports": [{"name": "redis", "containerPort": 6379}],
            "env": [{"name": "REDIS_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "demo-redis-auth", "key": "password"}}}],
            "readinessProbe": {"exec": {"command": ["redis-cli", "ping"]}},
            "volumeMounts": [{"name": "data", "mountPath": "/data"}]
        }]
    }));
    let (container, kind) = select_container(&pod).expect("known container");
    let secrets: BTreeMap<_, _> = [secret("demo-redis-auth", "password", "pw")].into();
    let cmd = translate(
        &pod,
        container,
        kind,
        &[(6379, 40001)].into(),
        &Inputs {
            secrets: &secrets,
            config_maps: &BTreeMap::new(),
            services: &ServiceTable::new(),
            programs: &programs(),
            pod_dir: Path::new("/sb/pods/r"),
        },
    )
    .expect("translates");
    assert_eq!(cmd.program, PathBuf::from("/usr/bin/redis-server"));
    let args = cmd.args.join(" ");
    assert!(
        args.starts_with("--requirepass pw --port 6379 --dir /data"),
        "{args}"
    );
    assert!(
        args.ends_with(
            "--port 40001 --bind 127.0.0.1 --dir /sb/pods/r/data --daemonize no --logfile "
        ),
        "{args}"
    );
    assert_eq!(cmd.readiness, Readiness::Tcp { port: 40001 });
}

#[test]
fn expansion_follows_kubernetes_rules() {
    let env = vec![("A".to_string(), "1".to_string())];
    assert_eq!(expand("x$(A)y", &env), "x1y");
    assert_eq!(expand("$$(A)", &env), "$(A)");
    assert_eq!(expand("$(B) $ $(", &env), "$(B) $ $(");
}

#[test]
fn only_bind_addresses_and_known_services_are_rewritten() {
    let ports: BTreeMap<i32, u16> = [(8080, 5000)].into();
    let services: ServiceTable = [("demo".to_string(), [(8080, 6000)].into())].into();
    let m: Mounts = vec![];
    assert_eq!(
        rewrite_value(":8080", &ports, &services, &m),
        "127.0.0.1:5000"
    );
    assert_eq!(
        rewrite_value("http://demo:8080/x", &ports, &services, &m),
        "http://127.0.0.1:6000/x"
    );
    assert_eq!(
        rewrite_value("http://other:8080", &ports, &services, &m),
        "http://other:8080"
    );
    assert_eq!(
        rewrite_value("redis://:1234@x:9", &ports, &services, &m),
        "redis://:1234@x:9"
    );
}
