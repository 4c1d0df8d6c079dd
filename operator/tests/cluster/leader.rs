//! Two operator processes (the real binary) under leader election: only the Lease holder
//! reconciles; when it is killed, the other takes the Lease over and repairs drift.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use chat_operator::api::{ChatCluster, ChatClusterSpec};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Client, ResourceExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

/// One `chat-operator run` process; killed when dropped.
struct OperatorProcess {
    child: Child,
    admin_port: u16,
    log: PathBuf,
}

impl OperatorProcess {
    fn spawn(
        kubeconfig: &std::path::Path,
        ns: &str,
        identity: &str,
        log_dir: &std::path::Path,
    ) -> Self {
        let admin_port = test_harness::free_port();
        let log = log_dir.join(format!("{identity}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_chat-operator"))
            .args([
                "run",
                "--leader-election",
                "on",
                "--lease-namespace",
                ns,
                "--lease-name",
                "chat-operator",
            ])
            .args([
                "--lease-duration",
                "4s",
                "--lease-renew-before",
                "2s",
                "--identity",
                identity,
            ])
            .args([
                "--namespace",
                ns,
                "--resync-interval",
                "1s",
                "--log-format",
                "text",
            ])
            .args(["--admin-listen", &format!("127.0.0.1:{admin_port}")])
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("chat-operator starts");
        Self {
            child,
            admin_port,
            log,
        }
    }

    /// `(status code, body)` of GET `path` on the admin port.
    async fn get(&self, path: &str) -> Option<(u16, String)> {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.admin_port))
            .await
            .ok()?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await.ok()?;
        let code = response.split_whitespace().nth(1)?.parse().ok()?;
        let body = response.split_once("\r\n\r\n")?.1.to_string();
        Some((code, body))
    }

    /// The value of an unlabelled metric.
    async fn metric(&self, name: &str) -> Option<f64> {
        let (_, body) = self.get("/metrics").await?;
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn holder(client: &Client, ns: &str) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), ns);
    leases
        .get_opt("chat-operator")
        .await
        .ok()??
        .spec?
        .holder_identity
}

#[tokio::test]
async fn only_the_lease_holder_reconciles_and_the_other_takes_over() {
    let cp = control_plane().await;
    cp.with_temp_ns("leader", |client, ns| async move {
        grant_operator_rbac(&client, &ns).await;
        let kubeconfig = cp.kubeconfig_for_service_account(&ns, OPERATOR_SA);
        let logs = tempfile::tempdir().expect("temp dir for operator logs");
        let a = OperatorProcess::spawn(&kubeconfig, &ns, "op-a", logs.path());
        wait_for("op-a holds the Lease", || async {
            (holder(&client, &ns).await.as_deref() == Some("op-a")).then_some(())
        })
        .await;
        let b = OperatorProcess::spawn(&kubeconfig, &ns, "op-b", logs.path());
        wait_for("op-b ready (standby)", || async {
            (b.get("/readyz").await?.0 == 200).then_some(())
        })
        .await;
        assert_eq!(a.get("/healthz").await.map(|r| r.0), Some(200));

        let clusters: Api<ChatCluster> = Api::namespaced(client.clone(), &ns);
        clusters
            .create(
                &PostParams::default(),
                &ChatCluster::new(
                    "led",
                    ChatClusterSpec {
                        replicas: Some(1),
                        ..Default::default()
                    },
                ),
            )
            .await
            .unwrap();
        let _: Service = wait_for_object(&client, &ns, "led-admin").await;
        wait_for("op-a reconciled", || async {
            (a.metric("chat_operator_reconcile_runs_total").await? >= 1.0).then_some(())
        })
        .await;
        assert_eq!(
            a.metric("chat_operator_leader").await,
            Some(1.0),
            "{}",
            a.log_text()
        );
        assert_eq!(
            b.metric("chat_operator_leader").await,
            Some(0.0),
            "{}",
            b.log_text()
        );
        assert_eq!(
            b.metric("chat_operator_reconcile_runs_total").await,
            Some(0.0),
            "the standby wrote: {}",
            b.log_text()
        );

        // Kill the leader without a chance to release the Lease; break something meanwhile.
        drop(a);
        let services: Api<Service> = Api::namespaced(client.clone(), &ns);
        let old_uid = services.get("led-admin").await.unwrap().uid();
        services
            .delete("led-admin", &DeleteParams::default())
            .await
            .unwrap();
        wait_for("op-b takes the Lease over", || async {
            (holder(&client, &ns).await.as_deref() == Some("op-b")).then_some(())
        })
        .await;
        wait_for("op-b restores the deleted Service", || async {
            let s = services.get_opt("led-admin").await.ok()??;
            (s.uid() != old_uid).then_some(())
        })
        .await;
        assert_eq!(
            b.metric("chat_operator_leader").await,
            Some(1.0),
            "{}",
            b.log_text()
        );
        assert!(
            b.log_text().contains("admin server listening"),
            "logs its address"
        );
    })
    .await;
}
