//! Errors of the reconciler, named after the step that failed.

use std::future::Future;
use std::time::Duration;

/// A Kubernetes API call that failed or did not answer in time.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No answer within the configured `--api-timeout`.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The API server (or the connection to it) answered with an error.
    #[error(transparent)]
    Kube(#[from] kube::Error),
}

impl ApiError {
    /// True for HTTP 404 (also a bare 404 without a Status body, as discovery of an absent
    /// API group answers).
    pub fn is_not_found(&self) -> bool {
        matches!(self, ApiError::Kube(kube::Error::Api(status)) if status.is_not_found() || status.code == 404)
    }
    /// True for HTTP 409 Conflict (an unforced server-side apply over fields another manager
    /// set to other values).
    pub fn is_conflict(&self) -> bool {
        matches!(self, ApiError::Kube(kube::Error::Api(status)) if status.code == 409)
    }
    /// True for HTTP 409 AlreadyExists.
    pub fn is_already_exists(&self) -> bool {
        matches!(self, ApiError::Kube(kube::Error::Api(status)) if status.is_already_exists())
    }
}

/// Runs one API call under a deadline, so a hung connection cannot stall a reconcile forever.
pub async fn with_timeout<T>(
    timeout: Duration,
    call: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, ApiError> {
    match tokio::time::timeout(timeout, call).await {
        Ok(result) => result.map_err(ApiError::from),
        Err(_) => Err(ApiError::Timeout(timeout)),
    }
}

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Server-side apply of a child was refused or failed.
    #[error("failed to apply {child}: {source}")]
    ApplyChild {
        /// `Kind/name`.
        child: String,
        /// The API error.
        source: ApiError,
    },
    /// Reading an object failed.
    #[error("failed to read {what}: {source}")]
    Read {
        /// What was read.
        what: String,
        /// The API error.
        source: ApiError,
    },
    /// Creating the managed Redis password Secret failed.
    #[error("failed to create the Redis password Secret {name}: {source}")]
    CreateRedisSecret {
        /// The Secret's name.
        name: String,
        /// The API error.
        source: ApiError,
    },
    /// Creating the server API key Secret failed.
    #[error("failed to create the server API key Secret {name}: {source}")]
    CreateApiKeySecret {
        /// The Secret's name.
        name: String,
        /// The API error.
        source: ApiError,
    },
    /// Listing children for the orphan sweep failed.
    #[error("failed to list {kind} objects for the orphan sweep: {source}")]
    ListChildren {
        /// The kind.
        kind: String,
        /// The API error.
        source: ApiError,
    },
    /// Deleting a child the spec no longer asks for failed.
    #[error("failed to delete orphaned {child}: {source}")]
    DeleteOrphan {
        /// `Kind/name`.
        child: String,
        /// The API error.
        source: ApiError,
    },
    /// Checking whether an optional API is installed failed.
    #[error("failed to check whether {api} is installed: {source}")]
    Discovery {
        /// `group/version`.
        api: String,
        /// The API error.
        source: ApiError,
    },
    /// Writing the ChatCluster's status failed.
    #[error("failed to write the ChatCluster status: {source}")]
    PatchStatus {
        /// The API error.
        source: ApiError,
    },
    /// The spec asks for something the builders refuse (e.g. a duration Prometheus rejects).
    #[error("invalid spec: {source}")]
    InvalidSpec {
        /// What is wrong.
        source: crate::children::observability::Error,
    },
    /// The spec names images outside the operator's allow-list (`--allowed-image-prefixes`);
    /// nothing is applied.
    #[error(
        "image not allowed by the operator's allow-list ({allowed}): {refused}; nothing is applied"
    )]
    ImageNotAllowed {
        /// `field is image`, for each refused image.
        refused: String,
        /// The allow-list.
        allowed: String,
    },
    /// The spec asks what the operator's tenant policy refuses (`--denied-ingress-annotations`,
    /// ...); nothing is applied.
    #[error("refused by the operator's tenant policy: {violations}; nothing is applied")]
    PolicyViolation {
        /// One message per refused value, `; `-separated.
        violations: String,
    },
    /// Children of this ChatCluster's names exist but are not controlled by it: the operator
    /// leaves them alone and applies nothing.
    #[error(
        "{objects} already exist and are not controlled by this ChatCluster: rename the ChatCluster or remove them; nothing is applied"
    )]
    Conflict {
        /// `Kind/name (controlled by …)`, for each.
        objects: String,
    },
    /// The ChatCluster came without a namespace (cannot happen for a namespaced kind).
    #[error("the ChatCluster has no namespace")]
    MissingNamespace,
}

impl Error {
    /// A short, bounded label for the failures metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::ApplyChild { .. } => "apply_child",
            Error::Read { .. } => "read",
            Error::CreateRedisSecret { .. } => "create_redis_secret",
            Error::CreateApiKeySecret { .. } => "create_api_key_secret",
            Error::ListChildren { .. } => "list_children",
            Error::DeleteOrphan { .. } => "delete_orphan",
            Error::Discovery { .. } => "discovery",
            Error::PatchStatus { .. } => "patch_status",
            Error::InvalidSpec { .. } => "invalid_spec",
            Error::ImageNotAllowed { .. } => "image_not_allowed",
            Error::Conflict { .. } => "conflict",
            Error::PolicyViolation { .. } => "policy_violation",
            Error::MissingNamespace => "missing_namespace",
        }
    }

    /// The reason of the `Degraded` condition and of the Warning Event for this error.
    pub fn reason(&self) -> &'static str {
        use crate::api::reasons;
        match self {
            Error::ImageNotAllowed { .. } => reasons::IMAGE_NOT_ALLOWED,
            Error::Conflict { .. } => reasons::CONFLICT,
            Error::PolicyViolation { .. } => reasons::POLICY_VIOLATION,
            _ => reasons::RECONCILE_FAILED,
        }
    }
}
