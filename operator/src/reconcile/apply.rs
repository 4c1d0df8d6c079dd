//! Writing children: server-side apply, the create-once Redis Secret, and the orphan sweep.
//!
//! Apply is forced under the one field manager `chat-operator`, so a hand edit of a field the
//! operator sets is taken back. An apply whose result equals the stored object is a no-op in
//! the API server (no write, `resourceVersion` unchanged), which is what keeps a steady state
//! write-free; the integration tests check exactly that.

use std::collections::HashSet;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use kube::{Resource, ResourceExt};
use tracing::info;

use super::context::Context;
use crate::api::ChatCluster;
use crate::children::kinds::ChildKind;
use crate::children::{
    Child, REDIS_PASSWORD_KEY, controller_of, is_controlled_by, names, redis, server_api,
};
use crate::error::{ApiError, Error};
use crate::labels;

/// Applies one child. `existed`: the ownership check ([`foreign_objects`]) found it, controlled
/// by this ChatCluster.
///
/// A child that did not exist at that check is applied without force: if someone created an
/// object of that name since (the instant between the check and the apply), a forced apply
/// would take it over. Unforced, an object with any field of other values makes the API server
/// answer 409; one whose fields all agree with ours is applied, but its managed fields then
/// show another manager, which an object this apply created cannot have, so this apply's
/// fields (the owner reference among them) are released again at once. Either way the result
/// is [`Error::Conflict`] naming the object, as for one found by the check.
pub async fn apply_child(
    ctx: &Context,
    namespace: &str,
    child: &Child,
    existed: bool,
) -> Result<(), Error> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(ctx.client.clone(), namespace, &child.resource);
    let name = child.name();
    let taken = || Error::Conflict {
        objects: format!(
            "{}/{name} (created by someone else while this ChatCluster was applied)",
            child.resource.kind
        ),
    };
    let mut params = PatchParams::apply(labels::MANAGER);
    if existed {
        params = params.force();
    }
    let applied = match ctx
        .call(api.patch(&name, &params, &Patch::Apply(&child.object)))
        .await
    {
        Ok(applied) => applied,
        Err(e) if !existed && e.is_conflict() => return Err(taken()),
        Err(source) => {
            return Err(Error::ApplyChild {
                child: child.describe(),
                source,
            });
        }
    };
    if !existed && has_other_managers(&applied.metadata) {
        release(ctx, &api, child).await?;
        return Err(taken());
    }
    Ok(())
}

/// Whether fields of the object are managed by anyone but this operator.
fn has_other_managers(meta: &kube::api::ObjectMeta) -> bool {
    meta.managed_fields
        .iter()
        .flatten()
        .any(|f| f.manager.as_deref() != Some(labels::MANAGER))
}

/// Gives up every field this operator's apply set on `child`'s object: an apply of nothing but
/// its name under the same field manager removes the fields only it owned (the owner reference
/// included) and leaves those the other manager also set.
async fn release(ctx: &Context, api: &Api<DynamicObject>, child: &Child) -> Result<(), Error> {
    let name = child.name();
    let empty = serde_json::json!({
        "apiVersion": child.resource.api_version,
        "kind": child.resource.kind,
        "metadata": {"name": name},
    });
    ctx.call(api.patch(
        &name,
        &PatchParams::apply(labels::MANAGER),
        &Patch::Apply(&empty),
    ))
    .await
    .map(|_| ())
    .map_err(|source| Error::ApplyChild {
        child: child.describe(),
        source,
    })
}

/// What the ownership check found among a reconcile's targets.
#[derive(Debug, Default)]
pub struct Ownership {
    /// Objects that exist but are not controlled by the ChatCluster, as
    /// `Kind/name (controlled by …)`.
    pub foreign: Vec<String>,
    /// `(kind, name)` of the targets that exist and are controlled by it.
    pub owned: HashSet<(String, String)>,
}

impl Ownership {
    /// Whether `child` existed, controlled by the ChatCluster, at the check.
    pub fn owns(&self, child: &Child) -> bool {
        self.owned
            .contains(&(child.resource.kind.clone(), child.name()))
    }
}

/// The objects among `targets` (`(API, name)`) that exist in `namespace` but are not
/// controlled by `cluster`, as `Kind/name (controlled by …)`, and those that it controls.
/// Applying over a foreign object would take it over (a forced apply wins every field, the
/// owner reference makes garbage collection delete it with the ChatCluster), so the caller
/// applies nothing when any exists. Only metadata is read.
pub async fn foreign_objects(
    ctx: &Context,
    cluster: &ChatCluster,
    namespace: &str,
    targets: &[(ApiResource, String)],
) -> Result<Ownership, Error> {
    let mut ownership = Ownership::default();
    for (resource, name) in targets {
        let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), namespace, resource);
        let what = format!("{}/{name}", resource.kind);
        let existing = ctx
            .call(api.get_metadata_opt(name))
            .await
            .map_err(|source| Error::Read {
                what: what.clone(),
                source,
            })?;
        match existing {
            Some(object) if !is_controlled_by(cluster, &object.metadata) => ownership
                .foreign
                .push(format!("{what} ({})", controller_of(&object.metadata))),
            Some(_) => {
                ownership
                    .owned
                    .insert((resource.kind.clone(), name.clone()));
            }
            None => {}
        }
    }
    Ok(ownership)
}

/// Creates the managed Redis password Secret if it does not exist, and the configuration
/// Secret made from its password. Never changes either: a new password would lock running
/// chat-nodes out. Returns the `Secret/<name>`s created.
pub async fn ensure_redis_secrets(
    ctx: &Context,
    cluster: &ChatCluster,
    namespace: &str,
) -> Result<Vec<String>, Error> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let mut created = Vec::new();
    let name = names::redis_secret(&cluster.name_any());
    let password = match read_secret(ctx, &api, &name).await? {
        Some(existing) => existing
            .data
            .as_ref()
            .and_then(|d| d.get(REDIS_PASSWORD_KEY))
            .and_then(|p| String::from_utf8(p.0.clone()).ok()),
        None => {
            let password = redis::generate_password();
            let created_now = create_secret(ctx, &api, redis::build_secret(cluster, &password))
                .await
                .map_err(|source| Error::CreateRedisSecret {
                    name: name.clone(),
                    source,
                })?;
            if created_now {
                created.push(format!("Secret/{name}"));
                Some(password)
            } else {
                // Created by a concurrent reconcile: read its password on the next pass.
                None
            }
        }
    };
    let config = names::redis_config(&cluster.name_any());
    if let Some(password) = password
        && read_secret(ctx, &api, &config).await?.is_none()
        && create_secret(ctx, &api, redis::build_config_secret(cluster, &password))
            .await
            .map_err(|source| Error::CreateRedisSecret {
                name: config.clone(),
                source,
            })?
    {
        created.push(format!("Secret/{config}"));
    }
    Ok(created)
}

/// Creates the server API key Secret if it does not exist. Never changes it: backends hold the
/// key, and a user who rotates it writes the Secret themselves. Returns `Secret/<name>` when it
/// was created.
pub async fn ensure_api_key_secret(
    ctx: &Context,
    cluster: &ChatCluster,
    namespace: &str,
) -> Result<Option<String>, Error> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let name = names::api_key_secret(&cluster.name_any());
    if read_secret(ctx, &api, &name).await?.is_some() {
        return Ok(None);
    }
    let secret = server_api::build_secret(cluster, &server_api::generate_key());
    match create_secret(ctx, &api, secret).await {
        Ok(true) => Ok(Some(format!("Secret/{name}"))),
        Ok(false) => Ok(None),
        Err(source) => Err(Error::CreateApiKeySecret { name, source }),
    }
}

async fn read_secret(
    ctx: &Context,
    api: &Api<Secret>,
    name: &str,
) -> Result<Option<Secret>, Error> {
    ctx.call(api.get_opt(name))
        .await
        .map_err(|source| Error::Read {
            what: format!("Secret/{name}"),
            source,
        })
}

/// Creates `secret` under the operator's field manager; false when it exists already.
async fn create_secret(ctx: &Context, api: &Api<Secret>, secret: Secret) -> Result<bool, ApiError> {
    let name = secret.name_any();
    let params = PostParams {
        field_manager: Some(labels::MANAGER.into()),
        ..PostParams::default()
    };
    match ctx.call(api.create(&params, &secret)).await {
        Ok(_) => {
            info!(secret = %name, "created a managed Secret");
            Ok(true)
        }
        Err(e) if e.is_already_exists() => Ok(false),
        Err(source) => Err(source),
    }
}

/// Deletes every object of the swept kinds that carries this cluster's labels, is controlled by
/// this cluster, and is not in `desired`. Returns the `Kind/name`s deleted.
pub async fn sweep_orphans(
    ctx: &Context,
    cluster: &ChatCluster,
    namespace: &str,
    kinds: &[ChildKind],
    desired: &[Child],
) -> Result<Vec<String>, Error> {
    let wanted: HashSet<(String, String)> = desired
        .iter()
        .map(|c| (c.resource.kind.clone(), c.name()))
        .collect();
    let uid = cluster.meta().uid.clone();
    let selector = labels::managed_by_cluster(&cluster.name_any());
    let mut deleted = Vec::new();
    for kind in kinds {
        if kind.optional && !ctx.api_installed(&kind.resource).await? {
            continue;
        }
        let api: Api<DynamicObject> =
            Api::namespaced_with(ctx.client.clone(), namespace, &kind.resource);
        let list = ctx
            .call(api.list_metadata(&ListParams::default().labels(&selector)))
            .await
            .map_err(|source| Error::ListChildren {
                kind: kind.resource.kind.clone(),
                source,
            })?;
        for object in list.items {
            let name = object.name_any();
            let controlled_by_us = object
                .owner_references()
                .iter()
                .any(|o| o.controller == Some(true) && Some(&o.uid) == uid.as_ref());
            if !controlled_by_us || wanted.contains(&(kind.resource.kind.clone(), name.clone())) {
                continue;
            }
            let child = format!("{}/{name}", kind.resource.kind);
            match ctx
                .call(api.delete(&name, &DeleteParams::background()))
                .await
            {
                Ok(_) => {
                    info!(%child, "deleted a child the spec no longer asks for");
                    deleted.push(child);
                }
                Err(e) if e.is_not_found() => {}
                Err(source) => return Err(Error::DeleteOrphan { child, source }),
            }
        }
    }
    Ok(deleted)
}
