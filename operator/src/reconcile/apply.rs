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
use crate::children::{
    Child, REDIS_PASSWORD_KEY, SweptKind, controller_of, is_controlled_by, names, redis, server_api,
};
use crate::error::{ApiError, Error};
use crate::labels;

/// Applies one child.
pub async fn apply_child(ctx: &Context, namespace: &str, child: &Child) -> Result<(), Error> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(ctx.client.clone(), namespace, &child.resource);
    let params = PatchParams::apply(labels::MANAGER).force();
    ctx.call(api.patch(&child.name(), &params, &Patch::Apply(&child.object)))
        .await
        .map(|_| ())
        .map_err(|source| Error::ApplyChild {
            child: child.describe(),
            source,
        })
}

/// The objects among `targets` (`(API, name)`) that exist in `namespace` but are not
/// controlled by `cluster`, as `Kind/name (controlled by …)`. Applying over such an object
/// would take it over (a forced apply wins every field, the owner reference makes garbage
/// collection delete it with the ChatCluster), so the caller applies nothing when any exists.
/// Only metadata is read.
pub async fn foreign_objects(
    ctx: &Context,
    cluster: &ChatCluster,
    namespace: &str,
    targets: &[(ApiResource, String)],
) -> Result<Vec<String>, Error> {
    let mut foreign = Vec::new();
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
        if let Some(object) = existing
            && !is_controlled_by(cluster, &object.metadata)
        {
            foreign.push(format!("{what} ({})", controller_of(&object.metadata)));
        }
    }
    Ok(foreign)
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
    kinds: &[SweptKind],
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
