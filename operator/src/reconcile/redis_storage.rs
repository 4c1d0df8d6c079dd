//! Where a managed Redis keeps its data: a volume per pod, or an emptyDir.
//!
//! `spec.redis.storage` and `spec.redis.ephemeral: true` decide it when set. Otherwise the
//! operator does, once, when it creates the Redis StatefulSet: a volume of the operator-wide
//! default size (`--default-redis-storage-size`, 1Gi) on `--default-redis-storage-class` or else
//! the cluster's default StorageClass. A cluster without a default StorageClass (or an operator
//! not allowed to list them) gets an emptyDir and a Warning Event rather than a Redis whose
//! claims stay Pending forever. After that the existing StatefulSet's choice is kept: its
//! volume claims cannot change, and a default StorageClass added later must not make every
//! reconcile fail.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::ResourceExt;
use kube::api::{Api, ListParams};

use super::Context;
use crate::api::{ChatCluster, RedisSpec, RedisStorage, VolumeRetention};
use crate::children::{self, names};
use crate::error::Error;

/// Size of a managed Redis' volume when neither its ChatCluster nor the operator says.
pub const DEFAULT_SIZE: &str = "1Gi";

/// The annotation that marks the cluster's default StorageClass (and its beta form).
const DEFAULT_CLASS_ANNOTATIONS: [&str; 2] = [
    "storageclass.kubernetes.io/is-default-class",
    "storageclass.beta.kubernetes.io/is-default-class",
];

/// Operator-wide default volume of a managed Redis whose ChatCluster sets neither
/// `spec.redis.storage` nor `spec.redis.ephemeral` (`--default-redis-storage-size`,
/// `--default-redis-storage-class`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DefaultRedisStorage {
    /// Size of each pod's volume; `None`: no default volume, an emptyDir.
    pub size: Option<String>,
    /// StorageClass of the volume; `None`: the cluster's default StorageClass.
    pub storage_class: Option<String>,
}

impl Default for DefaultRedisStorage {
    fn default() -> Self {
        Self {
            size: Some(DEFAULT_SIZE.to_owned()),
            storage_class: None,
        }
    }
}

/// Where a managed Redis keeps its data, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct StorageDecision {
    /// Each Redis pod's volume claim; `None`: an emptyDir.
    pub storage: Option<RedisStorage>,
    /// Where the data is and who decided (logged when the StatefulSet is created).
    pub describe: String,
    /// Set when the data goes to an emptyDir only because no volume could be given: the
    /// Warning Event to publish.
    pub warning: Option<String>,
}

impl StorageDecision {
    /// `cluster` as its children are built: `spec.redis.storage` is the decision.
    pub fn apply(&self, cluster: &ChatCluster) -> ChatCluster {
        let mut effective = cluster.clone();
        effective.spec.redis = Some(RedisSpec {
            storage: self.storage.clone(),
            ..cluster.spec.redis()
        });
        effective
    }
}

/// What the cluster's StorageClasses offer a default volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Classes {
    /// The cluster's default StorageClass.
    Default(String),
    /// No StorageClass is marked default.
    NoDefault,
    /// The operator may not list StorageClasses (or the API is missing): the API's message.
    Unreadable(String),
}

/// The first step of [`decide`]: settled, or the StorageClasses must be looked up for a
/// default volume of this size.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    Decided(StorageDecision),
    NeedsDefaultClass { size: String },
}

/// Decides without the cluster's StorageClasses where it can: from the spec, the existing
/// StatefulSet (`existing`: `Some(None)` when it has no volume claim) or the operator's
/// defaults.
pub fn decide(
    redis: &RedisSpec,
    existing: Option<Option<RedisStorage>>,
    defaults: &DefaultRedisStorage,
) -> Step {
    if let Some(storage) = &redis.storage {
        return Step::Decided(volume(storage.clone(), "spec.redis.storage"));
    }
    if redis.ephemeral == Some(true) {
        return Step::Decided(empty_dir("spec.redis.ephemeral", None));
    }
    match (existing, &defaults.size, &defaults.storage_class) {
        (Some(Some(storage)), _, _) => {
            Step::Decided(volume(storage, "kept from the existing StatefulSet"))
        }
        (Some(None), _, _) => Step::Decided(empty_dir("kept from the existing StatefulSet", None)),
        (None, None, _) => Step::Decided(empty_dir(
            "the operator's --default-redis-storage-size is none",
            None,
        )),
        (None, Some(size), Some(class)) => Step::Decided(volume(
            RedisStorage {
                size: Quantity(size.clone()),
                storage_class_name: Some(class.clone()),
                when_deleted: None,
            },
            "the operator's default, --default-redis-storage-class",
        )),
        (None, Some(size), None) => Step::NeedsDefaultClass { size: size.clone() },
    }
}

/// The second step of [`decide`]: a default volume of `size` on the default StorageClass, or an
/// emptyDir with a Warning when there is none.
pub fn decide_with_classes(size: &str, classes: Classes) -> StorageDecision {
    match classes {
        Classes::Default(class) => volume(
            RedisStorage {
                size: Quantity(size.to_owned()),
                storage_class_name: Some(class),
                when_deleted: None,
            },
            "the operator's default, on the cluster's default StorageClass",
        ),
        Classes::NoDefault => empty_dir(
            "the cluster has no default StorageClass",
            Some("the cluster has no default StorageClass"),
        ),
        Classes::Unreadable(message) => {
            let why = format!("the operator cannot list StorageClasses: {message}");
            empty_dir(&why, Some(&why))
        }
    }
}

fn volume(storage: RedisStorage, why: &str) -> StorageDecision {
    StorageDecision {
        describe: format!(
            "its data is on a {} volume per pod ({}; {why})",
            storage.size.0,
            class_of(&storage)
        ),
        storage: Some(storage),
        warning: None,
    }
}

fn empty_dir(why: &str, fallback: Option<&str>) -> StorageDecision {
    StorageDecision {
        storage: None,
        describe: format!("{EMPTY_DIR} ({why})"),
        warning: fallback.map(|why| {
            format!(
                "the managed Redis keeps its data in an emptyDir, lost when a Redis pod is \
                 deleted: {why}; set spec.redis.storage (or spec.redis.ephemeral: true to \
                 silence this), or give the operator --default-redis-storage-class"
            )
        }),
    }
}

/// The volume claim of an existing Redis StatefulSet: `None` when it has none (an emptyDir).
pub fn existing_storage(statefulset: &StatefulSet) -> Option<RedisStorage> {
    let spec = statefulset.spec.as_ref()?;
    let claim = spec
        .volume_claim_templates
        .iter()
        .flatten()
        .find(|c| c.metadata.name.as_deref() == Some(children::redis::DATA_VOLUME))?;
    let claim_spec = claim.spec.as_ref()?;
    let size = claim_spec
        .resources
        .as_ref()?
        .requests
        .as_ref()?
        .get("storage")?
        .clone();
    let when_deleted = spec
        .persistent_volume_claim_retention_policy
        .as_ref()
        .and_then(|p| p.when_deleted.as_deref())
        .map(|w| {
            if w == VolumeRetention::Delete.as_str() {
                VolumeRetention::Delete
            } else {
                VolumeRetention::Retain
            }
        });
    Some(RedisStorage {
        size,
        storage_class_name: claim_spec.storage_class_name.clone(),
        when_deleted,
    })
}

/// Where the Redis of `statefulset` keeps its data, for the `RedisReady` condition.
pub fn describe_existing(statefulset: &StatefulSet) -> String {
    match existing_storage(statefulset) {
        Some(storage) => format!(
            "its data is on a {} volume per pod ({})",
            storage.size.0,
            class_of(&storage)
        ),
        None => EMPTY_DIR.to_owned(),
    }
}

const EMPTY_DIR: &str = "its data is in an emptyDir, lost when a Redis pod is deleted";

fn class_of(storage: &RedisStorage) -> String {
    storage
        .storage_class_name
        .as_deref()
        .map_or("the cluster's default StorageClass".to_owned(), |c| {
            format!("StorageClass {c}")
        })
}

/// The cluster's default StorageClass among `classes` (the newest, as the API server picks
/// when several are marked).
pub fn default_class(classes: &[StorageClass]) -> Classes {
    classes
        .iter()
        .filter(|c| {
            DEFAULT_CLASS_ANNOTATIONS
                .iter()
                .any(|a| c.annotations().get(*a).is_some_and(|v| v == "true"))
        })
        .max_by_key(|c| c.metadata.creation_timestamp.clone().map(|t| t.0))
        .map_or(Classes::NoDefault, |c| Classes::Default(c.name_any()))
}

/// Decides where `cluster`'s managed Redis keeps its data (None for an external Redis),
/// reading the existing StatefulSet and the StorageClasses only when the spec does not say.
pub async fn resolve(
    ctx: &Context,
    cluster: &ChatCluster,
    namespace: &str,
) -> Result<Option<StorageDecision>, Error> {
    if !cluster.spec.redis_is_managed() {
        return Ok(None);
    }
    let redis = cluster.spec.redis();
    let defaults = &ctx.settings.operands.redis_storage;
    // The spec decides alone when it says; else what exists stays.
    let existing = if redis.storage.is_none() && redis.ephemeral != Some(true) {
        let name = names::redis(&cluster.name_any());
        super::read_controlled::<StatefulSet>(ctx, cluster, namespace, &name).await?
    } else {
        None
    };
    let defaulted = existing.is_none() && redis.storage.is_none() && redis.ephemeral != Some(true);
    let step = decide(&redis, existing.as_ref().map(existing_storage), defaults);
    let size = match step {
        Step::Decided(decision) => return Ok(Some(logged(decision, defaulted))),
        Step::NeedsDefaultClass { size } => size,
    };
    let classes: Api<StorageClass> = Api::all(ctx.client.clone());
    let classes = match ctx.call(classes.list(&ListParams::default())).await {
        Ok(list) => default_class(&list.items),
        Err(crate::error::ApiError::Kube(kube::Error::Api(status)))
            if status.code == 403 || status.code == 404 =>
        {
            tracing::warn!(error = %status.message, "cannot list StorageClasses: the new managed Redis gets an emptyDir");
            Classes::Unreadable(status.message)
        }
        Err(source) => {
            return Err(Error::Read {
                what: "StorageClasses".into(),
                source,
            });
        }
    };
    Ok(Some(logged(decide_with_classes(&size, classes), defaulted)))
}

/// `decision`, logged when the operator (not the spec, not an existing StatefulSet) made it.
fn logged(decision: StorageDecision, defaulted: bool) -> StorageDecision {
    if defaulted {
        tracing::info!(storage = %decision.describe, "new managed Redis");
    }
    decision
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::children::fixtures::cluster;

    fn class(name: &str, default: Option<&str>, created: &str) -> StorageClass {
        let mut class = StorageClass::default();
        class.metadata.name = Some(name.into());
        class.metadata.creation_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(created.parse().unwrap()),
        );
        if let Some(value) = default {
            class.metadata.annotations =
                Some([(DEFAULT_CLASS_ANNOTATIONS[0].to_owned(), value.to_owned())].into());
        }
        class
    }

    fn storage(size: &str, class: Option<&str>) -> RedisStorage {
        RedisStorage {
            size: Quantity(size.into()),
            storage_class_name: class.map(Into::into),
            when_deleted: None,
        }
    }

    #[test]
    fn the_spec_decides_first_whatever_exists() {
        let defaults = DefaultRedisStorage::default();
        let mut redis = RedisSpec {
            storage: Some(storage("5Gi", Some("fast"))),
            ..RedisSpec::default()
        };
        for existing in [None, Some(None), Some(Some(storage("1Gi", None)))] {
            let Step::Decided(d) = decide(&redis, existing, &defaults) else {
                panic!("undecided")
            };
            assert_eq!(d.storage, redis.storage);
            assert!(
                d.describe
                    .contains("5Gi volume per pod (StorageClass fast; spec.redis.storage)")
            );
            assert_eq!(d.warning, None);
        }
        redis.storage = None;
        redis.ephemeral = Some(true);
        let Step::Decided(d) = decide(&redis, Some(Some(storage("1Gi", None))), &defaults) else {
            panic!("undecided")
        };
        assert_eq!((d.storage, d.warning), (None, None));
        assert!(d.describe.contains("emptyDir"), "{}", d.describe);
    }

    #[test]
    fn an_existing_statefulset_keeps_its_choice() {
        let defaults = DefaultRedisStorage::default();
        let redis = RedisSpec::default();
        let kept = storage("2Gi", Some("standard"));
        assert_eq!(
            decide(&redis, Some(Some(kept.clone())), &defaults),
            Step::Decided(volume(kept, "kept from the existing StatefulSet"))
        );
        let Step::Decided(d) = decide(&redis, Some(None), &defaults) else {
            panic!("undecided")
        };
        assert_eq!((d.storage, d.warning), (None, None));
    }

    #[test]
    fn a_new_redis_gets_the_default_volume_or_an_empty_dir_with_a_warning() {
        let redis = RedisSpec::default();
        let defaults = DefaultRedisStorage::default();
        assert_eq!(
            decide(&redis, None, &defaults),
            Step::NeedsDefaultClass { size: "1Gi".into() }
        );
        let d = decide_with_classes("1Gi", Classes::Default("standard".into()));
        assert_eq!(d.storage, Some(storage("1Gi", Some("standard"))));
        assert_eq!(d.warning, None);
        for classes in [Classes::NoDefault, Classes::Unreadable("forbidden".into())] {
            let d = decide_with_classes("1Gi", classes.clone());
            assert_eq!(d.storage, None);
            let warning = d.warning.expect("a warning");
            assert!(warning.contains("set spec.redis.storage"), "{warning}");
            if let Classes::Unreadable(m) = classes {
                assert!(warning.contains(&m), "{warning}");
            }
        }
        let named = DefaultRedisStorage {
            size: Some("3Gi".into()),
            storage_class: Some("local".into()),
        };
        let Step::Decided(d) = decide(&redis, None, &named) else {
            panic!("undecided")
        };
        assert_eq!(d.storage, Some(storage("3Gi", Some("local"))));
        let none = DefaultRedisStorage {
            size: None,
            storage_class: None,
        };
        let Step::Decided(d) = decide(&redis, None, &none) else {
            panic!("undecided")
        };
        assert_eq!((d.storage, d.warning), (None, None));
    }

    #[test]
    fn the_newest_class_marked_default_is_the_default() {
        let classes = [
            class("slow", Some("true"), "2026-01-01T00:00:00Z"),
            class("fast", Some("true"), "2026-02-01T00:00:00Z"),
            class("other", Some("false"), "2026-03-01T00:00:00Z"),
            class("plain", None, "2026-04-01T00:00:00Z"),
        ];
        assert_eq!(default_class(&classes), Classes::Default("fast".into()));
        assert_eq!(default_class(&classes[2..]), Classes::NoDefault);
    }

    #[test]
    fn the_decision_reads_back_from_the_statefulset_it_builds() {
        for (wanted, policy) in [
            (storage("1Gi", Some("standard")), None),
            (
                RedisStorage {
                    when_deleted: Some(VolumeRetention::Delete),
                    ..storage("4Gi", None)
                },
                Some(VolumeRetention::Delete),
            ),
        ] {
            let decision = volume(wanted.clone(), "test");
            let effective = decision.apply(&cluster("demo"));
            let sts = children::redis::build_statefulset(&effective, "redis:7.4");
            let read = existing_storage(&sts).expect("a claim");
            assert_eq!(read.size, wanted.size);
            assert_eq!(read.storage_class_name, wanted.storage_class_name);
            assert_eq!(
                read.when_deleted.unwrap_or_default(),
                policy.unwrap_or_default()
            );
        }
        let ephemeral = empty_dir("test", None).apply(&cluster("demo"));
        let sts = children::redis::build_statefulset(&ephemeral, "redis:7.4");
        assert_eq!(existing_storage(&sts), None);
    }
}
