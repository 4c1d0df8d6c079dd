//! A real Kubernetes control plane for tests: etcd + kube-apiserver + kube-controller-manager
//! (and optionally kube-scheduler) of Kubernetes v1.36.3, built from Go modules by
//! `hack/setup.d/20-controlplane.sh`, on free loopback ports.
//!
//! There are no kubelets: pods are created but never run. Tests that need a ready Deployment
//! patch its status themselves and say so.
//!
//! ```no_run
//! # async fn demo() {
//! use test_harness::kube::ControlPlane;
//! let cp = ControlPlane::shared().await; // one per test process
//! let client = cp.client();
//! let status = cp.kubectl().args(["get", "ns"]).status().unwrap();
//! # let _ = (client, status);
//! # }
//! ```

mod crds;
mod kubeconfig;
mod kubelet_client;
mod namespace;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ServiceAccount;
use kube::Api;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::OnceCell;

pub use kubeconfig::Impersonation;
pub use namespace::TestOutcome;

use crate::process::{ManagedProcess, RemoveOnExit};
use crate::tools;
use crate::{Error, free_port, free_port_on};

/// How long each component may take to become ready (generous: the machine may be busy).
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How many times `start` retries on fresh ports when a component exits during start-up.
const START_ATTEMPTS: usize = 3;

/// What to start besides etcd, kube-apiserver and kube-controller-manager.
#[derive(Debug, Clone, Default)]
pub struct ControlPlaneOptions {
    /// Also run kube-scheduler (pods get scheduled onto nodes, e.g. simulated ones).
    pub scheduler: bool,
    /// Set up for real nodes (see [`NodeAccess`]); `None` = an API-only control plane on
    /// 127.0.0.1 without ServiceAccount admission.
    pub nodes: Option<NodeAccess>,
}

/// How a control plane with real nodes is reached and secured: the API server listens and
/// advertises on `address` (pods cannot reach 127.0.0.1), ServiceAccount admission is on (pods
/// get tokens, so the operator can run as a pod), authorization is `Node,RBAC`, the node and
/// kube-proxy get tokens of their own identities, and the API server authenticates to the
/// kubelet with a client certificate of a private CA (`kubelet_client_ca`).
#[derive(Debug, Clone)]
pub struct NodeAccess {
    /// The address the API server binds and advertises (the node's bridge address).
    pub address: std::net::Ipv4Addr,
    /// The Service IP range (`--service-cluster-ip-range`); its first address is `kubernetes`.
    pub service_cidr: String,
    /// The node's name (its token's user is `system:node:<name>`).
    pub node_name: String,
}

/// Credentials the control plane made for a real node (see [`NodeAccess`]).
#[derive(Debug, Clone)]
pub struct NodeCredentials {
    /// Kubeconfig of the kubelet (`system:node:<name>` in `system:nodes`).
    pub kubelet_kubeconfig: PathBuf,
    /// Kubeconfig of kube-proxy (`system:kube-proxy`).
    pub proxy_kubeconfig: PathBuf,
    /// The CA the kubelet trusts for client certificates (the API server's is signed by it).
    pub kubelet_client_ca: PathBuf,
}

/// A running control plane. Dropping it stops every process and removes its files; the
/// [`ControlPlane::shared`] one lives until the test process exits (its processes die then).
#[derive(Debug)]
pub struct ControlPlane {
    dir: tempfile::TempDir,
    server: String,
    kubeconfig: PathBuf,
    config: kube::Config,
    token: String,
    processes: Mutex<Vec<ManagedProcess>>,
    node_credentials: Option<NodeCredentials>,
    _cleanup: RemoveOnExit,
}

static SHARED: OnceCell<ControlPlane> = OnceCell::const_new();

impl ControlPlane {
    /// The control plane shared by every test of this test binary, started on first use.
    /// Panics when it cannot start (with the failing component's log).
    pub async fn shared() -> &'static ControlPlane {
        SHARED
            .get_or_init(|| async {
                match Self::start(ControlPlaneOptions::default()).await {
                    Ok(cp) => cp,
                    Err(err) => panic!("test harness: control plane did not start: {err}"),
                }
            })
            .await
    }

    /// Starts a private control plane (a few seconds; prefer [`ControlPlane::shared`]).
    pub async fn start(options: ControlPlaneOptions) -> Result<ControlPlane, Error> {
        let started = Instant::now();
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            match Self::start_once(&options).await {
                Ok(cp) => {
                    eprintln!(
                        "test harness: Kubernetes {} control plane ready in {:.1} s at {} (logs: {})",
                        tools::KUBE_VERSION,
                        started.elapsed().as_secs_f64(),
                        cp.server,
                        cp.dir.path().display()
                    );
                    return Ok(cp);
                }
                // A component died during start-up: most likely a port race; retry.
                Err(err @ Error::Exited { .. }) => last_error = Some(err),
                Err(err) => return Err(err),
            }
        }
        Err(last_error.unwrap_or_else(|| Error::Other("control plane did not start".into())))
    }

    async fn start_once(options: &ControlPlaneOptions) -> Result<ControlPlane, Error> {
        let bin = tools::kube_bin_dir_checked()?;
        let dir = tempfile::Builder::new()
            .prefix("chatcluster-kube-")
            .tempdir()
            .map_err(|source| Error::Io {
                context: "create a temp dir for the control plane".into(),
                source,
            })?;
        let root = dir.path().to_owned();
        let cleanup = RemoveOnExit::arm(&root)?;
        let mut processes = Vec::new();

        // etcd
        let etcd_port = free_port();
        let mut etcd = Command::new(bin.join("etcd"));
        etcd.arg(format!("--data-dir={}", root.join("etcd").display()))
            .arg(format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"))
            .arg(format!(
                "--listen-peer-urls=http://127.0.0.1:{}",
                free_port()
            ));
        processes.push(spawn_go("etcd", etcd, &root)?);
        wait_until("etcd", &mut processes[0], || etcd_healthy(etcd_port)).await?;

        // kube-apiserver
        let token = random_hex(16)?;
        let tokens_csv = root.join("tokens.csv");
        let mut tokens = format!("{token},admin,admin,\"system:masters\"\n");
        let node_tokens = match &options.nodes {
            Some(access) => {
                let (kubelet, proxy) = (random_hex(16)?, random_hex(16)?);
                let node_user = format!("system:node:{}", access.node_name);
                tokens.push_str(&format!(
                    "{kubelet},{node_user},{node_user},\"system:nodes\"\n{proxy},system:kube-proxy,system:kube-proxy\n"
                ));
                Some((kubelet, proxy))
            }
            None => None,
        };
        kubeconfig::write_private(&tokens_csv, &tokens)?;
        let (sa_private_pem, sa_public_pem) = service_account_key()?;
        let sa_key = root.join("sa.key");
        kubeconfig::write_private(&sa_key, &sa_private_pem)?;
        let sa_pub = root.join("sa.pub");
        kubeconfig::write_private(&sa_pub, &sa_public_pem)?;
        let cert_dir = root.join("apiserver-certs");
        let address = options
            .nodes
            .as_ref()
            .map_or(std::net::Ipv4Addr::LOCALHOST, |n| n.address);
        let api_port = free_port_on(address);
        let server = format!("https://{address}:{api_port}");
        let mut apiserver = Command::new(bin.join("kube-apiserver"));
        apiserver
            .arg(format!("--etcd-servers=http://127.0.0.1:{etcd_port}"))
            .arg(format!("--cert-dir={}", cert_dir.display()))
            .arg(format!("--secure-port={api_port}"))
            .arg(format!("--bind-address={address}"))
            .arg(format!("--advertise-address={address}"))
            .arg("--allow-privileged=true");
        let mut node_credentials = None;
        match (&options.nodes, &node_tokens) {
            (Some(access), Some((kubelet_token, proxy_token))) => {
                let ca = kubelet_client::Ca::generate("chatcluster kubelet client CA")?;
                let kubelet_client_ca = root.join("kubelet-client-ca.crt");
                kubeconfig::write_private(&kubelet_client_ca, &ca.cert_pem())?;
                let (client_cert, client_key) =
                    ca.client("kube-apiserver-kubelet-client", "system:masters")?;
                let client_cert_path = root.join("apiserver-kubelet-client.crt");
                let client_key_path = root.join("apiserver-kubelet-client.key");
                kubeconfig::write_private(&client_cert_path, &client_cert)?;
                kubeconfig::write_private(&client_key_path, &client_key)?;
                apiserver
                    .arg(format!(
                        "--service-cluster-ip-range={}",
                        access.service_cidr
                    ))
                    .arg("--authorization-mode=Node,RBAC")
                    .arg("--enable-admission-plugins=NodeRestriction")
                    // `kubectl logs/exec` must not make the API server resolve the node's name
                    // through the host's resolver (a query that would leave the machine).
                    .arg("--kubelet-preferred-address-types=InternalIP")
                    .arg(format!(
                        "--kubelet-client-certificate={}",
                        client_cert_path.display()
                    ))
                    .arg(format!(
                        "--kubelet-client-key={}",
                        client_key_path.display()
                    ));
                aggregation_layer(&mut apiserver, &root)?;
                let ca_file = cert_dir.join("apiserver.crt");
                let kubelet_kubeconfig = root.join("kubelet.kubeconfig");
                kubeconfig::write_private(
                    &kubelet_kubeconfig,
                    &kubeconfig::render(&server, &ca_file, kubelet_token, None),
                )?;
                let proxy_kubeconfig = root.join("kube-proxy.kubeconfig");
                kubeconfig::write_private(
                    &proxy_kubeconfig,
                    &kubeconfig::render(&server, &ca_file, proxy_token, None),
                )?;
                node_credentials = Some(NodeCredentials {
                    kubelet_kubeconfig,
                    proxy_kubeconfig,
                    kubelet_client_ca,
                });
            }
            _ => {
                apiserver
                    .arg("--service-cluster-ip-range=10.0.0.0/24")
                    .arg("--authorization-mode=RBAC")
                    // No pods run, so none need a ServiceAccount token.
                    .arg("--disable-admission-plugins=ServiceAccount");
            }
        }
        apiserver
            .arg(format!("--service-account-issuer={server}/"))
            .arg(format!("--service-account-key-file={}", sa_pub.display()))
            .arg(format!(
                "--service-account-signing-key-file={}",
                sa_key.display()
            ))
            .arg(format!("--token-auth-file={}", tokens_csv.display()))
            .arg("--profiling=false");
        processes.push(spawn_go("kube-apiserver", apiserver, &root)?);

        let kubeconfig = root.join("admin.kubeconfig");
        let ca_file = cert_dir.join("apiserver.crt");
        kubeconfig::write_private(
            &kubeconfig,
            &kubeconfig::render(&server, &ca_file, &token, None),
        )?;
        // The serving certificate (and so the kubeconfig's CA file) appears once the
        // apiserver has generated it; wait for it before loading the client config.
        wait_until("kube-apiserver certificate", &mut processes[1], || {
            let exists = ca_file.exists();
            async move {
                if exists {
                    Ok(())
                } else {
                    Err("not written yet".into())
                }
            }
        })
        .await?;
        ensure_crypto_provider();
        let config = kubeconfig::load_config(&kubeconfig).await?;
        let client = kube::Client::try_from(config.clone())
            .map_err(|e| Error::Other(format!("build kube client: {e}")))?;
        wait_until("kube-apiserver /readyz", &mut processes[1], || {
            let client = client.clone();
            async move {
                let request = http::Request::get("/readyz")
                    .body(Vec::new())
                    .expect("request");
                client
                    .request_text(request)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
        })
        .await?;

        // kube-controller-manager (garbage collector, deployment, replicaset, namespace,
        // serviceaccount and token controllers, ...).
        let mut kcm = control_loop_command(&bin, "kube-controller-manager", &kubeconfig);
        kcm.arg(format!("--cert-dir={}", root.join("kcm-certs").display()))
            .arg(format!(
                "--service-account-private-key-file={}",
                sa_key.display()
            ))
            .arg(format!("--root-ca-file={}", ca_file.display()))
            .arg("--use-service-account-credentials=false")
            // Autoscaling tests see the HorizontalPodAutoscaler act within seconds (default 15 s).
            .arg("--horizontal-pod-autoscaler-sync-period=3s")
            .arg("--profiling=false");
        processes.push(spawn_go("kube-controller-manager", kcm, &root)?);
        // The serviceaccount controller creating `default/default` shows the controllers run.
        wait_until("kube-controller-manager", &mut processes[2], || {
            let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
            async move {
                match accounts.get_opt("default").await {
                    Ok(Some(_)) => Ok(()),
                    Ok(None) => Err("ServiceAccount default/default not created yet".into()),
                    Err(err) => Err(err.to_string()),
                }
            }
        })
        .await?;

        if options.scheduler {
            let mut scheduler = control_loop_command(&bin, "kube-scheduler", &kubeconfig);
            scheduler.arg(format!(
                "--cert-dir={}",
                root.join("scheduler-certs").display()
            ));
            processes.push(spawn_go("kube-scheduler", scheduler, &root)?);
        }

        Ok(ControlPlane {
            dir,
            server,
            kubeconfig,
            config,
            token,
            processes: Mutex::new(processes),
            node_credentials,
            _cleanup: cleanup,
        })
    }

    /// The credentials made for a real node, when started with [`ControlPlaneOptions::nodes`].
    pub fn node_credentials(&self) -> Option<&NodeCredentials> {
        self.node_credentials.as_ref()
    }

    /// The API server's serving certificate (the CA file of every kubeconfig).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("apiserver-certs/apiserver.crt")
    }

    /// A new client acting as the admin (`system:masters`). Each call builds a fresh client,
    /// so it works from any test's runtime. Must be called inside a tokio runtime.
    pub fn client(&self) -> kube::Client {
        ensure_crypto_provider();
        kube::Client::try_from(self.config.clone()).expect("kube client from the harness config")
    }

    /// A client acting as `user` in `groups` (impersonation by the admin): its requests are
    /// authorized by RBAC exactly as that user's would be.
    pub fn client_as(&self, who: &Impersonation) -> kube::Client {
        ensure_crypto_provider();
        let mut config = self.config.clone();
        config.auth_info.impersonate = Some(who.user.clone());
        config.auth_info.impersonate_groups = Some(who.groups.clone());
        kube::Client::try_from(config).expect("kube client from the harness config")
    }

    /// The admin kubeconfig (pass it to a process as `KUBECONFIG`).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// Writes a kubeconfig that acts as `user` with `groups` (`as:` / `as-groups:`), e.g. to
    /// run the operator with only the RBAC the chart grants, and returns its path.
    pub fn kubeconfig_for_user(&self, user: &str, groups: &[&str]) -> PathBuf {
        self.kubeconfig_as(&Impersonation {
            user: user.to_owned(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        })
    }

    /// A kubeconfig acting as ServiceAccount `name` in `namespace` (see `kubeconfig_for_user`).
    pub fn kubeconfig_for_service_account(&self, namespace: &str, name: &str) -> PathBuf {
        self.kubeconfig_as(&Impersonation::service_account(namespace, name))
    }

    fn kubeconfig_as(&self, who: &Impersonation) -> PathBuf {
        let file = format!("as-{}.kubeconfig", namespace::unique_name(&who.user));
        let path = self.dir.path().join(file);
        let ca_file = self.ca_file();
        let content = kubeconfig::render(&self.server, &ca_file, &self.token, Some(who));
        kubeconfig::write_private(&path, &content).unwrap_or_else(|err| panic!("{err}"));
        path
    }

    /// `kubectl` of the control plane's release with `KUBECONFIG` set to the admin kubeconfig.
    pub fn kubectl(&self) -> Command {
        let mut command = Command::new(tools::kubectl());
        command.env("KUBECONFIG", &self.kubeconfig);
        command
    }

    /// The API server URL (`https://127.0.0.1:<port>`, or the node address's).
    pub fn server_url(&self) -> &str {
        &self.server
    }

    /// Where each component's log is (`<dir>/<component>.log`).
    pub fn log_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Stops every process (also done on drop).
    pub fn stop(&self) {
        let mut processes = self.processes.lock().unwrap_or_else(|e| e.into_inner());
        for process in processes.iter_mut().rev() {
            process.stop(Duration::from_secs(5));
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let processes = self.processes.get_mut().unwrap_or_else(|e| e.into_inner());
        for process in processes.iter_mut().rev() {
            process.kill();
        }
    }
}

/// Installs rustls's ring provider as the process default unless one is set, so kube's TLS
/// client works whatever rustls features the rest of the workspace enables.
fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race with another installer is fine: some provider is then set.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// Spawns a Go-built component; it also exits by itself when its stdin pipe closes.
fn spawn_go(name: &str, mut command: Command, dir: &Path) -> Result<ManagedProcess, Error> {
    command.env("CHATCLUSTER_EXIT_ON_STDIN_EOF", "1");
    ManagedProcess::spawn(name, command, &dir.join(format!("{name}.log")))
}

/// Polls `check` until it succeeds, failing early (with the log) when the process exits.
async fn wait_until<F, Fut>(
    what: &str,
    process: &mut ManagedProcess,
    mut check: F,
) -> Result<(), Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let start = Instant::now();
    let mut last_error = String::from("not checked yet");
    while start.elapsed() < READY_TIMEOUT {
        process.ensure_running()?;
        match check().await {
            Ok(()) => return Ok(()),
            Err(err) => last_error = err,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(Error::NotReady {
        what: what.to_owned(),
        waited: READY_TIMEOUT,
        last_error: format!("{last_error}; log tail:\n{}", process.log_tail(30)),
    })
}

/// GET http://127.0.0.1:<port>/health on etcd and expect `"health":"true"`.
async fn etcd_healthy(port: u16) -> Result<(), String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut body = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut body))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    if body.contains("\"health\":\"true\"") {
        Ok(())
    } else {
        Err(format!("unhealthy: {body}"))
    }
}

/// An ECDSA P-256 key pair for signing ServiceAccount tokens: (PKCS#8 private key PEM,
/// SubjectPublicKeyInfo public key PEM). The verifying side reads only public keys.
fn service_account_key() -> Result<(String, String), Error> {
    rcgen::KeyPair::generate()
        .map(|key| (key.serialize_pem(), key.public_key_pem()))
        .map_err(|e| Error::Other(format!("generate the ServiceAccount signing key: {e}")))
}

/// `bytes` random bytes from the OS, hex-encoded.
fn random_hex(bytes: usize) -> Result<String, Error> {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|source| Error::Io {
            context: "read /dev/urandom".into(),
            source,
        })?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// The aggregation layer, as kubeadm sets it up: a front-proxy CA that aggregated API servers
/// (e.g. a custom metrics adapter) trust for the `X-Remote-*` headers, the API server's client
/// certificate signed by it, and routing to the APIService's endpoints (not its ClusterIP) so an
/// adapter may run beside the node as a plain process.
fn aggregation_layer(apiserver: &mut Command, root: &Path) -> Result<(), Error> {
    let ca = kubelet_client::Ca::generate("chatcluster front-proxy CA")?;
    let ca_path = root.join("front-proxy-ca.crt");
    kubeconfig::write_private(&ca_path, &ca.cert_pem())?;
    let (cert, key) = ca.client(FRONT_PROXY_CLIENT, "")?;
    let cert_path = root.join("front-proxy-client.crt");
    let key_path = root.join("front-proxy-client.key");
    kubeconfig::write_private(&cert_path, &cert)?;
    kubeconfig::write_private(&key_path, &key)?;
    apiserver
        .arg(format!(
            "--requestheader-client-ca-file={}",
            ca_path.display()
        ))
        .arg(format!(
            "--requestheader-allowed-names={FRONT_PROXY_CLIENT}"
        ))
        .arg("--requestheader-username-headers=X-Remote-User")
        .arg("--requestheader-group-headers=X-Remote-Group")
        .arg("--requestheader-extra-headers-prefix=X-Remote-Extra-")
        .arg(format!("--proxy-client-cert-file={}", cert_path.display()))
        .arg(format!("--proxy-client-key-file={}", key_path.display()))
        .arg("--enable-aggregator-routing=true");
    Ok(())
}

/// The common name of the API server's front-proxy client certificate.
const FRONT_PROXY_CLIENT: &str = "front-proxy-client";

/// The flags kube-controller-manager and kube-scheduler share here: the admin kubeconfig for
/// the API server, authn and authz; no leader election; serving on a free loopback port.
fn control_loop_command(
    bin: &std::path::Path,
    name: &str,
    kubeconfig: &std::path::Path,
) -> Command {
    let mut command = Command::new(bin.join(name));
    command
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .arg(format!(
            "--authentication-kubeconfig={}",
            kubeconfig.display()
        ))
        .arg(format!(
            "--authorization-kubeconfig={}",
            kubeconfig.display()
        ))
        .arg("--leader-elect=false")
        .arg("--bind-address=127.0.0.1")
        .arg(format!("--secure-port={}", free_port()));
    command
}
