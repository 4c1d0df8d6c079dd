//! The ValidatingAdmissionPolicy that the Helm chart ships (`chat-operator admission-policy`
//! prints it; `config/admission/` and the chart's `files/admission/` hold it, generated).
//!
//! On CREATE and UPDATE of a ChatCluster it refuses, with a message naming the field and value:
//! - a Secret the requesting user may not `get` (asked of the API server's `authorizer`, so
//!   RBAC, webhooks and every other authorizer answer exactly as for a direct read);
//! - an image outside the allow-list, read from the binding's parameter: a ConfigMap whose
//!   `allowedImagePrefixes` is the comma-separated list the operator also gets as
//!   `--allowed-image-prefixes` (same matching rules as [`super::ImageAllowList`]);
//! - what the operator's tenant policy ([`super::tenant`]) refuses: snippet annotations, hosts
//!   outside the allow-list, denied priority classes and toleration keys, from the same
//!   ConfigMap's keys ([`super::tenant::SETTINGS`], the chart's `operator.tenantPolicy` names),
//!   each missing key meaning the operator's default, with the reconciler's messages.
//!
//! On UPDATE, a reference that is unchanged (same field, same value) is not checked again, so
//! someone who may edit a ChatCluster but not read its Secrets can still scale it; pointing a
//! field at another Secret or image is checked. A missing parameter denies everything
//! (`parameterNotFoundAction: Deny` in the chart's binding), as does an error (`failurePolicy:
//! Fail`).

use std::collections::BTreeMap;

use k8s_openapi::api::admissionregistration::v1::{
    MatchResources, NamedRuleWithOperations, ParamKind, ValidatingAdmissionPolicy,
    ValidatingAdmissionPolicySpec, Validation, Variable,
};
use kube::api::ObjectMeta;

use super::tenant::{
    ALLOWED_INGRESS_HOSTS, DENIED_INGRESS_ANNOTATIONS, DENIED_PRIORITY_CLASSES,
    DENIED_TOLERATION_KEYS, SETTINGS, Setting,
};
use super::{ANY_IMAGE, IMAGE_FIELDS, Reference, SECRET_LIST_REFERENCES, SECRET_REFERENCES};
use crate::api::{GROUP, VERSION};
use crate::labels;

/// Name of the policy in `config/admission/` (the chart names it after the release).
pub const POLICY_NAME: &str = "chat-operator-tenant-references";
/// File name under `config/admission/`.
pub const POLICY_FILE: &str = "validatingadmissionpolicy.yaml";
/// Key of the parameter ConfigMap that holds the comma-separated image allow-list.
pub const ALLOWED_IMAGE_PREFIXES_KEY: &str = "allowedImagePrefixes";

/// CEL: whether `root` sets `r`, and the value it sets (as a string: the object is untyped
/// (`dyn`) to the policy).
fn has_and_value(root: &str, r: &Reference) -> (String, String) {
    let (has, at) = has_path(root, r.path);
    (has, format!("string({at})"))
}

/// CEL: whether `root` sets the field at `path` below `spec`, and the field.
fn has_path(root: &str, path: &[&str]) -> (String, String) {
    let mut checks = Vec::new();
    let mut at = format!("{root}.spec");
    checks.push(format!("has({at})"));
    for key in path {
        checks.push(format!("has({at}.{key})"));
        at = format!("{at}.{key}");
    }
    (checks.join(" && "), at)
}

/// CEL: a list of `{'field': …, 'value': …}` for each of `references` that `root` sets.
fn collect(root: &str, references: &[Reference]) -> String {
    references
        .iter()
        .map(|r| {
            let (has, value) = has_and_value(root, r);
            format!(
                "({has} ? [{{'field': '{}', 'value': {value}}}] : [])",
                r.field
            )
        })
        .collect::<Vec<_>>()
        .join(" + ")
}

/// One validation per Secret reference: unset, unchanged by this UPDATE, or readable by the
/// requesting user. (One each, because a message may not depend on the `authorizer`: the
/// message names the field and the Secret from the object alone.)
fn secret_validation(r: &Reference) -> Validation {
    let (has, value) = has_and_value("object", r);
    let (old_has, old_value) = has_and_value("oldObject", r);
    Validation {
        expression: format!(
            "!({has}) || (request.operation == 'UPDATE' && oldObject != null && {old_has} && {old_value} == {value}) || authorizer.group('').resource('secrets').namespace(request.namespace).name({value}).check('get').allowed()"
        ),
        message_expression: Some(format!(
            "'{field} names Secret ' + {value} + ', which you may not get in namespace ' + request.namespace + ': the operator would mount it into pods on your behalf'",
            field = r.field
        )),
        message: Some(format!("{} names a Secret its author may not get", r.field)),
        reason: Some("Forbidden".into()),
    }
}

/// One validation per list of Secret references (`spec.imagePullSecrets`): unset, or every
/// item unchanged by this UPDATE (named in the old list too) or readable by the requesting user.
/// The message names every Secret of the list (it may not ask the `authorizer` which).
fn secret_list_validation(r: &Reference) -> Validation {
    let (has, list) = has_path("object", r.path);
    let (old_has, old_list) = has_path("oldObject", r.path);
    Validation {
        expression: format!(
            "!({has}) || {list}.all(s, (request.operation == 'UPDATE' && oldObject != null && {old_has} && {old_list}.exists(o, o.name == s.name)) || authorizer.group('').resource('secrets').namespace(request.namespace).name(string(s.name)).check('get').allowed())"
        ),
        message_expression: Some(format!(
            "'{field} names Secret ' + {list}.map(s, string(s.name)).join(' or Secret ') + ', which you may not get in namespace ' + request.namespace + ': the operator would pull images with it on your behalf'",
            field = r.field
        )),
        message: Some(format!("{} names a Secret its author may not get", r.field)),
        reason: Some("Forbidden".into()),
    }
}

/// CEL: `old` references of an UPDATE (none on CREATE).
fn collect_old(references: &[Reference]) -> String {
    format!(
        "request.operation == 'UPDATE' && oldObject != null ? {} : []",
        collect("oldObject", references)
    )
}

/// CEL: the patterns of a tenant-policy setting: the parameter's key when it is there, else the
/// operator's default (as a flag that is not given).
fn setting_patterns(setting: &Setting) -> String {
    let list = |source: String| format!("{source}.split(',').map(p, p.trim()).filter(p, p != '')");
    format!(
        "params != null && has(params.data) && '{key}' in params.data ? {given} : {default}",
        key = setting.key,
        given = list(format!("params.data['{}']", setting.key)),
        default = list(format!("'{}'", setting.default)),
    )
}

/// RE2 characters a `*` pattern must have escaped to match itself (`*` becomes `.*`).
const REGEX_SPECIALS: &[char] = &[
    '\\', '.', '+', '?', '(', ')', '|', '[', ']', '{', '}', '^', '$',
];

/// CEL: the anchored regular expression of the `*` pattern `p` (a CEL variable): every RE2
/// special character escaped, `*` as `.*`, so that `value.matches(...)` is
/// [`super::tenant::Patterns::matches`].
fn pattern_regex(p: &str) -> String {
    let mut at = p.to_string();
    for c in REGEX_SPECIALS {
        let c = if *c == '\\' {
            "\\\\".to_string()
        } else {
            c.to_string()
        };
        at = format!("{at}.replace('{c}', '\\\\{c}')");
    }
    format!("'(?s)^' + {at}.replace('*', '.*') + '$'")
}

/// CEL: true on an UPDATE whose old object sets `path` to the same value as the new one.
fn unchanged(path: &[&str]) -> String {
    let (old_has, old_value) = has_path("oldObject", path);
    let (_, value) = has_path("object", path);
    format!(
        "(request.operation == 'UPDATE' && oldObject != null && {old_has} && {old_value} == {value})"
    )
}

/// The variables of the tenant policy (see [`super::tenant`]): each setting's patterns and
/// regular expressions, then `tenantViolations`, a message per refused value (the reconciler's
/// messages). A value that an UPDATE leaves as it was is not refused, as for Secrets and images.
fn tenant_variables() -> Vec<Variable> {
    let mut out = Vec::new();
    for setting in &SETTINGS {
        out.push(variable(setting.key, setting_patterns(setting)));
        out.push(variable(
            &format!("{}Re", setting.key),
            format!("variables.{}.map(p, {})", setting.key, pattern_regex("p")),
        ));
    }
    let joined = |s: &Setting| format!("variables.{}.join(',')", s.key);
    let matches = |s: &Setting, v: &str| format!("variables.{}Re.exists(r, {v}.matches(r))", s.key);
    let update = "request.operation == 'UPDATE' && oldObject != null";

    let (has_annotations, annotations) = has_path("object", &["ingress", "annotations"]);
    let (old_has_annotations, old_annotations) = has_path("oldObject", &["ingress", "annotations"]);
    out.push(variable(
        "oldIngressAnnotations",
        format!("{update} && {old_has_annotations} ? {old_annotations}.map(k, k) : []"),
    ));
    let host_path: &[&str] = &["ingress", "host"];
    let (has_host, host) = has_path("object", host_path);
    let class_path: &[&str] = &["podTemplate", "priorityClassName"];
    let (has_class, class) = has_path("object", class_path);
    let (has_tolerations, tolerations) = has_path("object", &["podTemplate", "tolerations"]);
    let (old_has_tolerations, old_tolerations) =
        has_path("oldObject", &["podTemplate", "tolerations"]);
    let toleration_key = "has(t.key) ? t.key : ''";
    out.push(variable(
        "oldTolerationKeys",
        format!(
            "{update} && {old_has_tolerations} ? {old_tolerations}.map(t, {toleration_key}) : []"
        ),
    ));
    let parts = [
        format!(
            "({has_annotations} ? {annotations}.filter(k, !(k in variables.oldIngressAnnotations) && {m}).map(k, 'spec.ingress.annotations sets ' + k + ' (refused: ' + {j} + ')') : [])",
            m = matches(&DENIED_INGRESS_ANNOTATIONS, "k"),
            j = joined(&DENIED_INGRESS_ANNOTATIONS),
        ),
        format!(
            "({has_host} && !{same} && !{m} ? ['spec.ingress.host is ' + {host} + ' (allowed: ' + {j} + ')'] : [])",
            same = unchanged(host_path),
            m = matches(&ALLOWED_INGRESS_HOSTS, &host),
            j = joined(&ALLOWED_INGRESS_HOSTS),
        ),
        format!(
            "({has_class} && !{same} && {m} ? ['spec.podTemplate.priorityClassName is ' + {class} + ' (refused: ' + {j} + ')'] : [])",
            same = unchanged(class_path),
            m = matches(&DENIED_PRIORITY_CLASSES, &class),
            j = joined(&DENIED_PRIORITY_CLASSES),
        ),
        format!(
            "({has_tolerations} ? {tolerations}.map(t, {toleration_key}).filter(k, !(k in variables.oldTolerationKeys) && (k == '' ? size(variables.{key}) > 0 : {m})).map(k, k == '' ? 'spec.podTemplate.tolerations has a toleration without a key, which tolerates every taint' : 'spec.podTemplate.tolerations tolerates ' + k + ' (refused: ' + {j} + ')') : [])",
            key = DENIED_TOLERATION_KEYS.key,
            m = matches(&DENIED_TOLERATION_KEYS, "k"),
            j = joined(&DENIED_TOLERATION_KEYS),
        ),
    ];
    out.push(variable("tenantViolations", parts.join(" + ")));
    out
}

fn variable(name: &str, expression: String) -> Variable {
    Variable {
        name: name.into(),
        expression,
    }
}

/// The policy object.
pub fn policy() -> ValidatingAdmissionPolicy {
    let unchanged = |old: &str, r: &str| {
        format!("variables.{old}.exists(o, o.field == {r}.field && o.value == {r}.value)")
    };
    let mut variables = vec![
        variable(
            "allowedImagePrefixes",
            format!(
                "params != null && has(params.data) && '{key}' in params.data ? params.data['{key}'].split(',').map(p, p.trim()).filter(p, p != '') : []",
                key = ALLOWED_IMAGE_PREFIXES_KEY
            ),
        ),
        variable("images", collect("object", IMAGE_FIELDS)),
        variable("oldImages", collect_old(IMAGE_FIELDS)),
        variable(
            "deniedImages",
            format!(
                "variables.images.filter(i, !{} && !variables.allowedImagePrefixes.exists(p, p == '{ANY_IMAGE}' || i.value == p || (i.value.startsWith(p) && (p.endsWith('/') || p.endsWith(':') || p.endsWith('@') || i.value.substring(size(p), size(p) + 1) in ['/', ':', '@']))))",
                unchanged("oldImages", "i")
            ),
        ),
    ];
    variables.extend(tenant_variables());
    let mut validations: Vec<Validation> =
        SECRET_REFERENCES.iter().map(secret_validation).collect();
    validations.extend(SECRET_LIST_REFERENCES.iter().map(secret_list_validation));
    validations.extend([
        Validation {
            expression: "size(variables.deniedImages) == 0".into(),
            message_expression: Some(
                "'image not in the operator\\'s allow-list (' + variables.allowedImagePrefixes.join(', ') + '): ' + variables.deniedImages.map(i, i.field + ' is ' + i.value).join(', ')".into(),
            ),
            message: Some("a ChatCluster names an image outside the operator's allow-list".into()),
            reason: Some("Forbidden".into()),
        },
        Validation {
            expression: "size(variables.tenantViolations) == 0".into(),
            message_expression: Some(
                "'refused by the operator\\'s tenant policy: ' + variables.tenantViolations.join('; ')".into(),
            ),
            message: Some("a ChatCluster asks what the operator's tenant policy refuses".into()),
            reason: Some("Forbidden".into()),
        },
    ]);
    ValidatingAdmissionPolicy {
        metadata: ObjectMeta {
            name: Some(POLICY_NAME.into()),
            labels: Some(BTreeMap::from([
                (labels::NAME.to_string(), labels::MANAGER.to_string()),
                (
                    labels::PART_OF.to_string(),
                    labels::PART_OF_VALUE.to_string(),
                ),
            ])),
            ..ObjectMeta::default()
        },
        spec: Some(ValidatingAdmissionPolicySpec {
            failure_policy: Some("Fail".into()),
            param_kind: Some(ParamKind {
                api_version: Some("v1".into()),
                kind: Some("ConfigMap".into()),
            }),
            match_constraints: Some(MatchResources {
                resource_rules: Some(vec![NamedRuleWithOperations {
                    api_groups: Some(vec![GROUP.into()]),
                    api_versions: Some(vec![VERSION.into()]),
                    operations: Some(vec!["CREATE".into(), "UPDATE".into()]),
                    resources: Some(vec!["chatclusters".into()]),
                    ..NamedRuleWithOperations::default()
                }]),
                ..MatchResources::default()
            }),
            variables: Some(variables),
            validations: Some(validations),
            ..ValidatingAdmissionPolicySpec::default()
        }),
        status: None,
    }
}

/// The policy as a YAML document (with a header saying it is generated).
pub fn policy_yaml() -> Result<String, serde_yaml_ng::Error> {
    let body = serde_yaml_ng::to_string(&policy())?;
    Ok(format!(
        "# Generated by `chat-operator admission-policy` (make generate). Do not edit.\n\
         # Bind it with a ValidatingAdmissionPolicyBinding whose paramRef names a ConfigMap with\n\
         # `{ALLOWED_IMAGE_PREFIXES_KEY}` and, optionally, the tenant policy's {keys}\n\
         # (the chart does; see docs/security.md).\n---\n{body}",
        keys = SETTINGS.map(|s| format!("`{}`", s.key)).join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reference_of_the_table_is_in_the_policy() {
        let spec = policy().spec.unwrap();
        let vars = spec.variables.unwrap();
        let all: String = vars
            .iter()
            .map(|v| v.expression.clone())
            .chain(
                spec.validations
                    .unwrap()
                    .into_iter()
                    .filter_map(|v| v.message_expression),
            )
            .collect();
        for r in SECRET_REFERENCES
            .iter()
            .chain(SECRET_LIST_REFERENCES)
            .chain(IMAGE_FIELDS)
        {
            assert!(
                all.contains(&format!("'field': '{}'", r.field))
                    || all.contains(&format!("'{} names Secret '", r.field)),
                "{}",
                r.field
            );
        }
        assert!(
            policy_yaml()
                .unwrap()
                .contains("kind: ValidatingAdmissionPolicy")
        );
        let images = &vars.iter().find(|v| v.name == "images").unwrap().expression;
        assert!(
            images.contains("has(object.spec.redis) && has(object.spec.redis.image) ? [{'field': 'spec.redis.image', 'value': string(object.spec.redis.image)}]"),
            "{images}"
        );
        // The tenant policy's defaults are embedded as CEL string literals.
        for setting in &SETTINGS {
            assert!(!setting.default.contains(['\'', '\\']), "{}", setting.key);
            let var = vars.iter().find(|v| v.name == setting.key).unwrap();
            assert!(
                var.expression.ends_with(&format!(
                    ": '{}'.split(',').map(p, p.trim()).filter(p, p != '')",
                    setting.default
                )),
                "{}",
                var.expression
            );
        }
        let jwt = secret_validation(&SECRET_REFERENCES[0]);
        assert!(
            jwt.expression.ends_with(
                ".name(string(object.spec.auth.jwtSecretRef.name)).check('get').allowed()"
            ),
            "{}",
            jwt.expression
        );
    }
}
