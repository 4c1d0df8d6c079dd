//! Container images built offline: a Dockerfile (`FROM scratch` + `COPY` of prebuilt files, see
//! [`dockerfile`]) and its build context become an OCI image archive that `ctr images import`
//! loads into containerd. No daemon, no registry, no network.
//!
//! The archive is reproducible: one gzip layer per `COPY`, entries sorted, owners from
//! `--chown` (root otherwise), mtime 0, file modes normalised to 0755/0644 unless `--chmod` says
//! otherwise; the config carries no creation time. Building the same inputs twice gives the
//! same digests, so archives are cached by the digest of their inputs
//! (`$CHATCLUSTER_CACHE/images/<key>.tar`) and rebuilt only when a file changes.
//!
//! Like BuildKit for `FROM scratch`, the config's `Env` starts with the default `PATH`.

pub mod dockerfile;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::write::GzEncoder;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::Error;
pub use dockerfile::{ParseError, Recipe};

/// The `PATH` BuildKit gives an image built `FROM scratch`.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Bump when the archive format changes, so cached archives are rebuilt.
const FORMAT_VERSION: &str = "chatcluster-image-v1";

/// What to build.
#[derive(Debug, Clone)]
pub struct ImageBuild {
    /// The image reference the archive names, e.g. `ghcr.io/chatcluster/chat-node:0.1.0`.
    pub reference: String,
    /// The Dockerfile.
    pub dockerfile: PathBuf,
    /// The build context (every `COPY` source is relative to it).
    pub context: PathBuf,
    /// `--build-arg` values.
    pub build_args: BTreeMap<String, String>,
    /// Labels added after the Dockerfile's own (`docker build --label`).
    pub labels: BTreeMap<String, String>,
}

impl ImageBuild {
    /// A build of `dockerfile` with `context`, named `reference`.
    pub fn new(reference: &str, dockerfile: &Path, context: &Path) -> Self {
        Self {
            reference: reference.to_owned(),
            dockerfile: dockerfile.to_owned(),
            context: context.to_owned(),
            build_args: BTreeMap::new(),
            labels: BTreeMap::new(),
        }
    }

    /// Adds a label (e.g. to make a second, different image of the same files).
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_owned(), value.to_owned());
        self
    }
}

/// A built image archive.
#[derive(Debug, Clone)]
pub struct Image {
    /// The reference it is imported under.
    pub reference: String,
    /// The OCI archive (a tar of an OCI image layout).
    pub archive: PathBuf,
    /// `sha256:…` of the manifest (what containerd reports as the image's digest).
    pub manifest_digest: String,
    /// `sha256:…` of the config (the image ID).
    pub config_digest: String,
    /// The image config (`config.User`, `config.Entrypoint`, ...).
    pub config: Value,
    /// The Dockerfile it was built from.
    pub dockerfile: PathBuf,
    /// The build context it was built from.
    pub context: PathBuf,
}

/// A file or directory of a layer.
#[derive(Debug, Clone)]
enum Node {
    Dir,
    File(PathBuf),
    Symlink(PathBuf),
}

#[derive(Debug, Clone)]
struct Entry {
    node: Node,
    mode: u32,
    uid: u64,
    gid: u64,
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

/// Builds (or takes from the cache) the archive of `build`.
pub fn build(build: &ImageBuild) -> Result<Image, Error> {
    build_in(build, &crate::tools::cache_dir().join("images"))
}

/// [`build`] with an explicit cache folder.
pub fn build_in(build: &ImageBuild, cache: &Path) -> Result<Image, Error> {
    let text = std::fs::read_to_string(&build.dockerfile)
        .map_err(io_err(format!("read {}", build.dockerfile.display())))?;
    let recipe = dockerfile::parse(&text, &build.build_args)
        .map_err(|e| Error::Other(format!("{}: {e}", build.dockerfile.display())))?;
    let layers: Vec<BTreeMap<String, Entry>> = recipe
        .copies
        .iter()
        .map(|copy| layer_entries(copy, &recipe, &build.context))
        .collect::<Result<_, _>>()?;

    let key = cache_key(build, &text, &layers)?;
    std::fs::create_dir_all(cache).map_err(io_err(format!("create {}", cache.display())))?;
    let archive = cache.join(format!("{key}.tar"));
    let meta = cache.join(format!("{key}.json"));
    if archive.exists()
        && let Ok(saved) = std::fs::read(&meta)
        && let Ok(saved) = serde_json::from_slice::<Value>(&saved)
    {
        return Ok(Image {
            reference: build.reference.clone(),
            archive,
            manifest_digest: saved["manifest"].as_str().unwrap_or_default().to_owned(),
            config_digest: saved["config"].as_str().unwrap_or_default().to_owned(),
            config: saved["imageConfig"].clone(),
            dockerfile: build.dockerfile.clone(),
            context: build.context.clone(),
        });
    }

    let work = tempfile::Builder::new()
        .prefix(".build-")
        .tempdir_in(cache)
        .map_err(io_err("create a build folder"))?;
    let blobs = work.path().join("blobs/sha256");
    std::fs::create_dir_all(&blobs).map_err(io_err("create blobs/sha256"))?;

    let mut layer_descriptors = Vec::new();
    let mut diff_ids = Vec::new();
    let mut history = Vec::new();
    for (copy, entries) in recipe.copies.iter().zip(&layers) {
        let (digest, size, diff_id) = write_layer(entries, &blobs)?;
        layer_descriptors.push(json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": digest,
            "size": size,
        }));
        diff_ids.push(Value::String(diff_id));
        history.push(json!({
            "created_by": format!("COPY {} {}", copy.sources.join(" "), copy.dest),
            "comment": "chatcluster offline image builder",
        }));
    }

    let config = image_config(&recipe, &build.labels);
    let config_doc = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": history,
    });
    let (config_digest, config_size) =
        write_blob(&blobs, &serde_json::to_vec(&config_doc).expect("json"))?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_size,
        },
        "layers": layer_descriptors,
    });
    let (manifest_digest, manifest_size) =
        write_blob(&blobs, &serde_json::to_vec(&manifest).expect("json"))?;
    let tag = build
        .reference
        .rsplit_once(':')
        .filter(|(_, tag)| !tag.contains('/'))
        .map_or("latest", |(_, tag)| tag);
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_size,
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {
                "io.containerd.image.name": build.reference,
                "org.opencontainers.image.ref.name": tag,
            },
        }],
    });
    std::fs::write(
        work.path().join("index.json"),
        serde_json::to_vec(&index).expect("json"),
    )
    .map_err(io_err("write index.json"))?;
    std::fs::write(
        work.path().join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .map_err(io_err("write oci-layout"))?;

    let partial = work.path().join("image.tar");
    write_layout_archive(work.path(), &partial)?;
    std::fs::rename(&partial, &archive)
        .map_err(io_err(format!("move the archive to {}", archive.display())))?;
    let saved =
        json!({"manifest": manifest_digest, "config": config_digest, "imageConfig": config});
    std::fs::write(&meta, serde_json::to_vec(&saved).expect("json"))
        .map_err(io_err("write image metadata"))?;
    Ok(Image {
        reference: build.reference.clone(),
        archive,
        manifest_digest,
        config_digest,
        config,
        dockerfile: build.dockerfile.clone(),
        context: build.context.clone(),
    })
}

/// The `config` object of the image config.
fn image_config(recipe: &Recipe, extra_labels: &BTreeMap<String, String>) -> Value {
    let mut env: Vec<(String, String)> = vec![("PATH".into(), DEFAULT_PATH.into())];
    for (k, v) in &recipe.env {
        match env.iter_mut().find(|(name, _)| name == k) {
            Some(slot) => slot.1 = v.clone(),
            None => env.push((k.clone(), v.clone())),
        }
    }
    let mut config = serde_json::Map::new();
    config.insert(
        "Env".into(),
        env.iter()
            .map(|(k, v)| Value::String(format!("{k}={v}")))
            .collect(),
    );
    if let Some(user) = &recipe.user {
        config.insert("User".into(), json!(user));
    }
    if let Some(dir) = &recipe.workdir {
        config.insert("WorkingDir".into(), json!(dir));
    }
    if let Some(entrypoint) = &recipe.entrypoint {
        config.insert("Entrypoint".into(), json!(entrypoint));
    }
    if let Some(cmd) = &recipe.cmd {
        config.insert("Cmd".into(), json!(cmd));
    }
    if !recipe.exposed.is_empty() {
        let ports: serde_json::Map<String, Value> = recipe
            .exposed
            .iter()
            .map(|p| (p.clone(), json!({})))
            .collect();
        config.insert("ExposedPorts".into(), Value::Object(ports));
    }
    let mut labels = recipe.labels.clone();
    labels.extend(extra_labels.clone());
    if !labels.is_empty() {
        config.insert("Labels".into(), json!(labels));
    }
    if let Some(signal) = &recipe.stop_signal {
        config.insert("StopSignal".into(), json!(signal));
    }
    Value::Object(config)
}

/// The files one `COPY` puts into the image, keyed by path without the leading `/`, with the
/// parent directories Docker would create.
fn layer_entries(
    copy: &dockerfile::Copy,
    recipe: &Recipe,
    context: &Path,
) -> Result<BTreeMap<String, Entry>, Error> {
    let workdir = recipe.workdir.as_deref().unwrap_or("/");
    let dest = if copy.dest.starts_with('/') {
        copy.dest.clone()
    } else {
        format!("{}/{}", workdir.trim_end_matches('/'), copy.dest)
    };
    let into_dir = dest.ends_with('/') || copy.sources.len() > 1;
    let dest = dest.trim_matches('/').to_string();
    let mut entries = BTreeMap::new();
    let entry = |node: Node, source_mode: u32| Entry {
        mode: copy.mode.unwrap_or(match node {
            Node::Dir => 0o755,
            Node::Symlink(_) => 0o777,
            Node::File(_) if source_mode & 0o111 != 0 => 0o755,
            Node::File(_) => 0o644,
        }),
        node,
        uid: copy.uid,
        gid: copy.gid,
    };
    for source in &copy.sources {
        let path = context.join(source);
        // A source named on the COPY line is followed when it is a symlink (as Docker does);
        // symlinks inside a copied directory are kept as symlinks.
        let meta = std::fs::metadata(&path).map_err(|e| {
            Error::Other(format!(
                "COPY {source}: {e} (looked for {}; is the build context staged?)",
                path.display()
            ))
        })?;
        if meta.is_dir() {
            // `COPY dir/ dest`: the directory's contents go into dest.
            if !dest.is_empty() {
                entries.insert(dest.clone(), entry(Node::Dir, 0o755));
            }
            walk(&path, &dest, &mut |relative, node, mode| {
                entries.insert(relative, entry(node, mode));
            })?;
        } else {
            let name = Path::new(source)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let target = if into_dir || dest.is_empty() {
                join(&dest, &name)
            } else {
                dest.clone()
            };
            entries.insert(
                target,
                entry(Node::File(path.clone()), meta.permissions().mode()),
            );
        }
    }
    // Missing parents, as Docker creates them: root-owned 0755.
    let parents: Vec<String> = entries
        .keys()
        .flat_map(|path| {
            let parts: Vec<&str> = path.split('/').collect();
            (1..parts.len()).map(move |n| parts[..n].join("/"))
        })
        .collect();
    for parent in parents {
        entries.entry(parent).or_insert(Entry {
            node: Node::Dir,
            mode: 0o755,
            uid: 0,
            gid: 0,
        });
    }
    Ok(entries)
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// Calls `visit(path in image, node, mode)` for everything below `dir`.
fn walk(dir: &Path, prefix: &str, visit: &mut dyn FnMut(String, Node, u32)) -> Result<(), Error> {
    let mut children: Vec<_> = std::fs::read_dir(dir)
        .map_err(io_err(format!("read {}", dir.display())))?
        .collect::<Result<_, _>>()
        .map_err(io_err(format!("read {}", dir.display())))?;
    children.sort_by_key(std::fs::DirEntry::file_name);
    for child in children {
        let path = child.path();
        let relative = join(prefix, &child.file_name().to_string_lossy());
        let meta =
            std::fs::symlink_metadata(&path).map_err(io_err(format!("stat {}", path.display())))?;
        let mode = meta.permissions().mode();
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&path)
                .map_err(io_err(format!("readlink {}", path.display())))?;
            visit(relative, Node::Symlink(target), mode);
        } else if meta.is_dir() {
            visit(relative.clone(), Node::Dir, mode);
            walk(&path, &relative, visit)?;
        } else {
            visit(relative, Node::File(path), mode);
        }
    }
    Ok(())
}

/// The digest of everything that goes into the archive.
fn cache_key(
    build: &ImageBuild,
    dockerfile: &str,
    layers: &[BTreeMap<String, Entry>],
) -> Result<String, Error> {
    let mut hash = Sha256::new();
    let mut field = |bytes: &[u8]| {
        hash.update((bytes.len() as u64).to_le_bytes());
        hash.update(bytes);
    };
    field(FORMAT_VERSION.as_bytes());
    field(build.reference.as_bytes());
    field(dockerfile.as_bytes());
    field(
        serde_json::to_string(&build.build_args)
            .expect("json")
            .as_bytes(),
    );
    field(
        serde_json::to_string(&build.labels)
            .expect("json")
            .as_bytes(),
    );
    for layer in layers {
        field(b"layer");
        for (path, entry) in layer {
            field(path.as_bytes());
            field(format!("{:o} {} {}", entry.mode, entry.uid, entry.gid).as_bytes());
            match &entry.node {
                Node::Dir => field(b"dir"),
                Node::Symlink(target) => field(target.to_string_lossy().as_bytes()),
                Node::File(source) => field(&file_digest(source)?),
            }
        }
    }
    Ok(hex(&hash.finalize()))
}

fn file_digest(path: &Path) -> Result<Vec<u8>, Error> {
    let mut file = File::open(path).map_err(io_err(format!("open {}", path.display())))?;
    let mut hash = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buffer)
            .map_err(io_err(format!("read {}", path.display())))?;
        if n == 0 {
            break;
        }
        hash.update(&buffer[..n]);
    }
    Ok(hash.finalize().to_vec())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A writer that hashes what passes through it.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
    count: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes one gzip layer into `blobs`; returns (digest, size, diff_id).
fn write_layer(
    entries: &BTreeMap<String, Entry>,
    blobs: &Path,
) -> Result<(String, u64, String), Error> {
    let partial = blobs.join("layer.partial");
    let file = File::create(&partial).map_err(io_err("create a layer file"))?;
    let compressed = Hashing {
        inner: BufWriter::new(file),
        hash: Sha256::new(),
        count: 0,
    };
    // Level 1: these archives are local and rebuilt on change; speed matters more than size.
    let gzip = GzEncoder::new(compressed, Compression::fast());
    let plain = Hashing {
        inner: gzip,
        hash: Sha256::new(),
        count: 0,
    };
    let mut tar = tar::Builder::new(plain);
    tar.mode(tar::HeaderMode::Deterministic);
    tar.follow_symlinks(false);
    let layer_err = io_err("write a layer");
    let result: std::io::Result<()> = (|| {
        for (path, entry) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_mtime(0);
            header.set_uid(entry.uid);
            header.set_gid(entry.gid);
            header.set_mode(entry.mode);
            match &entry.node {
                Node::Dir => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_size(0);
                    tar.append_data(&mut header, format!("{path}/"), std::io::empty())?;
                }
                Node::Symlink(target) => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_size(0);
                    tar.append_link(&mut header, path, target)?;
                }
                Node::File(source) => {
                    let file = File::open(source)?;
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_size(file.metadata()?.len());
                    tar.append_data(&mut header, path, BufReader::new(file))?;
                }
            }
        }
        Ok(())
    })();
    result.map_err(layer_err)?;
    let plain = tar.into_inner().map_err(io_err("finish a layer"))?;
    let diff_id = format!("sha256:{}", hex(&plain.hash.finalize()));
    let mut compressed = plain.inner.finish().map_err(io_err("finish a layer"))?;
    compressed.flush().map_err(io_err("flush a layer"))?;
    let digest = hex(&compressed.hash.finalize());
    let size = compressed.count;
    drop(compressed.inner);
    std::fs::rename(&partial, blobs.join(&digest)).map_err(io_err("name a layer blob"))?;
    Ok((format!("sha256:{digest}"), size, diff_id))
}

/// Writes `bytes` as a blob; returns (digest, size).
fn write_blob(blobs: &Path, bytes: &[u8]) -> Result<(String, u64), Error> {
    let digest = hex(&Sha256::digest(bytes));
    std::fs::write(blobs.join(&digest), bytes).map_err(io_err("write a blob"))?;
    Ok((format!("sha256:{digest}"), bytes.len() as u64))
}

/// Tars the OCI layout in `dir` (oci-layout, index.json, blobs/) into `out`.
fn write_layout_archive(dir: &Path, out: &Path) -> Result<(), Error> {
    let file = File::create(out).map_err(io_err(format!("create {}", out.display())))?;
    let mut tar = tar::Builder::new(BufWriter::new(file));
    tar.mode(tar::HeaderMode::Deterministic);
    let mut paths = vec![PathBuf::from("oci-layout"), PathBuf::from("index.json")];
    let mut blobs: Vec<_> = std::fs::read_dir(dir.join("blobs/sha256"))
        .map_err(io_err("list blobs"))?
        .filter_map(Result::ok)
        .map(|e| PathBuf::from("blobs/sha256").join(e.file_name()))
        .collect();
    blobs.sort();
    paths.extend(blobs);
    for path in paths {
        tar.append_path_with_name(dir.join(&path), &path)
            .map_err(io_err(format!("archive {}", path.display())))?;
    }
    tar.into_inner()
        .and_then(|mut w| w.flush())
        .map_err(io_err("finish the image archive"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context_with(files: &[(&str, &[u8], u32)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, content, mode) in files {
            let full = dir.path().join(path);
            std::fs::create_dir_all(full.parent().unwrap()).unwrap();
            std::fs::write(&full, content).unwrap();
            std::fs::set_permissions(&full, std::fs::Permissions::from_mode(*mode)).unwrap();
        }
        dir
    }

    fn read_archive(path: &Path) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        let mut archive = tar::Archive::new(File::open(path).unwrap());
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().to_string_lossy().into_owned();
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).unwrap();
            out.insert(name, bytes);
        }
        out
    }

    fn layer_listing(gz: &[u8]) -> Vec<(String, u32, u64)> {
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(gz));
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    h.mode().unwrap(),
                    h.uid().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn an_archive_is_a_reproducible_oci_layout_with_what_the_dockerfile_says() {
        let context = context_with(&[
            ("app", b"#!binary", 0o700),
            ("rootfs/etc/passwd", b"root:x:0:0::/:\n", 0o600),
            (
                "Dockerfile",
                b"FROM scratch\nCOPY rootfs/ /\nCOPY --chown=65532:65532 app /usr/local/bin/app\nUSER 65532:65532\nENV A=1\nEXPOSE 8080\nENTRYPOINT [\"/usr/local/bin/app\"]\n",
                0o644,
            ),
        ]);
        let build = ImageBuild::new(
            "example.test/app:1.0",
            &context.path().join("Dockerfile"),
            context.path(),
        );
        let cache_a = tempfile::tempdir().unwrap();
        let cache_b = tempfile::tempdir().unwrap();
        let a = build_in(&build, cache_a.path()).unwrap();
        let b = build_in(&build, cache_b.path()).unwrap();
        assert_eq!(a.manifest_digest, b.manifest_digest, "reproducible");
        assert_eq!(
            std::fs::read(&a.archive).unwrap(),
            std::fs::read(&b.archive).unwrap()
        );
        // cached: the same archive again, even without re-reading the layout
        let again = build_in(&build, cache_a.path()).unwrap();
        assert_eq!(again.archive, a.archive);
        assert_eq!(again.manifest_digest, a.manifest_digest);

        let files = read_archive(&a.archive);
        let index: Value = serde_json::from_slice(&files["index.json"]).unwrap();
        let descriptor = &index["manifests"][0];
        assert_eq!(
            descriptor["annotations"]["io.containerd.image.name"],
            "example.test/app:1.0"
        );
        assert_eq!(
            descriptor["annotations"]["org.opencontainers.image.ref.name"],
            "1.0"
        );
        let manifest_name = format!(
            "blobs/sha256/{}",
            descriptor["digest"]
                .as_str()
                .unwrap()
                .trim_start_matches("sha256:")
        );
        let manifest: Value = serde_json::from_slice(&files[&manifest_name]).unwrap();
        let config_name = format!(
            "blobs/sha256/{}",
            manifest["config"]["digest"]
                .as_str()
                .unwrap()
                .trim_start_matches("sha256:")
        );
        let config: Value = serde_json::from_slice(&files[&config_name]).unwrap();
        assert_eq!(config["config"]["User"], "65532:65532");
        assert_eq!(
            config["config"]["Entrypoint"],
            json!(["/usr/local/bin/app"])
        );
        assert_eq!(
            config["config"]["Env"],
            json!([format!("PATH={DEFAULT_PATH}"), "A=1"])
        );
        assert_eq!(config["config"]["ExposedPorts"], json!({"8080/tcp": {}}));
        assert_eq!(config["rootfs"]["diff_ids"].as_array().unwrap().len(), 2);

        let layers = manifest["layers"].as_array().unwrap();
        let blob = |i: usize| {
            files[&format!(
                "blobs/sha256/{}",
                layers[i]["digest"]
                    .as_str()
                    .unwrap()
                    .trim_start_matches("sha256:")
            )]
                .clone()
        };
        assert_eq!(
            layer_listing(&blob(0)),
            [
                ("etc/".to_string(), 0o755, 0),
                ("etc/passwd".to_string(), 0o644, 0)
            ]
        );
        assert_eq!(
            layer_listing(&blob(1)),
            [
                ("usr/".to_string(), 0o755, 0),
                ("usr/local/".to_string(), 0o755, 0),
                ("usr/local/bin/".to_string(), 0o755, 0),
                ("usr/local/bin/app".to_string(), 0o755, 65532),
            ]
        );
    }

    #[test]
    fn a_changed_file_gives_another_image_and_a_label_another_config() {
        let context = context_with(&[
            ("app", b"one", 0o755),
            (
                "Dockerfile",
                b"FROM scratch\nCOPY app /app\nENTRYPOINT [\"/app\"]\n",
                0o644,
            ),
        ]);
        let cache = tempfile::tempdir().unwrap();
        let build = ImageBuild::new(
            "example.test/app:1",
            &context.path().join("Dockerfile"),
            context.path(),
        );
        let first = build_in(&build, cache.path()).unwrap();
        let labelled = build_in(&build.clone().label("rev", "2"), cache.path()).unwrap();
        assert_ne!(first.config_digest, labelled.config_digest);
        std::fs::write(context.path().join("app"), b"two").unwrap();
        let changed = build_in(&build, cache.path()).unwrap();
        assert_ne!(first.manifest_digest, changed.manifest_digest);
    }

    #[test]
    fn a_missing_context_file_is_a_clear_error() {
        let context = context_with(&[("Dockerfile", b"FROM scratch\nCOPY app /app\n", 0o644)]);
        let build = ImageBuild::new("x:1", &context.path().join("Dockerfile"), context.path());
        let err = build_in(&build, tempfile::tempdir().unwrap().path())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("COPY app") && err.contains("build context"),
            "{err}"
        );
    }
}
