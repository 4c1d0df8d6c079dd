//! The images the test node runs, built offline from the repository's Dockerfiles (see
//! [`crate::image`]) and imported into containerd:
//!
//! | image | Dockerfile | build context (staged here) |
//! |---|---|---|
//! | [`chat_node`] (and [`chat_node_next`], the same files with another label) | `chat-node/Dockerfile` | the static musl release `chat-node`, `images/nonroot/` + the host's CA bundle |
//! | [`operator`] | `operator/Dockerfile` | the static musl release `chat-operator`, same base files |
//! | [`REDIS`] | `tests/harness/images/redis/Dockerfile` | Debian's `redis-server`, `redis-cli`, `sh`, `grep`, `cat`, `sleep`, `timeout` and their libraries |
//! | [`VALKEY`] | `tests/harness/images/valkey/Dockerfile` | the same with Debian's `valkey-server` and `valkey-cli` (also as `redis-server`, `redis-cli`) |
//! | [`TRAEFIK`], [`COREDNS`] | `tests/harness/images/{traefik,coredns}/Dockerfile` | the Go-built binaries of hack/setup.d/21-node.sh |
//! | [`PAUSE`] | `tests/harness/images/pause/Dockerfile` | `pause.c`, built with `gcc -static` |
//!
//! The chat-node and operator image names are the ones the operator and the chart default to,
//! so nothing in the product is configured differently for the tests.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Error;
use crate::image::{self, Image, ImageBuild};
use crate::tools::{self, Tool};

/// The workspace version: the tag of the chat-node and operator images.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The Redis image the operator's managed Redis defaults to (`spec.redis.version` unset).
pub const REDIS: &str = "docker.io/library/redis:7.4";
/// The Valkey image a ChatCluster may name in `spec.redis.image` (the official image's name).
pub const VALKEY: &str = "docker.io/valkey/valkey:8.0";
/// The pod sandbox image (containerd's pinned `sandbox` image).
pub const PAUSE: &str = "localhost/chatcluster/pause:1.0";
/// Traefik, the node's ingress controller (its tag is [`crate::tools::TRAEFIK_VERSION`]; a test checks it).
pub const TRAEFIK: &str = "docker.io/library/traefik:v3.6.12";
/// CoreDNS, the node's cluster DNS (its tag is [`crate::tools::COREDNS_VERSION`]).
pub const COREDNS: &str = "registry.k8s.io/coredns/coredns:v1.15.0";
/// The Rust target of the images' static binaries.
pub const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";

/// The chat-node image the operator defaults to: `ghcr.io/chatcluster/chat-node:<version>`.
pub fn chat_node() -> String {
    format!("ghcr.io/chatcluster/chat-node:{VERSION}")
}

/// A second chat-node image (same binary, another label, so another image ID) for rolling
/// updates between two tags.
pub fn chat_node_next() -> String {
    format!("ghcr.io/chatcluster/chat-node:{VERSION}-next")
}

/// The operator image the chart defaults to: `ghcr.io/chatcluster/chat-operator:<version>`.
pub fn operator() -> String {
    format!("ghcr.io/chatcluster/chat-operator:{VERSION}")
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    crate::repo_root()
}

/// Where `cargo build --release --target x86_64-unknown-linux-musl` puts binaries.
pub fn musl_release_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    target.join(MUSL_TARGET).join("release")
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

fn mkdirs(path: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(path).map_err(io_err(format!("create {}", path.display())))
}

fn copy(from: &Path, to: &Path) -> Result<(), Error> {
    if let Some(parent) = to.parent() {
        mkdirs(parent)?;
    }
    std::fs::copy(from, to).map(drop).map_err(io_err(format!(
        "copy {} to {}",
        from.display(),
        to.display()
    )))
}

fn link(from: &Path, to: &Path) -> Result<(), Error> {
    let _ = std::fs::remove_file(to);
    std::os::unix::fs::symlink(from, to).map_err(io_err(format!(
        "link {} to {}",
        to.display(),
        from.display()
    )))
}

/// `rootfs/` of the images that run as the distroless-style `nonroot` user: /etc/passwd and
/// /etc/group from `images/nonroot`, and the host's CA bundle (rustls-native-certs reads it).
fn stage_nonroot_rootfs(context: &Path) -> Result<(), Error> {
    let rootfs = context.join("rootfs");
    for file in ["etc/passwd", "etc/group"] {
        copy(
            &repo_root().join("images/nonroot").join(file),
            &rootfs.join(file),
        )?;
    }
    let bundle = Path::new("/etc/ssl/certs/ca-certificates.crt");
    if !bundle.is_file() {
        return Err(Error::Other(
            "/etc/ssl/certs/ca-certificates.crt is missing: apt-get install ca-certificates (hack/setup.sh does)".into(),
        ));
    }
    copy(bundle, &rootfs.join("etc/ssl/certs/ca-certificates.crt"))
}

/// The command that builds the images' binaries (hack/lib.sh `build_image_binaries`).
pub const BUILD_COMMAND: &str = "CC_x86_64_unknown_linux_musl=musl-gcc cargo build --release --locked --target x86_64-unknown-linux-musl -p chat-node -p chat-operator";

/// The repository's files a product binary was built from: what cargo lists in its dep-info
/// file (`<binary>.d`: sources, embedded assets), dependencies from the registry left out.
fn sources_of(binary: &Path) -> Vec<PathBuf> {
    let repo = repo_root();
    let Ok(depinfo) = std::fs::read_to_string(binary.with_extension("d")) else {
        return Vec::new();
    };
    let deps = depinfo.split_once(": ").map_or("", |(_, deps)| deps);
    // Paths are separated by spaces; a space inside a path is escaped as a backslash and a space.
    deps.replace("\\ ", "\u{0}")
        .split_whitespace()
        .map(|p| PathBuf::from(p.replace('\u{0}', " ")))
        .filter(|p| p.starts_with(&repo))
        .collect()
}

/// A product binary (`chat-node`, `chat-operator`) of the musl release build; an error when it
/// is missing or older than its sources (an image of stale code would test the wrong thing).
fn release_binary(name: &str) -> Result<PathBuf, Error> {
    let path = musl_release_dir().join(name);
    let built = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
    let Some(built) = built else {
        return Err(Error::ToolMissing {
            tool: format!("static release binary {name} for the image"),
            looked: format!(
                "{} (build it with `{BUILD_COMMAND}`, which `make test` and `make run` do)",
                path.display()
            ),
        });
    };
    for source in sources_of(&path) {
        if std::fs::metadata(&source)
            .and_then(|m| m.modified())
            .is_ok_and(|changed| changed > built)
        {
            return Err(Error::Other(format!(
                "{} is older than {}: rebuild the images' binaries with `{BUILD_COMMAND}` (make test and make run do)",
                path.display(),
                source.display()
            )));
        }
    }
    Ok(path)
}

/// Shared libraries (and the dynamic loader) `binary` loads, from `ldd`.
fn shared_libraries(binary: &Path) -> Result<BTreeSet<PathBuf>, Error> {
    let output = Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(io_err("run ldd"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    Ok(text
        .lines()
        .filter_map(|line| {
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

/// Which server a Redis-like stand-in image runs.
#[derive(Clone, Copy)]
enum Server {
    Redis,
    Valkey,
}

/// The Redis (or Valkey) stand-in's `rootfs/` from Debian's packages on this machine.
fn stage_redis(context: &Path, server: Server) -> Result<(), Error> {
    let rootfs = context.join("rootfs");
    let (servers, user): (&[(&str, &str)], &str) = match server {
        Server::Redis => (
            &[
                ("redis-server", "/usr/bin/redis-server"),
                ("redis-cli", "/usr/bin/redis-cli"),
            ],
            "redis",
        ),
        // The official Valkey image answers to the Redis names too.
        Server::Valkey => (
            &[
                ("valkey-server", "/usr/bin/valkey-server"),
                ("valkey-cli", "/usr/bin/valkey-cli"),
                ("redis-server", "/usr/bin/valkey-server"),
                ("redis-cli", "/usr/bin/valkey-cli"),
            ],
            "valkey",
        ),
    };
    let tools = [
        ("sh", "/bin/dash"),
        ("grep", "/bin/grep"),
        // The high-availability scripts (Redis with Sentinel) use these, as the official
        // images (Debian-based) have them.
        ("cat", "/usr/bin/cat"),
        ("sleep", "/usr/bin/sleep"),
        ("timeout", "/usr/bin/timeout"),
    ];
    let mut libraries = BTreeSet::new();
    for (name, path) in servers.iter().chain(&tools) {
        let path = Path::new(path);
        if !path.exists() {
            return Err(Error::Other(format!(
                "{} is missing: apt-get install redis-server valkey-server dash grep (hack/setup.sh does)",
                path.display()
            )));
        }
        // redis-server (valkey-server) is a symlink to redis-check-rdb (valkey-check-rdb); the
        // program picks its role from argv[0].
        copy(path, &rootfs.join("usr/bin").join(name))?;
        libraries.extend(shared_libraries(path)?);
    }
    for library in libraries {
        let relative = library.strip_prefix("/").unwrap_or(&library);
        copy(&library, &rootfs.join(relative))?;
    }
    let etc = rootfs.join("etc");
    mkdirs(&etc)?;
    std::fs::write(
        etc.join("passwd"),
        format!(
            "root:x:0:0:root:/root:/sbin/nologin\n{user}:x:999:999:{user}:/data:/sbin/nologin\n"
        ),
    )
    .map_err(io_err("write the Redis image's /etc/passwd"))?;
    std::fs::write(etc.join("group"), format!("root:x:0:\n{user}:x:999:\n"))
        .map_err(io_err("write the Redis image's /etc/group"))?;
    mkdirs(&rootfs.join("data"))
}

/// `pause` from pause.c with `gcc -static`, cached by the source's content.
fn stage_pause(context: &Path) -> Result<(), Error> {
    let source = repo_root().join("tests/harness/images/pause/pause.c");
    let text = std::fs::read(&source).map_err(io_err(format!("read {}", source.display())))?;
    let key: String = {
        use sha2::Digest;
        sha2::Sha256::digest(&text)
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let cached = tools::cache_dir().join(format!("pause-{key}"));
    if !cached.is_file() {
        mkdirs(&tools::cache_dir())?;
        let partial = cached.with_extension("partial");
        let status = Command::new("gcc")
            .args(["-static", "-O2", "-s", "-o"])
            .arg(&partial)
            .arg(&source)
            .status()
            .map_err(io_err("run gcc"))?;
        if !status.success() {
            return Err(Error::Other(format!(
                "gcc -static {} failed",
                source.display()
            )));
        }
        std::fs::rename(&partial, &cached).map_err(io_err("cache the pause binary"))?;
    }
    link(&cached, &context.join("pause"))
}

/// Stages the build contexts under `stage` and builds (or takes from the cache) every image.
pub fn build_all(stage: &Path) -> Result<Vec<Image>, Error> {
    let repo = repo_root();
    let harness_images = repo.join("tests/harness/images");
    let context = |name: &str| -> Result<PathBuf, Error> {
        let dir = stage.join(name);
        let _ = std::fs::remove_dir_all(&dir);
        mkdirs(&dir)?;
        Ok(dir)
    };
    let mut builds = Vec::new();

    let dir = context("chat-node")?;
    stage_nonroot_rootfs(&dir)?;
    link(&release_binary("chat-node")?, &dir.join("chat-node"))?;
    let dockerfile = repo.join("chat-node/Dockerfile");
    builds.push(ImageBuild::new(&chat_node(), &dockerfile, &dir));
    builds.push(
        ImageBuild::new(&chat_node_next(), &dockerfile, &dir)
            .label("dev.chatcluster.test.variant", "next"),
    );

    let dir = context("chat-operator")?;
    stage_nonroot_rootfs(&dir)?;
    link(
        &release_binary("chat-operator")?,
        &dir.join("chat-operator"),
    )?;
    builds.push(ImageBuild::new(
        &operator(),
        &repo.join("operator/Dockerfile"),
        &dir,
    ));

    for (name, server, reference) in [
        ("redis", Server::Redis, REDIS),
        ("valkey", Server::Valkey, VALKEY),
    ] {
        let dir = context(name)?;
        stage_redis(&dir, server)?;
        builds.push(ImageBuild::new(
            reference,
            &harness_images.join(name).join("Dockerfile"),
            &dir,
        ));
    }

    let dir = context("pause")?;
    stage_pause(&dir)?;
    builds.push(ImageBuild::new(
        PAUSE,
        &harness_images.join("pause/Dockerfile"),
        &dir,
    ));

    for (name, tool, reference) in [
        ("traefik", Tool::Traefik, TRAEFIK),
        ("coredns", Tool::Coredns, COREDNS),
    ] {
        let dir = context(name)?;
        stage_nonroot_rootfs(&dir)?;
        link(&tools::find(tool)?, &dir.join(name))?;
        builds.push(ImageBuild::new(
            reference,
            &harness_images.join(name).join("Dockerfile"),
            &dir,
        ));
    }

    // In parallel: the large ones (Traefik, CoreDNS) dominate a cold build.
    std::thread::scope(|scope| {
        let handles: Vec<_> = builds
            .iter()
            .map(|build| scope.spawn(move || image::build(build)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("image build thread"))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::{COREDNS_VERSION, TRAEFIK_VERSION};

    #[test]
    fn the_names_follow_the_pinned_versions() {
        assert_eq!(
            TRAEFIK,
            format!("docker.io/library/traefik:{TRAEFIK_VERSION}")
        );
        assert_eq!(
            COREDNS,
            format!("registry.k8s.io/coredns/coredns:{COREDNS_VERSION}")
        );
    }

    #[test]
    fn ldd_lists_libraries_and_the_loader() {
        let libraries = shared_libraries(Path::new("/bin/dash")).unwrap();
        assert!(
            libraries.iter().any(|l| l.ends_with("libc.so.6")),
            "{libraries:?}"
        );
        assert!(
            libraries
                .iter()
                .any(|l| l.to_string_lossy().contains("ld-linux")),
            "{libraries:?}"
        );
    }
}
