//! `chatcluster-images [OUT]` (`make images`): builds the images of this repository offline, as
//! the test node does, from their Dockerfiles (`FROM scratch` + `COPY` of prebuilt files), and
//! writes for each:
//!   OUT/<name>.oci.tar        an OCI image archive (`ctr images import`, `skopeo copy
//!                             oci-archive:...`, `podman load`)
//!   OUT/context/<name>/       its build context with the Dockerfile, for `docker build`
//! OUT defaults to target/images. The chat-node and chat-operator binaries must be built first
//! (hack/images.sh does: `cargo build --release --target x86_64-unknown-linux-musl`).

use std::path::{Path, PathBuf};

use test_harness::node::images;

fn main() {
    let out = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| test_harness::repo_root().join("target/images"));
    if let Err(err) = run(&out) {
        eprintln!("chatcluster-images: {err}");
        std::process::exit(1);
    }
}

fn run(out: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let contexts = out.join("context");
    let built = images::build_all(&contexts)?;
    for image in &built {
        let context = &image.context;
        materialize(context)?;
        std::fs::copy(&image.dockerfile, context.join("Dockerfile"))?;
        let name = context
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tag = image.reference.rsplit(':').next().unwrap_or("latest");
        let archive = out.join(format!("{name}-{tag}.oci.tar"));
        std::fs::copy(&image.archive, &archive)?;
        println!(
            "{}\n  archive: {}\n  context: {}\n  digest:  {}",
            image.reference,
            archive.display(),
            context.display(),
            image.manifest_digest
        );
    }
    Ok(())
}

/// Replaces the symlinks of a staged context by copies (`docker build` does not follow links
/// out of its context).
fn materialize(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.file_type().is_symlink() {
            let target = std::fs::canonicalize(&path)?;
            std::fs::remove_file(&path)?;
            std::fs::copy(target, &path)?;
        } else if meta.is_dir() {
            materialize(&path)?;
        }
    }
    Ok(())
}
