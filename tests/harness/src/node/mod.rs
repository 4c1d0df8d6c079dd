//! A real Kubernetes cluster on this machine: the control plane of [`crate::kube`] plus one real
//! node — containerd v2 + runc, kubelet and kube-proxy (iptables mode) of Kubernetes v1.36.3, the
//! CNI bridge plugin, CoreDNS as cluster DNS and Traefik as the ingress controller (Ingress and
//! Gateway API) — running the images of this repository (see [`images`]). Pods really run.
//!
//! ```no_run
//! # async fn demo() {
//! use test_harness::node::Cluster;
//! let cluster = Cluster::shared().await;       // ~30 s warm; one per test process
//! let kubectl = cluster.control_plane().kubectl();
//! let url = cluster.ingress_url();              // http://127.0.0.1:<port>, Traefik
//! # let _ = (kubectl, url);
//! # }
//! ```
//!
//! One node per machine: its host paths, ports (10250, 10256, ...) and iptables are global. A
//! node is owned by a watchdog process that takes the machine-wide lock [`LOCK_FILE`] before the
//! node starts and, when the owning process exits in any way (or [`Cluster::stop`] is called),
//! runs `tests/harness/node/host.sh teardown`: containers, shims, mounts, cgroups, the bridge,
//! iptables/nftables and sysctls go back to what `host.sh save` recorded before the start. A
//! second test process waits for the lock.
//!
//! Every packet stays on this machine: pods live on the bridge [`BRIDGE`] ([`POD_CIDR`]); every
//! forwarded packet that is not from the bridge to the bridge is dropped (mangle/FORWARD, before
//! any rule kube-proxy adds); cluster DNS answers only `cluster.local`; the API server, the
//! kubelet and the node ports listen on the bridge address [`BRIDGE_IP`], everything else on
//! 127.0.0.1.

mod config;
pub mod images;

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use tokio::sync::OnceCell;

use crate::Error;
use crate::image::Image;
use crate::kube::{ControlPlane, ControlPlaneOptions, NodeAccess};
use crate::process::ManagedProcess;
use crate::tools::{self, Tool};

/// The node's name.
pub const NODE_NAME: &str = "chatcluster-node";
/// The pods' bridge.
pub const BRIDGE: &str = "chatcluster0";
/// The node's address on the bridge: the pods' gateway, the API server's and kubelet's address.
pub const BRIDGE_IP: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 1);
/// Pod addresses.
pub const POD_CIDR: &str = "10.88.0.0/16";
/// Service addresses.
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
/// The cluster DNS Service's address.
pub const DNS_IP: &str = "10.96.0.10";
/// Sockets, containerd's state, runc's root, configs, logs and the host record.
pub const RUN_DIR: &str = "/run/chatcluster-node";
/// containerd's root (images, snapshots), the kubelet's root, pod logs.
pub const LIB_DIR: &str = "/var/lib/chatcluster-node";
/// The machine-wide lock held by the node's watchdog for as long as a node exists.
pub const LOCK_FILE: &str = "/run/lock/chatcluster-node.lock";
/// How long the node's parts may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(180);

/// Traefik's HTTP port on 127.0.0.1 unless `CHATCLUSTER_INGRESS_PORT` says otherwise: the
/// standard one, so that the address the ingress publishes (`ws://127.0.0.1/ws`, shown in
/// `status.endpoint`) is the address clients really use. One node per machine, so one port.
pub const DEFAULT_INGRESS_PORT: u16 = 80;

/// How to start a [`Cluster`].
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Traefik's HTTP port on 127.0.0.1; 0 picks a free one.
    pub ingress_port: u16,
}

impl Default for ClusterOptions {
    /// Port [`DEFAULT_INGRESS_PORT`], or `$CHATCLUSTER_INGRESS_PORT`.
    fn default() -> Self {
        let ingress_port = std::env::var("CHATCLUSTER_INGRESS_PORT")
            .ok()
            .and_then(|p| p.parse().ok())
            .unwrap_or(DEFAULT_INGRESS_PORT);
        Self { ingress_port }
    }
}

/// A running cluster with one real node. Dropping it (or [`Cluster::stop`]) tears the node down;
/// the [`Cluster::shared`] one is torn down by its watchdog when the test process exits.
#[derive(Debug)]
pub struct Cluster {
    control_plane: ControlPlane,
    processes: Mutex<Vec<ManagedProcess>>,
    owner: Mutex<Option<NodeOwner>>,
    ingress: SocketAddr,
    images: Vec<Image>,
}

static SHARED: OnceCell<Cluster> = OnceCell::const_new();

impl Cluster {
    /// The cluster shared by every test of this test process, started on first use. Panics
    /// (with the failing part's log) when it cannot start.
    pub async fn shared() -> &'static Cluster {
        SHARED
            .get_or_init(|| async {
                match Self::start(ClusterOptions::default()).await {
                    Ok(cluster) => cluster,
                    Err(err) => panic!("test harness: the real node did not start: {err}"),
                }
            })
            .await
    }

    /// Starts a control plane and a node (waiting for any other node on this machine to go).
    pub async fn start(options: ClusterOptions) -> Result<Cluster, Error> {
        let started = Instant::now();
        preflight()?;
        let run = Path::new(RUN_DIR);
        let lib = Path::new(LIB_DIR);
        let owner = tokio::task::spawn_blocking(NodeOwner::acquire)
            .await
            .map_err(|e| Error::Other(format!("node lock: {e}")))??;
        // What a node whose watchdog was killed too left behind, then the record of the host.
        host_script("teardown")?;
        host_script("save")?;
        setup_network()?;
        let logs = run.join("logs");
        for dir in [&logs, &run.join("cni/net.d"), &lib.to_path_buf()] {
            std::fs::create_dir_all(dir).map_err(io_err(format!("create {}", dir.display())))?;
        }

        let access = NodeAccess {
            address: BRIDGE_IP,
            service_cidr: SERVICE_CIDR.into(),
            node_name: NODE_NAME.into(),
        };
        let control_plane = ControlPlane::start(ControlPlaneOptions {
            scheduler: true,
            nodes: Some(access),
        });
        let runtime = tokio::task::spawn_blocking(start_containerd_with_images);
        let (control_plane, runtime) = tokio::join!(control_plane, runtime);
        let control_plane = control_plane?;
        let (containerd, images) =
            runtime.map_err(|e| Error::Other(format!("containerd start-up: {e}")))??;
        let mut processes = vec![containerd];

        let credentials = control_plane
            .node_credentials()
            .cloned()
            .expect("a control plane started for nodes has node credentials");
        let kube_bin = tools::kube_bin_dir_checked()?;
        write(&run.join("resolv.conf"), "")?;
        write(
            &run.join("kubelet.yaml"),
            &config::kubelet(run, lib, &credentials.kubelet_client_ca),
        )?;
        let mut kubelet = Command::new(kube_bin.join("kubelet"));
        kubelet
            .arg(format!("--config={}", run.join("kubelet.yaml").display()))
            .arg(format!(
                "--kubeconfig={}",
                credentials.kubelet_kubeconfig.display()
            ))
            .arg(format!("--root-dir={}", lib.join("kubelet").display()))
            .arg(format!("--cert-dir={}", lib.join("kubelet/pki").display()))
            .arg(format!("--hostname-override={NODE_NAME}"))
            .arg(format!("--node-ip={BRIDGE_IP}"));
        processes.push(spawn_go("kubelet", kubelet, &logs)?);

        write(
            &run.join("kube-proxy.yaml"),
            &config::kube_proxy(&credentials.proxy_kubeconfig),
        )?;
        let mut proxy = Command::new(kube_bin.join("kube-proxy"));
        proxy.arg(format!(
            "--config={}",
            run.join("kube-proxy.yaml").display()
        ));
        processes.push(spawn_go("kube-proxy", proxy, &logs)?);

        let ingress_port = match options.ingress_port {
            0 => crate::free_port(),
            port => {
                if let Err(err) = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
                    return Err(Error::Other(format!(
                        "127.0.0.1:{port} (the ingress port) is not free: {err}; stop what uses it or set CHATCLUSTER_INGRESS_PORT (0 = any free port)"
                    )));
                }
                port
            }
        };
        let cluster = Cluster {
            control_plane,
            processes: Mutex::new(processes),
            owner: Mutex::new(Some(owner)),
            ingress: SocketAddr::from((Ipv4Addr::LOCALHOST, ingress_port)),
            images,
        };
        cluster.wait_for_node().await?;
        cluster.install_addons().await?;
        eprintln!(
            "test harness: real node {NODE_NAME} ready in {:.1} s (Traefik at {}; logs: {} and {})",
            started.elapsed().as_secs_f64(),
            cluster.ingress_url(),
            logs.display(),
            cluster.control_plane.log_dir().display(),
        );
        Ok(cluster)
    }

    /// The control plane (clients, kubectl, kubeconfig).
    pub fn control_plane(&self) -> &ControlPlane {
        &self.control_plane
    }

    /// Traefik's HTTP address on 127.0.0.1 (Ingresses of class `traefik` and the Gateway
    /// `traefik/traefik`).
    pub fn ingress_addr(&self) -> SocketAddr {
        self.ingress
    }

    /// `http://127.0.0.1:<port>`.
    pub fn ingress_url(&self) -> String {
        format!("http://{}", self.ingress)
    }

    /// The images imported into the node.
    pub fn images(&self) -> &[Image] {
        &self.images
    }

    /// Where the node's components log (`containerd.log`, `kubelet.log`, `kube-proxy.log`).
    pub fn log_dir(&self) -> PathBuf {
        Path::new(RUN_DIR).join("logs")
    }

    /// An error (with the log tail) when one of the node's processes (containerd, kubelet,
    /// kube-proxy) has exited.
    pub fn ensure_running(&self) -> Result<(), Error> {
        let mut processes = self.processes.lock().unwrap_or_else(|e| e.into_inner());
        processes
            .iter_mut()
            .try_for_each(ManagedProcess::ensure_running)
    }

    /// Stops the node's processes and tears the node down (waits for the teardown). Also done
    /// on drop.
    pub fn stop(&self) {
        let mut processes = self.processes.lock().unwrap_or_else(|e| e.into_inner());
        for process in processes.iter_mut().rev() {
            process.kill();
        }
        self.control_plane.stop();
        if let Some(owner) = self.owner.lock().unwrap_or_else(|e| e.into_inner()).take() {
            owner.release();
        }
    }

    async fn wait_for_node(&self) -> Result<(), Error> {
        let nodes: Api<Node> = Api::all(self.control_plane.client());
        self.wait("the node to register and turn Ready", || {
            let nodes = nodes.clone();
            async move {
                let node = nodes.get_opt(NODE_NAME).await.map_err(|e| e.to_string())?;
                let ready = node
                    .as_ref()
                    .and_then(|n| n.status.as_ref())
                    .and_then(|s| s.conditions.as_ref())
                    .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
                    .map(|c| (c.status.clone(), c.message.clone().unwrap_or_default()));
                match ready {
                    Some((status, _)) if status == "True" => Ok(()),
                    Some((status, message)) => Err(format!("Ready={status}: {message}")),
                    None => Err("not registered yet".into()),
                }
            }
        })
        .await
    }

    /// Gateway API CRDs, CoreDNS and Traefik; returns when both answer.
    async fn install_addons(&self) -> Result<(), Error> {
        let crds = tools::gateway_api_crds()?;
        self.kubectl_ok(&["apply", "--server-side", "-f", &crds.display().to_string()])?;
        self.kubectl_ok(&[
            "wait",
            "--for=condition=Established",
            "--timeout=120s",
            "crd/gateways.gateway.networking.k8s.io",
            "crd/httproutes.gateway.networking.k8s.io",
            "crd/gatewayclasses.gateway.networking.k8s.io",
        ])?;
        let addons = images::repo_root().join("tests/harness/node/addons");
        let admin_port = crate::free_port();
        let vars = [
            ("COREDNS_IMAGE", images::COREDNS.to_string()),
            ("TRAEFIK_IMAGE", images::TRAEFIK.to_string()),
            ("DNS_IP", DNS_IP.to_string()),
            ("INGRESS_ADDRESS", self.ingress.ip().to_string()),
            ("INGRESS_PORT", self.ingress.port().to_string()),
            ("ADMIN_PORT", admin_port.to_string()),
        ];
        for file in ["coredns.yaml", "traefik.yaml"] {
            let path = addons.join(file);
            let mut text = std::fs::read_to_string(&path)
                .map_err(io_err(format!("read {}", path.display())))?;
            for (name, value) in &vars {
                text = text.replace(&format!("${{{name}}}"), value);
            }
            let rendered = Path::new(RUN_DIR).join(file);
            write(&rendered, &text)?;
            self.kubectl_ok(&["apply", "-f", &rendered.display().to_string()])?;
        }
        for (namespace, name) in [("kube-system", "coredns"), ("traefik", "traefik")] {
            let api: Api<Deployment> = Api::namespaced(self.control_plane.client(), namespace);
            self.wait(
                &format!("Deployment {namespace}/{name} to be ready"),
                || {
                    let api = api.clone();
                    async move {
                        let ready = api
                            .get(name)
                            .await
                            .map_err(|e| e.to_string())?
                            .status
                            .and_then(|s| s.ready_replicas)
                            .unwrap_or(0);
                        if ready >= 1 {
                            Ok(())
                        } else {
                            Err("no ready replica yet".into())
                        }
                    }
                },
            )
            .await?;
        }
        // Ready pods are not enough: kube-proxy must have programmed the DNS Service too.
        self.wait("cluster DNS to answer at its Service address", || async {
            dns_answers(DNS_IP, "kubernetes.default.svc.cluster.local").await
        })
        .await?;
        let ingress = self.ingress;
        self.wait("Traefik to listen on the ingress address", || async move {
            tokio::net::TcpStream::connect(ingress)
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        })
        .await
    }

    fn kubectl_ok(&self, args: &[&str]) -> Result<String, Error> {
        let output = self
            .control_plane
            .kubectl()
            .args(args)
            .output()
            .map_err(io_err("run kubectl"))?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(Error::Other(format!(
                "kubectl {} failed: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr),
                String::from_utf8_lossy(&output.stdout)
            )))
        }
    }

    /// Polls `check` until it succeeds; fails early (with the log tail) when a node process
    /// exits, and with the last error and the kubelet's log tail after [`READY_TIMEOUT`].
    async fn wait<F, Fut>(&self, what: &str, mut check: F) -> Result<(), Error>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        let start = Instant::now();
        let mut last = String::from("not checked yet");
        while start.elapsed() < READY_TIMEOUT {
            {
                let mut processes = self.processes.lock().unwrap_or_else(|e| e.into_inner());
                for process in processes.iter_mut() {
                    process.ensure_running()?;
                }
            }
            match check().await {
                Ok(()) => return Ok(()),
                Err(err) => last = err,
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let kubelet_log = crate::process::read_log_tail(&self.log_dir().join("kubelet.log"), 30);
        Err(Error::NotReady {
            what: what.to_owned(),
            waited: READY_TIMEOUT,
            last_error: format!("{last}; kubelet log tail:\n{kubelet_log}"),
        })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The process that owns the node: it holds [`LOCK_FILE`] and runs `host.sh teardown` when its
/// standard input (a pipe only the owning process holds) closes.
#[derive(Debug)]
struct NodeOwner {
    watchdog: Child,
}

impl NodeOwner {
    /// Starts the watchdog and waits until it holds the lock.
    fn acquire() -> Result<NodeOwner, Error> {
        let script = host_script_path()?;
        let log = tools::cache_dir().join("node-teardown.log");
        if let Some(parent) = Path::new(LOCK_FILE).parent() {
            std::fs::create_dir_all(parent)
                .map_err(io_err(format!("create {}", parent.display())))?;
        }
        let mut watchdog = Command::new("sh")
            .arg("-c")
            .arg(
                r#"trap '' INT TERM HUP
exec 9>>"$1"
flock -n 9 || { echo waiting; flock 9; }
echo locked
cat >/dev/null
sh "$2" teardown "$3" "$4" >"$5" 2>&1"#,
            )
            .arg("chatcluster-node-watchdog")
            .arg(LOCK_FILE)
            .arg(&script)
            .arg(RUN_DIR)
            .arg(LIB_DIR)
            .arg(&log)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|source| Error::Spawn {
                program: "the node's watchdog (sh, flock)".into(),
                source,
            })?;
        let stdout = watchdog.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        loop {
            match lines.next() {
                Some(Ok(line)) if line == "locked" => break,
                Some(Ok(line)) if line == "waiting" => eprintln!(
                    "test harness: waiting for {LOCK_FILE}: another process runs the node on this machine"
                ),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    let _ = watchdog.kill();
                    let _ = watchdog.wait();
                    return Err(Error::Other(format!(
                        "the node's watchdog exited before taking {LOCK_FILE} (is util-linux's flock installed?)"
                    )));
                }
            }
        }
        Ok(NodeOwner { watchdog })
    }

    /// Closes the watchdog's pipe and waits for its teardown.
    fn release(mut self) {
        drop(self.watchdog.stdin.take());
        let _ = self.watchdog.wait();
    }
}

/// Root, and the programs the node needs.
fn preflight() -> Result<(), Error> {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        })
        .unwrap_or_default();
    if uid != "0" {
        return Err(Error::Other(
            "the real node needs root (containers, mounts, iptables); run as root".into(),
        ));
    }
    for tool in [Tool::Containerd, Tool::Ctr, Tool::Coredns, Tool::Traefik] {
        tools::find(tool)?;
    }
    let shim = tools::containerd_bin_dir().join("containerd-shim-runc-v2");
    for (path, package) in [
        (shim.as_path(), "hack/setup.sh (containerd)"),
        (
            Path::new("/usr/lib/cni/bridge"),
            "containernetworking-plugins",
        ),
        (
            Path::new("/usr/lib/cni/host-local"),
            "containernetworking-plugins",
        ),
    ] {
        if !path.exists() {
            return Err(Error::ToolMissing {
                tool: path.display().to_string(),
                looked: format!("install {package}; hack/setup.sh does"),
            });
        }
    }
    for program in [
        "runc",
        "iptables",
        "ip6tables",
        "nft",
        "ip",
        "flock",
        "conntrack",
    ] {
        if !command_exists(program) {
            return Err(Error::ToolMissing {
                tool: program.into(),
                looked: "PATH (hack/setup.sh installs it)".into(),
            });
        }
    }
    Ok(())
}

fn command_exists(program: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program} >/dev/null"))
        .status()
        .is_ok_and(|s| s.success())
}

/// host.sh, written into the cache (the watchdog must find it even when the checkout moves).
fn host_script_path() -> Result<PathBuf, Error> {
    let path = tools::cache_dir().join("node-host.sh");
    let text = include_str!("../../node/host.sh");
    if std::fs::read_to_string(&path).ok().as_deref() != Some(text) {
        std::fs::create_dir_all(tools::cache_dir()).map_err(io_err("create the cache folder"))?;
        let partial = path.with_extension("partial");
        write(&partial, text)?;
        std::fs::rename(&partial, &path).map_err(io_err("install node-host.sh"))?;
    }
    Ok(path)
}

/// What the node may change on the host, as `host.sh fingerprint` prints it: equal before a
/// node starts and after it is torn down.
pub fn host_fingerprint() -> Result<String, Error> {
    let output = Command::new("sh")
        .arg(host_script_path()?)
        .args(["fingerprint", RUN_DIR, LIB_DIR])
        .output()
        .map_err(io_err("run host.sh fingerprint"))?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn host_script(action: &str) -> Result<(), Error> {
    let output = Command::new("sh")
        .arg(host_script_path()?)
        .args([action, RUN_DIR, LIB_DIR])
        .output()
        .map_err(io_err(format!("run host.sh {action}")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(Error::Other(format!(
            "host.sh {action} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )))
    }
}

/// The bridge with the node's address, and the forwarding guard.
fn setup_network() -> Result<(), Error> {
    let cidr_bits = POD_CIDR.rsplit_once('/').map_or("16", |(_, bits)| bits);
    run(&["ip", "link", "add", BRIDGE, "type", "bridge"])?;
    run(&[
        "ip",
        "addr",
        "add",
        &format!("{BRIDGE_IP}/{cidr_bits}"),
        "dev",
        BRIDGE,
    ])?;
    run(&["ip", "link", "set", BRIDGE, "up"])?;
    // Only bridge-to-bridge forwarding: nothing from a pod leaves the machine and nothing from
    // outside reaches a pod. In mangle/FORWARD, which runs before filter/FORWARD, where
    // kube-proxy inserts its own ACCEPT rules.
    for iptables in ["iptables", "ip6tables"] {
        run(&[
            iptables, "-w", "-t", "mangle", "-I", "FORWARD", "1", "-i", BRIDGE, "!", "-o", BRIDGE,
            "-j", "DROP",
        ])?;
        run(&[
            iptables, "-w", "-t", "mangle", "-I", "FORWARD", "2", "!", "-i", BRIDGE, "-j", "DROP",
        ])?;
    }
    Ok(())
}

fn run(args: &[&str]) -> Result<(), Error> {
    let output = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(io_err(format!("run {}", args[0])))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(Error::Other(format!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        )))
    }
}

/// One DNS query (type A) for `name` to `server`:53 over UDP; Ok when it is answered with
/// NOERROR and at least one record.
async fn dns_answers(server: &str, name: &str) -> Result<(), String> {
    let mut query = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        query.push(u8::try_from(label.len()).map_err(|_| "label too long")?);
        query.extend_from_slice(label.as_bytes());
    }
    query.extend_from_slice(&[0, 0, 1, 0, 1]);
    let socket = tokio::net::UdpSocket::bind("0.0.0.0:0")
        .await
        .map_err(|e| e.to_string())?;
    socket
        .send_to(&query, (server, 53))
        .await
        .map_err(|e| e.to_string())?;
    let mut answer = [0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(1), socket.recv(&mut answer))
        .await
        .map_err(|_| "no answer within 1 s".to_string())?
        .map_err(|e| e.to_string())?;
    if n < 12 || answer[..2] != query[..2] {
        return Err("malformed answer".into());
    }
    let rcode = answer[3] & 0x0f;
    let answers = u16::from_be_bytes([answer[6], answer[7]]);
    if rcode == 0 && answers > 0 {
        Ok(())
    } else {
        Err(format!("rcode {rcode}, {answers} answers"))
    }
}

/// containerd, ready, with every image imported.
fn start_containerd_with_images() -> Result<(ManagedProcess, Vec<Image>), Error> {
    let run = Path::new(RUN_DIR);
    let lib = Path::new(LIB_DIR);
    let images_thread =
        std::thread::spawn(|| images::build_all(&Path::new(RUN_DIR).join("image-contexts")));
    write(
        &run.join("containerd.toml"),
        &config::containerd(run, lib, images::PAUSE),
    )?;
    write(
        &run.join("cni/net.d/10-chatcluster.conflist"),
        &config::cni_conflist(run),
    )?;
    let bin = tools::containerd_bin_dir();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())
    );
    let mut command = Command::new(bin.join("containerd"));
    command
        .arg(format!(
            "--config={}",
            run.join("containerd.toml").display()
        ))
        .env("PATH", &path);
    let mut containerd =
        ManagedProcess::spawn("containerd", command, &run.join("logs/containerd.log"))?;
    let socket = run.join("containerd.sock");
    let start = Instant::now();
    loop {
        containerd.ensure_running()?;
        if socket.exists() && ctr(&socket, &["version"]).is_ok() {
            break;
        }
        if start.elapsed() > READY_TIMEOUT {
            return Err(Error::NotReady {
                what: "containerd".into(),
                waited: READY_TIMEOUT,
                last_error: containerd.log_tail(30),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let images = images_thread
        .join()
        .map_err(|_| Error::Other("the image build thread panicked".into()))??;
    std::thread::scope(|scope| {
        let socket = &socket;
        let handles: Vec<_> = images
            .iter()
            .map(|image| {
                scope.spawn(move || {
                    ctr(
                        socket,
                        &[
                            "images",
                            "import",
                            "--platform",
                            "linux/amd64",
                            &image.archive.display().to_string(),
                        ],
                    )
                    .map_err(|e| Error::Other(format!("import {}: {e}", image.reference)))
                })
            })
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().expect("import thread").map(drop))
    })?;
    Ok((containerd, images))
}

/// `ctr --address <socket> --namespace k8s.io ARGS`; stdout, or stderr as the error.
pub fn ctr(socket: &Path, args: &[&str]) -> Result<String, String> {
    let output = Command::new(tools::containerd_bin_dir().join("ctr"))
        .arg(format!("--address={}", socket.display()))
        .arg("--namespace=k8s.io")
        .args(args)
        .output()
        .map_err(|e| format!("run ctr: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

fn spawn_go(name: &str, mut command: Command, logs: &Path) -> Result<ManagedProcess, Error> {
    command.env("CHATCLUSTER_EXIT_ON_STDIN_EOF", "1");
    ManagedProcess::spawn(name, command, &logs.join(format!("{name}.log")))
}

fn write(path: &Path, text: &str) -> Result<(), Error> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io_err(format!("create {}", parent.display())))?;
    }
    std::fs::write(path, text).map_err(io_err(format!("write {}", path.display())))
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}
