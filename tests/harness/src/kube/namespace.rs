//! Throw-away namespaces for tests, with a dump of their contents when the test fails.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::FutureExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::{DeleteParams, ObjectMeta, PostParams};

use super::ControlPlane;

/// What a test body returns; tells [`ControlPlane::with_temp_ns`] whether the test failed
/// (a panic always counts as failure).
pub trait TestOutcome {
    /// True when the test failed.
    fn is_failure(&self) -> bool;
}

impl TestOutcome for () {
    fn is_failure(&self) -> bool {
        false
    }
}

impl<T, E> TestOutcome for Result<T, E> {
    fn is_failure(&self) -> bool {
        self.is_err()
    }
}

/// Kinds dumped for a failed test's namespace (beyond `all`, which lacks several of ours).
const DUMP_KINDS: &str = "all,events,configmaps,ingresses,networkpolicies,poddisruptionbudgets,\
serviceaccounts,roles,rolebindings,leases";

static NEXT: AtomicU64 = AtomicU64::new(0);

/// A DNS-1123 namespace name: the sanitized prefix, the process id and a counter.
pub(crate) fn unique_name(prefix: &str) -> String {
    let mut clean: String = prefix
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() { c } else { '-' }
        })
        .collect();
    clean.truncate(40);
    let clean = clean.trim_matches('-');
    let clean = if clean.is_empty() { "test" } else { clean };
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{clean}-{}-{n}", std::process::id())
}

impl ControlPlane {
    /// Runs `test` with a client and a fresh namespace named `<prefix>-<pid>-<n>`. When the
    /// test panics or returns `Err`, prints `kubectl get <kinds> -o yaml` of the namespace
    /// (and any `chatclusters`) to stderr. The namespace is deleted afterwards in all cases,
    /// and a panic is re-raised.
    ///
    /// ```no_run
    /// # async fn demo() {
    /// use test_harness::kube::ControlPlane;
    /// let cp = ControlPlane::shared().await;
    /// cp.with_temp_ns("my-test", |client, ns| async move {
    ///     let _ = (client, ns); // create objects in `ns`, assert on them
    /// })
    /// .await;
    /// # }
    /// ```
    pub async fn with_temp_ns<F, Fut, T>(&self, prefix: &str, test: F) -> T
    where
        F: FnOnce(kube::Client, String) -> Fut,
        Fut: Future<Output = T>,
        T: TestOutcome,
    {
        let client = self.client();
        let ns = self.create_namespace(prefix).await;
        let outcome = AssertUnwindSafe(test(client, ns.clone()))
            .catch_unwind()
            .await;
        let failed = match &outcome {
            Ok(value) => value.is_failure(),
            Err(_) => true,
        };
        if failed {
            eprintln!("{}", self.dump_namespace(&ns).await);
        }
        self.delete_namespace(&ns).await;
        match outcome {
            Ok(value) => value,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// Creates a namespace named `<prefix>-<pid>-<n>` and returns its name (delete it with
    /// [`ControlPlane::delete_namespace`]; prefer [`ControlPlane::with_temp_ns`]).
    pub async fn create_namespace(&self, prefix: &str) -> String {
        let name = unique_name(prefix);
        let namespaces: Api<Namespace> = Api::all(self.client());
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some([("chatcluster.dev/test".to_owned(), "true".to_owned())].into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        if let Err(err) = namespaces.create(&PostParams::default(), &namespace).await {
            panic!("test harness: create namespace {name}: {err}");
        }
        name
    }

    /// Deletes a namespace without waiting (the namespace controller finishes it).
    pub async fn delete_namespace(&self, name: &str) {
        let namespaces: Api<Namespace> = Api::all(self.client());
        if let Err(err) = namespaces.delete(name, &DeleteParams::background()).await {
            eprintln!("test harness: delete namespace {name}: {err}");
        }
    }

    /// `kubectl get <kinds> -o yaml` for a namespace, as text (for failure reports).
    pub async fn dump_namespace(&self, ns: &str) -> String {
        let mut report = format!("===== test harness: contents of namespace {ns} =====\n");
        for kinds in [DUMP_KINDS, "chatclusters.realtime.dev"] {
            let output = tokio::process::Command::from(self.kubectl())
                .args(["get", kinds, "-n", ns, "-o", "yaml", "--ignore-not-found"])
                .output()
                .await;
            match output {
                Ok(out) => {
                    report.push_str(&String::from_utf8_lossy(&out.stdout));
                    // A missing CRD is expected; only report other errors.
                    let stderr = String::from_utf8_lossy(&out.stderr);
                    if !stderr.contains("the server doesn't have a resource type") {
                        report.push_str(&stderr);
                    }
                }
                Err(err) => report.push_str(&format!("kubectl failed to run: {err}\n")),
            }
        }
        report.push_str(&format!("===== end of namespace {ns} =====\n"));
        report
    }
}
